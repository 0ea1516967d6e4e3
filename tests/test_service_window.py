"""Thread.serviceWindowExpiresAt (issue 16): WhatsApp's customer service window closes 24 hours
after the customer's latest message; business messages do not extend it."""

from datetime import UTC, datetime, timedelta

from tests.conftest import GraphQLClient, StatementCounter, ingest

WINDOW = """
query($id: ID!) { thread(id: $id) { serviceWindowExpiresAt } }
"""
PAGE = "{ threads(first: 50) { edges { node { id serviceWindowExpiresAt } } } }"


def at(hours: float) -> str:
    return (datetime(2026, 11, 30, 9, 0, tzinfo=UTC) + timedelta(hours=hours)).isoformat()


async def expires(client: GraphQLClient, thread_id: str) -> datetime | None:
    data = await client.execute(WINDOW, {"id": thread_id})
    raw = data["thread"]["serviceWindowExpiresAt"]
    return None if raw is None else datetime.fromisoformat(raw)


async def test_the_window_closes_a_day_after_the_customers_latest_message(
    client: GraphQLClient,
) -> None:
    first = await ingest(client, phone="+14155550180", body="hi", sentAt=at(0))
    thread_id = first["thread"]["id"]
    assert await expires(client, thread_id) == datetime.fromisoformat(at(24))

    await ingest(client, phone="+14155550180", body="still there?", sentAt=at(5))
    assert await expires(client, thread_id) == datetime.fromisoformat(at(29))
    # A message delivered late, sent before the latest one, moves nothing.
    await ingest(client, phone="+14155550180", body="late", sentAt=at(2))
    assert await expires(client, thread_id) == datetime.fromisoformat(at(29))


async def test_business_messages_do_not_extend_it_and_a_silent_customer_has_none(
    client: GraphQLClient,
) -> None:
    outbound = {"direction": "OUTBOUND", "source": "BOT"}
    opened = await ingest(client, phone="+14155550181", body="offer", sentAt=at(0), **outbound)
    thread_id = opened["thread"]["id"]
    assert await expires(client, thread_id) is None

    await ingest(client, phone="+14155550181", body="yes please", sentAt=at(1))
    await ingest(client, phone="+14155550181", body="great", sentAt=at(10), **outbound)
    human = {"direction": "OUTBOUND", "source": "HUMAN"}
    await ingest(client, phone="+14155550181", body="shipped", sentAt=at(20), **human)
    assert await expires(client, thread_id) == datetime.fromisoformat(at(25))


async def test_a_page_of_threads_reads_every_window_in_one_statement(
    client: GraphQLClient, count_statements: StatementCounter
) -> None:
    for n in range(12):
        await ingest(client, phone=f"+1415555{190 + n:04d}", body="hello", sentAt=at(n))
    count_statements.statements.clear()
    nodes = [edge["node"] for edge in (await client.execute(PAGE))["threads"]["edges"]]
    windows = [s for s in count_statements.statements if "message_type <> 'system'" in s]
    assert len(windows) == 1, count_statements.statements
    assert sorted(datetime.fromisoformat(n["serviceWindowExpiresAt"]) for n in nodes) == [
        datetime.fromisoformat(at(n + 24)) for n in range(12)
    ]
