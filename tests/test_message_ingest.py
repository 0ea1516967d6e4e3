"""Storing messages in one statement (issue 15): what one ingest and one delivery cost, and
that batching keeps every rule: order within a thread, dedupe under concurrent redelivery,
the general path for what needs linking, counters equal to their definition."""

import asyncio
import importlib.util
from collections import Counter
from typing import Any

import asyncpg
import httpx
import pytest

from db import advisory_locks, message_ingest
from db.engine import build_engine, build_sessionmaker
from db.tables import UNREAD_SHARDS
from domain.group_commit import GroupCommit
from domain.messages import IncomingMessage
from domain.metrics import InboxMetrics
from domain.models import Direction, Source
from tests.conftest import (
    INGEST,
    PROJECT_ROOT,
    GraphQLClient,
    StatementCounter,
    admin_execute,
    ingest,
)
from tests.test_unread_counters import assert_counters_equal_the_definition
from tests.webhooks import connect_channel, delivery, post_delivery, status, text_message


def test_the_migration_froze_the_constants_the_application_uses() -> None:
    path = PROJECT_ROOT / "alembic" / "versions" / "0007_store_messages_in_one_statement.py"
    spec = importlib.util.spec_from_file_location("migration_0007", path)
    assert spec is not None
    assert spec.loader is not None
    _MIGRATION = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(_MIGRATION)
    assert _MIGRATION.PROVIDER_IDS_LOCK_SPACE == advisory_locks.PROVIDER_IDS
    assert _MIGRATION.CUSTOMER_NAMES_LOCK_SPACE == advisory_locks.CUSTOMER_NAMES
    assert _MIGRATION.UNREAD_SHARDS == UNREAD_SHARDS


def customer(n: int) -> str:
    return f"1650555{n:04d}"


def messages_for(
    customers: int, per_customer: int, *, prefix: str = "wamid.batch"
) -> list[dict[str, Any]]:
    """Messages of several customers interleaved, as a campaign's replies arrive."""
    return [
        text_message(
            f"{prefix}.{c}.{i}",
            sender=customer(c),
            body=f"{c}.{i}",
            timestamp=1_764_000_000 + i * customers + c,
        )
        for i in range(per_customer)
        for c in range(customers)
    ]


async def test_an_ingest_is_one_statement_whether_the_thread_is_new_known_or_a_redelivery(
    client: GraphQLClient, count_statements: StatementCounter
) -> None:
    async def statements_of(**fields: Any) -> int:
        count_statements.statements.clear()
        await ingest(client, **fields)
        return count_statements.count

    new = await statements_of(phone="+14155550100", providerMessageId="wamid.one")
    known = await statements_of(phone="+14155550100", providerMessageId="wamid.two")
    redelivery = await statements_of(phone="+14155550100", providerMessageId="wamid.two")
    without_id = await statements_of(phone="+14155550100", body="no provider id")
    bot_reply = await statements_of(
        phone="+14155550100", direction="OUTBOUND", source="BOT", body="hi"
    )
    assert (new, known, redelivery, without_id, bot_reply) == (1, 1, 1, 1, 1), (
        count_statements.statements
    )


async def test_a_delivery_costs_the_same_statements_with_one_message_or_a_hundred(
    client: GraphQLClient, http: httpx.AsyncClient, count_statements: StatementCounter
) -> None:
    await connect_channel(client)

    async def statements_of(messages: list[dict[str, Any]]) -> int:
        count_statements.statements.clear()
        answer = await post_delivery(http, delivery(messages=messages))
        assert answer.status_code == 200, answer.text
        assert answer.json()["stored"] == len(messages)
        return count_statements.count

    # Customers known first, so both deliveries find settled threads.
    await statements_of(messages_for(20, 1, prefix="wamid.first"))
    one = await statements_of(messages_for(1, 1, prefix="wamid.one"))
    sixty = await statements_of(messages_for(20, 3, prefix="wamid.sixty"))
    new_customers = await statements_of(
        [text_message(f"wamid.new.{n}", sender=customer(100 + n)) for n in range(30)]
    )
    assert one == sixty == new_customers, count_statements.statements
    # Beyond MAX_MESSAGES_PER_STATEMENT (64), one statement more per 64 (the lock table).
    two_hundred = await statements_of(messages_for(20, 10, prefix="wamid.two-hundred"))
    assert two_hundred == one + 3, count_statements.statements


async def test_a_message_that_needs_linking_amid_a_delivery_keeps_the_order_of_every_thread(
    client: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await connect_channel(client)
    known = customer(1)
    await post_delivery(http, delivery(messages=[text_message("wamid.known", sender=known)]))
    messages = [
        text_message("wamid.a1", sender=customer(2), timestamp=1_764_000_001),
        # A user id the known customer's thread has no alias for yet: linking, not one statement.
        text_message("wamid.k1", sender=known, user_id="US.77", timestamp=1_764_000_002),
        text_message("wamid.a2", sender=customer(2), timestamp=1_764_000_003),
        text_message("wamid.k2", sender=known, user_id="US.77", timestamp=1_764_000_004),
        text_message("wamid.a3", sender=customer(2), timestamp=1_764_000_005),
    ]
    answer = await post_delivery(http, delivery(messages=messages))
    assert answer.status_code == 200, answer.text
    assert answer.json()["stored"] == 5
    rows = await db.fetch(
        "SELECT m.provider_message_id, m.seq, c.phone_e164 FROM whatsapp_message m "
        "JOIN whatsapp_conversation c ON c.id = m.conversation_id ORDER BY c.id, m.seq"
    )
    by_thread: dict[str, list[str]] = {}
    for row in rows:
        by_thread.setdefault(row["phone_e164"], []).append(row["provider_message_id"])
    assert by_thread == {
        f"+{known}": ["wamid.known", "wamid.k1", "wamid.k2"],
        f"+{customer(2)}": ["wamid.a1", "wamid.a2", "wamid.a3"],
    }
    aliases = await db.fetch("SELECT alias_key FROM whatsapp_conversation_alias")
    assert [row["alias_key"] for row in aliases] == ["user:1:US.77"]
    await assert_counters_equal_the_definition(client, db, 1)


async def test_a_status_that_came_first_is_applied_when_its_message_arrives_in_a_batch(
    client: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await connect_channel(client)
    await post_delivery(http, delivery(statuses=[status("wamid.out", "delivered")]))
    stored = await ingest(
        client,
        phone=f"+{customer(3)}",
        direction="OUTBOUND",
        source="BOT",
        body="sent before its status",
        providerMessageId="wamid.out",
    )
    assert stored["message"]["status"] == "DELIVERED"
    assert await db.fetchval("SELECT count(*) FROM whatsapp_pending_status") == 0


async def test_five_concurrent_redeliveries_of_a_thousand_messages_store_each_once(
    client: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await connect_channel(client)
    # A redelivery storm after an outage: 1,000 updates of 50 customers, half of them new.
    await post_delivery(http, delivery(messages=messages_for(25, 1, prefix="wamid.before")))
    storm = delivery(messages=messages_for(50, 20))
    answers = await asyncio.gather(*(post_delivery(http, storm) for _ in range(5)))
    assert [answer.status_code for answer in answers] == [200] * 5, [a.text for a in answers]
    assert sum(answer.json()["stored"] for answer in answers) == 1_000
    assert sum(answer.json()["duplicates"] for answer in answers) == 4_000

    copies = Counter(
        row["provider_message_id"]
        for row in await db.fetch(
            "SELECT provider_message_id FROM whatsapp_message "
            "WHERE provider_message_id LIKE 'wamid.batch.%'"
        )
    )
    assert len(copies) == 1_000
    assert set(copies.values()) == {1}
    # Each customer's messages took their seqs in the order they were delivered.
    orders = await db.fetch(
        "SELECT c.phone_e164, array_agg(m.body ORDER BY m.seq) AS bodies "
        "FROM whatsapp_message m JOIN whatsapp_conversation c ON c.id = m.conversation_id "
        "WHERE m.provider_message_id LIKE 'wamid.batch.%' GROUP BY c.phone_e164"
    )
    assert len(orders) == 50
    for row in orders:
        c = int(row["phone_e164"][-4:])
        assert row["bodies"] == [f"{c}.{i}" for i in range(20)]
    assert await db.fetchval("SELECT count(*) FROM whatsapp_conversation") == 50
    defined = await assert_counters_equal_the_definition(client, db, 1)
    assert sum(defined.values()) == 1_025


async def test_deliveries_crossing_the_same_threads_in_opposite_orders_all_store(
    client: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """Each delivery holds its threads' rows until it commits: two taking them in opposite
    orders deadlock, and PostgreSQL's detector rolls one back, which is then repeated."""
    await connect_channel(client)
    await post_delivery(http, delivery(messages=messages_for(10, 1, prefix="wamid.open")))

    def crossing(n: int) -> dict[str, Any]:
        order = range(10) if n % 2 else reversed(range(10))
        return delivery(
            messages=[
                text_message(f"wamid.cross.{n}.{c}", sender=customer(c), timestamp=1_764_001_000)
                for c in order
            ]
        )

    answers = await asyncio.gather(*(post_delivery(http, crossing(n)) for n in range(12)))
    assert [answer.status_code for answer in answers] == [200] * 12, [a.text for a in answers]
    assert sum(answer.json()["stored"] for answer in answers) == 120
    assert await db.fetchval("SELECT count(*) FROM whatsapp_message") == 130
    await assert_counters_equal_the_definition(client, db, 1)


# --- group commit: concurrent ingests of a business share statements ---------------------


async def test_concurrent_ingests_share_statements_and_each_gets_its_own_answer(
    client: GraphQLClient, count_statements: StatementCounter, db: asyncpg.Connection
) -> None:
    await ingest(client, phone="+14155550200", body="opening")
    count_statements.statements.clear()
    answers = await asyncio.gather(
        *(
            ingest(client, phone=f"+1415555{200 + n % 5:04d}", providerMessageId=f"wamid.g.{n}")
            for n in range(40)
        )
    )
    stores = [s for s in count_statements.statements if "wa_inbox_store_messages" in s]
    assert len(stores) < 40, "no two concurrent ingests shared a statement"
    ids = {answer["message"]["id"] for answer in answers}
    assert len(ids) == 40
    assert [answer["message"]["providerMessageId"] for answer in answers] == [
        f"wamid.g.{n}" for n in range(40)
    ]
    assert all(answer["duplicate"] is False for answer in answers)
    await assert_counters_equal_the_definition(client, db, 1)


async def test_a_message_that_breaks_a_constraint_fails_only_its_own_request(
    client: GraphQLClient, database_url: str, db: asyncpg.Connection
) -> None:
    await admin_execute(
        database_url,
        "ALTER TABLE whatsapp_message ADD CONSTRAINT no_poison CHECK (body <> 'poison')",
    )
    bodies = ["poison" if n % 7 == 3 else f"fine {n}" for n in range(30)]
    responses = await asyncio.gather(
        *(
            client.post(
                INGEST,
                {
                    "input": {
                        "phone": f"+1415555{300 + n % 4:04d}",
                        "direction": "INBOUND",
                        "source": "CUSTOMER",
                        "body": body,
                    }
                },
            )
            for n, body in enumerate(bodies)
        )
    )
    failed = [n for n, response in enumerate(responses) if response.json().get("errors")]
    assert failed == [n for n, body in enumerate(bodies) if body == "poison"]
    assert await db.fetchval("SELECT count(*) FROM whatsapp_message") == 30 - len(failed)
    await assert_counters_equal_the_definition(client, db, 1)


async def test_concurrent_deliveries_keep_each_ones_order_in_every_thread(
    client: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await connect_channel(client)

    def ordered(n: int) -> dict[str, Any]:
        return delivery(
            messages=[
                text_message(f"wamid.o.{n}.{i}", sender=customer(n % 3), body=f"{n}.{i}")
                for i in range(8)
            ]
        )

    answers = await asyncio.gather(*(post_delivery(http, ordered(n)) for n in range(15)))
    assert [answer.status_code for answer in answers] == [200] * 15
    rows = await db.fetch("SELECT conversation_id, body FROM whatsapp_message ORDER BY seq")
    for n in range(15):
        mine = [row["body"] for row in rows if row["body"].startswith(f"{n}.")]
        assert mine == [f"{n}.{i}" for i in range(8)]


async def test_a_shared_statement_whose_outcome_is_unknown_is_never_stored_again(
    database_url: str, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection dies after the commit, before the answer: the messages are stored, and
    storing them again (one request at a time) would store the one without a provider id
    twice. Every request of that statement fails instead; their clients retry."""
    real_store = message_ingest.store_messages
    lost: list[int] = []

    async def answer_lost_after_commit(
        statements: Any, business_id: int, messages: Any
    ) -> list[message_ingest.StoredRow]:
        rows = await real_store(statements, business_id, messages)
        if len(messages) > 1 and not lost:
            lost.append(len(messages))
            raise asyncpg.ConnectionDoesNotExistError("connection was closed mid-operation")
        return rows

    monkeypatch.setattr(message_ingest, "store_messages", answer_lost_after_commit)
    engine = build_engine(database_url)
    try:
        group_commit = GroupCommit(build_sessionmaker(engine), InboxMetrics(), max_in_flight=1)

        def message(body: str, provider_id: str | None = None) -> IncomingMessage:
            return IncomingMessage(
                phone="+14155550100",
                direction=Direction.INBOUND,
                source=Source.CUSTOMER,
                body=body,
                provider_message_id=provider_id,
            )

        results = await asyncio.gather(
            group_commit.ingest(1, message("first", "wamid.u.1"), default_region="US"),
            group_commit.ingest(1, message("no provider id"), default_region="US"),
            group_commit.ingest(1, message("third", "wamid.u.3"), default_region="US"),
            return_exceptions=True,
        )
    finally:
        await engine.dispose()
    assert lost == [2]
    assert [type(result).__name__ for result in results] == [
        "IngestOutcome",
        "ConnectionDoesNotExistError",
        "ConnectionDoesNotExistError",
    ]
    bodies = await db.fetch("SELECT body FROM whatsapp_message ORDER BY seq")
    assert [row["body"] for row in bodies] == ["first", "no provider id", "third"]
