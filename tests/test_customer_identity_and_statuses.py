"""One customer, one thread, however WhatsApp names them; delivery statuses only move forward.

Issue 5. Everything goes through the signed webhook endpoint and GraphQL, against PostgreSQL;
the direct connection (`db`) only reads, to check rows the API does not show.

- A `wa_id` is a phone without "+"; Brazilian mobiles arrive with or without the ninth digit.
- A business-scoped user id (BSUID, `from_user_id`) threads a customer under `user:{business}:{id}`
  until a message carries both names; from then on both name the phone thread (a `user:` thread
  is merged into it, read point and unread messages kept).
- Statuses of outbound messages: sent < delivered < read < played, a failure replaces any but
  played and a later delivered/read replaces a failure; a status for a
  message not stored yet is kept until it is.
"""

import asyncio
import itertools
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import GraphQLClient, ingest
from tests.webhooks import (
    SAMPLE_PHONE_NUMBER_ID,
    SECOND_PHONE_NUMBER_ID,
    connect_channel,
    delivery,
    post_delivery,
    sample,
    status,
    text_message,
)

USER_ID = "BR.1502576394655843"
PHONE_WA_ID = "5511987654321"
PHONE_E164 = "+5511987654321"
PHONE_KEY = f"phone:1:{PHONE_E164}"
USER_KEY = f"user:1:{USER_ID}"
SAMPLE_USER_ID = "US.13491208655302741918"
FAILED_SAMPLE_ID = "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI3QkM4RDk5RTA4NDhEMzU3MEEA"
# Unix seconds of the first test message; the others are offsets from it.
T0 = 1_764_000_000

THREAD = """
query Thread($id: ID!) {
  thread(id: $id) {
    id canonicalKey phone userId contactName unreadCount
    messages(first: 100) { edges { node { id body providerMessageId } } }
  }
}
"""

THREAD_BY_PHONE = """
query ThreadByPhone($phone: String!) { thread(phone: $phone) { id canonicalKey phone } }
"""

MESSAGE = """
query Message($id: ID!) {
  message(id: $id) { id threadId direction status deliveryError { code title } }
}
"""

MARK_READ = """
mutation MarkRead($threadId: ID!) {
  markRead(threadId: $threadId) { totalUnread thread { id unreadCount } }
}
"""

BADGE = "query { unreadCount }"

# The unread rule straight from its definition: inbound, not deleted, not historical, stored
# after the thread's read point.
UNREAD_MESSAGE_IDS_SQL = """
SELECT m.id
FROM whatsapp_message m
JOIN whatsapp_conversation c ON c.id = m.conversation_id
WHERE m.business_id = $1
  AND m.direction = 'in' AND NOT m.historical AND m.status <> 'deleted'
  AND m.message_type <> 'system' AND m.seq > c.read_seq
"""


@pytest.fixture
async def inbox(client: GraphQLClient) -> GraphQLClient:
    """Business 1 with the samples' WhatsApp number connected, so its webhooks are stored."""
    await connect_channel(client)
    return client


async def deliver(http: httpx.AsyncClient, payload: dict[str, Any]) -> dict[str, int]:
    """Post one signed delivery that must be stored; its report."""
    response = await post_delivery(http, payload)
    assert response.status_code == 200, response.text
    report: dict[str, int] = response.json()
    return report


async def deliver_messages(
    http: httpx.AsyncClient,
    *messages: dict[str, Any],
    phone_number_id: str = SAMPLE_PHONE_NUMBER_ID,
) -> dict[str, int]:
    """Post customer messages in one delivery; none of them may be rejected."""
    report = await deliver(http, delivery(messages=list(messages), phone_number_id=phone_number_id))
    assert report["rejected"] == 0, report
    return report


async def deliver_status(
    http: httpx.AsyncClient, provider_message_id: str, name: str, **extra: Any
) -> dict[str, int]:
    return await deliver(http, delivery(statuses=[status(provider_message_id, name, **extra)]))


def by_phone(name: str, at: int = T0) -> dict[str, Any]:
    """A customer message naming only the phone; `name` is its body and provider id suffix."""
    return text_message(f"wamid.{name}", sender=PHONE_WA_ID, body=name, timestamp=at)


def by_user(name: str, at: int = T0) -> dict[str, Any]:
    """A customer message naming only the business-scoped user id."""
    return text_message(f"wamid.{name}", sender=None, user_id=USER_ID, body=name, timestamp=at)


def by_both(name: str, at: int = T0) -> dict[str, Any]:
    """A customer message naming both the phone and the business-scoped user id."""
    return text_message(
        f"wamid.{name}", sender=PHONE_WA_ID, user_id=USER_ID, body=name, timestamp=at
    )


async def message_row(db: asyncpg.Connection, provider_message_id: str) -> dict[str, Any]:
    row = await db.fetchrow(
        "SELECT * FROM whatsapp_message WHERE provider_message_id = $1", provider_message_id
    )
    assert row is not None, f"{provider_message_id} was not stored"
    return dict(row)


async def thread_id_of(db: asyncpg.Connection, provider_message_id: str) -> str:
    """The GraphQL id of the thread holding the message with this provider id."""
    conversation_id = await db.fetchval(
        "SELECT conversation_id FROM whatsapp_message WHERE provider_message_id = $1",
        provider_message_id,
    )
    assert conversation_id is not None, f"{provider_message_id} was not stored"
    return str(conversation_id)


async def thread(client: GraphQLClient, thread_id: str) -> dict[str, Any] | None:
    data = await client.execute(THREAD, {"id": thread_id})
    found: dict[str, Any] | None = data["thread"]
    return found


def bodies_of(found: dict[str, Any]) -> list[str]:
    return [edge["node"]["body"] for edge in found["messages"]["edges"]]


async def conversation_keys(db: asyncpg.Connection, business_id: int = 1) -> list[str]:
    rows = await db.fetch(
        "SELECT canonical_key FROM whatsapp_conversation WHERE business_id = $1 ORDER BY id",
        business_id,
    )
    return [row["canonical_key"] for row in rows]


# --- phones: a wa_id is a phone without "+"; Brazil's ninth digit -----------------------------


async def test_brazilian_mobile_with_or_without_ninth_digit_lands_in_one_thread(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await deliver_messages(
        http,
        text_message("wamid.br-eight-digits", sender="551187654321", body="old spelling"),
        text_message("wamid.br-nine-digits", sender="5511987654321", body="new spelling"),
    )
    ingested = await ingest(inbox, phone="+55 11 98765-4321", body="typed by an agent")
    typed_old = await ingest(inbox, phone="+55 (11) 8765-4321", body="old number in the CRM")

    thread_ids = {
        await thread_id_of(db, "wamid.br-eight-digits"),
        await thread_id_of(db, "wamid.br-nine-digits"),
        ingested["thread"]["id"],
        typed_old["thread"]["id"],
    }
    assert len(thread_ids) == 1
    assert ingested["thread"]["canonicalKey"] == PHONE_KEY
    assert ingested["thread"]["phone"] == PHONE_E164
    found = await inbox.execute(THREAD_BY_PHONE, {"phone": "551187654321"})
    assert found["thread"]["id"] == ingested["thread"]["id"]
    assert await conversation_keys(db) == [PHONE_KEY]


async def test_brazilian_landline_keeps_its_eight_digits(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await deliver_messages(http, text_message("wamid.br-landline", sender="552133334444"))

    found = await thread(inbox, await thread_id_of(db, "wamid.br-landline"))
    assert found is not None
    assert found["canonicalKey"] == "phone:1:+552133334444"
    assert found["phone"] == "+552133334444"


# --- business-scoped user ids ----------------------------------------------------------------


async def test_customer_who_hides_the_phone_stays_in_the_phone_thread(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    with_phone = sample("bsuid_with_phone")
    without_phone = sample("bsuid_username_no_phone")
    await deliver(http, with_phone)
    await deliver(http, without_phone)

    first_id = with_phone["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
    second_id = without_phone["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
    thread_id = await thread_id_of(db, first_id)
    assert await thread_id_of(db, second_id) == thread_id
    found = await thread(inbox, thread_id)
    assert found is not None
    assert found["canonicalKey"] == "phone:1:+16505551234"
    assert found["userId"] == SAMPLE_USER_ID
    assert found["contactName"] == "Sheena Nelson"
    assert bodies_of(found) == ["Hi, it's Sheena again", "I switched to a username, same person"]
    assert await conversation_keys(db) == ["phone:1:+16505551234"]


async def test_customer_known_only_by_user_id_is_threaded_under_the_user_key(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await deliver_messages(http, text_message("wamid.user-only", sender=None, user_id=USER_ID))

    found = await thread(inbox, await thread_id_of(db, "wamid.user-only"))
    assert found is not None
    assert found["canonicalKey"] == USER_KEY
    assert found["phone"] is None
    assert found["userId"] == USER_ID


async def test_user_thread_becomes_the_phone_thread_once_a_message_names_both(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await deliver_messages(http, by_user("u1", T0 + 1000))
    user_thread_id = await thread_id_of(db, "wamid.u1")

    await deliver_messages(http, by_both("both", T0 + 2000))
    await deliver_messages(http, by_user("u2", T0 + 3000))

    phone_thread_id = await thread_id_of(db, "wamid.both")
    assert await thread_id_of(db, "wamid.u1") == phone_thread_id
    assert await thread_id_of(db, "wamid.u2") == phone_thread_id
    found = await thread(inbox, phone_thread_id)
    assert found is not None
    assert found["canonicalKey"] == PHONE_KEY
    assert found["userId"] == USER_ID
    assert bodies_of(found) == ["u1", "both", "u2"]
    # The user thread is re-keyed in place: its id, and so every link to it, stays.
    assert user_thread_id == phone_thread_id
    assert await conversation_keys(db) == [PHONE_KEY]


@pytest.mark.parametrize("read_before_merge", ["phone thread", "user thread"])
async def test_merged_threads_keep_chronology_and_every_unread_message(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection, read_before_merge: str
) -> None:
    # Stored thread by thread, but interleaved in time.
    await deliver_messages(http, by_phone("p1", T0 + 1000), by_phone("p2", T0 + 3000))
    await deliver_messages(http, by_user("u1", T0 + 2000), by_user("u2", T0 + 4000))
    phone_thread_id = await thread_id_of(db, "wamid.p1")
    user_thread_id = await thread_id_of(db, "wamid.u1")
    assert phone_thread_id != user_thread_id
    read_thread_id = phone_thread_id if read_before_merge == "phone thread" else user_thread_id
    await inbox.execute(MARK_READ, {"threadId": read_thread_id})
    # One more message in the thread just read: after its read point, so unread.
    late = (
        by_phone("p3", T0 + 5000)
        if read_before_merge == "phone thread"
        else by_user("u3", T0 + 5000)
    )
    await deliver_messages(http, late)
    unread_before = 0
    for thread_id in (phone_thread_id, user_thread_id):
        found = await thread(inbox, thread_id)
        assert found is not None
        unread_before += found["unreadCount"]
    unread_ids_before = {row["id"] for row in await db.fetch(UNREAD_MESSAGE_IDS_SQL, 1)}
    assert unread_before == len(unread_ids_before) == 3

    await deliver_messages(http, by_both("both", T0 + 6000))

    merged_id = await thread_id_of(db, "wamid.both")
    merged = await thread(inbox, merged_id)
    assert merged is not None
    assert merged["canonicalKey"] == PHONE_KEY
    assert bodies_of(merged) == ["p1", "u1", "p2", "u2", late["text"]["body"], "both"]
    assert merged["unreadCount"] == unread_before + 1
    unread_ids_after = {row["id"] for row in await db.fetch(UNREAD_MESSAGE_IDS_SQL, 1)}
    both_id = (await message_row(db, "wamid.both"))["id"]
    assert unread_ids_after == unread_ids_before | {both_id}
    badge = await inbox.execute(BADGE)
    assert badge["unreadCount"] == len(unread_ids_after) == merged["unreadCount"]
    assert await conversation_keys(db) == [PHONE_KEY]
    absorbed_id = user_thread_id if merged_id == phone_thread_id else phone_thread_id
    # An old link to the merged-away thread leads to the survivor.
    followed = await thread(inbox, absorbed_id)
    assert followed is not None
    assert followed["id"] == merged_id


async def test_concurrent_deliveries_under_every_name_of_one_customer_end_in_one_thread(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    # Several rounds, each a different customer, so that the orders the database picks vary.
    for customer in range(3):
        phone = f"55119876543{customer:02d}"
        user_id = f"BR.15025763946558{customer:02d}"
        # (sender, user id): user id only, phone only, both.
        names: list[tuple[str | None, str | None]] = [
            (None, user_id),
            (phone, None),
            (phone, user_id),
        ]
        sent = [
            text_message(
                f"wamid.c{customer}-{i}",
                sender=names[i % 3][0],
                user_id=names[i % 3][1],
                body=f"m{i}",
                timestamp=T0 + i,
            )
            for i in range(20)
        ]
        reports = await asyncio.gather(*(deliver_messages(http, message) for message in sent))
        assert [report["stored"] for report in reports] == [1] * 20

        rows = await db.fetch(
            """
            SELECT provider_message_id, conversation_id, seq
            FROM whatsapp_message
            WHERE provider_message_id LIKE $1
            """,
            f"wamid.c{customer}-%",
        )
        # Every message stored, none twice.
        assert sorted(row["provider_message_id"] for row in rows) == sorted(
            message["id"] for message in sent
        )
        assert len({row["conversation_id"] for row in rows}) == 1, "one person, several threads"
        # Each message took its own place in the thread's sequence, merges included.
        assert sorted(row["seq"] for row in rows) == list(range(1, 21))
        found = await thread(inbox, str(rows[0]["conversation_id"]))
        assert found is not None
        assert found["canonicalKey"] == f"phone:1:+{phone}"
        assert found["unreadCount"] == 20
        assert bodies_of(found) == [f"m{i}" for i in range(20)]
    assert len(await conversation_keys(db)) == 3


async def test_one_user_id_at_two_businesses_is_two_threads(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    second = inbox.as_business(2)
    await connect_channel(second, SECOND_PHONE_NUMBER_ID)

    # Business 1 links the user id to a phone; business 2 must not follow that link.
    await deliver_messages(http, by_both("b1-both", T0 + 1000))
    await deliver_messages(
        http, by_user("b2-user", T0 + 2000), phone_number_id=SECOND_PHONE_NUMBER_ID
    )
    await deliver_messages(http, by_user("b1-user", T0 + 3000))

    assert await conversation_keys(db, 1) == [PHONE_KEY]
    assert await conversation_keys(db, 2) == [f"user:2:{USER_ID}"]
    first_thread = await thread(inbox, await thread_id_of(db, "wamid.b1-both"))
    second_thread_id = await thread_id_of(db, "wamid.b2-user")
    second_thread = await thread(second, second_thread_id)
    assert first_thread is not None
    assert second_thread is not None
    assert bodies_of(first_thread) == ["b1-both", "b1-user"]
    assert bodies_of(second_thread) == ["b2-user"]
    assert second_thread["userId"] == USER_ID
    assert await thread(inbox, second_thread_id) is None


# --- delivery statuses -----------------------------------------------------------------------


async def outbound(client: GraphQLClient, provider_message_id: str) -> dict[str, Any]:
    """A bot's reply that WhatsApp accepted under `provider_message_id`; the stored message."""
    result = await ingest(
        client,
        phone="+16505551234",
        direction="OUTBOUND",
        source="BOT",
        body="our reply",
        providerMessageId=provider_message_id,
    )
    message: dict[str, Any] = result["message"]
    return message


async def message_state(client: GraphQLClient, message_id: str) -> dict[str, Any]:
    data = await client.execute(MESSAGE, {"id": message_id})
    found: dict[str, Any] = data["message"]
    return found


@pytest.mark.parametrize(
    "order", list(itertools.permutations(["sent", "delivered", "read"])), ids="-".join
)
async def test_statuses_in_any_order_end_read(
    inbox: GraphQLClient, http: httpx.AsyncClient, order: tuple[str, ...]
) -> None:
    message = await outbound(inbox, "wamid.out-1")
    assert message["status"] == "SENT"

    for at, name in enumerate(order):
        await deliver_status(http, "wamid.out-1", name, timestamp=T0 + 100 + at)

    state = await message_state(inbox, message["id"])
    assert state["status"] == "READ"
    assert state["deliveryError"] is None


async def test_sample_batch_of_sent_delivered_read_leaves_the_message_read(
    inbox: GraphQLClient, http: httpx.AsyncClient
) -> None:
    batch = sample("statuses_sent_delivered_read")
    provider_message_id = batch["entry"][0]["changes"][0]["value"]["statuses"][0]["id"]
    message = await outbound(inbox, provider_message_id)

    report = await deliver(http, batch)

    assert report["statuses_applied"] == 2  # sent is the status the message was stored with
    assert (await message_state(inbox, message["id"]))["status"] == "READ"


async def test_a_failure_reported_after_read_still_wins(
    inbox: GraphQLClient, http: httpx.AsyncClient
) -> None:
    # A failure replaces any status short of played (db/statements.py `_replaces`).
    message = await outbound(inbox, "wamid.out-1")
    await deliver_status(http, "wamid.out-1", "read")
    report = await deliver_status(
        http, "wamid.out-1", "failed", errors=[{"code": 131026, "title": "Message undeliverable"}]
    )

    assert report["statuses_applied"] == 1
    state = await message_state(inbox, message["id"])
    assert state["status"] == "FAILED"
    assert state["deliveryError"] == {"code": 131026, "title": "Message undeliverable"}


async def test_delivered_or_read_after_a_failure_overrides_it(
    inbox: GraphQLClient, http: httpx.AsyncClient
) -> None:
    """WhatsApp reports failed, then delivered or read, when a retry of its own succeeded
    (issue 16): the later status wins and the error goes with the failure."""
    message = await outbound(inbox, FAILED_SAMPLE_ID)
    await deliver(http, sample("status_failed"))
    report = await deliver_status(http, FAILED_SAMPLE_ID, "delivered", timestamp=T0 + 500)

    assert report["statuses_applied"] == 1
    state = await message_state(inbox, message["id"])
    assert state["status"] == "DELIVERED"
    assert state["deliveryError"] is None
    # The failure redelivered afterwards is older than the delivery: it changes nothing.
    again = await deliver(http, sample("status_failed"))
    assert again["statuses_stale"] == 1
    assert (await message_state(inbox, message["id"]))["status"] == "DELIVERED"


async def test_a_voice_message_played_after_read_is_played_and_nothing_moves_it_back(
    inbox: GraphQLClient, http: httpx.AsyncClient
) -> None:
    message = await outbound(inbox, "wamid.voice")
    await deliver_status(http, "wamid.voice", "read", timestamp=T0 + 100)
    played = await deliver_status(http, "wamid.voice", "played", timestamp=T0 + 200)
    late_read = await deliver_status(http, "wamid.voice", "read", timestamp=T0 + 300)
    late_failure = await deliver_status(http, "wamid.voice", "failed", timestamp=T0 + 400)

    assert played["statuses_applied"] == 1
    assert late_read["statuses_stale"] == late_failure["statuses_stale"] == 1
    assert (await message_state(inbox, message["id"]))["status"] == "PLAYED"


async def test_played_before_its_message_is_kept_and_applied(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await deliver_status(http, "wamid.early-voice", "played", timestamp=T0 + 200)
    await deliver_status(http, "wamid.early-voice", "delivered", timestamp=T0 + 100)
    assert await db.fetchval("SELECT status FROM whatsapp_pending_status") == "played"
    message = await outbound(inbox, "wamid.early-voice")
    assert message["status"] == "PLAYED"


async def test_a_duplicate_status_changes_nothing(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await outbound(inbox, "wamid.out-1")
    first = await deliver_status(http, "wamid.out-1", "delivered", timestamp=T0 + 100)
    row_before = await message_row(db, "wamid.out-1")
    again = await deliver_status(http, "wamid.out-1", "delivered", timestamp=T0 + 100)
    later_copy = await deliver_status(http, "wamid.out-1", "delivered", timestamp=T0 + 900)

    assert first["statuses_applied"] == 1
    assert again["statuses_stale"] == later_copy["statuses_stale"] == 1
    assert row_before["status"] == "delivered"
    assert await message_row(db, "wamid.out-1") == row_before


async def test_status_of_an_unknown_message_is_applied_when_the_message_is_recorded(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    delivered = await deliver_status(http, "wamid.early", "delivered", timestamp=T0 + 200)
    sent = await deliver_status(http, "wamid.early", "sent", timestamp=T0 + 100)
    assert delivered["statuses_pending"] == sent["statuses_pending"] == 1
    kept = await db.fetch(
        "SELECT business_id, status FROM whatsapp_pending_status "
        "WHERE provider_message_id = 'wamid.early'"
    )
    assert [dict(row) for row in kept] == [{"business_id": 1, "status": "delivered"}]

    message = await outbound(inbox, "wamid.early")

    assert message["status"] == "DELIVERED"
    assert (await message_state(inbox, message["id"]))["status"] == "DELIVERED"
    assert await db.fetchval("SELECT count(*) FROM whatsapp_pending_status") == 0


async def test_failure_reported_before_its_message_is_applied_with_its_error(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    report = await deliver(http, sample("status_failed"))
    assert report["statuses_pending"] == 1

    message = await outbound(inbox, FAILED_SAMPLE_ID)

    assert message["status"] == "FAILED"
    state = await message_state(inbox, message["id"])
    assert state["deliveryError"] == {"code": 131047, "title": "Re-engagement message"}
    assert await db.fetchval("SELECT count(*) FROM whatsapp_pending_status") == 0


async def test_status_racing_its_message_is_never_lost(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    for attempt in range(20):
        provider_message_id = f"wamid.race-{attempt}"
        _, message = await asyncio.gather(
            deliver_status(http, provider_message_id, "delivered"),
            outbound(inbox, provider_message_id),
        )
        state = await message_state(inbox, message["id"])
        assert state["status"] == "DELIVERED", f"attempt {attempt}: the status was lost"
    assert await db.fetchval("SELECT count(*) FROM whatsapp_pending_status") == 0


async def test_status_for_an_inbound_message_changes_nothing(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await deliver_messages(http, text_message("wamid.inbound"))
    row_before = await message_row(db, "wamid.inbound")

    report = await deliver_status(http, "wamid.inbound", "read")

    assert report["statuses_applied"] == 0
    assert row_before["status"] == "received"
    assert await message_row(db, "wamid.inbound") == row_before
    assert await db.fetchval("SELECT count(*) FROM whatsapp_pending_status") == 0


async def test_status_on_one_business_number_leaves_another_business_message_alone(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    second = inbox.as_business(2)
    message = await outbound(second, "wamid.shared-id")

    report = await deliver_status(http, "wamid.shared-id", "read")

    assert report["statuses_applied"] == 0
    state = await message_state(second, message["id"])
    assert state["status"] == "SENT"
    kept_for = await db.fetch(
        "SELECT business_id FROM whatsapp_pending_status WHERE provider_message_id = $1",
        "wamid.shared-id",
    )
    assert [row["business_id"] for row in kept_for] == [1]
