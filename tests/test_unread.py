"""Unread tracking: what counts as unread, and how markRead moves a thread's read point.

Unread = inbound (CUSTOMER), not deleted, not `historical`, stored after the thread was last
marked read. The defining SQL below is the rule itself; the tests compare the API against it.
"""

import asyncio
import itertools
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import GraphQLClient, ingest

MARK_READ = """
mutation MarkRead($threadId: ID, $phone: String) {
  markRead(threadId: $threadId, phone: $phone) {
    totalUnread
    thread { id unreadCount lastReadAt }
  }
}
"""

THREAD = """
query Thread($id: ID!) {
  thread(id: $id) {
    id unreadCount lastReadAt
    messages(first: 100) { edges { node { id body direction source } } }
  }
}
"""

BADGE = "query { unreadCount }"

THREADS = """
query Threads($first: Int, $after: String, $unreadOnly: Boolean) {
  threads(first: $first, after: $after, unreadOnly: $unreadOnly) {
    edges { node { id phone unreadCount } }
    pageInfo { hasNextPage endCursor }
  }
}
"""

# The unread rule, straight from its definition, for every thread of a business.
UNREAD_BY_THREAD_SQL = """
SELECT c.id,
       count(m.id) FILTER (
           WHERE m.direction = 'in' AND NOT m.historical AND m.status <> 'deleted'
             AND m.message_type <> 'system' AND m.seq > c.read_seq
       ) AS unread
FROM whatsapp_conversation c
LEFT JOIN whatsapp_message m ON m.conversation_id = c.id
WHERE c.business_id = $1
GROUP BY c.id
"""

TOTAL_UNREAD_SQL = """
SELECT count(*)
FROM whatsapp_message m
JOIN whatsapp_conversation c ON c.id = m.conversation_id
WHERE c.business_id = $1 AND m.direction = 'in' AND NOT m.historical
  AND m.status <> 'deleted' AND m.message_type <> 'system' AND m.seq > c.read_seq
"""

PHONE = "+14155552671"
OTHER_PHONE = "+14155552672"
THIRD_PHONE = "+14155552673"


async def thread_unread(client: GraphQLClient, thread_id: str) -> int:
    data = await client.execute(THREAD, {"id": thread_id})
    count: int = data["thread"]["unreadCount"]
    return count


async def badge(client: GraphQLClient) -> int:
    count: int = (await client.execute(BADGE))["unreadCount"]
    return count


async def mark_read(client: GraphQLClient, **arguments: Any) -> dict[str, Any]:
    result: dict[str, Any] = (await client.execute(MARK_READ, arguments))["markRead"]
    return result


async def all_threads(client: GraphQLClient, *, unread_only: bool = False) -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = []
    after = None
    while True:
        variables = {"first": 100, "after": after, "unreadOnly": unread_only}
        page = (await client.execute(THREADS, variables))["threads"]
        nodes.extend(edge["node"] for edge in page["edges"])
        if not page["pageInfo"]["hasNextPage"]:
            return nodes
        after = page["pageInfo"]["endCursor"]


async def error_code(client: GraphQLClient, query: str, variables: dict[str, Any]) -> str:
    errors = await client.errors(query, variables)
    code: str = errors[0]["extensions"]["code"]
    return code


async def test_inbound_customer_messages_count_as_unread(client: GraphQLClient) -> None:
    first = await ingest(client, phone=PHONE, body="hi")
    await ingest(client, phone=PHONE, body="anyone there?")
    assert first["thread"]["unreadCount"] == 1
    assert await thread_unread(client, first["thread"]["id"]) == 2
    assert await badge(client) == 2


@pytest.mark.parametrize("source", ["BOT", "AUTOMATION", "HUMAN"])
async def test_outbound_messages_never_count_as_unread(client: GraphQLClient, source: str) -> None:
    inbound = await ingest(client, phone=PHONE, body="question")
    for n in range(3):
        await ingest(client, phone=PHONE, direction="OUTBOUND", source=source, body=f"reply {n}")
    only_outbound = await ingest(
        client, phone=OTHER_PHONE, direction="OUTBOUND", source=source, body="campaign"
    )
    assert await thread_unread(client, inbound["thread"]["id"]) == 1
    assert await thread_unread(client, only_outbound["thread"]["id"]) == 0
    assert await badge(client) == 1


async def test_historical_inbound_is_threaded_and_shown_but_counted_in_nothing(
    client: GraphQLClient,
) -> None:
    old = await ingest(
        client, phone=PHONE, body="imported", historical=True, sentAt="2025-01-01T10:00:00Z"
    )
    thread_id = old["thread"]["id"]
    assert old["thread"]["unreadCount"] == 0
    assert await thread_unread(client, thread_id) == 0
    assert await badge(client) == 0
    assert await all_threads(client, unread_only=True) == []

    new = await ingest(client, phone=PHONE, body="live")
    assert new["thread"]["id"] == thread_id
    data = await client.execute(THREAD, {"id": thread_id})
    bodies = [edge["node"]["body"] for edge in data["thread"]["messages"]["edges"]]
    assert bodies == ["imported", "live"]
    assert data["thread"]["unreadCount"] == 1
    assert await badge(client) == 1


async def test_historical_inbound_after_mark_read_stays_read(client: GraphQLClient) -> None:
    thread_id = (await ingest(client, phone=PHONE, body="hi"))["thread"]["id"]
    await mark_read(client, threadId=thread_id)
    await ingest(client, phone=PHONE, body="imported later", historical=True)
    assert await thread_unread(client, thread_id) == 0
    assert await badge(client) == 0


async def test_deleted_inbound_message_no_longer_counts(client: GraphQLClient) -> None:
    kept = await ingest(client, phone=PHONE, body="keep")
    gone = await ingest(client, phone=PHONE, body="delete me")
    deleted = await client.execute(
        "mutation D($id: ID!) { deleteMessage(id: $id) { id status body } }",
        {"id": gone["message"]["id"]},
    )
    assert deleted["deleteMessage"]["status"] == "DELETED"
    assert deleted["deleteMessage"]["body"] is None  # kept in the thread, its text hidden
    assert await thread_unread(client, kept["thread"]["id"]) == 1
    assert await badge(client) == 1
    # Deleting it again changes nothing.
    await client.execute(
        "mutation D($id: ID!) { deleteMessage(id: $id) { id } }", {"id": gone["message"]["id"]}
    )
    assert await badge(client) == 1


async def test_mark_read_by_thread_id_zeroes_the_thread_at_once_and_reports_the_badge(
    client: GraphQLClient,
) -> None:
    read_me = (await ingest(client, phone=PHONE, body="a"))["thread"]["id"]
    await ingest(client, phone=PHONE, body="b")
    other = (await ingest(client, phone=OTHER_PHONE, body="c"))["thread"]["id"]
    await ingest(client, phone=OTHER_PHONE, body="d")
    await ingest(client, phone=OTHER_PHONE, body="e")

    result = await mark_read(client, threadId=read_me)

    assert result["thread"]["id"] == read_me
    assert result["thread"]["unreadCount"] == 0
    assert result["thread"]["lastReadAt"] is not None
    assert await thread_unread(client, read_me) == 0
    assert await thread_unread(client, other) == 3
    assert result["totalUnread"] == await badge(client) == 3


@pytest.mark.parametrize("spelling", ["+1 415-555-2671", "14155552671", "(415) 555-2671"])
async def test_mark_read_by_phone_accepts_any_spelling(
    client: GraphQLClient, spelling: str
) -> None:
    thread_id = (await ingest(client, phone=PHONE, body="hi"))["thread"]["id"]
    await ingest(client, phone=OTHER_PHONE, body="not this one")

    result = await mark_read(client, phone=spelling)

    assert result["thread"]["id"] == thread_id
    assert result["thread"]["unreadCount"] == 0
    assert result["totalUnread"] == 1
    assert await badge(client) == 1


async def test_late_webhook_stored_after_mark_read_counts_as_unread(
    client: GraphQLClient,
) -> None:
    thread_id = (await ingest(client, phone=PHONE, body="first"))["thread"]["id"]
    read_at = datetime.fromisoformat(
        (await mark_read(client, threadId=thread_id))["thread"]["lastReadAt"]
    )
    late_sent_at = (read_at - timedelta(minutes=5)).isoformat()

    late = await ingest(client, phone=PHONE, body="sent before the read", sentAt=late_sent_at)

    assert late["thread"]["id"] == thread_id
    assert datetime.fromisoformat(late["message"]["sentAt"]) < read_at
    assert await thread_unread(client, thread_id) == 1
    assert await badge(client) == 1
    assert [node["id"] for node in await all_threads(client, unread_only=True)] == [thread_id]


async def test_repeated_mark_read_never_moves_last_read_at_backwards(
    client: GraphQLClient,
) -> None:
    thread_id = (await ingest(client, phone=PHONE, body="hi"))["thread"]["id"]
    seen = []
    for _ in range(4):
        result = await mark_read(client, threadId=thread_id)
        assert result["thread"]["unreadCount"] == 0
        seen.append(datetime.fromisoformat(result["thread"]["lastReadAt"]))
    assert seen == sorted(seen)
    assert await thread_unread(client, thread_id) == 0


async def test_mark_read_keeps_a_later_read_point_it_finds(
    client: GraphQLClient, db: asyncpg.Connection
) -> None:
    # A read point ahead of this server's clock (another node's clock, say) must survive.
    thread_id = (await ingest(client, phone=PHONE, body="hi"))["thread"]["id"]
    ahead = await db.fetchval(
        "UPDATE whatsapp_conversation SET last_read_at = now() + interval '1 day' "
        "WHERE id = $1 RETURNING last_read_at",
        int(thread_id),
    )
    result = await mark_read(client, threadId=thread_id)
    assert datetime.fromisoformat(result["thread"]["lastReadAt"]) == ahead


async def test_mark_read_right_after_mark_read_keeps_zero(client: GraphQLClient) -> None:
    thread_id = (await ingest(client, phone=PHONE, body="hi"))["thread"]["id"]
    await ingest(client, phone=PHONE, body="hello?")
    first = await mark_read(client, threadId=thread_id)
    second = await mark_read(client, phone=PHONE)
    assert first["thread"]["unreadCount"] == second["thread"]["unreadCount"] == 0
    assert first["totalUnread"] == second["totalUnread"] == 0
    new = await ingest(client, phone=PHONE, body="new")
    assert new["thread"]["unreadCount"] == 1


async def test_business_unread_count_is_the_sum_over_threads(client: GraphQLClient) -> None:
    for phone, count in [(PHONE, 1), (OTHER_PHONE, 2), (THIRD_PHONE, 4)]:
        for n in range(count):
            await ingest(client, phone=phone, body=f"{phone} {n}")
    threads = await all_threads(client)
    assert sorted(node["unreadCount"] for node in threads) == [1, 2, 4]
    assert await badge(client) == 7

    await mark_read(client, phone=OTHER_PHONE)
    threads = await all_threads(client)
    assert await badge(client) == sum(node["unreadCount"] for node in threads) == 5


async def test_business_unread_count_ignores_other_businesses(client: GraphQLClient) -> None:
    await ingest(client, phone=PHONE, body="ours")
    other_business = client.as_business(2)
    await ingest(other_business, phone=PHONE, body="theirs")
    await ingest(other_business, phone=OTHER_PHONE, body="theirs too")
    assert await badge(client) == 1
    assert await badge(other_business) == 2


async def test_mark_read_of_unknown_thread_is_not_found(client: GraphQLClient) -> None:
    await ingest(client, phone=PHONE, body="hi")
    assert await error_code(client, MARK_READ, {"threadId": "987654321"}) == "NOT_FOUND"


async def test_mark_read_of_another_business_thread_is_not_found_and_changes_nothing(
    client: GraphQLClient,
) -> None:
    theirs = (await ingest(client.as_business(2), phone=PHONE, body="hi"))["thread"]["id"]
    assert await error_code(client, MARK_READ, {"threadId": theirs}) == "NOT_FOUND"
    assert await badge(client.as_business(2)) == 1


async def test_mark_read_by_phone_without_a_thread_is_not_found(client: GraphQLClient) -> None:
    await ingest(client, phone=PHONE, body="hi")
    assert await error_code(client, MARK_READ, {"phone": OTHER_PHONE}) == "NOT_FOUND"
    assert await badge(client) == 1


@pytest.mark.parametrize(
    "arguments",
    [{}, {"threadId": None, "phone": None}, {"threadId": "THREAD", "phone": PHONE}],
    ids=["neither", "both-null", "both"],
)
async def test_mark_read_needs_exactly_one_of_thread_id_or_phone(
    client: GraphQLClient, arguments: dict[str, Any]
) -> None:
    thread_id = (await ingest(client, phone=PHONE, body="hi"))["thread"]["id"]
    variables = {key: thread_id if value == "THREAD" else value for key, value in arguments.items()}
    assert await error_code(client, MARK_READ, variables) == "BAD_USER_INPUT"
    assert await thread_unread(client, thread_id) == 1


@pytest.mark.parametrize("thread_id", ["abc", "-1", "1.5", "", "99999999999999999999999"])
async def test_mark_read_with_a_non_numeric_thread_id_is_bad_input(
    client: GraphQLClient, thread_id: str
) -> None:
    await ingest(client, phone=PHONE, body="hi")
    assert await error_code(client, MARK_READ, {"threadId": thread_id}) == "BAD_USER_INPUT"
    assert await badge(client) == 1


async def test_unread_only_lists_only_threads_with_unread_messages(
    client: GraphQLClient,
) -> None:
    unread = (await ingest(client, phone=PHONE, body="hi"))["thread"]["id"]
    read = (await ingest(client, phone=OTHER_PHONE, body="hi"))["thread"]["id"]
    await mark_read(client, threadId=read)
    await ingest(client, phone=THIRD_PHONE, direction="OUTBOUND", source="BOT", body="promo")
    await ingest(client, phone="+14155552674", body="old", historical=True)
    late = (await ingest(client, phone="+14155552675", body="x"))["thread"]["id"]
    await mark_read(client, threadId=late)
    await ingest(client, phone="+14155552675", body="late", sentAt="2020-01-01T00:00:00Z")

    listed = await all_threads(client, unread_only=True)

    assert {node["id"] for node in listed} == {unread, late}
    assert all(node["unreadCount"] > 0 for node in listed)
    assert len(await all_threads(client)) == 5


async def test_redelivered_message_does_not_change_the_unread_count(
    client: GraphQLClient,
) -> None:
    first = await ingest(client, phone=PHONE, body="hi", providerMessageId="wamid.1")
    again = await ingest(client, phone=PHONE, body="hi", providerMessageId="wamid.1")
    assert again["duplicate"] is True
    assert again["message"]["id"] == first["message"]["id"]
    thread_id = first["thread"]["id"]
    assert await thread_unread(client, thread_id) == 1
    assert await badge(client) == 1

    await mark_read(client, threadId=thread_id)
    redelivered = await ingest(client, phone=PHONE, body="hi", providerMessageId="wamid.1")
    assert redelivered["duplicate"] is True
    assert await thread_unread(client, thread_id) == 0
    assert await badge(client) == 0


# --- the rule under random interleavings ---------------------------------------------------

_phone_numbers = itertools.count(1)


def fresh_phone() -> str:
    """A US number no earlier example used (the database lives for the whole test)."""
    return f"+1415555{next(_phone_numbers):04d}"


def national_spelling(e164: str) -> str:
    """ "+14155550001" as "(415) 555-0001": markRead must find the thread by any spelling."""
    digits = e164[2:]
    return f"({digits[:3]}) {digits[3:6]}-{digits[6:]}"


OPERATION_KINDS = [
    "inbound",
    "outbound",
    "historical",
    "late",
    "duplicate",
    "read_by_id",
    "read_by_phone",
]
OUTBOUND_SOURCES = ["BOT", "AUTOMATION", "HUMAN"]

operations = st.lists(
    st.tuples(
        st.sampled_from(OPERATION_KINDS),
        st.integers(min_value=0, max_value=2),
        st.sampled_from(OUTBOUND_SOURCES),
    ),
    min_size=1,
    max_size=12,
)


async def assert_api_matches_the_defining_sql(
    client: GraphQLClient, db: asyncpg.Connection
) -> dict[str, int]:
    """Every thread's unreadCount and the badge against the SQL; the counts by thread id."""
    expected = {str(row["id"]): row["unread"] for row in await db.fetch(UNREAD_BY_THREAD_SQL, 1)}
    shown = {node["id"]: node["unreadCount"] for node in await all_threads(client)}
    assert shown == expected
    total = await db.fetchval(TOTAL_UNREAD_SQL, 1)
    assert await badge(client) == total == sum(expected.values())
    unread_only = {node["id"] for node in await all_threads(client, unread_only=True)}
    assert unread_only == {thread_id for thread_id, count in expected.items() if count > 0}
    return shown


class Customer:
    """One phone of an example and what the unread rule predicts for its thread."""

    def __init__(self) -> None:
        self.phone = fresh_phone()
        self.thread_id: str | None = None
        self.unread = 0
        self.delivered: list[dict[str, Any]] = []


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=operations)
async def test_unread_counts_follow_the_rule_under_random_operations(
    client: GraphQLClient, db: asyncpg.Connection, steps: list[tuple[str, int, str]]
) -> None:
    customers = [Customer() for _ in range(3)]
    provider_ids = itertools.count()
    for kind, slot, source in steps:
        customer = customers[slot]
        provider_id = f"wamid.{customer.phone}.{next(provider_ids)}"
        message: dict[str, Any] = {"phone": customer.phone, "providerMessageId": provider_id}
        if kind in ("read_by_id", "read_by_phone"):
            if customer.thread_id is None:
                code = await error_code(client, MARK_READ, {"phone": customer.phone})
                assert code == "NOT_FOUND"
            else:
                if kind == "read_by_id":
                    result = await mark_read(client, threadId=customer.thread_id)
                else:
                    result = await mark_read(client, phone=national_spelling(customer.phone))
                assert result["thread"]["id"] == customer.thread_id
                assert result["thread"]["unreadCount"] == 0
                assert result["totalUnread"] == await db.fetchval(TOTAL_UNREAD_SQL, 1)
                customer.unread = 0
        elif kind == "duplicate":
            if not customer.delivered:
                continue
            outcome = await ingest(client, **customer.delivered[-1])
            assert outcome["duplicate"] is True
        else:
            if kind == "outbound":
                message.update(direction="OUTBOUND", source=source)
            elif kind == "historical":
                message.update(historical=True, sentAt="2024-06-01T12:00:00Z")
            elif kind == "late":
                message.update(sentAt="2020-01-01T00:00:00Z")
            outcome = await ingest(client, body=kind, **message)
            assert outcome["duplicate"] is False
            customer.thread_id = outcome["thread"]["id"]
            customer.delivered.append(message)
            if kind in ("inbound", "late"):
                customer.unread += 1
        shown = await assert_api_matches_the_defining_sql(client, db)
        for each in customers:
            if each.thread_id is not None:
                assert shown[each.thread_id] == each.unread, (each.phone, steps)


async def test_concurrent_ingests_and_mark_reads_agree_with_the_read_point(
    client: GraphQLClient, db: asyncpg.Connection
) -> None:
    thread_id = (await ingest(client, phone=PHONE, body="opening"))["thread"]["id"]

    async def deliver(n: int) -> None:
        await ingest(client, phone=PHONE, body=f"burst {n}", providerMessageId=f"wamid.burst.{n}")

    async def read() -> None:
        await mark_read(client, threadId=thread_id)

    work = [deliver(n) for n in range(20)]
    for position, reader in enumerate([read() for _ in range(5)]):
        work.insert(position * 5 + 2, reader)
    await asyncio.gather(*work)

    shown = await thread_unread(client, thread_id)
    defined = await db.fetchval(TOTAL_UNREAD_SQL, 1)
    above_read_point = await db.fetchval(
        "SELECT count(*) FROM whatsapp_message m "
        "JOIN whatsapp_conversation c ON c.id = m.conversation_id "
        "WHERE c.id = $1 AND m.seq > c.read_seq",
        int(thread_id),
    )
    assert shown == defined == above_read_point
    assert await badge(client) == shown
    seqs = await db.fetch(
        "SELECT seq FROM whatsapp_message WHERE conversation_id = $1 ORDER BY seq", int(thread_id)
    )
    assert [row["seq"] for row in seqs] == list(range(1, 22))
    state = await db.fetchrow(
        "SELECT message_seq, read_seq FROM whatsapp_conversation WHERE id = $1", int(thread_id)
    )
    assert state["message_seq"] == 21
    assert 0 < state["read_seq"] <= 21
    assert shown == 21 - state["read_seq"]
