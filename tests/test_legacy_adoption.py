"""`make migrate` adopts the legacy system's database in place (issue 13).

A generator writes the legacy tables as the seed left them (serial ids, naive UTC timestamps,
no unique keys): customers with several conversations under differently spelled phone keys,
webhooks stored twice, read and never-read conversations, missing sources, an unparseable
phone, a lead whose phone also wrote alone. The seed's own unread query is run on it; after
`upgrade_to_head` every message the seed counted unread is unread and no other, each stored
message is one, each customer has one thread, the counters equal the rule, nothing is lost, a
second run changes nothing, and the app works on the adopted data.
"""

import asyncio
import json
import logging
import random
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from db.migrations import upgrade_to_head
from gql.settings import Settings
from tests.conftest import (
    AUTH_SECRET,
    PROJECT_ROOT,
    WHATSAPP_APP_SECRET,
    WHATSAPP_VERIFY_TOKEN,
    admin_execute,
    asyncpg_dsn,
    ingest,
    with_database,
)
from tests.test_unread import badge, mark_read
from tests.test_unread_counters import assert_counters_equal_the_definition, running_app

# The legacy schema as issue 13 describes it, with columns of its own that must survive.
LEGACY_SCHEMA = (
    """
    CREATE TABLE whatsapp_conversation (
        id serial PRIMARY KEY,
        business_id int NOT NULL,
        canonical_key text NOT NULL,
        phone_e164 text,
        lead_id text,
        status text NOT NULL DEFAULT 'open',
        started_at timestamp NOT NULL,
        last_message_at timestamp,
        last_read_at timestamp,
        crm_owner text
    )
    """,
    """
    CREATE TABLE whatsapp_message (
        id serial PRIMARY KEY,
        business_id int NOT NULL,
        conversation_id int NOT NULL REFERENCES whatsapp_conversation (id),
        direction text NOT NULL,
        source varchar(16),
        status text NOT NULL,
        body text,
        provider_message_id varchar(128),
        created_at timestamp NOT NULL,
        message_type text NOT NULL DEFAULT 'text',
        crm_tag text
    )
    """,
)

# The seed's unread badge (issue 13): per conversation,
#   COUNT(*) FILTER (WHERE direction = 'in' AND (last_read_at IS NULL AND created_at >= started_at
#                                                OR created_at > last_read_at))
# written here per message, so each message the seed counted can be followed.
SEED_UNREAD_MESSAGES_SQL = """
SELECT m.id
FROM whatsapp_message m
JOIN whatsapp_conversation c ON c.id = m.conversation_id
WHERE m.direction = 'in'
  AND (c.last_read_at IS NULL AND m.created_at >= c.started_at OR m.created_at > c.last_read_at)
"""
SEED_BADGE_SQL = """
SELECT c.business_id, sum(counted.unread)::bigint AS unread
FROM whatsapp_conversation c
JOIN LATERAL (
    SELECT COUNT(*) FILTER (
        WHERE m.direction = 'in'
          AND (c.last_read_at IS NULL AND m.created_at >= c.started_at
               OR m.created_at > c.last_read_at)
    ) AS unread
    FROM whatsapp_message m WHERE m.conversation_id = c.id
) counted ON true
GROUP BY c.business_id
"""
# Our rule (db/tables.py, tests/test_unread.py).
UNREAD_MESSAGES_SQL = """
SELECT m.id
FROM whatsapp_message m
JOIN whatsapp_conversation c ON c.id = m.conversation_id
WHERE m.direction = 'in' AND NOT m.historical AND m.status <> 'deleted'
  AND m.message_type <> 'system' AND m.seq > c.read_seq
"""
BADGE_SQL = """
SELECT business_id, sum(unread)::bigint AS unread FROM whatsapp_business_unread GROUP BY 1
"""

THREAD = "query Thread($id: ID, $phone: String) { thread(id: $id, phone: $phone) { id } }"

START = datetime(2025, 6, 1)
BUSINESSES = (1, 2)
UNPARSEABLE = "call me maybe"


def spellings_of(national: str) -> list[str]:
    """Ways the seed wrote one US number ("4155550123") into keys and phone columns."""
    area, exchange, line = national[:3], national[3:6], national[6:]
    return [
        f"+1{national}",
        f"1{national}",
        f"+1 {area}-{exchange}-{line}",
        f"({area}) {exchange}-{line}",
        f"{area}.{exchange}.{line}",
    ]


@dataclass
class LegacyData:
    """What the generator wrote, and what the seed's queries said about it."""

    customer_of_conversation: dict[int, str] = field(default_factory=dict)
    phone_of_customer: dict[str, str] = field(default_factory=dict)
    business_of_customer: dict[str, int] = field(default_factory=dict)
    messages: dict[int, dict[str, Any]] = field(default_factory=dict)
    last_message_at: dict[int, datetime] = field(default_factory=dict)
    seed_unread: set[int] = field(default_factory=set)
    seed_badge: dict[int, int] = field(default_factory=dict)


async def write_legacy_database(db: asyncpg.Connection, seed: int) -> LegacyData:
    """Customers, their (duplicate) conversations and messages, as the seed stored them."""
    choices = random.Random(seed)
    data = LegacyData()
    provider_ids = iter(range(1, 1_000_000))
    for business_id in BUSINESSES:
        for n in range(12):
            national = f"41555{business_id}{n:04d}"
            customer = f"{business_id}:{national}"
            data.phone_of_customer[customer] = f"+1{national}"
            data.business_of_customer[customer] = business_id
            spellings = choices.sample(spellings_of(national), k=3)
            conversations = []
            for copy in range(1 if n % 3 == 0 else choices.randint(2, 3)):
                conversations.append(
                    await write_conversation(db, choices, business_id, spellings[copy])
                )
            for conversation_id in conversations:
                data.customer_of_conversation[conversation_id] = customer
            for conversation_id in conversations:
                await write_messages(db, choices, business_id, conversation_id, provider_ids)
        # A phone the seed could not have normalized either: kept, reported.
        garbage = await write_conversation(db, choices, business_id, UNPARSEABLE)
        data.customer_of_conversation[garbage] = f"{business_id}:garbage"
        data.business_of_customer[f"{business_id}:garbage"] = business_id
        await write_messages(db, choices, business_id, garbage, provider_ids)
    # A lead whose phone also wrote alone, twice (a duplicate of the phone conversation): one
    # thread after adoption (duplicates, then migration 0005's lead healing), old ids lead there.
    lead = await write_conversation(db, choices, 1, "+14155559999", key="lead:1:L-7", lead_id="L-7")
    phone_first = await write_conversation(db, choices, 1, "4155559999")
    phone_second = await write_conversation(db, choices, 1, "+1 (415) 555-9999")
    for conversation_id in (lead, phone_first, phone_second):
        data.customer_of_conversation[conversation_id] = "lead:L-7"
        await write_messages(db, choices, 1, conversation_id, provider_ids)
    data.phone_of_customer["lead:L-7"] = "+14155559999"
    data.business_of_customer["lead:L-7"] = 1

    for row in await db.fetch("SELECT * FROM whatsapp_message"):
        data.messages[row["id"]] = dict(row)
    data.last_message_at = {
        row["id"]: row["last_message_at"] or datetime.min
        for row in await db.fetch("SELECT id, last_message_at FROM whatsapp_conversation")
    }
    data.seed_unread = {row["id"] for row in await db.fetch(SEED_UNREAD_MESSAGES_SQL)}
    data.seed_badge = {row["business_id"]: row["unread"] for row in await db.fetch(SEED_BADGE_SQL)}
    return data


async def write_conversation(
    db: asyncpg.Connection,
    choices: random.Random,
    business_id: int,
    phone: str,
    *,
    key: str | None = None,
    lead_id: str | None = None,
) -> int:
    started_at = START + timedelta(hours=choices.randint(0, 48))
    read = choices.random() < 0.5
    conversation_id: int = await db.fetchval(
        """
        INSERT INTO whatsapp_conversation (business_id, canonical_key, phone_e164, lead_id,
            status, started_at, last_message_at, last_read_at, crm_owner)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id
        """,
        business_id,
        key or f"phone:{business_id}:{phone}",
        phone,
        lead_id,
        choices.choice(["open", "closed"]),
        started_at,
        # The seed left it empty now and then.
        None if choices.random() < 0.2 else started_at + timedelta(hours=choices.randint(1, 99)),
        started_at + timedelta(hours=choices.randint(-10, 60)) if read else None,
        f"owner-{choices.randint(1, 5)}",
    )
    return conversation_id


async def write_messages(
    db: asyncpg.Connection,
    choices: random.Random,
    business_id: int,
    conversation_id: int,
    provider_ids: Any,
) -> None:
    started_at = await db.fetchval(
        "SELECT started_at FROM whatsapp_conversation WHERE id = $1", conversation_id
    )
    for _ in range(choices.randint(0, 9)):
        inbound = choices.random() < 0.7
        # Some before the conversation's start (imported history), most after.
        created_at = started_at + timedelta(
            hours=choices.randint(-20, 80), seconds=choices.random()
        )
        provider_id = f"wamid.{business_id}.{next(provider_ids)}"
        copies = 2 if choices.random() < 0.15 else 1
        for copy in range(copies):
            # A redelivered webhook: stored again later, maybe in the customer's other row.
            await db.execute(
                """
                INSERT INTO whatsapp_message (business_id, conversation_id, direction, source,
                    status, body, provider_message_id, created_at, crm_tag)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                """,
                business_id,
                conversation_id,
                "in" if inbound else "out",
                None
                if choices.random() < 0.3
                else ("customer" if inbound else choices.choice(["bot", "automation", "human"])),
                "received" if inbound else choices.choice(["sent", "delivered", "read"]),
                f"body of {provider_id}",
                None if choices.random() < 0.1 else provider_id,
                created_at + timedelta(minutes=5 * copy),
                f"tag-{copy}",
            )


@pytest.fixture
async def legacy_database(postgres_url: str) -> AsyncIterator[str]:
    """A database holding only the legacy tables (no alembic_version)."""
    name = f"wa_inbox_legacy_{uuid.uuid4().hex[:12]}"
    await admin_execute(postgres_url, f'CREATE DATABASE "{name}"')
    url = with_database(postgres_url, name)
    await admin_execute(url, *LEGACY_SCHEMA)
    yield url
    await admin_execute(postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def legacy_db(legacy_database: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(asyncpg_dsn(legacy_database))
    try:
        yield connection
    finally:
        await connection.close()


def settings_for(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        auth_secret=AUTH_SECRET,
        default_region="US",
        whatsapp_app_secret=WHATSAPP_APP_SECRET,
        whatsapp_verify_token=WHATSAPP_VERIFY_TOKEN,
    )


async def snapshot(db: asyncpg.Connection) -> dict[str, list[asyncpg.Record]]:
    tables = (
        "whatsapp_conversation",
        "whatsapp_message",
        "whatsapp_conversation_alias",
        "whatsapp_thread_merge",
        "whatsapp_business_unread",
        "alembic_version",
    )
    return {table: await db.fetch(f"SELECT * FROM {table} t ORDER BY t::text") for table in tables}


@pytest.mark.parametrize("seed", [13, 2026])
async def test_adopting_a_legacy_database_keeps_every_message_and_what_the_seed_counted_unread(
    legacy_database: str,
    legacy_db: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
    seed: int,
) -> None:
    data = await write_legacy_database(legacy_db, seed)
    # The earliest copy of each provider message id is the message.
    kept: dict[tuple[int, str], int] = {}
    for message_id, message in sorted(
        data.messages.items(), key=lambda item: (item[1]["created_at"], item[0])
    ):
        if message["provider_message_id"] is not None:
            kept.setdefault((message["business_id"], message["provider_message_id"]), message_id)
    expected_ids = {
        message_id
        for message_id, message in data.messages.items()
        if message["provider_message_id"] is None
        or kept[(message["business_id"], message["provider_message_id"])] == message_id
    }
    assert len(expected_ids) < len(data.messages), "the generator wrote no duplicate messages"
    assert data.seed_unread - expected_ids, "no unread duplicate: the badge test proves less"

    with caplog.at_level(logging.INFO, logger="wa_inbox.legacy_adoption"):
        await asyncio.to_thread(upgrade_to_head, legacy_database)

    # Nothing lost, a message stored twice is one, its legacy columns kept.
    after = {row["id"]: row for row in await legacy_db.fetch("SELECT * FROM whatsapp_message")}
    assert set(after) == expected_ids
    for message_id, row in after.items():
        before = data.messages[message_id]
        assert row["body"] == before["body"]
        assert row["crm_tag"] == before["crm_tag"]
        assert row["legacy_message_type"] == before["message_type"]
        assert row["created_at"].replace(tzinfo=None) == before["created_at"]
        assert row["source"] == (
            before["source"] or ("customer" if before["direction"] == "in" else "human")
        )

    # Unread exactly where the seed counted it, in the message's own conversation row.
    unread = {row["id"] for row in await legacy_db.fetch(UNREAD_MESSAGES_SQL)}
    assert unread == data.seed_unread & expected_ids
    # The badge: the seed's sum, less the second copies it counted twice.
    badge_after = {row["business_id"]: row["unread"] for row in await legacy_db.fetch(BADGE_SQL)}
    for business_id in BUSINESSES:
        counted_twice = {
            message_id
            for message_id in data.seed_unread - expected_ids
            if data.messages[message_id]["business_id"] == business_id
        }
        assert badge_after.get(business_id, 0) == data.seed_badge[business_id] - len(counted_twice)

    # Each customer's messages in one thread of their own.
    thread_of_customer: dict[str, int] = {}
    for message_id, row in after.items():
        customer = data.customer_of_conversation[data.messages[message_id]["conversation_id"]]
        assert (
            thread_of_customer.setdefault(customer, row["conversation_id"])
            == (row["conversation_id"])
        ), f"customer {customer} has messages in two threads"
    assert len(set(thread_of_customer.values())) == len(thread_of_customer)
    # The most recent conversation survived (latest last_message_at, then highest id).
    for customer, thread_id in thread_of_customer.items():
        rows = [c for c, owner in data.customer_of_conversation.items() if owner == customer]
        if customer != "lead:L-7":
            assert thread_id == max(rows, key=lambda c: (data.last_message_at[c], c))
    threads = await legacy_db.fetch("SELECT * FROM whatsapp_conversation")
    assert len(threads) == len(set(data.customer_of_conversation.values()))
    # Phones in E.164 in keys and columns; the unparseable one kept and reported.
    for thread in threads:
        if thread["lead_id"] is None and thread["legacy_phone_e164"] != UNPARSEABLE:
            assert (
                thread["canonical_key"] == f"phone:{thread['business_id']}:{thread['phone_e164']}"
            )
            assert thread["phone_e164"].startswith("+1")
        assert thread["crm_owner"] is not None
    summary = "\n".join(
        r.getMessage() for r in caplog.records if "[WA-LEGACY-ADOPTION]" in r.message
    )
    assert repr(UNPARSEABLE) in summary
    assert f"{len(data.messages) - len(expected_ids)} duplicate messages removed" in summary

    # A second run changes nothing.
    before_second_run = await snapshot(legacy_db)
    await asyncio.to_thread(upgrade_to_head, legacy_database)
    assert await snapshot(legacy_db) == before_second_run

    # The app works on the adopted data: counters equal the rule, old ids lead to the survivor.
    async with running_app(settings_for(legacy_database)) as client:
        for business_id in BUSINESSES:
            await assert_counters_equal_the_definition(client, legacy_db, business_id)
        for removed in set(data.customer_of_conversation) - {t["id"] for t in threads}:
            customer = data.customer_of_conversation[removed]
            business = client.as_business(data.business_of_customer[customer])
            found = (await business.execute(THREAD, {"id": str(removed)}))["thread"]
            assert found == {"id": str(thread_of_customer[customer])}
        customer = "1:4155510001"
        spelled = "(415) 551-0001"
        stored = await ingest(client, phone=spelled, body="after adoption")
        assert stored["thread"]["id"] == str(thread_of_customer[customer])
        # markRead by the id of the lead customer's last phone conversation (gone: into its
        # duplicate and on, or straight into the lead's thread by 0005) reads the lead's thread.
        lead_rows = sorted(
            c for c, owner in data.customer_of_conversation.items() if owner == "lead:L-7"
        )
        result = await mark_read(client, threadId=str(lead_rows[-1]))
        assert result["thread"]["id"] == str(thread_of_customer["lead:L-7"]) == str(lead_rows[0])
        assert result["thread"]["unreadCount"] == 0
        assert await badge(client) == result["totalUnread"]
        await assert_counters_equal_the_definition(client, legacy_db, 1)


async def test_an_adoption_that_fails_leaves_the_legacy_tables_as_they_were(
    legacy_database: str, legacy_db: asyncpg.Connection
) -> None:
    data = await write_legacy_database(legacy_db, seed=5)
    # A status our schema has no place for: the CHECK fails at the very end of adoption.
    await legacy_db.execute("UPDATE whatsapp_message SET status = 'archived' WHERE id = 1")
    before = {
        table: await legacy_db.fetch(f"SELECT * FROM {table} t ORDER BY t::text")
        for table in ("whatsapp_conversation", "whatsapp_message")
    }

    with pytest.raises(Exception, match="ck_wa_msg_status"):
        await asyncio.to_thread(upgrade_to_head, legacy_database)

    after = {
        table: await legacy_db.fetch(f"SELECT * FROM {table} t ORDER BY t::text")
        for table in ("whatsapp_conversation", "whatsapp_message")
    }
    assert after == before
    assert len(after["whatsapp_message"]) == len(data.messages)
    assert await legacy_db.fetchval("SELECT to_regclass('alembic_version')") is None
    assert await legacy_db.fetchval("SELECT to_regclass('wa_inbox_legacy_merge')") is None


async def test_a_database_of_neither_schema_migrates_as_before(
    postgres_url: str,
) -> None:
    name = f"wa_inbox_empty_{uuid.uuid4().hex[:12]}"
    await admin_execute(postgres_url, f'CREATE DATABASE "{name}"')
    url = with_database(postgres_url, name)
    try:
        await asyncio.to_thread(upgrade_to_head, url)
        connection = await asyncpg.connect(asyncpg_dsn(url))
        try:
            assert await connection.fetchval("SELECT count(*) FROM whatsapp_conversation") == 0
            assert not await connection.fetchval(
                "SELECT to_regclass('wa_inbox_legacy_merge') IS NOT NULL"
            )
        finally:
            await connection.close()
    finally:
        await admin_execute(postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_adoption_benchmark_smoke_run_adopts_its_legacy_database(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.adoption", "--smoke", "--json", str(tmp_path / "a.json")],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads((tmp_path / "a.json").read_text())
    # The generator's redelivered copies are gone, every other message kept.
    assert 0 < figures["messages_after"] < figures["legacy_messages"]


async def test_a_legacy_database_stamped_by_the_old_systems_own_alembic_is_adopted_too(
    legacy_database: str, legacy_db: asyncpg.Connection
) -> None:
    """The seed ran Flask-Migrate: its `alembic_version` names its own revision (144), none of
    ours. Adoption goes ahead and keeps that table aside, instead of alembic refusing."""
    data = await write_legacy_database(legacy_db, seed=11)
    await legacy_db.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
    await legacy_db.execute("INSERT INTO alembic_version VALUES ('144_seed_unique_keys')")

    await asyncio.to_thread(upgrade_to_head, legacy_database)

    assert await legacy_db.fetchval("SELECT version_num FROM legacy_alembic_version") == (
        "144_seed_unique_keys"
    )
    head = await legacy_db.fetchval("SELECT version_num FROM alembic_version")
    assert head is not None
    assert head != "144_seed_unique_keys"
    stored = await legacy_db.fetchval("SELECT count(*) FROM whatsapp_message")
    assert 0 < stored <= len(data.messages)
    # A second run is an ordinary upgrade of our own database.
    await asyncio.to_thread(upgrade_to_head, legacy_database)
    assert await legacy_db.fetchval("SELECT version_num FROM alembic_version") == head


async def test_an_unknown_revision_of_our_own_database_is_still_refused(
    database_url: str, db: asyncpg.Connection
) -> None:
    """Only a legacy database is adopted: ours stamped with a revision this code does not
    know (a newer release, say) stays an error, with nothing renamed."""
    await db.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(Exception, match="9999"):
        await asyncio.to_thread(upgrade_to_head, database_url)
    assert await db.fetchval("SELECT version_num FROM alembic_version") == "9999"
    assert await db.fetchval("SELECT to_regclass('legacy_alembic_version')") is None


async def test_adoption_never_hands_a_removed_or_deleted_id_to_a_new_row(
    legacy_database: str, legacy_db: asyncpg.Connection
) -> None:
    """A removed duplicate's id keeps leading to its survivor, and an id the legacy deleted
    names nothing new: new rows start past every id ever handed out."""
    await legacy_db.execute(
        """
        INSERT INTO whatsapp_conversation (business_id, canonical_key, phone_e164, started_at,
            last_message_at)
        VALUES (1, 'phone:1:+14155550001', '+14155550001', '2026-01-01', '2026-01-05'),
               (1, 'phone:1:+14155550001', '+14155550001', '2026-01-01', '2026-01-02')
        """
    )
    await legacy_db.execute(
        """
        INSERT INTO whatsapp_message (business_id, conversation_id, direction, source, status,
            body, provider_message_id, created_at)
        VALUES (1, 1, 'in', 'customer', 'received', 'a', 'wamid.a', '2026-01-05'),
               (1, 2, 'in', 'customer', 'received', 'b', '', '2026-01-02'),
               (1, 2, 'out', 'bot', 'sent', 'c', '', '2026-01-02 00:01'),
               (1, 1, 'in', 'customer', 'received', 'deleted by the legacy', NULL, '2026-01-05')
        """
    )
    await legacy_db.execute("DELETE FROM whatsapp_message WHERE id = 4")

    await asyncio.to_thread(upgrade_to_head, legacy_database)

    # Two messages without a provider id ('' meant none) are two messages, not duplicates.
    bodies = await legacy_db.fetch(
        "SELECT body, provider_message_id FROM whatsapp_message ORDER BY body"
    )
    assert [(row["body"], row["provider_message_id"]) for row in bodies] == [
        ("a", "wamid.a"),
        ("b", None),
        ("c", None),
    ]
    assert (
        await legacy_db.fetchval(
            "SELECT into_conversation_id FROM whatsapp_thread_merge "
            "WHERE merged_conversation_id = 2"
        )
        == 1
    )
    new_conversation = await legacy_db.fetchval(
        "INSERT INTO whatsapp_conversation (business_id, canonical_key, started_at, "
        "last_message_at) VALUES (1, 'phone:1:+14155550002', now(), now()) RETURNING id"
    )
    assert new_conversation > 2
    new_message = await legacy_db.fetchval(
        "INSERT INTO whatsapp_message (business_id, conversation_id, seq, direction, source, "
        "status, sent_at, created_at) VALUES (1, $1, 1, 'in', 'customer', 'received', now(), "
        "now()) RETURNING id",
        new_conversation,
    )
    assert new_message > 4
