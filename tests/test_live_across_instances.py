"""Live updates across server instances: two real `python -m gql serve` processes on one
database, a subscriber on instance A and the writes on instance B, over Redis pub/sub and
over PostgreSQL LISTEN/NOTIFY, including a Redis outage and its recovery."""

import asyncio
import contextlib
import random
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import AUTH_SECRET, INGEST, asyncpg_dsn, token_for
from tests.live import NEW_MESSAGE, UNREAD_COUNT_CHANGED, GraphQLSocket
from tests.test_server_process import free_port, running_server

SHARED_REDIS = ("127.0.0.1", 6379)
EVENT_WAIT_S = 10.0


def redis_reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as probe:
            probe.sendall(b"PING\r\n")
            return probe.recv(16).startswith(b"+PONG")
    except OSError:
        return False


needs_shared_redis = pytest.mark.skipif(
    not redis_reachable(*SHARED_REDIS),
    reason="these cross-instance tests need a Redis server at 127.0.0.1:6379 (not reachable)",
)


# --- server instances ---------------------------------------------------------------------


@dataclass(frozen=True)
class Instance:
    name: str
    base_url: str
    log_path: Path

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://", 1) + "/graphql"

    def log_lines(self, marker: str = "") -> list[str]:
        return [line for line in self.log_path.read_text().splitlines() if marker in line]


@contextlib.contextmanager
def two_instances(
    database_url: str, broadcast_url: str, tmp_path: Path
) -> Iterator[tuple[Instance, Instance]]:
    """Instances A and B: one database, one AUTH_SECRET, one BROADCAST_URL, two ports."""
    env = {
        "DATABASE_URL": database_url,
        "AUTH_SECRET": AUTH_SECRET,
        "BROADCAST_URL": broadcast_url,
        "LOG_LEVEL": "INFO",
    }
    with contextlib.ExitStack() as stack:
        instances = []
        for name in ("A", "B"):
            log_path = tmp_path / f"server-{name}.log"
            base_url = stack.enter_context(running_server(env, log_path))
            instances.append(Instance(name, base_url, log_path))
        a, b = instances
        try:
            yield a, b
        except BaseException:
            for instance in instances:
                print(f"--- log of instance {instance.name} ---")
                print(instance.log_path.read_text())
            raise


async def isolate_row_ids(database_url: str) -> None:
    """Start this database's row ids at a random offset.

    Every test database is cloned from one template, so two tests running at once would
    number their threads and messages alike; the Redis channel is shared by all of them, and
    subscribers are told apart by thread id.
    """
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await connection.execute(
            "SELECT setval(format('%I.%I', schemaname, sequencename), $1) "
            "FROM pg_sequences WHERE schemaname = 'public'",
            random.randrange(10**6, 10**12),
        )
    finally:
        await connection.close()


async def graphql(
    instance: Instance, query: str, variables: dict[str, Any] | None = None, business_id: int = 1
) -> dict[str, Any]:
    """Run a query or mutation over HTTP on `instance`; it must succeed with HTTP 200."""
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            f"{instance.base_url}/graphql",
            json={"query": query, "variables": variables or {}},
            headers={"Authorization": f"Bearer {token_for(business_id)}"},
        )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"]
    return data


async def ingest_on(
    instance: Instance, phone: str, body: str, business_id: int = 1
) -> dict[str, Any]:
    message = {"phone": phone, "body": body, "direction": "INBOUND", "source": "CUSTOMER"}
    data = await graphql(instance, INGEST, {"input": message}, business_id)
    stored: dict[str, Any] = data["ingestMessage"]
    return stored


async def mark_read_on(instance: Instance, thread_id: str) -> int:
    data = await graphql(
        instance,
        "mutation Read($id: ID!) { markRead(threadId: $id) { totalUnread } }",
        {"id": thread_id},
    )
    total: int = data["markRead"]["totalUnread"]
    return total


async def readiness(instance: Instance) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.get(f"{instance.base_url}/readyz")
    return response.status_code, response.json()


async def wait_for_pubsub_status(instance: Instance, status: str, wait_s: float) -> None:
    """Poll /readyz until `checks.pubsub.status` is `status`; /readyz must answer 200."""
    deadline = time.monotonic() + wait_s
    while True:
        code, body = await readiness(instance)
        assert code == 200, (code, body)
        if body["checks"]["pubsub"]["status"] == status:
            return
        assert time.monotonic() < deadline, (
            f"/readyz of instance {instance.name} did not report pub/sub {status!r} "
            f"within {wait_s}s: {body}"
        )
        await asyncio.sleep(0.2)


# --- subscribers --------------------------------------------------------------------------

FIELDS = {"messages": "newMessage", "badge": "unreadCountChanged"}


def thread_of(data: dict[str, Any]) -> str | None:
    """The thread a `newMessage` or `unreadCountChanged` event is about."""
    [value] = data.values()
    return value.get("threadId") if isinstance(value, dict) else None


@dataclass
class Subscriber:
    """A websocket with subscriptions; data frames are kept until a test asks for them."""

    socket: GraphQLSocket
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    _syncs: int = 0

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, instance: Instance, business_id: int) -> AsyncIterator["Subscriber"]:
        async with GraphQLSocket.open(instance.ws_url, business_id=business_id) as socket:
            subscriber = cls(socket)
            await socket.subscribe("messages", NEW_MESSAGE)
            await socket.subscribe("badge", UNREAD_COUNT_CHANGED)
            await subscriber.sync()
            yield subscriber

    async def sync(self) -> None:
        """Wait until the server has registered the subscriptions sent so far.

        A connection's operations start in the order they arrive and a subscription
        registers in its first step, so the answer to a later query proves it registered.
        """
        self._syncs += 1
        operation_id = f"sync-{self._syncs}"
        await self.socket.subscribe(operation_id, "{ unreadCount }")
        deadline = time.monotonic() + EVENT_WAIT_S
        while True:
            message = await self._receive_before(deadline)
            if message.get("id") == operation_id:
                if message["type"] == "complete":
                    return
                assert message["type"] == "next", message
            else:
                self._keep(message)

    async def _receive_before(self, deadline: float) -> dict[str, Any]:
        """The next message that is not a keep-alive, by `deadline` (TimeoutError otherwise).

        The deadline bounds the whole wait: `GraphQLSocket.receive` starts its timeout again
        after every keep-alive it skips, and the server sends one every 15 s.
        """
        remaining = max(deadline - time.monotonic(), 0.001)
        async with asyncio.timeout(remaining):
            return await self.socket.receive(remaining)

    def _keep(self, message: dict[str, Any]) -> None:
        assert message["type"] in ("next", "data"), message
        payload = message["payload"]
        assert not payload.get("errors"), message
        self.received.append((message["id"], payload["data"]))

    async def event(
        self, operation_id: str, thread_id: str, wait_s: float = EVENT_WAIT_S
    ) -> dict[str, Any]:
        """The next data of `operation_id` about `thread_id`; other threads are passed over."""
        deadline = time.monotonic() + wait_s
        while True:
            for index, (received_id, data) in enumerate(self.received):
                if received_id == operation_id and thread_of(data) == thread_id:
                    del self.received[index]
                    found: dict[str, Any] = data[FIELDS[operation_id]]
                    return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"no {operation_id!r} event for thread {thread_id} within {wait_s}s; "
                    f"received meanwhile: {self.received}"
                )
            with contextlib.suppress(TimeoutError):
                self._keep(await self._receive_before(deadline))

    async def quiet_for(self, wait_s: float) -> list[tuple[str, dict[str, Any]]]:
        """Everything received within `wait_s`, the frames kept so far included."""
        deadline = time.monotonic() + wait_s
        while deadline > time.monotonic():
            try:
                self._keep(await self._receive_before(deadline))
            except TimeoutError:
                break
        return list(self.received)


# --- delivery across instances ------------------------------------------------------------


async def assert_delivered_across_instances(a: Instance, b: Instance) -> None:
    async with Subscriber.open(a, business_id=1) as subscriber:
        first = await ingest_on(b, "+14155550101", "hello from B")
        thread_id = first["thread"]["id"]
        message = await subscriber.event("messages", thread_id)
        assert message["id"] == first["message"]["id"]
        assert message["body"] == "hello from B"
        assert message["thread"]["phone"] == "+14155550101"
        assert message["thread"]["unreadCount"] == 1
        badge = await subscriber.event("badge", thread_id)
        assert badge == {"threadId": thread_id, "unreadCount": 1, "totalUnread": 1}

        other = await ingest_on(b, "+14155550102", "another thread")
        other_id = other["thread"]["id"]
        assert (await subscriber.event("messages", other_id))["body"] == "another thread"
        badge = await subscriber.event("badge", other_id)
        assert badge == {"threadId": other_id, "unreadCount": 1, "totalUnread": 2}

        assert await mark_read_on(b, thread_id) == 1
        badge = await subscriber.event("badge", thread_id)
        assert badge == {"threadId": thread_id, "unreadCount": 0, "totalUnread": 1}


@needs_shared_redis
async def test_subscriber_on_one_instance_receives_writes_of_another_over_redis(
    database_url: str, tmp_path: Path
) -> None:
    await isolate_row_ids(database_url)
    redis_url = f"redis://{SHARED_REDIS[0]}:{SHARED_REDIS[1]}/0"
    with two_instances(database_url, redis_url, tmp_path) as (a, b):
        await assert_delivered_across_instances(a, b)


async def test_subscriber_on_one_instance_receives_writes_of_another_over_postgres_notify(
    database_url: str, tmp_path: Path
) -> None:
    # The test database's own URL, whatever its form (a unix socket URL included).
    with two_instances(database_url, database_url, tmp_path) as (a, b):
        code, body = await readiness(a)
        assert code == 200, body
        assert body["checks"]["pubsub"]["backend"] != "memory", body
        await assert_delivered_across_instances(a, b)


@needs_shared_redis
async def test_subscriber_of_another_business_receives_nothing_across_instances(
    database_url: str, tmp_path: Path
) -> None:
    await isolate_row_ids(database_url)
    redis_url = f"redis://{SHARED_REDIS[0]}:{SHARED_REDIS[1]}/0"
    with two_instances(database_url, redis_url, tmp_path) as (a, b):
        async with (
            Subscriber.open(a, business_id=1) as business_1,
            Subscriber.open(a, business_id=2) as business_2,
        ):
            stored = await ingest_on(b, "+14155550103", "for business 1 only")
            thread_id = stored["thread"]["id"]
            assert (await business_1.event("messages", thread_id))["body"] == "for business 1 only"
            await business_1.event("badge", thread_id)

            # Other tests may publish on the shared channel at the same time: their threads
            # have other ids, so only this test's thread counts.
            received = await business_2.quiet_for(1.0)
            assert [data for _, data in received if thread_of(data) == thread_id] == []

            # Business 2's subscriber is alive: the first thing it receives is its own event.
            own = await ingest_on(b, "+14155550103", "for business 2", business_id=2)
            own_thread = own["thread"]["id"]
            assert own_thread != thread_id
            assert (await business_2.event("messages", own_thread))["body"] == "for business 2"
            badge = await business_2.event("badge", own_thread)
            assert badge == {"threadId": own_thread, "unreadCount": 1, "totalUnread": 1}
            leaked = [data for _, data in business_2.received if thread_of(data) == thread_id]
            assert leaked == []


# --- a Redis outage -----------------------------------------------------------------------


async def wait_for_outage_log(instance: Instance, logged_before: int, wait_s: float = 3) -> None:
    """A `[WA-LIVE]` warning or error logged since line `logged_before`: the outage itself."""
    deadline = time.monotonic() + wait_s
    while True:
        logged = instance.log_lines()[logged_before:]
        warnings = [line for line in logged if " WARNING " in line or " ERROR " in line]
        if any("[WA-LIVE]" in line for line in warnings):
            return
        assert time.monotonic() < deadline, (
            f"instance {instance.name} logged no [WA-LIVE] warning or error about the pub/sub "
            f"outage; its log since the outage: {logged}"
        )
        await asyncio.sleep(0.1)


@dataclass
class RedisServer:
    """A redis-server of this test's own, to stop and start again on the same port."""

    executable: str
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.process is None
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    self.executable,
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 10
        while not redis_reachable("127.0.0.1", self.port):
            assert self.process.poll() is None, self.log_path.read_text()
            assert time.monotonic() < deadline, self.log_path.read_text()
            time.sleep(0.05)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.skip("the Redis outage test starts its own redis-server, which is not installed")
    server = RedisServer(executable, free_port(), tmp_path / "redis.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_badges_resync_and_delivery_resumes_after_a_redis_outage(
    database_url: str, tmp_path: Path, own_redis: RedisServer
) -> None:
    with two_instances(database_url, own_redis.url, tmp_path) as (a, b):
        await wait_for_pubsub_status(a, "ok", 10)
        await wait_for_pubsub_status(b, "ok", 10)
        async with Subscriber.open(a, business_id=1) as subscriber:
            before = await ingest_on(b, "+14155550104", "before the outage")
            before_id = before["thread"]["id"]
            badge = await subscriber.event("badge", before_id)
            assert badge == {"threadId": before_id, "unreadCount": 1, "totalUnread": 1}

            logged_before = len(a.log_lines())
            own_redis.stop()
            await wait_for_pubsub_status(a, "degraded", 10)
            await wait_for_outage_log(a, logged_before)

            # Writes go on during the outage; only their live delivery is at stake.
            during = await ingest_on(b, "+14155550105", "during the outage")
            during_id = during["thread"]["id"]
            assert during["thread"]["unreadCount"] == 1
            code, body = await readiness(a)
            assert code == 200, body
            assert body["checks"]["pubsub"]["status"] == "degraded", body

            own_redis.start()
            badge = await subscriber.event("badge", during_id, wait_s=15)
            assert badge == {"threadId": during_id, "unreadCount": 1, "totalUnread": 2}
            await wait_for_pubsub_status(a, "ok", 10)

            # Subscriptions go on: a write on B after the restart is delivered live again.
            await wait_for_pubsub_status(b, "ok", 10)
            after = await ingest_on(b, "+14155550106", "after the outage")
            after_id = after["thread"]["id"]
            message = await subscriber.event("messages", after_id)
            assert message["body"] == "after the outage"
            badge = await subscriber.event("badge", after_id)
            assert badge == {"threadId": after_id, "unreadCount": 1, "totalUnread": 3}
