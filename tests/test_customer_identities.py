"""One customer, one thread, however they are named (issue 11).

Every name of a customer (a CRM lead id, phones, WhatsApp business-scoped user ids, an earlier
number) resolves to one thread: through the webhook, `ingestMessage`, `linkLead`,
`thread(id|phone|leadId)` and `markRead`, with unread counts equal to the defining SQL. A
message naming a lead re-keys the phone thread in place (`lead:{business}:{lead}`) or merges
the phone's thread into the lead's; a phone already on another lead's thread is CONFLICT and
stores nothing. Merges are announced (`threadMerged`, and badges get the merged-away thread's
final 0). A number change (`system` webhook) makes the new number and user id names of the
same thread.

The random interleavings (a state machine modelling each customer's names) are at the end;
the races are in tests/test_customer_identities_concurrency.py.
"""

import asyncio
import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    initialize,
    invariant,
    precondition,
    rule,
)
from starlette.applications import Starlette

from domain.access import Role
from gql.settings import Settings
from tests.conftest import GraphQLClient, ingest
from tests.live import NEW_MESSAGE, UNREAD_COUNT_CHANGED, GraphQLSocket, serving
from tests.test_tenant_isolation import until_members
from tests.test_unread import (
    MARK_READ,
    error_code,
    mark_read,
    national_spelling,
)
from tests.test_unread_counters import (
    DELETE_MESSAGE,
    SET_THREAD_STATUS,
    MachineInAWorld,
    World,
    assert_counters_equal_the_definition,
    run_machine_in_a_world,
)
from tests.webhooks import connect_channel, delivery, post_delivery, sample, text_message

PHONE = "+14155550001"
OTHER_PHONE = "+14155550002"
THIRD_PHONE = "+14155550003"
# The number change sample: sent from the old number, naming the new number and user ids.
OLD_NUMBER, NEW_NUMBER = "+16505551234", "+12195555358"
OLD_USER_ID, NEW_USER_ID = "US.13491208655302741918", "US.20778135511460392657"
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)

THREAD = """
query Thread($id: ID, $phone: String, $leadId: ID) {
  thread(id: $id, phone: $phone, leadId: $leadId) {
    id canonicalKey phone leadId userId status unreadCount lastReadAt
    messages(first: 100) { edges { node { id body type direction } } }
  }
}
"""

LINK_LEAD = """
mutation LinkLead($threadId: ID, $phone: String, $leadId: ID!) {
  linkLead(threadId: $threadId, phone: $phone, leadId: $leadId) {
    id canonicalKey phone leadId unreadCount
  }
}
"""

THREAD_MERGED = "subscription { threadMerged { fromThreadId intoThreadId } }"

# Everything the customer-name rules write, to show that a refused request wrote nothing.
STORED_NAMES_SQL = {
    "threads": """
        SELECT id, canonical_key, lead_id, phone_e164, message_seq, read_seq, unread_count
        FROM whatsapp_conversation ORDER BY id
    """,
    "aliases": """
        SELECT alias_key, conversation_id FROM whatsapp_conversation_alias ORDER BY alias_key
    """,
    "messages": "SELECT id, conversation_id, seq FROM whatsapp_message ORDER BY id",
    "merges": """
        SELECT merged_conversation_id, into_conversation_id FROM whatsapp_thread_merge
        ORDER BY merged_conversation_id
    """,
    "badge": "SELECT shard, unread FROM whatsapp_business_unread ORDER BY business_id, shard",
}

UNREAD_MESSAGE_IDS_SQL = """
SELECT m.id::text
FROM whatsapp_message m
JOIN whatsapp_conversation c ON c.id = m.conversation_id
WHERE m.business_id = $1
  AND m.direction = 'in' AND NOT m.historical AND m.status <> 'deleted'
  AND m.message_type <> 'system' AND m.seq > c.read_seq
"""

# The thread each name of a business leads to: its canonical key, or an alias.
THREAD_OF_NAME_SQL = """
SELECT coalesce(
    (SELECT id FROM whatsapp_conversation WHERE business_id = $1 AND canonical_key = $2),
    (SELECT conversation_id FROM whatsapp_conversation_alias
     WHERE business_id = $1 AND alias_key = $2))
"""


@pytest.fixture
async def inbox(client: GraphQLClient) -> GraphQLClient:
    """Business 1 with the samples' WhatsApp number connected, so its webhooks are stored."""
    await connect_channel(client)
    return client


_provider_ids = itertools.count(1)


def at(minutes: int) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat()


async def bot_reply(
    client: GraphQLClient, phone: str, lead_id: str | None, body: str = "bot", **fields: Any
) -> dict[str, Any]:
    """A bot's answer through ingestMessage, naming the lead the CRM knows (service token)."""
    lead = {} if lead_id is None else {"leadId": lead_id}
    return await ingest(
        client.as_role(Role.SERVICE),
        phone=phone,
        direction="OUTBOUND",
        source="BOT",
        body=body,
        **lead,
        **fields,
    )


async def from_whatsapp(
    http: httpx.AsyncClient,
    phone: str | None,
    body: str,
    *,
    user_id: str | None = None,
    minutes: int = 0,
) -> str:
    """A customer message through the signed webhook; its provider message id."""
    provider_id = f"wamid.identities.{next(_provider_ids)}"
    message = text_message(
        provider_id,
        sender=None if phone is None else phone.removeprefix("+"),
        user_id=user_id,
        body=body,
        timestamp=int((T0 + timedelta(minutes=minutes)).timestamp()),
    )
    response = await post_delivery(http, delivery(messages=[message]))
    assert response.status_code == 200, response.text
    assert response.json()["stored"] == 1, response.json()
    return provider_id


async def thread_of(client: GraphQLClient, **name: str) -> dict[str, Any] | None:
    """The thread `thread(id|phone|leadId)` answers for one name."""
    found: dict[str, Any] | None = (await client.execute(THREAD, name))["thread"]
    return found


async def thread_id_named(client: GraphQLClient, **name: str) -> str | None:
    found = await thread_of(client, **name)
    return None if found is None else str(found["id"])


async def thread_of_provider_id(db: asyncpg.Connection, provider_id: str) -> str:
    conversation_id = await db.fetchval(
        "SELECT conversation_id FROM whatsapp_message WHERE provider_message_id = $1", provider_id
    )
    assert conversation_id is not None, f"{provider_id} was not stored"
    return str(conversation_id)


def bodies(thread: dict[str, Any]) -> list[str]:
    return [edge["node"]["body"] for edge in thread["messages"]["edges"]]


async def stored_names(db: asyncpg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {
        name: [tuple(row) for row in await db.fetch(sql)] for name, sql in STORED_NAMES_SQL.items()
    }


async def thread_count(db: asyncpg.Connection) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM whatsapp_conversation")
    return count


async def unread_message_ids(db: asyncpg.Connection) -> set[str]:
    return {row[0] for row in await db.fetch(UNREAD_MESSAGE_IDS_SQL, 1)}


async def thread_of_name_sql(db: asyncpg.Connection, name: str) -> str | None:
    """The thread a stored name (canonical key or alias) leads to."""
    found = await db.fetchval(THREAD_OF_NAME_SQL, 1, name)
    return None if found is None else str(found)


async def link_lead(client: GraphQLClient, **arguments: str) -> dict[str, Any]:
    linked: dict[str, Any] = (await client.execute(LINK_LEAD, arguments))["linkLead"]
    return linked


# --- leads: the first message naming phone and lead links them ---------------------------------


async def test_bot_reply_with_a_lead_keeps_the_customer_in_the_thread_they_opened(
    client: GraphQLClient, db: asyncpg.Connection
) -> None:
    """The issue's first example: inbound by phone, the bot's answer with phone and lead,
    inbound by phone again. One thread, the first one, keyed by the lead from the answer on."""
    first = await ingest(client, phone=PHONE, body="hi", sentAt=at(0))
    thread_id = first["thread"]["id"]
    assert first["thread"]["canonicalKey"] == f"phone:1:{PHONE}"
    await mark_read(client, threadId=thread_id)
    read = await thread_of(client, id=thread_id)
    assert read is not None

    answer = await bot_reply(client, PHONE, "77", body="hello from the bot", sentAt=at(1))
    again = await ingest(client, phone=PHONE, body="thanks", sentAt=at(2))

    assert answer["thread"]["id"] == again["thread"]["id"] == thread_id
    assert answer["thread"]["canonicalKey"] == "lead:1:77"
    assert answer["thread"]["leadId"] == "77"
    assert await thread_count(db) == 1
    found = await thread_of(client, id=thread_id)
    assert found is not None
    assert found["canonicalKey"] == "lead:1:77"
    assert bodies(found) == ["hi", "hello from the bot", "thanks"]
    # Re-keyed in place: the read point stayed, only the new message is unread.
    assert found["lastReadAt"] == read["lastReadAt"]
    assert found["unreadCount"] == 1
    assert await thread_id_named(client, phone=national_spelling(PHONE)) == thread_id
    assert await thread_id_named(client, leadId="77") == thread_id
    await assert_counters_equal_the_definition(client, db, 1)


async def test_a_webhook_after_the_lead_is_linked_lands_in_the_lead_thread(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await from_whatsapp(http, PHONE, "from whatsapp")
    answer = await bot_reply(inbox, PHONE, "77")
    later = await from_whatsapp(http, PHONE, "again from whatsapp", minutes=5)
    assert await thread_of_provider_id(db, later) == answer["thread"]["id"]
    assert await thread_count(db) == 1
    assert (await mark_read(inbox, phone=national_spelling(PHONE)))["thread"]["id"] == answer[
        "thread"
    ]["id"]


async def test_every_phone_of_a_lead_resolves_to_its_thread(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    first = await bot_reply(inbox, PHONE, "77", body="to the first phone")
    second = await bot_reply(inbox, OTHER_PHONE, "77", body="to the second phone")
    from_second = await from_whatsapp(http, OTHER_PHONE, "answer from the second phone")
    thread_id = first["thread"]["id"]

    assert second["thread"]["id"] == thread_id
    assert await thread_of_provider_id(db, from_second) == thread_id
    for phone in (PHONE, OTHER_PHONE):
        assert await thread_id_named(inbox, phone=phone) == thread_id
        assert await thread_id_named(inbox, phone=national_spelling(phone)) == thread_id
    assert await thread_id_named(inbox, leadId="77") == thread_id
    assert await thread_id_named(inbox, phone=THIRD_PHONE) is None
    assert await thread_count(db) == 1
    read = await mark_read(inbox, phone=national_spelling(OTHER_PHONE))
    assert read["thread"]["id"] == thread_id
    assert read["totalUnread"] == 0


async def test_a_lead_naming_a_phone_with_its_own_thread_merges_it_into_the_lead_thread(
    client: GraphQLClient, db: asyncpg.Connection
) -> None:
    """The lead's thread survives; chronological order, read stays read, unread stays unread;
    the merged-away id keeps working for thread, markRead and setThreadStatus."""
    # The lead's thread (first phone): a1 read, a2 unread.
    lead_thread = (await bot_reply(client, PHONE, "77", body="l0", sentAt=at(0)))["thread"]
    a1 = await ingest(client, phone=PHONE, body="a1", sentAt=at(3))
    await mark_read(client, threadId=lead_thread["id"])
    a2 = await ingest(client, phone=PHONE, body="a2", sentAt=at(5))
    # The second phone's own thread: b1 read, b2 and b3 unread.
    b1 = await ingest(client, phone=OTHER_PHONE, body="b1", sentAt=at(1))
    phone_thread_id = b1["thread"]["id"]
    await mark_read(client, threadId=phone_thread_id)
    b2 = await ingest(client, phone=OTHER_PHONE, body="b2", sentAt=at(2))
    b3 = await ingest(client, phone=OTHER_PHONE, body="b3", sentAt=at(4))
    # b2 (unread) was sent before a1 (read): a merge that only sorted by time would swap them.
    unread_before = await unread_message_ids(db)
    assert unread_before == {a2["message"]["id"], b2["message"]["id"], b3["message"]["id"]}

    linking = await bot_reply(client, OTHER_PHONE, "77", body="l1", sentAt=at(6))

    survivor_id = lead_thread["id"]
    assert linking["thread"]["id"] == survivor_id
    assert linking["thread"]["canonicalKey"] == "lead:1:77"
    assert linking["thread"]["unreadCount"] == 3
    assert await unread_message_ids(db) == unread_before
    assert a1["message"]["id"] not in unread_before
    assert await thread_count(db) == 1
    merged = await thread_of(client, id=survivor_id)
    assert merged is not None
    assert bodies(merged) == ["l0", "b1", "b2", "a1", "b3", "a2", "l1"]
    assert await db.fetchval(
        "SELECT into_conversation_id FROM whatsapp_thread_merge WHERE merged_conversation_id = $1",
        int(phone_thread_id),
    ) == int(survivor_id)
    for name in ({"id": phone_thread_id}, {"phone": OTHER_PHONE}, {"leadId": "77"}):
        assert await thread_id_named(client, **name) == survivor_id, name
    await assert_counters_equal_the_definition(client, db, 1)

    # Old links act on the survivor.
    closed = await client.execute(
        SET_THREAD_STATUS, {"threadId": phone_thread_id, "status": "CLOSED"}
    )
    assert closed["setThreadStatus"]["id"] == survivor_id
    assert closed["setThreadStatus"]["status"] == "CLOSED"
    read = await mark_read(client, threadId=phone_thread_id)
    assert read["thread"]["id"] == survivor_id
    assert read["thread"]["unreadCount"] == 0
    assert read["totalUnread"] == 0
    await assert_counters_equal_the_definition(client, db, 1)


async def test_the_lead_thread_survives_a_merge_with_an_older_phone_thread(
    client: GraphQLClient, db: asyncpg.Connection
) -> None:
    older = await ingest(client, phone=OTHER_PHONE, body="older, phone only")
    lead_thread = (await bot_reply(client, PHONE, "77"))["thread"]
    assert int(older["thread"]["id"]) < int(lead_thread["id"])
    linking = await bot_reply(client, OTHER_PHONE, "77")
    assert linking["thread"]["id"] == lead_thread["id"]
    assert await thread_id_named(client, id=older["thread"]["id"]) == lead_thread["id"]
    assert await thread_count(db) == 1


@pytest.mark.parametrize("other_lead_has_a_thread", [False, True])
@pytest.mark.parametrize("direction", ["OUTBOUND", "INBOUND"])
async def test_a_phone_of_another_lead_is_a_conflict_and_nothing_is_stored(
    client: GraphQLClient, db: asyncpg.Connection, other_lead_has_a_thread: bool, direction: str
) -> None:
    await bot_reply(client, PHONE, "77", body="lead 77")
    await ingest(client, phone=PHONE, body="unread")
    if other_lead_has_a_thread:
        await bot_reply(client, OTHER_PHONE, "88", body="lead 88")
    before = await stored_names(db)

    source = {"OUTBOUND": "BOT", "INBOUND": "CUSTOMER"}[direction]
    fields = {"phone": national_spelling(PHONE), "leadId": "88", "body": "refused"}
    refused = await client.errors(
        "mutation ($input: IngestMessageInput!) { ingestMessage(input: $input) { duplicate } }",
        {"input": {**fields, "direction": direction, "source": source}},
    )

    assert refused[0]["extensions"]["code"] == "CONFLICT", refused
    assert await stored_names(db) == before
    assert await thread_id_named(client, phone=PHONE) == await thread_id_named(client, leadId="77")
    if not other_lead_has_a_thread:
        assert await thread_id_named(client, leadId="88") is None
    await assert_counters_equal_the_definition(client, db, 1)


async def test_a_thread_whose_lead_differs_is_a_conflict_for_link_lead_and_changes_nothing(
    client: GraphQLClient, db: asyncpg.Connection
) -> None:
    thread_id = (await bot_reply(client, PHONE, "77"))["thread"]["id"]
    await bot_reply(client, OTHER_PHONE, "88")
    before = await stored_names(db)
    for arguments in (
        {"threadId": thread_id, "leadId": "88"},
        {"phone": PHONE, "leadId": "88"},
        {"threadId": thread_id, "phone": OTHER_PHONE, "leadId": "77"},
    ):
        assert await error_code(client, LINK_LEAD, arguments) == "CONFLICT", arguments
    assert await stored_names(db) == before


async def test_one_lead_id_and_phone_at_two_businesses_are_two_threads_without_conflict(
    client: GraphQLClient, db: asyncpg.Connection
) -> None:
    mine = await bot_reply(client, PHONE, "77")
    theirs = await bot_reply(client.as_business(2), PHONE, "77")
    assert mine["thread"]["id"] != theirs["thread"]["id"]
    assert theirs["thread"]["canonicalKey"] == "lead:2:77"
    assert await thread_id_named(client, leadId="77") == mine["thread"]["id"]
    assert await thread_id_named(client.as_business(2), phone=PHONE) == theirs["thread"]["id"]
    # Another lead for the phone at business 2 is business 2's conflict only.
    assert (
        await error_code(client.as_business(2), LINK_LEAD, {"phone": PHONE, "leadId": "88"})
        == "CONFLICT"
    )
    assert (await link_lead(client, phone=OTHER_PHONE, leadId="77"))["id"] == mine["thread"]["id"]
    assert await thread_id_named(client.as_business(2), phone=OTHER_PHONE) is None


# --- linkLead ----------------------------------------------------------------------------------


@pytest.mark.parametrize("role", [Role.SERVICE, Role.ADMIN])
@pytest.mark.parametrize("named_by", ["threadId", "phone"])
async def test_link_lead_rekeys_the_thread_in_place_and_is_idempotent(
    inbox: GraphQLClient,
    http: httpx.AsyncClient,
    db: asyncpg.Connection,
    role: Role,
    named_by: str,
) -> None:
    opened = await from_whatsapp(http, PHONE, "hi")
    thread_id = await thread_of_provider_id(db, opened)
    await mark_read(inbox, threadId=thread_id)
    await from_whatsapp(http, PHONE, "unread", minutes=1)
    crm = inbox.as_role(role)
    name = (
        {"threadId": thread_id} if named_by == "threadId" else {"phone": national_spelling(PHONE)}
    )

    linked = await link_lead(crm, **name, leadId="77")
    after_first = await stored_names(db)
    again = await link_lead(crm, **name, leadId="77")

    assert linked == again
    assert linked["id"] == thread_id
    assert linked["canonicalKey"] == "lead:1:77"
    assert linked["leadId"] == "77"
    assert linked["unreadCount"] == 1
    assert await stored_names(db) == after_first
    later = await from_whatsapp(http, PHONE, "after the link", minutes=2)
    assert await thread_of_provider_id(db, later) == thread_id
    assert await thread_id_named(inbox, leadId="77") == thread_id
    assert await thread_count(db) == 1
    await assert_counters_equal_the_definition(inbox, db, 1)


async def test_link_lead_with_thread_id_and_a_new_phone_makes_the_phone_a_name_of_it(
    client: GraphQLClient, db: asyncpg.Connection
) -> None:
    thread_id = (await ingest(client, phone=PHONE))["thread"]["id"]
    linked = await link_lead(client, threadId=thread_id, phone=OTHER_PHONE, leadId="77")
    assert linked["id"] == thread_id
    assert await thread_id_named(client, phone=OTHER_PHONE) == thread_id
    assert (await ingest(client, phone=OTHER_PHONE))["thread"]["id"] == thread_id
    assert await thread_count(db) == 1


async def test_link_lead_of_a_new_phone_to_an_existing_lead_thread_adds_the_phone(
    client: GraphQLClient, db: asyncpg.Connection
) -> None:
    lead_thread_id = (await bot_reply(client, PHONE, "77"))["thread"]["id"]
    linked = await link_lead(client, phone=OTHER_PHONE, leadId="77")
    assert linked["id"] == lead_thread_id
    assert await thread_id_named(client, phone=OTHER_PHONE) == lead_thread_id
    assert await thread_count(db) == 1


async def test_link_lead_merges_the_phone_thread_into_the_lead_thread(
    client: GraphQLClient, db: asyncpg.Connection
) -> None:
    lead_thread_id = (await bot_reply(client, PHONE, "77"))["thread"]["id"]
    await ingest(client, phone=PHONE, body="lead unread")
    phone_thread_id = (await ingest(client, phone=OTHER_PHONE, body="phone unread"))["thread"]["id"]
    await ingest(client, phone=OTHER_PHONE, body="phone unread too")

    linked = await link_lead(client, threadId=phone_thread_id, leadId="77")

    assert linked["id"] == lead_thread_id
    assert linked["unreadCount"] == 3
    assert await thread_count(db) == 1
    assert await thread_id_named(client, id=phone_thread_id) == lead_thread_id
    assert await thread_id_named(client, phone=OTHER_PHONE) == lead_thread_id
    # By the merged-away id too: linking it again is the same link.
    assert (await link_lead(client, threadId=phone_thread_id, leadId="77"))["id"] == lead_thread_id
    await assert_counters_equal_the_definition(client, db, 1)


async def test_link_lead_is_forbidden_to_agents_and_changes_nothing(
    client: GraphQLClient, db: asyncpg.Connection
) -> None:
    thread_id = (await ingest(client, phone=PHONE))["thread"]["id"]
    before = await stored_names(db)
    agent = client.as_role(Role.AGENT)
    for name in ({"threadId": thread_id}, {"phone": PHONE}):
        assert await error_code(agent, LINK_LEAD, {**name, "leadId": "77"}) == "FORBIDDEN"
    assert await stored_names(db) == before


@pytest.mark.parametrize(
    ("arguments", "code"),
    [
        ({"phone": THIRD_PHONE, "leadId": "99"}, "NOT_FOUND"),
        ({"threadId": "999999", "leadId": "99"}, "NOT_FOUND"),
        ({"leadId": "77"}, "BAD_USER_INPUT"),
        ({"threadId": None, "phone": None, "leadId": "77"}, "BAD_USER_INPUT"),
        ({"phone": PHONE, "leadId": "   "}, "BAD_USER_INPUT"),
        ({"phone": "not a phone", "leadId": "77"}, "BAD_USER_INPUT"),
    ],
    ids=[
        "unknown-phone",
        "unknown-thread",
        "no-customer",
        "null-customer",
        "blank-lead",
        "bad-phone",
    ],
)
async def test_link_lead_refuses_what_names_no_customer(
    client: GraphQLClient, db: asyncpg.Connection, arguments: dict[str, Any], code: str
) -> None:
    await ingest(client, phone=PHONE)
    before = await stored_names(db)
    assert await error_code(client, LINK_LEAD, arguments) == code
    assert await stored_names(db) == before


async def test_link_lead_of_another_business_thread_is_not_found(
    client: GraphQLClient, db: asyncpg.Connection
) -> None:
    thread_id = (await ingest(client.as_business(2), phone=PHONE))["thread"]["id"]
    before = await stored_names(db)
    assert await error_code(client, LINK_LEAD, {"threadId": thread_id, "leadId": "77"}) == (
        "NOT_FOUND"
    )
    assert await stored_names(db) == before


# --- merges are visible to open screens --------------------------------------------------------


async def merge_events(socket: GraphQLSocket, *, wanted: int) -> dict[str, list[dict[str, Any]]]:
    """The next `wanted` data messages, by subscription id."""
    received: dict[str, list[dict[str, Any]]] = {}
    for _ in range(wanted):
        message = await socket.receive()
        assert message["type"] == "next", message
        received.setdefault(message["id"], []).append(message["payload"]["data"])
    return received


async def assert_nothing_more(socket: GraphQLSocket) -> None:
    with pytest.raises(TimeoutError):
        await socket.receive(wait_s=0.5)


@pytest.mark.parametrize("merged_by", ["bot reply", "linkLead"])
async def test_a_merge_is_announced_to_thread_merged_and_badge_subscribers(
    app: Starlette, client: GraphQLClient, db: asyncpg.Connection, merged_by: str
) -> None:
    lead_thread_id = (await bot_reply(client, PHONE, "77"))["thread"]["id"]
    await ingest(client, phone=PHONE, body="lead unread")
    phone_thread_id = (await ingest(client, phone=OTHER_PHONE, body="phone unread"))["thread"]["id"]
    await ingest(client, phone=OTHER_PHONE, body="phone unread too")

    async with serving(app) as url, GraphQLSocket.open(url) as socket:
        await socket.subscribe("merges", THREAD_MERGED)
        await socket.subscribe("badge", UNREAD_COUNT_CHANGED)
        if merged_by == "bot reply":
            await bot_reply(client, OTHER_PHONE, "77")
        else:
            await link_lead(client, threadId=phone_thread_id, leadId="77")
        received = await merge_events(socket, wanted=3)
        await assert_nothing_more(socket)

    assert received["merges"] == [
        {"threadMerged": {"fromThreadId": phone_thread_id, "intoThreadId": lead_thread_id}}
    ]
    badges = {event["unreadCountChanged"]["threadId"]: event for event in received["badge"]}
    assert badges == {
        phone_thread_id: {
            "unreadCountChanged": {"threadId": phone_thread_id, "unreadCount": 0, "totalUnread": 3}
        },
        lead_thread_id: {
            "unreadCountChanged": {"threadId": lead_thread_id, "unreadCount": 3, "totalUnread": 3}
        },
    }
    await assert_counters_equal_the_definition(client, db, 1)


async def test_a_merge_is_not_announced_to_another_business(
    app: Starlette, client: GraphQLClient
) -> None:
    await bot_reply(client, PHONE, "77")
    await ingest(client, phone=OTHER_PHONE)
    async with serving(app) as url, GraphQLSocket.open(url, business_id=2) as socket:
        await socket.subscribe("merges", THREAD_MERGED)
        await socket.subscribe("badge", UNREAD_COUNT_CHANGED)
        await bot_reply(client, OTHER_PHONE, "77")
        await assert_nothing_more(socket)


async def test_no_merge_no_thread_merged_event(app: Starlette, client: GraphQLClient) -> None:
    """A link that only re-keys (nothing merged) announces no merge."""
    thread_id = (await ingest(client, phone=PHONE))["thread"]["id"]
    async with serving(app) as url, GraphQLSocket.open(url) as socket:
        await socket.subscribe("merges", THREAD_MERGED)
        await link_lead(client, threadId=thread_id, leadId="77")
        await bot_reply(client, PHONE, "77")
        await assert_nothing_more(socket)


async def test_new_message_of_a_thread_follows_it_into_the_survivor_of_a_merge(
    app: Starlette, client: GraphQLClient
) -> None:
    lead_thread_id = (await bot_reply(client, PHONE, "77"))["thread"]["id"]
    phone_thread_id = (await ingest(client, phone=OTHER_PHONE))["thread"]["id"]
    async with serving(app) as url, GraphQLSocket.open(url) as socket:
        await socket.subscribe("thread", NEW_MESSAGE, {"threadId": phone_thread_id})
        await link_lead(client, threadId=phone_thread_id, leadId="77")
        stored = await ingest(client, phone=OTHER_PHONE, body="after the merge")
        payload = await socket.next_payload()
    assert payload["data"]["newMessage"]["id"] == stored["message"]["id"]
    assert payload["data"]["newMessage"]["threadId"] == lead_thread_id


async def test_new_message_by_a_merged_away_id_subscribed_after_the_merge_gets_the_survivors(
    app: Starlette, client: GraphQLClient
) -> None:
    """Old links keep working: a screen opened later from an old link is live too."""
    lead_thread_id = (await bot_reply(client, PHONE, "77"))["thread"]["id"]
    phone_thread_id = (await ingest(client, phone=OTHER_PHONE))["thread"]["id"]
    await link_lead(client, threadId=phone_thread_id, leadId="77")
    async with serving(app) as url, GraphQLSocket.open(url) as socket:
        await socket.subscribe("thread", NEW_MESSAGE, {"threadId": phone_thread_id})
        # Registered once the old id was looked up through the merges.
        await until_members(app, 1)
        stored = await ingest(client, phone=OTHER_PHONE, body="after the merge")
        payload = await socket.next_payload(wait_s=2.0)
    assert payload["data"]["newMessage"]["id"] == stored["message"]["id"]
    assert payload["data"]["newMessage"]["threadId"] == lead_thread_id


async def test_a_chain_of_merges_leads_every_old_id_to_the_last_survivor(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """A user-id thread merged into a phone thread, that phone thread into a lead's."""
    by_user = await from_whatsapp(http, None, "by user id", user_id=OLD_USER_ID)
    user_thread_id = await thread_of_provider_id(db, by_user)
    by_phone = await from_whatsapp(http, OTHER_PHONE, "by phone", minutes=1)
    phone_thread_id = await thread_of_provider_id(db, by_phone)
    lead_thread_id = (await bot_reply(inbox, PHONE, "77"))["thread"]["id"]
    await from_whatsapp(http, OTHER_PHONE, "by both", user_id=OLD_USER_ID, minutes=2)
    assert await thread_id_named(inbox, id=user_thread_id) == phone_thread_id

    await link_lead(inbox, phone=OTHER_PHONE, leadId="77")

    for old_id in (user_thread_id, phone_thread_id):
        assert await thread_id_named(inbox, id=old_id) == lead_thread_id
    assert await thread_of_name_sql(db, f"user:1:{OLD_USER_ID}") == lead_thread_id
    read = await mark_read(inbox, threadId=user_thread_id)
    assert read["thread"]["id"] == lead_thread_id
    assert read["totalUnread"] == 0
    assert await thread_count(db) == 1
    await assert_counters_equal_the_definition(inbox, db, 1)


# --- number changes ------------------------------------------------------------------------------


def number_change(
    *, spelling: str = "wa_id", with_user_ids: bool = True, provider_id: str | None = None
) -> dict[str, Any]:
    """The sample number change (from OLD_NUMBER to NEW_NUMBER), optionally respelled."""
    payload = sample("system_user_changed_number")
    message = payload["entry"][0]["changes"][0]["value"]["messages"][0]
    if provider_id is not None:
        message["id"] = provider_id
    system = message["system"]
    if spelling != "wa_id":
        system[spelling] = system.pop("wa_id")
    if not with_user_ids:
        del system["user_id"], system["previous_user_id"]
    return payload


async def deliver(http: httpx.AsyncClient, payload: dict[str, Any]) -> dict[str, int]:
    response = await post_delivery(http, payload)
    assert response.status_code == 200, response.text
    report: dict[str, int] = response.json()
    assert report["rejected"] == 0, report
    return report


async def system_messages(db: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT conversation_id::text AS thread_id, body, direction "
        "FROM whatsapp_message WHERE message_type = 'system' ORDER BY id"
    )
    return [dict(row) for row in rows]


@pytest.mark.parametrize("spelling", ["wa_id", "new_wa_id"])
async def test_after_a_number_change_both_numbers_and_user_ids_name_the_same_thread(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection, spelling: str
) -> None:
    old = await from_whatsapp(http, OLD_NUMBER, "from the old number", user_id=OLD_USER_ID)
    thread_id = await thread_of_provider_id(db, old)
    await mark_read(inbox, threadId=thread_id)
    await from_whatsapp(http, OLD_NUMBER, "unread from the old number", minutes=1)

    assert (await deliver(http, number_change(spelling=spelling)))["stored"] == 1

    notice = sample("system_user_changed_number")["entry"][0]["changes"][0]["value"]
    notice_body = notice["messages"][0]["system"]["body"]
    assert await system_messages(db) == [
        {"thread_id": thread_id, "body": notice_body, "direction": "in"}
    ]
    from_new = await from_whatsapp(http, NEW_NUMBER, "from the new number", minutes=2)
    by_new_user = await from_whatsapp(http, None, "by user id", user_id=NEW_USER_ID, minutes=3)
    by_old_user = await from_whatsapp(http, None, "old user id", user_id=OLD_USER_ID, minutes=4)
    for provider_id in (from_new, by_new_user, by_old_user):
        assert await thread_of_provider_id(db, provider_id) == thread_id
    for phone in (OLD_NUMBER, NEW_NUMBER):
        assert await thread_id_named(inbox, phone=phone) == thread_id
    assert await thread_count(db) == 1
    found = await thread_of(inbox, id=thread_id)
    assert found is not None
    assert found["phone"] == NEW_NUMBER
    assert found["canonicalKey"] == f"phone:1:{NEW_NUMBER}"  # re-keyed in place
    # The notice is shown in the thread, never unread: the old number's one and three since.
    assert found["unreadCount"] == 4
    assert [edge["node"]["type"] for edge in found["messages"]["edges"]].count("system") == 1
    await assert_counters_equal_the_definition(inbox, db, 1)


async def test_after_a_number_change_a_bot_writing_to_the_old_number_keeps_the_new_one(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """The CRM may not know of the change yet: its reply lands in the thread, but the thread's
    phone (where agents' replies go) stays the number the customer writes from now."""
    old = await from_whatsapp(http, OLD_NUMBER, "from the old number")
    thread_id = await thread_of_provider_id(db, old)
    await deliver(http, number_change())
    reply = await bot_reply(inbox, OLD_NUMBER, None, "to the old number")
    assert reply["thread"]["id"] == thread_id
    assert reply["thread"]["phone"] == NEW_NUMBER
    from_new = await from_whatsapp(http, NEW_NUMBER, "from the new number", minutes=1)
    assert await thread_of_provider_id(db, from_new) == thread_id
    found = await thread_of(inbox, id=thread_id)
    assert found is not None
    assert found["phone"] == NEW_NUMBER


async def test_a_number_change_notice_does_not_reopen_a_closed_thread(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    old = await from_whatsapp(http, OLD_NUMBER, "from the old number")
    thread_id = await thread_of_provider_id(db, old)
    closed = await inbox.execute(SET_THREAD_STATUS, {"threadId": thread_id, "status": "CLOSED"})
    assert closed["setThreadStatus"]["status"] == "CLOSED"
    await deliver(http, number_change())
    found = await thread_of(inbox, id=thread_id)
    assert found is not None
    assert found["status"] == "CLOSED"
    # A message from the customer does.
    await from_whatsapp(http, NEW_NUMBER, "from the new number", minutes=1)
    reopened = await thread_of(inbox, id=thread_id)
    assert reopened is not None
    assert reopened["status"] == "OPEN"


async def test_a_number_change_merges_the_thread_the_new_number_opened(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    old = await from_whatsapp(http, OLD_NUMBER, "old", minutes=0)
    old_thread_id = await thread_of_provider_id(db, old)
    await mark_read(inbox, threadId=old_thread_id)
    new = await from_whatsapp(http, NEW_NUMBER, "new, before the notice", minutes=1)
    new_thread_id = await thread_of_provider_id(db, new)
    assert new_thread_id != old_thread_id

    await deliver(http, number_change())

    assert await thread_count(db) == 1
    assert await thread_of_provider_id(db, old) == old_thread_id
    assert await thread_of_provider_id(db, new) == old_thread_id
    assert await thread_id_named(inbox, id=new_thread_id) == old_thread_id
    assert await thread_id_named(inbox, phone=NEW_NUMBER) == old_thread_id
    assert await thread_id_named(inbox, phone=OLD_NUMBER) == old_thread_id
    found = await thread_of(inbox, id=old_thread_id)
    assert found is not None
    assert found["unreadCount"] == 1  # "old" was read, "new" was not, the notice never is
    await assert_counters_equal_the_definition(inbox, db, 1)


async def test_a_number_change_of_a_lead_keeps_the_lead_thread(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    lead_thread_id = (await bot_reply(inbox, OLD_NUMBER, "77"))["thread"]["id"]
    await deliver(http, number_change())
    from_new = await from_whatsapp(http, NEW_NUMBER, "from the new number")
    assert await thread_of_provider_id(db, from_new) == lead_thread_id
    found = await thread_of(inbox, leadId="77")
    assert found is not None
    assert found["id"] == lead_thread_id
    assert found["canonicalKey"] == "lead:1:77"
    # The bot may answer the new number with the lead: the same customer, no conflict.
    assert (await bot_reply(inbox, NEW_NUMBER, "77"))["thread"]["id"] == lead_thread_id
    assert await thread_count(db) == 1


async def test_a_user_id_change_makes_the_new_user_id_name_the_same_thread(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    by_old = await from_whatsapp(http, None, "by the old user id", user_id=OLD_USER_ID)
    thread_id = await thread_of_provider_id(db, by_old)

    assert (await deliver(http, sample("system_user_changed_user_id")))["stored"] == 1

    by_new = await from_whatsapp(http, None, "by the new user id", user_id=NEW_USER_ID, minutes=1)
    assert await thread_of_provider_id(db, by_new) == thread_id
    assert await thread_count(db) == 1
    assert [row["thread_id"] for row in await system_messages(db)] == [thread_id]
    found = await thread_of(inbox, id=thread_id)
    assert found is not None
    assert found["unreadCount"] == 2
    await assert_counters_equal_the_definition(inbox, db, 1)


# --- random interleavings: a model of each customer's names ---------------------------------------


@dataclass(frozen=True)
class Customer:
    """A customer of business 1: maybe a CRM lead, two numbers (the second after a number
    change, or given to the CRM beforehand) and two WhatsApp user ids (one per number)."""

    lead_id: str | None
    phones: tuple[str, str]
    user_ids: tuple[str, str]

    @property
    def lead_key(self) -> str:
        assert self.lead_id is not None
        return f"lead:1:{self.lead_id}"


def phone_key(phone: str) -> str:
    return f"phone:1:{phone}"


def user_key(user_id: str) -> str:
    return f"user:1:{user_id}"


MODEL_CUSTOMERS = [
    Customer("L-600", ("+14155550600", "+14155550610"), ("US.600.a", "US.600.b")),
    Customer("L-601", ("+14155550601", "+14155550611"), ("US.601.a", "US.601.b")),
    Customer(None, ("+14155550602", "+14155550612"), ("US.602.a", "US.602.b")),
]
LEAD_CUSTOMERS = [n for n, customer in enumerate(MODEL_CUSTOMERS) if customer.lead_id]
customers = st.sampled_from(range(len(MODEL_CUSTOMERS)))
lead_customers = st.sampled_from(LEAD_CUSTOMERS)
number_choices = st.sampled_from([0, 1])
KIND_STRENGTH = {"lead": 0, "phone": 1, "user": 2}


@dataclass
class Component:
    """Names of one customer that some message (or link) has tied together: one thread."""

    customer: int
    names: set[str]
    thread_ids: set[str] = field(default_factory=set)  # every id ever returned for it
    message_ids: set[str] = field(default_factory=set)
    unread_ids: set[str] = field(default_factory=set)
    current: str | None = None  # its thread's id, as the last check resolved it
    expected: str | None = None  # the id the thread must have after this step

    @property
    def strength(self) -> int:
        return min(KIND_STRENGTH[name.split(":", 1)[0]] for name in self.names)


def graphql_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class CustomerNamesMachine(MachineInAWorld):
    """Messages under every name of three customers, lead links, number and user id changes,
    reads and deletions through the API; after every step every name (and every thread id
    ever returned) of each customer leads to one thread of theirs, the messages and unread
    messages of each thread are the model's, and the counters equal the defining SQL."""

    def __init__(self, world: World) -> None:
        super().__init__(world)
        self.components: list[Component] = []
        self.deliveries: list[dict[str, Any]] = []
        self.message_component: dict[str, Component] = {}

    # -- the model --

    def component_named(self, name: str) -> Component | None:
        return next((c for c in self.components if name in c.names), None)

    def tie(self, customer: int, names: list[str]) -> Component:
        """The one component all of `names` belong to after a message names them together;
        the thread that must survive is the strongest named one, else the oldest."""
        touched = [c for c in self.components if c.names & set(names)]
        assert all(c.customer == customer for c in touched)
        existing = [c for c in touched if c.current is not None]
        if len(touched) == 1:
            tied = touched[0]
        else:
            tied = Component(customer, set())
            for part in touched:
                tied.names |= part.names
                tied.thread_ids |= part.thread_ids
                tied.message_ids |= part.message_ids
                tied.unread_ids |= part.unread_ids
                self.components.remove(part)
            for message_id in tied.message_ids:
                self.message_component[message_id] = tied
            self.components.append(tied)
        tied.names |= set(names)
        if existing:
            survivor = min(existing, key=lambda c: (c.strength, int(c.current or 0)))
            tied.expected = survivor.current
        return tied

    def stored(
        self, customer: int, names: list[str], message_id: str, thread_id: str, *, unread: bool
    ) -> None:
        tied = self.tie(customer, names)
        tied.message_ids.add(message_id)
        if unread:
            tied.unread_ids.add(message_id)
        tied.thread_ids.add(thread_id)
        self.message_component[message_id] = tied
        if tied.expected is not None:
            assert thread_id == tied.expected, (names, thread_id, tied.expected)

    def all_thread_ids(self) -> list[str]:
        return sorted({t for c in self.components for t in c.thread_ids}, key=int)

    def component_of_thread(self, thread_id: str) -> Component:
        return next(c for c in self.components if thread_id in c.thread_ids)

    def total_unread(self) -> int:
        return sum(len(c.unread_ids) for c in self.components)

    # -- messages through the webhook --

    def deliver(
        self,
        customer: int,
        message: dict[str, Any],
        names: list[str],
        *,
        unread: bool = True,
    ) -> None:
        payload = delivery(messages=[message])
        report = self.world.run(deliver(self.client.http, payload))
        assert (report["stored"], report["duplicates"]) == (1, 0), report
        self.deliveries.append(payload)
        row = self.world.run(
            self.db.fetchrow(
                "SELECT id::text, conversation_id::text FROM whatsapp_message "
                "WHERE business_id = 1 AND provider_message_id = $1",
                message["id"],
            )
        )
        assert row is not None
        self.stored(customer, names, row["id"], row["conversation_id"], unread=unread)

    def fresh_provider_id(self) -> str:
        return f"wamid.names.{next(self.steps)}"

    def now(self) -> int:
        return int(datetime.now(UTC).timestamp())

    @initialize(
        openers=st.lists(
            st.tuples(customers, number_choices, st.booleans()), unique=True, max_size=6
        )
    )
    def customers_write_first_under_separate_names(
        self, openers: list[tuple[int, int, bool]]
    ) -> None:
        """Threads under single names from the start, so that later links merge them."""
        for customer, number, by_phone in openers:
            if by_phone:
                self.from_phone(customer, number)
            else:
                self.from_user_id(customer, number)

    @rule(customer=customers, number=number_choices)
    def webhook_by_phone(self, customer: int, number: int) -> None:
        self.from_phone(customer, number)

    @rule(customer=customers, number=number_choices)
    def webhook_by_user_id(self, customer: int, number: int) -> None:
        self.from_user_id(customer, number)

    def from_phone(self, customer: int, number: int) -> None:
        phone = MODEL_CUSTOMERS[customer].phones[number]
        message = text_message(
            self.fresh_provider_id(), sender=phone.removeprefix("+"), timestamp=self.now()
        )
        self.deliver(customer, message, [phone_key(phone)])

    def from_user_id(self, customer: int, number: int) -> None:
        user_id = MODEL_CUSTOMERS[customer].user_ids[number]
        message = text_message(
            self.fresh_provider_id(), sender=None, user_id=user_id, timestamp=self.now()
        )
        self.deliver(customer, message, [user_key(user_id)])

    @rule(customer=customers, number=number_choices)
    def webhook_by_phone_and_user_id(self, customer: int, number: int) -> None:
        phone = MODEL_CUSTOMERS[customer].phones[number]
        user_id = MODEL_CUSTOMERS[customer].user_ids[number]
        message = text_message(
            self.fresh_provider_id(),
            sender=phone.removeprefix("+"),
            user_id=user_id,
            timestamp=self.now(),
        )
        self.deliver(customer, message, [phone_key(phone), user_key(user_id)])

    @precondition(lambda self: self.deliveries)
    @rule(data=st.data())
    def webhook_redelivered(self, data: st.DataObject) -> None:
        """A redelivery is skipped before threading: it links and moves nothing."""
        payload = data.draw(st.sampled_from(self.deliveries), label="redelivery")
        report = self.world.run(deliver(self.client.http, payload))
        assert (report["stored"], report["duplicates"]) == (0, 1), report

    @rule(customer=customers, pre_v12=st.booleans())
    def number_change(self, customer: int, pre_v12: bool) -> None:
        """WhatsApp's notice, sent from the old number, naming the new number and user ids."""
        named = MODEL_CUSTOMERS[customer]
        system = {
            "body": f"User changed from {named.phones[0][1:]} to {named.phones[1][1:]}",
            "new_wa_id" if pre_v12 else "wa_id": named.phones[1].removeprefix("+"),
            "user_id": named.user_ids[1],
            "previous_user_id": named.user_ids[0],
            "type": "user_changed_number",
        }
        message = {
            "from": named.phones[0].removeprefix("+"),
            "id": self.fresh_provider_id(),
            "timestamp": str(self.now()),
            "type": "system",
            "system": system,
        }
        names = [*map(phone_key, named.phones), *map(user_key, named.user_ids)]
        self.deliver(customer, message, names, unread=False)

    @rule(customer=customers)
    def user_id_change(self, customer: int) -> None:
        named = MODEL_CUSTOMERS[customer]
        message = {
            "id": self.fresh_provider_id(),
            "timestamp": str(self.now()),
            "type": "system",
            "system": {
                "body": f"User changed from {named.user_ids[0]} to {named.user_ids[1]}",
                "user_id": named.user_ids[1],
                "previous_user_id": named.user_ids[0],
                "type": "user_changed_user_id",
            },
        }
        self.deliver(customer, message, [*map(user_key, named.user_ids)], unread=False)

    # -- messages through ingestMessage --

    @rule(customer=customers, number=number_choices, with_lead=st.booleans(), bot=st.booleans())
    def ingest_message(self, customer: int, number: int, with_lead: bool, bot: bool) -> None:
        named = MODEL_CUSTOMERS[customer]
        phone = named.phones[number]
        names = [phone_key(phone)]
        fields: dict[str, Any] = {"phone": national_spelling(phone) if bot else phone}
        if with_lead and named.lead_id is not None:
            fields["leadId"] = named.lead_id
            names.insert(0, named.lead_key)
        if bot:
            fields.update(direction="OUTBOUND", source="BOT")
        scoped = self.client.as_role(Role.SERVICE if bot else Role.ADMIN)
        outcome = self.world.run(ingest(scoped, body=f"step {next(self.steps)}", **fields))
        assert outcome["duplicate"] is False
        thread = outcome["thread"]
        self.stored(customer, names, outcome["message"]["id"], thread["id"], unread=not bot)
        assert thread["unreadCount"] == len(
            self.message_component[outcome["message"]["id"]].unread_ids
        )
        if "leadId" in fields:
            assert (thread["canonicalKey"], thread["leadId"]) == (named.lead_key, named.lead_id)

    @precondition(
        lambda self: any(
            self.component_named(MODEL_CUSTOMERS[n].lead_key) is not None for n in LEAD_CUSTOMERS
        )
    )
    @rule(data=st.data(), via_link=st.booleans())
    def phone_of_another_lead_is_refused(self, data: st.DataObject, via_link: bool) -> None:
        """A phone on one lead's thread, named with the other lead: CONFLICT, nothing stored."""
        owner = data.draw(
            st.sampled_from(
                [
                    n
                    for n in LEAD_CUSTOMERS
                    if self.component_named(MODEL_CUSTOMERS[n].lead_key) is not None
                ]
            ),
            label="owner",
        )
        owned = self.component_named(MODEL_CUSTOMERS[owner].lead_key)
        assert owned is not None
        phones = sorted(p for p in MODEL_CUSTOMERS[owner].phones if phone_key(p) in owned.names)
        other = next(n for n in LEAD_CUSTOMERS if n != owner)
        other_lead = MODEL_CUSTOMERS[other].lead_id
        assert other_lead is not None
        before = self.world.run(stored_names(self.db))
        by_phone = data.draw(st.booleans(), label="by phone")
        if phones and by_phone:
            arguments: dict[str, Any] = {
                "phone": data.draw(st.sampled_from(phones)),
                "leadId": other_lead,
            }
        else:
            arguments = {"threadId": sorted(owned.thread_ids)[0], "leadId": other_lead}
            via_link = True
        if via_link:
            code = self.world.run(error_code(self.client, LINK_LEAD, arguments))
        else:
            message = {**arguments, "direction": "OUTBOUND", "source": "BOT", "body": "refused"}
            code = self.world.run(
                error_code(
                    self.client,
                    "mutation ($input: IngestMessageInput!) "
                    "{ ingestMessage(input: $input) { duplicate } }",
                    {"input": message},
                )
            )
        assert code == "CONFLICT", arguments
        assert self.world.run(stored_names(self.db)) == before

    # -- linkLead --

    @rule(customer=lead_customers, data=st.data())
    def link_lead(self, customer: int, data: st.DataObject) -> None:
        named = MODEL_CUSTOMERS[customer]
        assert named.lead_id is not None
        own_thread_ids = sorted(
            {t for c in self.components if c.customer == customer for t in c.thread_ids}, key=int
        )
        arguments: dict[str, Any] = {"leadId": named.lead_id}
        names = [named.lead_key]
        by_thread_id = data.draw(st.booleans(), label="by thread id")
        if own_thread_ids and by_thread_id:
            thread_id = data.draw(st.sampled_from(own_thread_ids), label="thread id")
            arguments["threadId"] = thread_id
            names += sorted(self.component_of_thread(thread_id).names)
        if "threadId" not in arguments or data.draw(st.booleans(), label="and phone"):
            phone = data.draw(st.sampled_from(named.phones), label="phone")
            arguments["phone"] = national_spelling(phone)
            names.append(phone_key(phone))
        if not any(self.component_named(name) for name in names):
            before = self.world.run(stored_names(self.db))
            assert self.world.run(error_code(self.client, LINK_LEAD, arguments)) == "NOT_FOUND"
            assert self.world.run(stored_names(self.db)) == before
            return
        crm = self.client.as_role(data.draw(st.sampled_from([Role.SERVICE, Role.ADMIN])))
        linked = self.world.run(link_lead(crm, **arguments))
        tied = self.tie(customer, names)
        tied.thread_ids.add(linked["id"])
        if tied.expected is not None:
            assert linked["id"] == tied.expected, (arguments, linked)
        assert (linked["canonicalKey"], linked["leadId"]) == (named.lead_key, named.lead_id)
        assert linked["unreadCount"] == len(tied.unread_ids)

    # -- reading and deleting --

    @precondition(lambda self: self.components)
    @rule(data=st.data())
    def mark_read_by_any_thread_id(self, data: st.DataObject) -> None:
        """Old ids of merged-away threads included: they mark the survivor."""
        thread_id = data.draw(st.sampled_from(self.all_thread_ids()), label="thread id")
        read = self.component_of_thread(thread_id)
        result = self.world.run(mark_read(self.client, threadId=thread_id))
        read.unread_ids.clear()
        assert result["thread"]["id"] == read.current
        assert result["thread"]["unreadCount"] == 0
        assert result["totalUnread"] == self.total_unread()

    @rule(customer=customers, number=number_choices)
    def mark_read_by_phone_spelled_nationally(self, customer: int, number: int) -> None:
        phone = MODEL_CUSTOMERS[customer].phones[number]
        read = self.component_named(phone_key(phone))
        arguments = {"phone": national_spelling(phone)}
        if read is None:
            assert self.world.run(error_code(self.client, MARK_READ, arguments)) == "NOT_FOUND"
            return
        result = self.world.run(mark_read(self.client, **arguments))
        read.unread_ids.clear()
        assert result["thread"]["id"] == read.current
        assert result["totalUnread"] == self.total_unread()

    @precondition(lambda self: self.message_component)
    @rule(data=st.data())
    def delete_message(self, data: st.DataObject) -> None:
        message_id = data.draw(st.sampled_from(sorted(self.message_component, key=int)))
        holder = self.message_component[message_id]
        deleted = self.world.run(self.client.execute(DELETE_MESSAGE, {"id": message_id}))
        holder.unread_ids.discard(message_id)
        assert deleted["deleteMessage"]["threadId"] == holder.current
        assert deleted["deleteMessage"]["status"] == "DELETED"

    @precondition(lambda self: self.components)
    @rule(data=st.data(), status=st.sampled_from(["CLOSED", "OPEN"]))
    def set_thread_status_by_any_thread_id(self, data: st.DataObject, status: str) -> None:
        thread_id = data.draw(st.sampled_from(self.all_thread_ids()), label="thread id")
        variables = {"threadId": thread_id, "status": status}
        changed = self.world.run(self.client.execute(SET_THREAD_STATUS, variables))
        assert changed["setThreadStatus"]["id"] == self.component_of_thread(thread_id).current

    # -- the promise, after every step --

    def resolve(self) -> dict[tuple[str, str], dict[str, Any] | None]:
        """What `thread(...)` answers for every phone, lead and thread id the model knows."""
        lookups: list[tuple[str, str]] = []
        for component in self.components:
            for name in sorted(component.names):
                kind, _, value = name.split(":", 2)
                if kind == "phone":
                    lookups.append(("phone", value))
                elif kind == "lead":
                    lookups.append(("leadId", value))
            lookups += [("id", thread_id) for thread_id in sorted(component.thread_ids)]
        answers: dict[tuple[str, str], dict[str, Any] | None] = {}
        for start in range(0, len(lookups), 25):
            chunk = lookups[start : start + 25]
            fields = " ".join(
                f"r{n}: thread({argument}: {graphql_string(value)}) {{ id canonicalKey leadId }}"
                for n, (argument, value) in enumerate(chunk)
            )
            data = self.world.run(self.client.execute(f"query {{ {fields} }}"))
            answers.update({lookup: data[f"r{n}"] for n, lookup in enumerate(chunk)})
        return answers

    @invariant()
    def the_promise_holds(self) -> None:
        # In this order: the first learns each component's thread id.
        self.every_name_of_a_customer_leads_to_their_one_thread()
        self.each_thread_holds_the_models_messages_and_unread_messages()
        self.counters_equal_the_definition()

    def every_name_of_a_customer_leads_to_their_one_thread(self) -> None:
        answers = self.resolve()
        for component in self.components:
            resolved: set[str] = set()
            keyed: dict[str, Any] | None = None  # what GraphQL shows of the thread
            for name in component.names:
                kind, _, value = name.split(":", 2)
                if kind == "user":  # no query by user id: the stored names say where it leads
                    found = self.world.run(self.db.fetchval(THREAD_OF_NAME_SQL, 1, name))
                    assert found is not None, name
                    resolved.add(str(found))
                    continue
                keyed = answers[("phone" if kind == "phone" else "leadId", value)]
                assert keyed is not None, name
                resolved.add(keyed["id"])
            for thread_id in component.thread_ids:
                keyed = answers[("id", thread_id)]
                assert keyed is not None, thread_id
                resolved.add(keyed["id"])
            assert len(resolved) == 1, (sorted(component.names), resolved)
            current = resolved.pop()
            if component.expected is not None:
                assert current == component.expected, (sorted(component.names), current)
            component.current = component.expected = current
            assert keyed is not None
            strongest = min(component.names, key=lambda n: KIND_STRENGTH[n.split(":")[0]])
            if strongest.startswith("lead:"):
                assert keyed["canonicalKey"] == strongest
                assert keyed["leadId"] == MODEL_CUSTOMERS[component.customer].lead_id
            else:
                assert keyed["canonicalKey"].split(":")[0] == strongest.split(":")[0], keyed
                assert keyed["canonicalKey"] in component.names, keyed
                assert keyed["leadId"] is None
        currents = [component.current for component in self.components]
        assert len(set(currents)) == len(currents), "two customers (or parts) share a thread"

    def each_thread_holds_the_models_messages_and_unread_messages(self) -> None:
        stored = self.world.run(
            self.db.fetch("SELECT id::text, conversation_id::text FROM whatsapp_message")
        )
        by_thread: dict[str, set[str]] = {}
        for row in stored:
            by_thread.setdefault(row["conversation_id"], set()).add(row["id"])
        unread = self.world.run(unread_message_ids(self.db))
        threads = {
            str(row[0])
            for row in self.world.run(self.db.fetch("SELECT id FROM whatsapp_conversation"))
        }
        assert threads == {c.current for c in self.components}, "a thread the model has not"
        for component in self.components:
            assert component.current is not None
            assert by_thread.get(component.current, set()) == component.message_ids
            assert unread & by_thread.get(component.current, set()) == component.unread_ids

    def counters_equal_the_definition(self) -> None:
        defined = self.world.run(assert_counters_equal_the_definition(self.client, self.db, 1))
        assert sum(defined.values()) == self.total_unread()


async def test_every_name_of_a_customer_leads_to_one_thread_after_every_random_step(
    settings: Settings,
) -> None:
    # In a thread, so the machine's own event loop never meets the session's loop.
    await asyncio.to_thread(run_machine_in_a_world, settings, CustomerNamesMachine, max_examples=20)
