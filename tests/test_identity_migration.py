"""Migration 0005 heals the threads the old threading split (issue 11).

Before 0005 a lead's phone named only its own `phone:` thread, so every phone-only message
(webhooks carry no lead id) opened a second thread beside the lead's. The migration makes the
phone of each lead thread an alias of it and merges the split `phone:` thread in, with the
same function the application merges with: messages in order, read stays read, unread stays
unread, counters exact. A phone on two leads' threads is left alone (a CRM question).
"""

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
from alembic import command

from gql.settings import Settings
from tests.conftest import ingest
from tests.test_unread_counters import (
    alembic_config,
    assert_counters_equal_the_definition,
    running_app,
)

THREAD = """
query Thread($id: ID, $phone: String, $leadId: ID) {
  thread(id: $id, phone: $phone, leadId: $leadId) {
    id canonicalKey leadId unreadCount phones
    messages(first: 100) { edges { node { body } } }
  }
}
"""
START = datetime(2025, 3, 1, tzinfo=UTC)

# Counters as migration 0004 keeps them, for rows this test writes by hand.
RECOUNT = (
    """
    UPDATE whatsapp_conversation c SET unread_count = (
        SELECT count(*) FROM whatsapp_message m
        WHERE m.conversation_id = c.id AND m.direction = 'in' AND NOT m.historical
          AND m.status <> 'deleted' AND m.seq > c.read_seq)
    """,
    """
    INSERT INTO whatsapp_business_unread (business_id, shard, unread)
    SELECT business_id, (id % 16)::smallint, sum(unread_count)
    FROM whatsapp_conversation GROUP BY business_id, (id % 16)
    ON CONFLICT (business_id, shard) DO UPDATE SET unread = EXCLUDED.unread
    """,
)


async def store_thread(
    db: asyncpg.Connection,
    key: str,
    phone: str,
    lead_id: str | None,
    bodies: list[tuple[str, int]],
    read_seq: int,
) -> int:
    """A thread as revision 0004 stored it, with (body, hour) messages, all inbound."""
    conversation_id: int = await db.fetchval(
        """
        INSERT INTO whatsapp_conversation (business_id, canonical_key, phone_e164, lead_id,
            started_at, last_message_at, last_read_at, message_seq, read_seq)
        VALUES (1, $1, $2, $3, $4, $5, $6, $7, $8) RETURNING id
        """,
        key,
        phone,
        lead_id,
        START,
        START + timedelta(hours=max(hour for _, hour in bodies)),
        START if read_seq else None,
        len(bodies),
        read_seq,
    )
    for seq, (body, hour) in enumerate(bodies, start=1):
        await db.execute(
            """
            INSERT INTO whatsapp_message (business_id, conversation_id, seq, direction, source,
                status, body, sent_at, created_at)
            VALUES (1, $1, $2, 'in', 'customer', 'received', $3, $4, now())
            """,
            conversation_id,
            seq,
            body,
            START + timedelta(hours=hour),
        )
    return conversation_id


async def test_migration_merges_split_phone_threads_into_their_lead_and_links_lead_phones(
    settings: Settings, db: asyncpg.Connection
) -> None:
    assert settings.database_url is not None
    config = alembic_config(settings.database_url)
    # alembic's env.py runs its own event loop: from a thread, not from this test's loop.
    await asyncio.to_thread(command.downgrade, config, "0004")
    # The split: the lead's thread (one read, one unread) and the phone-only thread beside it
    # (one read, two unread), interleaved in time.
    lead_thread = await store_thread(
        db, "lead:1:77", "+14155550001", "77", [("lead 1", 1), ("lead 2", 4)], read_seq=1
    )
    phone_thread = await store_thread(
        db,
        "phone:1:+14155550001",
        "+14155550001",
        None,
        [("phone 1", 2), ("phone 2", 3), ("phone 3", 5)],
        read_seq=1,
    )
    # A lead whose phone never wrote alone: the phone becomes its alias.
    linked_only = await store_thread(
        db, "lead:1:88", "+14155550002", "88", [("other lead", 1)], read_seq=0
    )
    # One phone on two leads' threads: neither is chosen for it.
    first_of_two = await store_thread(
        db, "lead:1:91", "+14155550003", "91", [("91", 1)], read_seq=0
    )
    second_of_two = await store_thread(
        db, "lead:1:92", "+14155550003", "92", [("92", 2)], read_seq=0
    )
    for statement in RECOUNT:
        await db.execute(statement)

    await asyncio.to_thread(command.upgrade, config, "head")

    remaining = {
        row["id"]
        for row in await db.fetch("SELECT id FROM whatsapp_conversation WHERE business_id = 1")
    }
    assert remaining == {lead_thread, linked_only, first_of_two, second_of_two}
    async with running_app(settings) as client:
        await assert_counters_equal_the_definition(client, db, 1)
        by_phone = (await client.execute(THREAD, {"phone": "+1 415 555 0001"}))["thread"]
        by_lead = (await client.execute(THREAD, {"leadId": "77"}))["thread"]
        by_old_id = (await client.execute(THREAD, {"id": str(phone_thread)}))["thread"]
        assert by_phone == by_lead == by_old_id
        assert by_lead["id"] == str(lead_thread)
        assert by_lead["phones"] == ["+14155550001"]
        assert [edge["node"]["body"] for edge in by_lead["messages"]["edges"]] == [
            "lead 1",
            "phone 1",
            "phone 2",
            "lead 2",
            "phone 3",
        ]
        # Read stays read (lead 1, phone 1), unread stays unread.
        assert by_lead["unreadCount"] == 3
        linked = (await client.execute(THREAD, {"phone": "+14155550002"}))["thread"]
        assert linked["id"] == str(linked_only)

        # From now on the lead's phone alone lands in the lead's thread.
        later = await ingest(client, phone="+14155550001", body="after the migration")
        assert later["thread"]["id"] == str(lead_thread)
        assert later["thread"]["unreadCount"] == 4
        # A second phone of the lead: both name its thread, the latest one first.
        second = await ingest(client, phone="+14155550005", leadId="77", body="new phone")
        assert second["thread"]["id"] == str(lead_thread)
        phones = (await client.execute(THREAD, {"phone": "+14155550001"}))["thread"]["phones"]
        assert phones == ["+14155550005", "+14155550001"]
        await assert_counters_equal_the_definition(client, db, 1)
    ambiguous = await db.fetchval(
        "SELECT count(*) FROM whatsapp_conversation_alias WHERE alias_key = $1",
        "phone:1:+14155550003",
    )
    assert ambiguous == 0
