"""The faults of tests/test_webhook_faults.py, against `python -m gql serve` with WORKERS=2:
pool connections of both workers killed mid-load, PostgreSQL restarted under the running
workers, and a redelivery storm spread over both. The in-process suite proves each rule
in detail; this one proves that two processes, each with its own pool and LISTEN connection,
keep them: every delivery answered 200 once the fault is gone, each message stored once
and announced once to every subscriber, whichever worker holds it."""

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
from pgserver.postgres_server import get_server

from db.migrations import upgrade_to_head
from tests.conftest import GraphQLClient, admin_execute, asyncpg_dsn
from tests.live import NEW_MESSAGE, GraphQLSocket
from tests.test_live_across_instances import Subscriber, ingest_on
from tests.test_webhook_faults import (
    STORM_CUSTOMERS,
    STORM_MESSAGES_EACH,
    STORM_SIZE,
    assert_clean_failure,
    assert_deliveries_survive_killed_backends,
    copies_per_provider_id,
    eventually,
    metric,
    single_message,
    start_cluster,
    stop_cluster,
    storm_sender,
)
from tests.test_workers import (
    MAX_SOCKETS,
    WorkersServer,
    subscribers_on_every_worker,
    workers_server,
)
from tests.webhooks import connect_channel, delivery, post_delivery, text_message


@contextlib.asynccontextmanager
async def client_of(server: WorkersServer, timeout_s: float = 30) -> AsyncIterator[GraphQLClient]:
    """A client whose concurrent requests open connections of their own: both workers
    accept some."""
    async with httpx.AsyncClient(base_url=server.base_url, timeout=timeout_s) as http:
        yield GraphQLClient(http)


async def test_two_workers_survive_pool_connections_killed_mid_load(
    database_url: str, tmp_path: Path, db: asyncpg.Connection
) -> None:
    with workers_server(database_url, tmp_path) as server:
        async with client_of(server) as client:
            await connect_channel(client)
            # The killer ends the backends of both workers' pools (all named wa-inbox).
            await assert_deliveries_survive_killed_backends(client.http, db, deliveries=160)


async def readiness(server: WorkersServer) -> tuple[int, dict[str, object]]:
    """/readyz on a connection of its own (so from either worker)."""
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        answer = await http.get("/readyz")
    return answer.status_code, answer.json()


async def test_two_workers_resume_storing_and_live_delivery_after_postgresql_restarts(
    tmp_path: Path,
) -> None:
    cluster = await asyncio.to_thread(get_server, tmp_path / "pgdata", cleanup_mode="delete")
    try:
        await admin_execute(cluster.get_uri("postgres"), 'CREATE DATABASE "wa_inbox"')
        url = cluster.get_uri("wa_inbox")
        await asyncio.to_thread(upgrade_to_head, url)
        with workers_server(url, tmp_path) as server:
            async with (
                client_of(server) as client,
                subscribers_on_every_worker(server) as subscribers,
            ):
                http = client.http
                await connect_channel(client)
                before = {
                    f"wamid.up.{n}": single_message(f"wamid.up.{n}", f"1650555{510 + n:04d}", n)
                    for n in range(8)
                }
                answers = await asyncio.gather(*(post_delivery(http, p) for p in before.values()))
                assert [answer.status_code for answer in answers] == [200] * 8

                await asyncio.to_thread(stop_cluster, cluster)
                for _ in range(4):
                    code, body = await readiness(server)
                    assert code == 503, body
                during = {
                    f"wamid.down.{n}": single_message(f"wamid.down.{n}", "16505550502", n)
                    for n in range(4)
                }
                answers = await asyncio.gather(*(post_delivery(http, p) for p in during.values()))
                for answer in answers:
                    assert answer.status_code == 503, answer.text
                    assert_clean_failure(answer)

                await asyncio.to_thread(start_cluster, cluster)

                async def ready_again() -> bool:
                    return (await readiness(server))[0] == 200

                assert await eventually(ready_again, within_s=30)
                after = {
                    f"wamid.again.{n}": single_message(
                        f"wamid.again.{n}", f"1650555{510 + n:04d}", n
                    )
                    for n in range(8)
                }
                answers = await asyncio.gather(*(post_delivery(http, p) for p in after.values()))
                assert [answer.status_code for answer in answers] == [200] * 8
                for payload in [*during.values(), *before.values()]:
                    answer = await post_delivery(http, payload)
                    assert answer.status_code == 200, answer.text

                await assert_live_delivery_resumes(server, subscribers)

        connection = await asyncpg.connect(asyncpg_dsn(url))
        try:
            copies = await copies_per_provider_id(connection)
        finally:
            await connection.close()
        del copies[None]  # the messages ingested over GraphQL, with no provider id
        assert copies == Counter(dict.fromkeys([*before, *during, *after], 1))
    finally:
        await asyncio.to_thread(cluster.cleanup)


async def assert_live_delivery_resumes(
    server: WorkersServer, subscribers: list[Subscriber]
) -> None:
    """Every subscriber, on either worker, receives a message stored after the restart.

    Each worker's LISTEN connection reconnects with a backoff of its own, and a newMessage
    published before it is back is lost to that worker's subscribers (badges resync, new
    messages do not): a new message is sent until one reaches everybody.
    """
    for attempt in range(10):
        stored = await ingest_on(server.instance, f"+1415555{201 + attempt:04d}", "after")
        thread_id = stored["thread"]["id"]
        reached = 0
        for subscriber in subscribers:
            try:
                await subscriber.event("messages", thread_id, wait_s=3)
            except AssertionError:
                break
            reached += 1
        if reached == len(subscribers):
            return
    raise AssertionError("live delivery did not resume on every worker after the restart")


async def test_redelivery_storm_on_two_workers_is_stored_and_announced_once_to_each_subscriber(
    database_url: str, tmp_path: Path, db: asyncpg.Connection
) -> None:
    batch = delivery(
        messages=[
            text_message(
                f"wamid.storm.{customer}.{n}",
                sender=storm_sender(customer),
                body=f"{customer}/{n}",
                timestamp=1_764_000_000 + n,
            )
            for n in range(STORM_MESSAGES_EACH)
            for customer in range(STORM_CUSTOMERS)
        ]
    )
    with workers_server(database_url, tmp_path) as server:
        # Five 1,000-message deliveries at once take a while on two cores.
        async with client_of(server, 180) as client, contextlib.AsyncExitStack() as stack:
            await connect_channel(client)
            sockets: list[GraphQLSocket] = []
            while True:
                socket = await stack.enter_async_context(GraphQLSocket.open(server.instance.ws_url))
                await socket.subscribe("m", NEW_MESSAGE)
                # Operations of a connection start in order: once this query answered, the
                # subscription is registered.
                await socket.subscribe("sync", "{ unreadCount }")
                assert (await socket.receive())["type"] == "next"
                assert await socket.receive() == {"id": "sync", "type": "complete"}
                sockets.append(socket)
                held = await asyncio.to_thread(server.worker_pids, "wa_inbox_websockets_open")
                if len(held) == 2 and all(held.values()):
                    break
                assert len(sockets) < MAX_SOCKETS, f"every socket went to one worker: {held}"

            announced = [Counter[str]() for _ in sockets]

            async def listen(socket: GraphQLSocket, seen: Counter[str]) -> None:
                while True:
                    payload = await socket.next_payload(wait_s=60)
                    assert "errors" not in payload, payload
                    seen[payload["data"]["newMessage"]["providerMessageId"]] += 1

            listening = [
                asyncio.create_task(listen(socket, seen))
                for socket, seen in zip(sockets, announced, strict=True)
            ]
            try:
                answers = await asyncio.gather(
                    *(post_delivery(client.http, batch) for _ in range(5))
                )
                assert [answer.status_code for answer in answers] == [200] * 5
                reports = [answer.json() for answer in answers]
                assert sum(report["stored"] for report in reports) == STORM_SIZE
                assert sum(report["duplicates"] for report in reports) == 4 * STORM_SIZE

                async def all_announced() -> bool:
                    for task in listening:
                        if task.done():
                            task.result()  # a subscriber failed: show why
                    return all(sum(seen.values()) >= STORM_SIZE for seen in announced)

                assert await eventually(all_announced, within_s=90)
                await asyncio.sleep(0.5)  # nothing more is on its way
            finally:
                for task in listening:
                    task.cancel()
                for task in listening:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

            metrics = (await client.http.get("/metrics")).text
    for seen in announced:
        assert len(seen) == STORM_SIZE
        assert set(seen.values()) == {1}
    # Both workers stored part of the storm; /metrics counts the whole server.
    assert metric(metrics, "messages_stored") == STORM_SIZE
    assert await copies_per_provider_id(db) == Counter(dict.fromkeys(announced[0], 1))
