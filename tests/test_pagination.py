"""Relay pages over threads and messages, and the single-object lookups beside them."""

import base64
from typing import Any

import pytest

from tests.conftest import GraphQLClient, ingest

THREADS = """
query Threads($first: Int, $after: String, $unreadOnly: Boolean) {
  threads(first: $first, after: $after, unreadOnly: $unreadOnly) {
    edges { cursor node { id lastMessageAt unreadCount } }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
  }
}
"""

MESSAGES = """
query Messages($id: ID!, $first: Int, $after: String, $last: Int, $before: String) {
  thread(id: $id) {
    messages(first: $first, after: $after, last: $last, before: $before) {
      edges { cursor node { id body sentAt } }
      pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
    }
  }
}
"""

MARK_READ = "mutation Read($id: ID) { markRead(threadId: $id) { totalUnread } }"

MESSAGE = """
query Message($id: ID!) {
  message(id: $id) { id body threadId thread { id phone unreadCount } }
}
"""

THREAD = """
query Thread($id: ID, $phone: String, $leadId: ID) {
  thread(id: $id, phone: $phone, leadId: $leadId) { id phone leadId canonicalKey }
}
"""

# (phone, sentAt of each of its messages): last activity ties on purpose (id decides).
THREAD_ACTIVITY = [
    ("+14155552600", ["2026-03-01T10:00:00Z"]),
    ("+14155552601", ["2026-03-01T09:00:00Z", "2026-03-01T10:05:00Z"]),
    ("+14155552602", ["2026-03-01T10:05:00Z"]),
    ("+14155552603", ["2026-03-01T12:00:00Z", "2026-03-01T08:00:00Z"]),
    ("+14155552604", ["2026-03-01T10:05:00Z"]),
    ("+14155552605", ["2026-02-28T23:59:59Z"]),
    ("+14155552606", ["2026-03-01T10:30:00Z"]),
    ("+14155552607", ["2026-03-01T10:30:00Z"]),
    ("+14155552608", ["2026-03-01T07:00:00Z"]),
    ("+14155552609", ["2026-03-01T11:00:00Z"]),
]


async def error_code(client: GraphQLClient, query: str, variables: dict[str, Any]) -> str:
    errors = await client.errors(query, variables)
    code: str = errors[0]["extensions"]["code"]
    return code


async def create_threads(client: GraphQLClient) -> list[str]:
    """The threads of THREAD_ACTIVITY; returns their ids, latest activity first."""
    activity: dict[str, tuple[str, int]] = {}
    for phone, sent_ats in THREAD_ACTIVITY:
        for n, sent_at in enumerate(sent_ats):
            # A thread's activity includes replies: its second message is an agent's.
            source = {"direction": "OUTBOUND", "source": "HUMAN"} if n else {}
            result = await ingest(client, phone=phone, body=sent_at, sentAt=sent_at, **source)
        thread_id = result["thread"]["id"]
        activity[thread_id] = (max(sent_ats), int(thread_id))
    return sorted(activity, key=lambda thread_id: activity[thread_id], reverse=True)


async def walk_threads(
    client: GraphQLClient, first: int, *, unread_only: bool = False
) -> list[dict[str, Any]]:
    """Every page of `threads`, checking each page's pageInfo on the way."""
    pages = []
    after = None
    while True:
        variables = {"first": first, "after": after, "unreadOnly": unread_only}
        page = (await client.execute(THREADS, variables))["threads"]
        pages.append(page)
        edges, info = page["edges"], page["pageInfo"]
        assert len(edges) <= first
        if edges:
            assert info["startCursor"] == edges[0]["cursor"]
            assert info["endCursor"] == edges[-1]["cursor"]
        if not info["hasNextPage"]:
            return pages
        assert len(edges) == first
        after = info["endCursor"]
        assert len(pages) < 50, "pagination does not terminate"


def ids_of(pages: list[dict[str, Any]]) -> list[str]:
    return [edge["node"]["id"] for page in pages for edge in page["edges"]]


async def test_threads_come_latest_activity_first_with_id_breaking_ties(
    client: GraphQLClient,
) -> None:
    expected = await create_threads(client)
    page = (await client.execute(THREADS, {"first": 100}))["threads"]
    assert [edge["node"]["id"] for edge in page["edges"]] == expected
    assert page["pageInfo"]["hasNextPage"] is False
    activity = [edge["node"]["lastMessageAt"] for edge in page["edges"]]
    assert activity == sorted(activity, reverse=True)


@pytest.mark.parametrize("first", [1, 3, 4, 5, 9, 10])
async def test_walking_thread_pages_returns_every_thread_exactly_once_in_order(
    client: GraphQLClient, first: int
) -> None:
    expected = await create_threads(client)
    pages = await walk_threads(client, first)
    assert ids_of(pages) == expected
    assert len(pages) == -(-len(expected) // first)
    assert [page["pageInfo"]["hasNextPage"] for page in pages] == [True] * (len(pages) - 1) + [
        False
    ]
    assert pages[0]["pageInfo"]["hasPreviousPage"] is False


async def test_unread_only_pages_walk_only_unread_threads_in_order(
    client: GraphQLClient,
) -> None:
    expected = await create_threads(client)
    read = expected[1::3]
    for thread_id in read:
        await client.execute(MARK_READ, {"id": thread_id})
    pages = await walk_threads(client, 2, unread_only=True)
    assert ids_of(pages) == [thread_id for thread_id in expected if thread_id not in read]
    assert all(edge["node"]["unreadCount"] > 0 for page in pages for edge in page["edges"])


async def test_an_empty_inbox_is_one_empty_page(client: GraphQLClient) -> None:
    page = (await client.execute(THREADS, {"first": 5}))["threads"]
    assert page["edges"] == []
    assert page["pageInfo"]["hasNextPage"] is False
    assert page["pageInfo"]["endCursor"] is None


async def test_a_page_of_one_hundred_threads_is_allowed(client: GraphQLClient) -> None:
    expected = await create_threads(client)
    page = (await client.execute(THREADS, {"first": 100}))["threads"]
    assert len(page["edges"]) == len(expected)


@pytest.mark.parametrize("first", [101, 1000, -1])
async def test_thread_page_size_out_of_range_is_bad_input(
    client: GraphQLClient, first: int
) -> None:
    await create_threads(client)
    assert await error_code(client, THREADS, {"first": first}) == "BAD_USER_INPUT"


@pytest.mark.parametrize("cursor", ["garbage", "!!!", "", "dGhyZWFkfG5vdHxhbg"])
async def test_a_garbage_thread_cursor_is_bad_input(client: GraphQLClient, cursor: str) -> None:
    await create_threads(client)
    assert await error_code(client, THREADS, {"first": 3, "after": cursor}) == "BAD_USER_INPUT"


def forged(kind: str, at: str, row_id: str) -> str:
    return base64.urlsafe_b64encode(f"{kind}|{at}|{row_id}".encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        forged("thread", "2026-01-01T00:00:00+00:00", "9" * 25),  # beyond bigint
        forged("thread", "2026-01-01T00:00:00+00:00", "-1"),
        forged("thread", "0001-01-01T00:00:00+14:00", "1"),  # before year 1 in UTC
        forged("thread", "9999-12-31T23:59:59-14:00", "1"),  # after year 9999 in UTC
        forged("thread", "2026-01-01T00:00:00", "1"),  # no offset
    ],
    ids=["huge-id", "negative-id", "too-early", "too-late", "naive"],
)
async def test_a_forged_thread_cursor_is_bad_input_not_a_server_error(
    client: GraphQLClient, cursor: str
) -> None:
    await create_threads(client)
    assert await error_code(client, THREADS, {"first": 3, "after": cursor}) == "BAD_USER_INPUT"


async def test_a_message_cursor_is_not_a_thread_cursor(client: GraphQLClient) -> None:
    thread_id = (await create_threads(client))[0]
    messages = (await client.execute(MESSAGES, {"id": thread_id, "first": 1}))["thread"]
    message_cursor = messages["messages"]["edges"][0]["cursor"]
    variables = {"first": 3, "after": message_cursor}
    assert await error_code(client, THREADS, variables) == "BAD_USER_INPUT"


async def test_a_thread_cursor_is_not_a_message_cursor(client: GraphQLClient) -> None:
    await create_threads(client)
    page = (await client.execute(THREADS, {"first": 1}))["threads"]
    thread_id, thread_cursor = page["edges"][0]["node"]["id"], page["edges"][0]["cursor"]
    for argument in ("after", "before"):
        variables = {"id": thread_id, argument: thread_cursor}
        assert await error_code(client, MESSAGES, variables) == "BAD_USER_INPUT"


# --- messages of one thread ------------------------------------------------------------------

PHONE = "+14155552671"
# Ingest order differs from chronology; two messages share a sentAt (id decides).
INGESTED = [
    ("2026-01-01T10:04:00Z", "e"),
    ("2026-01-01T10:00:00Z", "a"),
    ("2026-01-01T10:02:00Z", "c1"),
    ("2026-01-01T10:06:00Z", "g"),
    ("2026-01-01T10:01:00Z", "b"),
    ("2026-01-01T10:02:00Z", "c2"),
    ("2026-01-01T10:05:00+01:00", "earlier than a"),
    ("2026-01-01T10:05:00Z", "f"),
]
CHRONOLOGICAL = ["earlier than a", "a", "b", "c1", "c2", "e", "f", "g"]


async def create_thread_messages(client: GraphQLClient) -> str:
    sources = ["CUSTOMER", "BOT", "HUMAN", "AUTOMATION"]
    thread_ids = set()
    for n, (sent_at, body) in enumerate(INGESTED):
        source = sources[n % len(sources)]
        direction = "INBOUND" if source == "CUSTOMER" else "OUTBOUND"
        result = await ingest(
            client, phone=PHONE, body=body, sentAt=sent_at, source=source, direction=direction
        )
        thread_ids.add(result["thread"]["id"])
    assert len(thread_ids) == 1
    return thread_ids.pop()


async def message_page(client: GraphQLClient, thread_id: str, **arguments: Any) -> dict[str, Any]:
    data = await client.execute(MESSAGES, {"id": thread_id, **arguments})
    page: dict[str, Any] = data["thread"]["messages"]
    return page


def bodies(page: dict[str, Any]) -> list[str]:
    return [edge["node"]["body"] for edge in page["edges"]]


async def test_messages_are_chronological_whatever_the_ingest_order(
    client: GraphQLClient,
) -> None:
    thread_id = await create_thread_messages(client)
    page = await message_page(client, thread_id, first=100)
    assert bodies(page) == CHRONOLOGICAL
    assert page["pageInfo"]["hasNextPage"] is False
    assert page["pageInfo"]["hasPreviousPage"] is False


@pytest.mark.parametrize("size", [1, 2, 3, 8])
async def test_first_after_walks_forward_over_every_message_once(
    client: GraphQLClient, size: int
) -> None:
    thread_id = await create_thread_messages(client)
    seen: list[str] = []
    after = None
    for _ in range(20):
        page = await message_page(client, thread_id, first=size, after=after)
        seen.extend(bodies(page))
        info = page["pageInfo"]
        assert info["endCursor"] == page["edges"][-1]["cursor"]
        if not info["hasNextPage"]:
            break
        assert len(page["edges"]) == size
        after = info["endCursor"]
    assert seen == CHRONOLOGICAL


@pytest.mark.parametrize("size", [1, 2, 3, 8])
async def test_last_before_walks_backward_over_every_message_once(
    client: GraphQLClient, size: int
) -> None:
    thread_id = await create_thread_messages(client)
    pages: list[list[str]] = []
    before = None
    for _ in range(20):
        page = await message_page(client, thread_id, last=size, before=before)
        pages.append(bodies(page))
        info = page["pageInfo"]
        assert info["startCursor"] == page["edges"][0]["cursor"]
        if before is None:
            assert info["hasNextPage"] is False
        if not info["hasPreviousPage"]:
            break
        assert len(page["edges"]) == size
        before = info["startCursor"]
    for each in pages:
        assert each == [body for body in CHRONOLOGICAL if body in each]
    assert [body for each in reversed(pages) for body in each] == CHRONOLOGICAL


async def test_last_three_are_the_newest_three(client: GraphQLClient) -> None:
    thread_id = await create_thread_messages(client)
    page = await message_page(client, thread_id, last=3)
    assert bodies(page) == CHRONOLOGICAL[-3:]
    assert page["pageInfo"]["hasPreviousPage"] is True
    assert page["pageInfo"]["hasNextPage"] is False


async def test_first_and_last_together_are_bad_input(client: GraphQLClient) -> None:
    thread_id = await create_thread_messages(client)
    variables = {"id": thread_id, "first": 2, "last": 2}
    assert await error_code(client, MESSAGES, variables) == "BAD_USER_INPUT"


@pytest.mark.parametrize(
    "arguments", [{"first": 101}, {"last": 101}, {"first": -1}, {"last": -1}], ids=str
)
async def test_message_page_size_out_of_range_is_bad_input(
    client: GraphQLClient, arguments: dict[str, int]
) -> None:
    thread_id = await create_thread_messages(client)
    assert await error_code(client, MESSAGES, {"id": thread_id, **arguments}) == "BAD_USER_INPUT"


async def test_a_message_page_of_one_hundred_is_allowed(client: GraphQLClient) -> None:
    thread_id = await create_thread_messages(client)
    assert bodies(await message_page(client, thread_id, last=100)) == CHRONOLOGICAL


async def test_a_garbage_message_cursor_is_bad_input(client: GraphQLClient) -> None:
    thread_id = await create_thread_messages(client)
    for argument in ("after", "before"):
        variables = {"id": thread_id, argument: "not-a-cursor"}
        assert await error_code(client, MESSAGES, variables) == "BAD_USER_INPUT"


# --- single lookups ------------------------------------------------------------------------


async def test_message_by_id_resolves_its_thread(client: GraphQLClient) -> None:
    stored = await ingest(client, phone=PHONE, body="hello")
    message = (await client.execute(MESSAGE, {"id": stored["message"]["id"]}))["message"]
    assert message["id"] == stored["message"]["id"]
    assert message["body"] == "hello"
    assert message["threadId"] == stored["thread"]["id"]
    assert message["thread"] == {"id": stored["thread"]["id"], "phone": PHONE, "unreadCount": 1}


async def test_message_by_unknown_id_is_null(client: GraphQLClient) -> None:
    await ingest(client, phone=PHONE, body="hello")
    assert (await client.execute(MESSAGE, {"id": "987654321"}))["message"] is None


async def test_another_business_message_is_null(client: GraphQLClient) -> None:
    theirs = await ingest(client.as_business(2), phone=PHONE, body="private")
    assert (await client.execute(MESSAGE, {"id": theirs["message"]["id"]}))["message"] is None


@pytest.mark.parametrize("message_id", ["abc", "99999999999999999999999", "-5", "1e3"])
async def test_message_by_malformed_id_is_bad_input(client: GraphQLClient, message_id: str) -> None:
    assert await error_code(client, MESSAGE, {"id": message_id}) == "BAD_USER_INPUT"


async def test_thread_by_id(client: GraphQLClient) -> None:
    stored = await ingest(client, phone=PHONE, body="hi")
    await ingest(client, phone="+14155552672", body="someone else")
    found = (await client.execute(THREAD, {"id": stored["thread"]["id"]}))["thread"]
    assert found["id"] == stored["thread"]["id"]
    assert found["phone"] == PHONE


@pytest.mark.parametrize(
    "spelling", ["+14155552671", "+1 415-555-2671", "14155552671", "(415) 555-2671", "4155552671"]
)
async def test_thread_by_any_spelling_of_the_phone(client: GraphQLClient, spelling: str) -> None:
    stored = await ingest(client, phone="+1 (415) 555 2671", body="hi")
    await ingest(client, phone="+14155552672", body="someone else")
    found = (await client.execute(THREAD, {"phone": spelling}))["thread"]
    assert found is not None
    assert found["id"] == stored["thread"]["id"]


async def test_thread_by_lead_id(client: GraphQLClient) -> None:
    stored = await ingest(client, phone=PHONE, leadId="L-42", body="hi")
    await ingest(client, phone="+14155552672", leadId="L-43", body="someone else")
    found = (await client.execute(THREAD, {"leadId": "L-42"}))["thread"]
    assert found["id"] == stored["thread"]["id"]
    assert found["leadId"] == "L-42"


async def test_thread_keyed_by_lead_is_found_by_its_phone(client: GraphQLClient) -> None:
    stored = await ingest(client, phone=PHONE, leadId="L-42", body="hi")
    found = (await client.execute(THREAD, {"phone": "415-555-2671"}))["thread"]
    assert found is not None
    assert found["id"] == stored["thread"]["id"]


@pytest.mark.parametrize(
    "variables",
    [{"id": "987654321"}, {"phone": "+14155550000"}, {"leadId": "L-404"}],
    ids=["id", "phone", "leadId"],
)
async def test_thread_lookup_without_a_match_is_null(
    client: GraphQLClient, variables: dict[str, str]
) -> None:
    await ingest(client, phone=PHONE, leadId="L-42", body="hi")
    assert (await client.execute(THREAD, variables))["thread"] is None


async def test_another_business_thread_is_null(client: GraphQLClient) -> None:
    theirs = await ingest(client.as_business(2), phone=PHONE, leadId="L-42", body="private")
    for variables in ({"id": theirs["thread"]["id"]}, {"phone": PHONE}, {"leadId": "L-42"}):
        assert (await client.execute(THREAD, variables))["thread"] is None
