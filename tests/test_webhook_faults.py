"""Faults the server must survive, against real PostgreSQL: a failing conversation upsert,
pool connections killed mid-load, PostgreSQL restarted under the running server, requests
cancelled mid-query, statement timeouts, deadlocks and serialization failures, and a
redelivery storm. Whatever failed answers a clean 5xx; once the fault is gone, every
delivery is answered 200 and each message is stored (and announced) exactly once."""

import asyncio
import contextlib
import dataclasses
import json
import logging
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
from pgserver._commands import pg_ctl  # type: ignore[attr-defined]  # defined at import
from pgserver.postgres_server import PostgresServer, get_server
from sqlalchemy import TextClause, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.applications import Starlette

from db.engine import build_sessionmaker
from db.errors import DEADLOCK_DETECTED, SERIALIZATION_FAILURE, sqlstate_of
from db.migrations import upgrade_to_head
from db.unit_of_work import run_unit_of_work
from gql.app import create_app
from gql.settings import Settings
from tests.conftest import INGEST, GraphQLClient, admin_execute, asyncpg_dsn
from tests.live import NEW_MESSAGE, GraphQLSocket, serving
from tests.webhooks import (
    WEBHOOK,
    connect_channel,
    delivery,
    post_delivery,
    signed_headers,
    text_message,
)

# SQLSTATEs of errors a unit of work must not repeat (PostgreSQL's errcodes appendix).
UNIQUE_VIOLATION = "23505"
BAD_TEXT_REPRESENTATION = "22P02"
QUERY_CANCELED = "57014"  # what statement_timeout raises

DROP_CONVERSATION_KEY = (
    "ALTER TABLE whatsapp_conversation DROP CONSTRAINT uq_wa_conv_business_canonical"
)
# The app's own backends on the test's database (the `db` fixture and the test's lock holders
# carry no application_name, so they are never among them).
APP_BACKENDS = (
    "FROM pg_stat_activity WHERE application_name = 'wa-inbox' AND datname = current_database()"
)


# --- helpers -------------------------------------------------------------------------------


def single_message(provider_message_id: str, sender: str, n: int = 0) -> dict[str, Any]:
    """A delivery of one text message from `sender`."""
    message = text_message(
        provider_message_id, sender=sender, body=f"message {n}", timestamp=1_764_000_000 + n
    )
    return delivery(messages=[message])


async def copies_per_provider_id(connection: asyncpg.Connection) -> Counter[str]:
    rows = await connection.fetch(
        "SELECT provider_message_id, count(*) AS n FROM whatsapp_message "
        "GROUP BY provider_message_id"
    )
    return Counter({row["provider_message_id"]: row["n"] for row in rows})


def metric(metrics_text: str, name: str) -> int:
    """One counter's value from the /metrics exposition."""
    found = re.search(rf"^wa_inbox_{name}_total (\d+)$", metrics_text, re.MULTILINE)
    assert found is not None, f"{name} missing from /metrics"
    return int(found.group(1))


def assert_clean_failure(response: httpx.Response) -> None:
    """A failed delivery answers 5xx with a request id and a short reason, nothing internal."""
    assert 500 <= response.status_code < 600, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error", "requestId"}, body
    assert "Traceback" not in response.text
    assert "asyncpg" not in response.text
    assert "SELECT" not in response.text
    assert "INSERT" not in response.text


async def eventually(check: Callable[[], Awaitable[bool]], *, within_s: float = 10.0) -> bool:
    """Whether `check` comes true within `within_s` (a generous bound, not a timing claim)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not await check():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


@contextlib.asynccontextmanager
async def app_client(
    settings: Settings, **changes: Any
) -> AsyncIterator[tuple[Starlette, GraphQLClient]]:
    """An app built from `settings` with `changes`, running its lifespan, and a client of it."""
    app = create_app(dataclasses.replace(settings, **changes))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield app, GraphQLClient(http)


@contextlib.asynccontextmanager
async def conversation_locked(database_url: str, phone_e164: str) -> AsyncIterator[None]:
    """Holds the row lock of the customer's conversation from a connection of its own."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        async with connection.transaction():
            locked = await connection.fetch(
                "SELECT id FROM whatsapp_conversation WHERE phone_e164 = $1 FOR UPDATE",
                phone_e164,
            )
            assert len(locked) == 1
            yield
    finally:
        await connection.close()


async def app_waits_on_a_lock(db: asyncpg.Connection) -> bool:
    waiting = await db.fetchval(f"SELECT count(*) {APP_BACKENDS} AND wait_event_type = 'Lock'")
    return bool(waiting)


async def app_left_nothing_behind(app: Starlette, db: asyncpg.Connection) -> bool:
    """No connection checked out, and no app backend idle in (or still running) a transaction."""
    busy = await db.fetchval(
        f"SELECT count(*) {APP_BACKENDS} AND state IN "
        "('active', 'idle in transaction', 'idle in transaction (aborted)')"
    )
    return bool(app.state.engine.pool.checkedout() == 0 and busy == 0)


# --- 1. the seed failure -------------------------------------------------------------------


async def test_failed_conversation_upsert_leaves_later_deliveries_answered_and_stored_once(
    http: httpx.AsyncClient,
    client: GraphQLClient,
    db: asyncpg.Connection,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="wa_inbox")
    await connect_channel(client)
    await admin_execute(database_url, DROP_CONVERSATION_KEY)
    customers = ["16505550301", "16505550302", "16505550303"]

    first = await post_delivery(http, single_message("wamid.seed.0", customers[0]))
    assert first.status_code == 200, first.text
    assert first.json()["stored"] == 1

    # More traffic on the same app: a batch, then concurrent deliveries for the same customers.
    batch = delivery(
        messages=[
            text_message(
                f"wamid.seed.batch.{n}", sender=customers[n % 3], timestamp=1_764_000_100 + n
            )
            for n in range(6)
        ]
    )
    assert (await post_delivery(http, batch)).status_code == 200
    concurrent = [single_message(f"wamid.seed.c.{n}", customers[n % 3], n) for n in range(12)]
    answers = await asyncio.gather(*(post_delivery(http, payload) for payload in concurrent))
    assert [answer.status_code for answer in answers] == [200] * 12
    # A redelivery of everything stores nothing new.
    redelivered = await asyncio.gather(
        *(post_delivery(http, payload) for payload in [batch, *concurrent])
    )
    assert [answer.status_code for answer in redelivered] == [200] * 13
    assert sum(answer.json()["stored"] for answer in redelivered) == 0

    copies = await copies_per_provider_id(db)
    assert len(copies) == 1 + 6 + 12
    assert set(copies.values()) == {1}
    per_customer = await db.fetch(
        "SELECT phone_e164, count(*) AS n FROM whatsapp_conversation GROUP BY phone_e164"
    )
    assert sorted(row["n"] for row in per_customer) == [1, 1, 1]

    failures = [
        record.getMessage()
        for record in caplog.records
        if record.levelno == logging.ERROR and "[WA-SESSION]" in record.getMessage()
    ]
    assert failures
    assert all("conversation upsert failed" in line for line in failures)
    metrics = (await http.get("/metrics")).text
    assert metric(metrics, "conversation_upsert_failures") == len(failures)
    assert metric(metrics, "webhook_storage_failures") == 0


# --- 2. pool connections killed mid-load ---------------------------------------------------


async def test_deliveries_survive_pool_connections_killed_mid_load(
    app: Starlette, http: httpx.AsyncClient, client: GraphQLClient, db: asyncpg.Connection
) -> None:
    await connect_channel(client)
    await assert_deliveries_survive_killed_backends(http, db, deliveries=200)


async def assert_deliveries_survive_killed_backends(
    http: httpx.AsyncClient, db: asyncpg.Connection, *, deliveries: int
) -> None:
    """Deliveries from 8 senders while the app's backends are killed every 0.1 s: those that
    failed answered a clean 5xx and succeed when redelivered, every later one succeeds at its
    first attempt, and each message is stored once."""
    payloads = {
        f"wamid.kill.{n}": single_message(f"wamid.kill.{n}", f"1650555{n % 25:04d}", n)
        for n in range(deliveries)
    }
    queue: asyncio.Queue[str] = asyncio.Queue()
    for provider_id in payloads:
        queue.put_nowait(provider_id)
    first_answers: dict[str, httpx.Response] = {}
    sending = True
    killed: set[int] = set()

    async def sender() -> None:
        while not queue.empty():
            provider_id = queue.get_nowait()
            first_answers[provider_id] = await post_delivery(http, payloads[provider_id])

    async def killer() -> None:
        while sending:
            # FILTER runs after WHERE: only the app's backends on this database are killed.
            pids = await db.fetchval(
                f"SELECT array_agg(pid) FILTER (WHERE pg_terminate_backend(pid)) {APP_BACKENDS}"
            )
            killed.update(pids or ())
            await asyncio.sleep(0.1)

    async def killed_backends_gone() -> bool:
        left = await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", list(killed)
        )
        return bool(left == 0)

    killing = asyncio.create_task(killer())
    await asyncio.gather(*(sender() for _ in range(8)))
    sending = False
    await killing

    assert killed
    # The killing has stopped once the last killed backend has exited.
    assert await eventually(killed_backends_gone)
    failed = [
        provider_id for provider_id, answer in first_answers.items() if answer.status_code != 200
    ]
    for provider_id in failed:
        assert_clean_failure(first_answers[provider_id])

    # From here on every request succeeds at its first attempt.
    for provider_id in failed:
        again = await post_delivery(http, payloads[provider_id])
        assert again.status_code == 200, again.text
    fresh = [single_message(f"wamid.after.{n}", "16505550399", n) for n in range(16)]
    answers = await asyncio.gather(*(post_delivery(http, payload) for payload in fresh))
    assert [answer.status_code for answer in answers] == [200] * 16

    copies = await copies_per_provider_id(db)
    assert len(copies) == deliveries + 16
    assert set(copies.values()) == {1}


# --- 3. PostgreSQL restarted under the running server --------------------------------------


def stop_cluster(server: PostgresServer) -> None:
    pg_ctl(["-m", "fast", "-w", "stop"], pgdata=server.pgdata, user=server.system_user)


def start_cluster(server: PostgresServer) -> None:
    """Start the stopped cluster again, as pgserver does (its socket dir and log file).

    pgserver's own start keeps its handle on the new postmaster, so `cleanup()` stops the
    server that is running rather than the one stopped earlier.
    """
    server.ensure_postgres_running()


async def test_deliveries_resume_after_postgresql_restarts_under_the_running_server(
    settings: Settings, tmp_path: Path
) -> None:
    server = await asyncio.to_thread(get_server, tmp_path / "pgdata", cleanup_mode="delete")
    try:
        await admin_execute(server.get_uri("postgres"), 'CREATE DATABASE "wa_inbox"')
        url = server.get_uri("wa_inbox")
        await asyncio.to_thread(upgrade_to_head, url)
        async with app_client(settings, database_url=url) as (_, client):
            http = client.http
            await connect_channel(client)
            # Concurrent deliveries fill the pool with connections the restart will break.
            before = {
                f"wamid.up.{n}": single_message(f"wamid.up.{n}", f"1650555{510 + n:04d}", n)
                for n in range(8)
            }
            answers = await asyncio.gather(*(post_delivery(http, p) for p in before.values()))
            assert [answer.status_code for answer in answers] == [200] * 8

            await asyncio.to_thread(stop_cluster, server)
            ready = await http.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["database"]["status"] == "unreachable"
            during = {
                f"wamid.down.{n}": single_message(f"wamid.down.{n}", "16505550502", n)
                for n in range(3)
            }
            for payload in during.values():
                answer = await post_delivery(http, payload)
                assert answer.status_code == 503, answer.text
                assert answer.headers["Retry-After"]
                assert_clean_failure(answer)

            await asyncio.to_thread(start_cluster, server)

            async def ready_again() -> bool:
                return (await http.get("/readyz")).status_code == 200

            assert await eventually(ready_again, within_s=30)
            after = {
                f"wamid.again.{n}": single_message(f"wamid.again.{n}", f"1650555{510 + n:04d}", n)
                for n in range(8)
            }
            answers = await asyncio.gather(*(post_delivery(http, p) for p in after.values()))
            assert [answer.status_code for answer in answers] == [200] * 8
            for payload in [*during.values(), *before.values()]:
                answer = await post_delivery(http, payload)
                assert answer.status_code == 200, answer.text

        connection = await asyncpg.connect(asyncpg_dsn(url))
        try:
            copies = await copies_per_provider_id(connection)
        finally:
            await connection.close()
        assert copies == Counter(dict.fromkeys([*before, *during, *after], 1))
    finally:
        await asyncio.to_thread(server.cleanup)


# --- 4. a request cancelled mid-query ------------------------------------------------------

CANCEL_CUSTOMER = "16505550601"


async def post_and_leave(url: str, payload: dict[str, Any]) -> asyncio.StreamWriter:
    """Send a signed delivery over a real socket to the server at `url`, without reading."""
    body = json.dumps(payload).encode()
    head = "".join(
        f"{name}: {value}\r\n"
        for name, value in {
            **signed_headers(body),
            "Host": "127.0.0.1",
            "Content-Length": str(len(body)),
        }.items()
    )
    port = urlsplit(url).port
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST {WEBHOOK} HTTP/1.1\r\n{head}\r\n".encode() + body)
    await writer.drain()
    return writer


async def assert_single_connection_app_serves_again(
    app: Starlette, client: GraphQLClient, db: asyncpg.Connection, blocked: dict[str, Any]
) -> None:
    """Once the lock is gone: nothing left checked out or mid-transaction, and the pool's one
    connection serves the next requests, the interrupted delivery's redelivery included."""
    assert await eventually(lambda: app_left_nothing_behind(app, db))
    assert (await post_delivery(client.http, blocked)).status_code == 200
    for n in range(3):
        payload = single_message(f"wamid.cancel.next.{n}", CANCEL_CUSTOMER, 10 + n)
        assert (await post_delivery(client.http, payload)).status_code == 200
    assert (await client.execute("{ unreadCount }"))["unreadCount"] == 5
    copies = await copies_per_provider_id(db)
    assert set(copies.values()) == {1}
    assert len(copies) == 5


async def test_cancelled_request_leaves_no_broken_connection_in_the_pool(
    settings: Settings, db: asyncpg.Connection, database_url: str
) -> None:
    async with app_client(settings, database_pool_size=1) as (app, client):
        await connect_channel(client)
        first = single_message("wamid.cancel.first", CANCEL_CUSTOMER)
        assert (await post_delivery(client.http, first)).status_code == 200
        blocked = single_message("wamid.cancel.blocked", CANCEL_CUSTOMER, 1)

        async with conversation_locked(database_url, f"+{CANCEL_CUSTOMER}"):
            request = asyncio.create_task(post_delivery(client.http, blocked))
            assert await eventually(lambda: app_waits_on_a_lock(db))
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request

        await assert_single_connection_app_serves_again(app, client, db, blocked)


async def test_client_that_disconnects_mid_query_leaves_no_broken_connection_in_the_pool(
    settings: Settings, db: asyncpg.Connection, database_url: str
) -> None:
    async with app_client(settings, database_pool_size=1) as (app, client), serving(app) as url:
        await connect_channel(client)
        first = single_message("wamid.cancel.first", CANCEL_CUSTOMER)
        assert (await post_delivery(client.http, first)).status_code == 200
        blocked = single_message("wamid.cancel.blocked", CANCEL_CUSTOMER, 1)

        async with conversation_locked(database_url, f"+{CANCEL_CUSTOMER}"):
            writer = await post_and_leave(url, blocked)
            assert await eventually(lambda: app_waits_on_a_lock(db))
            writer.close()
            await writer.wait_closed()

        await assert_single_connection_app_serves_again(app, client, db, blocked)


# --- 5. statement timeouts -----------------------------------------------------------------

TIMEOUT_CUSTOMER = "16505550701"


async def test_statement_timeout_bounds_a_lock_wait_and_the_next_request_succeeds(
    settings: Settings,
    db: asyncpg.Connection,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="wa_inbox")
    async with app_client(settings, statement_timeout_ms=300) as (app, client):
        async with app.state.engine.connect() as connection:
            shown = await connection.exec_driver_sql("SHOW statement_timeout")
            assert shown.scalar_one() == "300ms"
        await connect_channel(client)
        first = single_message("wamid.timeout.first", TIMEOUT_CUSTOMER)
        assert (await post_delivery(client.http, first)).status_code == 200
        blocked = single_message("wamid.timeout.blocked", TIMEOUT_CUSTOMER, 1)
        ingest_input = {
            "phone": f"+{TIMEOUT_CUSTOMER}",
            "direction": "INBOUND",
            "source": "CUSTOMER",
            "body": "over GraphQL",
            "providerMessageId": "wamid.timeout.graphql",
        }

        # The lock is held until both requests answered: only a timeout can end their wait.
        async with conversation_locked(database_url, f"+{TIMEOUT_CUSTOMER}"):
            answer = await post_delivery(client.http, blocked)
            assert answer.status_code == 503, answer.text
            assert answer.headers["Retry-After"]
            assert_clean_failure(answer)
            graphql = await client.post(INGEST, {"input": ingest_input})

        assert graphql.status_code == 200
        body = graphql.json()
        assert body["data"] is None
        [error] = body["errors"]
        assert error["extensions"]["code"]
        assert error["extensions"]["requestId"]
        assert "Traceback" not in graphql.text
        assert "canceling statement" not in graphql.text
        # Both failed on the statement timeout, not on anything else.
        webhook_failures = [r for r in caplog.records if "storage failed" in r.getMessage()]
        graphql_failures = [r for r in caplog.records if "unexpected error" in r.getMessage()]
        for failure in [*webhook_failures, *graphql_failures]:
            assert failure.exc_info is not None
            assert failure.exc_info[1] is not None
            assert sqlstate_of(failure.exc_info[1]) == QUERY_CANCELED
        assert len(webhook_failures) == len(graphql_failures) == 1

        assert (await post_delivery(client.http, blocked)).status_code == 200
        stored = await client.execute(INGEST, {"input": ingest_input})
        assert stored["ingestMessage"]["duplicate"] is False
    assert await copies_per_provider_id(db) == Counter(
        dict.fromkeys(["wamid.timeout.first", "wamid.timeout.blocked", "wamid.timeout.graphql"], 1)
    )


# --- 6. deadlocks and serialization failures -----------------------------------------------


def raise_sqlstate(sqlstate: str) -> TextClause:
    """A statement PostgreSQL fails with `sqlstate`, exactly as it reports real failures."""
    return text(
        f"DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '{sqlstate}', "
        f"MESSAGE = 'injected {sqlstate}'; END $$"
    )


@pytest.fixture
async def unit_attempts(db: asyncpg.Connection) -> None:
    """A scratch table each attempt writes to: only a committed attempt leaves its row."""
    await db.execute("CREATE TABLE unit_attempts (attempt int NOT NULL)")
    # The app's connections act as the row-level-security role, which owns nothing.
    await db.execute("GRANT SELECT, INSERT ON unit_attempts TO wa_inbox_app")


async def failing_unit(
    app: Starlette, sqlstate: str, failures: int
) -> tuple[list[int], BaseException | None]:
    """Runs a unit of work whose first `failures` attempts fail with `sqlstate`; returns the
    attempts made and the error that propagated, if any."""
    attempts: list[int] = []

    async def work(session: AsyncSession) -> str:
        attempts.append(len(attempts) + 1)
        await session.execute(
            text("INSERT INTO unit_attempts (attempt) VALUES (:n)"), {"n": len(attempts)}
        )
        if len(attempts) <= failures:
            await session.execute(raise_sqlstate(sqlstate))
        return "done"

    try:
        result = await run_unit_of_work(
            build_sessionmaker(app.state.engine), work, business_id=None
        )
    except DBAPIError as error:
        return attempts, error
    assert result == "done"
    return attempts, None


@pytest.mark.usefixtures("unit_attempts")
@pytest.mark.parametrize("sqlstate", [SERIALIZATION_FAILURE, DEADLOCK_DETECTED])
async def test_retryable_failure_repeats_the_whole_unit_of_work_once_more(
    app: Starlette, db: asyncpg.Connection, sqlstate: str
) -> None:
    attempts, error = await failing_unit(app, sqlstate, failures=1)
    assert error is None
    assert attempts == [1, 2]
    # The failed attempt's write was rolled back with it; only the second one committed.
    assert await db.fetch("SELECT attempt FROM unit_attempts") == [(2,)]


@pytest.mark.usefixtures("unit_attempts")
@pytest.mark.parametrize("sqlstate", [SERIALIZATION_FAILURE, DEADLOCK_DETECTED])
async def test_retryable_failure_that_persists_gives_up_after_three_attempts(
    app: Starlette,
    db: asyncpg.Connection,
    sqlstate: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="wa_inbox")
    attempts, error = await failing_unit(app, sqlstate, failures=99)
    assert attempts == [1, 2, 3]
    assert error is not None
    assert sqlstate_of(error) == sqlstate
    assert await db.fetchval("SELECT count(*) FROM unit_attempts") == 0
    retries = [r for r in caplog.records if "[WA-SESSION] unit of work failed" in r.getMessage()]
    assert len(retries) == 2


@pytest.mark.usefixtures("unit_attempts")
@pytest.mark.parametrize("sqlstate", [UNIQUE_VIOLATION, BAD_TEXT_REPRESENTATION, QUERY_CANCELED])
async def test_non_retryable_failure_is_raised_after_one_attempt(
    app: Starlette, db: asyncpg.Connection, sqlstate: str
) -> None:
    attempts, error = await failing_unit(app, sqlstate, failures=99)
    assert attempts == [1]
    assert error is not None
    assert sqlstate_of(error) == sqlstate
    assert await db.fetchval("SELECT count(*) FROM unit_attempts") == 0


async def test_genuine_deadlock_between_two_units_of_work_ends_with_both_committed_once(
    app: Starlette, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="wa_inbox")
    await db.execute("CREATE TABLE lock_pair (id int PRIMARY KEY, writes int NOT NULL)")
    await db.execute("INSERT INTO lock_pair VALUES (1, 0), (2, 0)")
    await db.execute("GRANT SELECT, UPDATE ON lock_pair TO wa_inbox_app")
    sessions = build_sessionmaker(app.state.engine)
    # Both units hold their first row before either asks for the second: a certain deadlock.
    both_hold_one_row = asyncio.Barrier(2)
    attempts: Counter[str] = Counter()

    def locking(name: str, first: int, second: int) -> Callable[[AsyncSession], Awaitable[str]]:
        async def work(session: AsyncSession) -> str:
            attempts[name] += 1
            bump = text("UPDATE lock_pair SET writes = writes + 1 WHERE id = :id")
            await session.execute(bump, {"id": first})
            if attempts[name] == 1:
                await both_hold_one_row.wait()
            await session.execute(bump, {"id": second})
            return name

        return work

    async with asyncio.timeout(30):
        results = await asyncio.gather(
            run_unit_of_work(sessions, locking("forward", 1, 2), business_id=None),
            run_unit_of_work(sessions, locking("backward", 2, 1), business_id=None),
        )
    assert list(results) == ["forward", "backward"]
    assert sorted(attempts.values()) == [1, 2]
    # Each unit committed once: the deadlock victim's first attempt left nothing behind.
    assert await db.fetch("SELECT id, writes FROM lock_pair ORDER BY id") == [(1, 2), (2, 2)]
    retries = [r.getMessage() for r in caplog.records if "unit of work failed" in r.getMessage()]
    assert len(retries) == 1


# --- 7. a redelivery storm -----------------------------------------------------------------

STORM_CUSTOMERS = 50
STORM_MESSAGES_EACH = 20
STORM_SIZE = STORM_CUSTOMERS * STORM_MESSAGES_EACH


def storm_sender(customer: int) -> str:
    return f"1650555{800 + customer:04d}"


async def test_batch_redelivered_five_times_at_once_is_stored_and_announced_once(
    app: Starlette, http: httpx.AsyncClient, client: GraphQLClient, db: asyncpg.Connection
) -> None:
    await connect_channel(client)
    # Customers interleaved, each one's messages in the order they were sent.
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
    announced: Counter[str] = Counter()

    async with serving(app) as url, GraphQLSocket.open(url) as socket:
        await socket.subscribe("m", NEW_MESSAGE)

        async def listen() -> None:
            while True:
                payload = await socket.next_payload(wait_s=30)
                assert "errors" not in payload, payload
                announced[payload["data"]["newMessage"]["providerMessageId"]] += 1

        listening = asyncio.create_task(listen())
        try:
            answers = await asyncio.gather(*(post_delivery(http, batch) for _ in range(5)))
            assert [answer.status_code for answer in answers] == [200] * 5
            reports = [answer.json() for answer in answers]
            assert sum(report["stored"] for report in reports) == STORM_SIZE
            assert sum(report["duplicates"] for report in reports) == 4 * STORM_SIZE

            async def all_announced() -> bool:
                if listening.done():
                    listening.result()  # the subscriber failed: show why
                return sum(announced.values()) >= STORM_SIZE

            assert await eventually(all_announced, within_s=60)
            # Nothing more is on its way.
            await asyncio.sleep(0.5)
        finally:
            listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listening

    assert len(announced) == STORM_SIZE
    assert set(announced.values()) == {1}
    metrics = (await http.get("/metrics")).text
    assert metric(metrics, "messages_stored") == STORM_SIZE
    assert await copies_per_provider_id(db) == Counter(dict.fromkeys(announced, 1))
    threads = await db.fetch(
        "SELECT c.phone_e164, array_agg(m.provider_message_id ORDER BY m.seq) AS ids, "
        "array_agg(m.seq ORDER BY m.seq) AS seqs "
        "FROM whatsapp_message m JOIN whatsapp_conversation c ON c.id = m.conversation_id "
        "GROUP BY c.phone_e164"
    )
    assert len(threads) == STORM_CUSTOMERS
    for thread in threads:
        customer = int(thread["phone_e164"][-4:]) - 800
        assert thread["ids"] == [f"wamid.storm.{customer}.{n}" for n in range(STORM_MESSAGES_EACH)]
        assert thread["seqs"] == list(range(1, STORM_MESSAGES_EACH + 1))
