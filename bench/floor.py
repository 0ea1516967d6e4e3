"""The floor of this stack: the benchmark's reads and ingest as hand-written SQL behind a bare
Starlette app.

    FLOOR_DATABASE_URL=postgresql://... PORT=8123 .venv/bin/python -m bench.floor
    (FLOOR_POOL_SIZE: its asyncpg connections, 4 unless given)

Started by bench/suite.py as its own uvicorn process, so it pays the same HTTP, JSON and process
costs as `python -m gql serve` and nothing else: no GraphQL, no SQLAlchemy, no auth, no
row-level security (its connections are the migrating user's). Each read endpoint runs one
statement on an asyncpg pool and answers the same JSON shape as the GraphQL query it stands for.

The two ingest endpoints (issue 15) receive the same JSON as the app's ways of ingesting, the
`ingestMessage` mutation's request (POST /ingest?business_id=) and a WhatsApp webhook delivery
(POST /webhooks/whatsapp), and store each message as the suite's asyncpg floor does: the
conversation's upsert and the message's insert, both `ON CONFLICT`, in one transaction per
message. They answer the shapes of `{ ingestMessage { duplicate message { id } } }` and of the
webhook's delivery report.
"""

import base64
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

# Before migration 0004 a thread's unread count is counted from its partial index of unread
# candidates; once `whatsapp_conversation.unread_count` exists, the best SQL reads it.
_COUNTED_UNREAD = """(
    SELECT count(*) FROM whatsapp_message m
    WHERE m.conversation_id = c.id AND m.direction = 'in' AND NOT m.historical
      AND m.status <> 'deleted' AND m.message_type <> 'system' AND m.seq > c.read_seq
)"""
_THREAD_PAGE = """
SELECT c.id, c.canonical_key, c.phone_e164, c.lead_id, c.status, c.started_at,
       c.last_message_at, c.last_read_at, c.contact_name, c.wa_user_id,
       {unread} AS unread_count, last.body AS last_body, last.sent_at AS last_sent_at
FROM whatsapp_conversation c
LEFT JOIN LATERAL (
    -- A deleted message's text is hidden, as the API hides it.
    SELECT CASE WHEN m.status = 'deleted' THEN NULL ELSE m.body END AS body, m.sent_at
    FROM whatsapp_message m
    WHERE m.conversation_id = c.id ORDER BY m.sent_at DESC, m.id DESC LIMIT 1
) last ON true
WHERE c.business_id = $1
ORDER BY c.last_message_at DESC, c.id DESC
LIMIT $2
"""
# The app's badge (db/statements.py total_unread): the sum of the business's shard counters.
BADGE_SQL = """
SELECT coalesce(sum(unread), 0)::bigint FROM whatsapp_business_unread WHERE business_id = $1
"""
_MESSAGES_AT_END = """
SELECT id, conversation_id, direction, source, status,
       CASE WHEN status = 'deleted' THEN NULL ELSE body END AS body, sent_at, created_at,
       message_type
FROM whatsapp_message
WHERE business_id = $1 AND conversation_id = $2
ORDER BY sent_at DESC, id DESC
LIMIT $3
"""


# The two statements of db/statements.py's upsert_conversation and insert_message as they were
# sent before issue 15 (an inbound customer text on a phone thread): the ingest floor, run by
# this app over HTTP and by bench/suite.py straight on asyncpg.
UPSERT_CONVERSATION_SQL = """
INSERT INTO whatsapp_conversation AS existing (business_id, canonical_key, phone_e164, lead_id,
    status, started_at, last_message_at, message_seq, contact_name, wa_user_id)
VALUES ($1, $2, $3, NULL, 'open', $4, $4, 1, NULL, NULL)
ON CONFLICT (business_id, canonical_key) DO UPDATE SET
    message_seq = existing.message_seq + 1,
    started_at = least(existing.started_at, excluded.started_at),
    last_message_at = greatest(existing.last_message_at, excluded.last_message_at),
    phone_e164 = coalesce(excluded.phone_e164, existing.phone_e164),
    contact_name = coalesce(excluded.contact_name, existing.contact_name),
    wa_user_id = coalesce(excluded.wa_user_id, existing.wa_user_id),
    status = 'open'
RETURNING *
"""
INSERT_MESSAGE_SQL = """
INSERT INTO whatsapp_message (business_id, conversation_id, seq, provider_message_id, direction,
    source, status, body, sent_at, created_at, historical, message_type)
VALUES ($1, $2, $3, $4, 'in', 'customer', 'received', $5, $6, clock_timestamp(), false, 'text')
ON CONFLICT (business_id, provider_message_id) DO NOTHING
RETURNING *
"""
_STORED_MESSAGE_ID = """
SELECT id FROM whatsapp_message WHERE business_id = $1 AND provider_message_id = $2
"""
# The webhook's answer: domain/webhook_deliveries.py's DeliveryReport, counted the same way.
DELIVERY_REPORT_KEYS = (
    "stored",
    "duplicates",
    "statuses_applied",
    "statuses_pending",
    "statuses_stale",
    "revisions_applied",
    "revisions_pending",
    "revisions_stale",
    "rejected",
    "unknown_numbers",
    "ignored_fields",
)
_CHANNEL_OWNER = "SELECT business_id FROM whatsapp_channel WHERE phone_number_id = $1"


async def store_message(
    connection: asyncpg.Connection,
    business_id: int,
    phone: str,
    provider_message_id: str,
    body: str | None,
    sent_at: datetime,
) -> tuple[int, bool]:
    """The floor's ingest of one message in its own transaction: (message id, duplicate)."""
    async with connection.transaction():
        conversation = await connection.fetchrow(
            UPSERT_CONVERSATION_SQL, business_id, f"phone:{business_id}:{phone}", phone, sent_at
        )
        message = await connection.fetchrow(
            INSERT_MESSAGE_SQL,
            business_id,
            conversation["id"],
            conversation["message_seq"],
            provider_message_id,
            body,
            sent_at,
        )
        if message is not None:
            return message["id"], False
        # Never taken by the suite (every provider id is new); here so that a redelivery
        # still answers the stored message, as the app does.
        stored = await connection.fetchval(_STORED_MESSAGE_ID, business_id, provider_message_id)
        return stored, True


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _cursor(sent_at: datetime, message_id: int) -> str:
    return base64.urlsafe_b64encode(f"{sent_at.isoformat()}|{message_id}".encode()).decode()


def create_floor_app(database_url: str, pool_size: int = 4) -> Starlette:
    """The floor app on `database_url` (a plain postgresql:// DSN)."""
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(database_url, min_size=pool_size, max_size=pool_size)
        assert pool is not None
        has_counter = await pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE "
            "table_name = 'whatsapp_conversation' AND column_name = 'unread_count')"
        )
        state["pool"] = pool
        state["channel_owners"] = {}
        state["thread_page"] = _THREAD_PAGE.format(
            unread="c.unread_count" if has_counter else _COUNTED_UNREAD
        )
        try:
            yield
        finally:
            await pool.close()

    async def unread(request: Request) -> JSONResponse:
        business_id = int(request.query_params["business_id"])
        count = await state["pool"].fetchval(BADGE_SQL, business_id)
        return JSONResponse({"data": {"unreadCount": count}})

    async def threads(request: Request) -> JSONResponse:
        business_id = int(request.query_params["business_id"])
        first = int(request.query_params.get("first", "50"))
        rows = await state["pool"].fetch(state["thread_page"], business_id, first + 1)
        edges = [
            {
                "node": {
                    "id": str(row["id"]),
                    "canonicalKey": row["canonical_key"],
                    "phone": row["phone_e164"],
                    "leadId": row["lead_id"],
                    "status": row["status"].upper(),
                    "startedAt": _time(row["started_at"]),
                    "lastMessageAt": _time(row["last_message_at"]),
                    "lastReadAt": _time(row["last_read_at"]),
                    "contactName": row["contact_name"],
                    "userId": row["wa_user_id"],
                    "unreadCount": row["unread_count"],
                    "lastMessage": None
                    if row["last_sent_at"] is None
                    else {"body": row["last_body"], "sentAt": _time(row["last_sent_at"])},
                }
            }
            for row in rows[:first]
        ]
        page_info = {"hasNextPage": len(rows) > first}
        return JSONResponse({"data": {"threads": {"edges": edges, "pageInfo": page_info}}})

    async def messages(request: Request) -> JSONResponse:
        business_id = int(request.query_params["business_id"])
        thread_id = int(request.query_params["thread_id"])
        last = int(request.query_params.get("last", "50"))
        rows = await state["pool"].fetch(_MESSAGES_AT_END, business_id, thread_id, last + 1)
        page = rows[:last][::-1]
        edges = [
            {
                "cursor": _cursor(row["sent_at"], row["id"]),
                "node": {
                    "id": str(row["id"]),
                    "threadId": str(row["conversation_id"]),
                    "direction": "INBOUND" if row["direction"] == "in" else "OUTBOUND",
                    "source": row["source"].upper(),
                    "status": row["status"].upper(),
                    "body": row["body"],
                    "sentAt": _time(row["sent_at"]),
                    "createdAt": _time(row["created_at"]),
                    "type": row["message_type"],
                },
            }
            for row in page
        ]
        page_info = {
            "hasPreviousPage": len(rows) > last,
            "startCursor": edges[0]["cursor"] if edges else None,
        }
        return JSONResponse(
            {"data": {"thread": {"messages": {"edges": edges, "pageInfo": page_info}}}}
        )

    async def ingest(request: Request) -> JSONResponse:
        business_id = int(request.query_params["business_id"])
        given = json.loads(await request.body())["variables"]["input"]
        sent_at = (
            datetime.fromisoformat(given["sentAt"]) if given.get("sentAt") else datetime.now(UTC)
        )
        async with state["pool"].acquire() as connection:
            message_id, duplicate = await store_message(
                connection,
                business_id,
                given["phone"],
                given["providerMessageId"],
                given.get("body"),
                sent_at,
            )
        return JSONResponse(
            {
                "data": {
                    "ingestMessage": {"duplicate": duplicate, "message": {"id": str(message_id)}}
                }
            }
        )

    async def webhook(request: Request) -> JSONResponse:
        delivery = json.loads(await request.body())
        report = dict.fromkeys(DELIVERY_REPORT_KEYS, 0)
        owners: dict[str, int] = state["channel_owners"]
        async with state["pool"].acquire() as connection:
            for entry in delivery["entry"]:
                for change in entry["changes"]:
                    value = change["value"]
                    number = value["metadata"]["phone_number_id"]
                    if number not in owners:
                        # Kept for the life of the process: a floor asks once what the app
                        # asks per delivery, and the suite never moves a number.
                        owners[number] = await connection.fetchval(_CHANNEL_OWNER, number)
                    business_id = owners[number]
                    if business_id is None:
                        report["unknown_numbers"] += 1
                        continue
                    for message in value.get("messages", ()):
                        _, duplicate = await store_message(
                            connection,
                            business_id,
                            f"+{message['from']}",
                            message["id"],
                            message.get("text", {}).get("body"),
                            datetime.fromtimestamp(int(message["timestamp"]), UTC),
                        )
                        report["duplicates" if duplicate else "stored"] += 1
        outcome = "stored" if report["stored"] or report["duplicates"] else "ignored"
        return JSONResponse({"status": outcome, **report})

    return Starlette(
        routes=[
            Route("/unread", unread, methods=["GET"]),
            Route("/threads", threads, methods=["GET"]),
            Route("/messages", messages, methods=["GET"]),
            Route("/ingest", ingest, methods=["POST"]),
            Route("/webhooks/whatsapp", webhook, methods=["POST"]),
            Route("/healthz", lambda request: JSONResponse({"ok": True}), methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def main() -> None:
    import uvicorn

    uvicorn.run(
        create_floor_app(
            os.environ["FLOOR_DATABASE_URL"], int(os.environ.get("FLOOR_POOL_SIZE", "4"))
        ),
        host="127.0.0.1",
        port=int(os.environ["PORT"]),
        log_level="warning",
    )


if __name__ == "__main__":
    main()
