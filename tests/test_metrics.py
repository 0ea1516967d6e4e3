"""/metrics of one process (WORKERS=1, no multiprocess directory): today's counters under
their names, whole numbers written whole, and the latencies and gauges added for workers,
all readable by prometheus_client's own parser."""

import re
from dataclasses import fields

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from starlette.applications import Starlette

from domain.metrics import InboxMetrics
from gql.metrics import OperationLabels
from tests.conftest import GraphQLClient, ingest
from tests.live import NEW_MESSAGE, GraphQLSocket, serving
from tests.test_webhook_faults import eventually
from tests.webhooks import connect_channel, delivery, post_delivery, text_message


async def scrape(http: httpx.AsyncClient) -> dict[str, list[Sample]]:
    answer = await http.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {family.name: family.samples for family in text_string_to_metric_families(answer.text)}


def counts(samples: list[Sample], label: str) -> dict[str, float]:
    """A histogram's observation count per value of `label`."""
    return {s.labels[label]: s.value for s in samples if s.name.endswith("_count")}


async def test_every_counter_keeps_its_name_and_is_written_as_a_whole_number(
    http: httpx.AsyncClient, client: GraphQLClient
) -> None:
    await ingest(client, phone="+14155550101", body="hello")
    text = (await http.get("/metrics")).text
    for field in fields(InboxMetrics):
        assert f"# TYPE wa_inbox_{field.name}_total counter" in text
        assert re.search(rf"^wa_inbox_{field.name}_total \d+$", text, re.MULTILINE), field.name
    assert "wa_inbox_messages_stored_total 1\n" in text
    assert "_created" not in text
    [stored] = (await scrape(http))["wa_inbox_messages_stored"]
    assert stored.value == 1


async def test_request_latency_is_labelled_by_operation_name(
    http: httpx.AsyncClient, client: GraphQLClient
) -> None:
    await client.execute("query Badge { unreadCount }")
    await client.execute("query Badge { unreadCount }")
    await client.execute("{ unreadCount }")
    requests = counts(
        (await scrape(http))["wa_inbox_graphql_request_duration_seconds"], "operation"
    )
    assert requests == {"Badge": 2, "anonymous": 1}


def test_operation_names_past_the_limit_are_counted_as_other() -> None:
    from graphql import parse

    labels = OperationLabels(limit=2)

    def label(document: str) -> str:
        [operation] = parse(document).definitions
        return labels.of([operation])  # type: ignore[list-item]

    assert [label(f"query Q{n} {{ a }}") for n in range(4)] == ["Q0", "Q1", "other", "other"]
    assert label("query Q1 { a }") == "Q1"
    assert label("{ a }") == "anonymous"
    assert labels.of([]) == "anonymous"
    assert label(f"query {'N' * 101} {{ a }}") == "other"


async def test_ingest_latency_counts_ingest_mutations_and_webhook_deliveries(
    http: httpx.AsyncClient, client: GraphQLClient
) -> None:
    await connect_channel(client)
    await ingest(client, phone="+14155550101", body="over GraphQL")
    await ingest(client, phone="+14155550101", body="again")
    await client.execute("{ unreadCount }")  # neither a read nor another mutation is an ingest
    answer = await post_delivery(http, delivery(messages=[text_message("wamid.metrics.1")]))
    assert answer.status_code == 200
    ingests = counts((await scrape(http))["wa_inbox_ingest_duration_seconds"], "entry")
    assert ingests == {"graphql": 2, "webhook": 1}


async def test_open_websockets_and_commit_to_delivery_lag(
    app: Starlette, http: httpx.AsyncClient, client: GraphQLClient
) -> None:
    def open_websockets(metrics: dict[str, list[Sample]]) -> float:
        [gauge] = metrics["wa_inbox_websockets_open"]
        return gauge.value

    async with serving(app) as url:
        async with GraphQLSocket.open(url) as socket:
            await socket.subscribe("m", NEW_MESSAGE)
            assert open_websockets(await scrape(http)) == 1
            # Operations of a connection start in order: once this query answered, the
            # subscription is registered.
            await socket.subscribe("sync", "{ unreadCount }")
            assert (await socket.receive())["type"] == "next"
            assert await socket.receive() == {"id": "sync", "type": "complete"}
            await ingest(client, phone="+14155550101", body="live")
            payload = await socket.next_payload()
            assert payload["data"]["newMessage"]["body"] == "live"
            lag = counts((await scrape(http))["wa_inbox_live_delivery_lag_seconds"], "subscription")
            assert lag == {"newMessage": 1}

        async def closed() -> bool:
            return open_websockets(await scrape(http)) == 0

        assert await eventually(closed)


async def test_pool_gauge_follows_connections_checked_out(
    app: Starlette, http: httpx.AsyncClient
) -> None:
    def checked_out(metrics: dict[str, list[Sample]]) -> float:
        [gauge] = metrics["wa_inbox_database_pool_checked_out"]
        return gauge.value

    assert checked_out(await scrape(http)) == 0
    async with app.state.engine.connect(), app.state.engine.connect():
        assert checked_out(await scrape(http)) == 2
    assert checked_out(await scrape(http)) == 0
    [size] = (await scrape(http))["wa_inbox_database_pool_size"]
    assert size.value == 20
