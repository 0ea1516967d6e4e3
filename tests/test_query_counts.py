"""No N+1: the statements a page costs do not grow with the page's size."""

from typing import Any

import pytest

from tests.conftest import GraphQLClient, StatementCounter, ingest

THREADS = """
query Threads($first: Int!) {
  threads(first: $first) {
    edges {
      cursor
      node {
        id canonicalKey phone leadId status startedAt lastMessageAt lastReadAt
        unreadCount phones
        lastMessage { id body sentAt thread { id } }
      }
    }
    pageInfo { hasNextPage endCursor }
  }
}
"""

MESSAGES = """
query Messages($id: ID!, $first: Int!) {
  thread(id: $id) {
    id
    messages(first: $first) {
      edges { node { id body sentAt thread { id unreadCount } } }
      pageInfo { hasNextPage }
    }
  }
}
"""

THREAD_COUNT = 22
MESSAGES_PER_THREAD = 3


async def create_inbox(client: GraphQLClient) -> None:
    """22 threads of 3 messages each (two inbound, one reply); one thread read, one by lead."""
    for n in range(THREAD_COUNT):
        phone = f"+1415555{n:04d}"
        lead = {"leadId": f"L-{n}"} if n == 5 else {}
        for m in range(MESSAGES_PER_THREAD):
            source = {"direction": "OUTBOUND", "source": "BOT"} if m == 1 else {}
            sent_at = f"2026-01-01T{10 + m:02d}:{n:02d}:00Z"
            result = await ingest(
                client, phone=phone, body=f"{n}/{m}", sentAt=sent_at, **lead, **source
            )
        if n == 7:
            await client.execute(
                "mutation R($id: ID) { markRead(threadId: $id) { totalUnread } }",
                {"id": result["thread"]["id"]},
            )


async def statements_for(
    client: GraphQLClient,
    count_statements: StatementCounter,
    query: str,
    variables: dict[str, Any],
) -> tuple[int, dict[str, Any]]:
    count_statements.statements.clear()
    data = await client.execute(query, variables)
    return count_statements.count, data


async def test_thread_page_statements_do_not_grow_with_page_size(
    client: GraphQLClient, count_statements: StatementCounter
) -> None:
    await create_inbox(client)

    small, small_page = await statements_for(client, count_statements, THREADS, {"first": 2})
    large, large_page = await statements_for(client, count_statements, THREADS, {"first": 20})

    assert len(small_page["threads"]["edges"]) == 2
    assert len(large_page["threads"]["edges"]) == 20
    nodes = [edge["node"] for edge in large_page["threads"]["edges"]]
    assert all(node["lastMessage"]["thread"]["id"] == node["id"] for node in nodes)
    assert sorted(node["unreadCount"] for node in nodes).count(0) == 1
    assert small > 0
    assert large == small, count_statements.statements


@pytest.mark.parametrize("sizes", [(2, 20), (1, 66)])
async def test_message_page_with_threads_statements_do_not_grow_with_page_size(
    client: GraphQLClient, count_statements: StatementCounter, sizes: tuple[int, int]
) -> None:
    await create_inbox(client)
    phone = "+14155559999"
    for n in range(70):
        thread_id = (await ingest(client, phone=phone, body=f"m{n}"))["thread"]["id"]

    counts = []
    for size in sizes:
        count, data = await statements_for(
            client, count_statements, MESSAGES, {"id": thread_id, "first": size}
        )
        edges = data["thread"]["messages"]["edges"]
        assert len(edges) == size
        assert {edge["node"]["thread"]["id"] for edge in edges} == {thread_id}
        assert {edge["node"]["thread"]["unreadCount"] for edge in edges} == {70}
        counts.append(count)
    assert counts[0] > 0
    assert counts[0] == counts[1], count_statements.statements
