"""The benchmark suite (issue 7): reads, ingest and growth, side by side with their floors.

    .venv/bin/python -m bench.suite                      # --sizes small large --repeat 200
    .venv/bin/python -m bench.suite --smoke --json /tmp/s.json --chart /tmp/s.png

For each size a scratch database is created (on BENCH_DATABASE_URL's or TEST_DATABASE_URL's
server, else on an embedded PostgreSQL in a temporary directory), migrated, filled by
bench/dataset.load() (seed 7, with one 10,000-message thread) and dropped at the end. Then two
processes serve it on free ports of 127.0.0.1: `python -m gql serve` (the application) and
`python -m bench.floor` (the same reads as one hand-written statement each behind a bare
Starlette app, under the same uvicorn). This process measures both over real HTTP/1.1 with
keep-alive (httpx), alternating A and B request by request after a warm-up:

1. unread badge: `{ unreadCount }` vs the seed's COUNT(*) FILTER statement on asyncpg;
2. thread list: `threads(first: 50)` with every thread field, unreadCount and lastMessage,
   vs the floor's /threads;
3. the end of a 10,000-message thread: `messages(last: 50)` vs the floor's /messages;
4. ingest, 16 concurrent clients, one message per request: `ingestMessage`, the webhook with
   one message per delivery and with 10, vs the floor: the app's two INSERT ... ON CONFLICT
   statements in one transaction per message on 16 asyncpg connections (rounds interleaved);
5. growth: each read's median at the largest size over its median at the smallest.

Then a profile: the same requests in-process (httpx's ASGI transport) with every SQL statement
counted and timed, and cProfile's top functions for the thread list. Printed as tables; written
as JSON (--json) and as a PNG chart (--chart; `--smoke` never writes docs/).
"""

import argparse
import asyncio
import contextlib
import cProfile
import io
import itertools
import json
import os
import platform
import pstats
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.databases import asyncpg_dsn, database_server, scratch_database
from bench.dataset import SIZES, LoadedDataset, load
from bench.fanout import free_port
from db.migrations import upgrade_to_head
from domain.access import Role
from gql.auth import issue_token
from gql.whatsapp_webhook import signature_of

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = PROJECT_ROOT / "bench-results" / "suite.json"
DEFAULT_CHART = PROJECT_ROOT / "docs" / "bench-suite.png"
AUTH_SECRET = "bench-suite-secret-long-enough-for-hs256-signing"
APP_SECRET = "bench-suite-whatsapp-app-secret"
PHONE_NUMBER_ID = "106540352242922"
LONG_THREAD_MESSAGES = 10_000
CLIENTS = 16
PHONES = 300
INGEST_ROUNDS = 4
START_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 60.0

BADGE = "{ unreadCount }"
THREADS = """
{ threads(first: 50) { edges { node {
    id canonicalKey phone leadId status startedAt lastMessageAt lastReadAt contactName userId
    unreadCount lastMessage { body sentAt }
} } pageInfo { hasNextPage } } }
"""
MESSAGES = """
query End($id: ID!) { thread(id: $id) { messages(last: 50) {
    edges { cursor node { id threadId direction source status body sentAt createdAt type } }
    pageInfo { hasPreviousPage startCursor }
} } }
"""
INGEST = """
mutation Ingest($input: IngestMessageInput!) {
  ingestMessage(input: $input) { duplicate message { id } }
}
"""
CONNECT = """
mutation Connect($id: String!) { connectWhatsAppChannel(phoneNumberId: $id) { id } }
"""
# The seed's badge: every unread message of the business counted from history.
SEED_BADGE_SQL = """
SELECT count(*) FILTER (WHERE m.direction = 'in' AND NOT m.historical AND m.status <> 'deleted'
                          AND m.message_type <> 'system' AND m.seq > c.read_seq)
FROM whatsapp_message m JOIN whatsapp_conversation c ON c.id = m.conversation_id
WHERE c.business_id = $1
"""
# The two statements of db/statements.py's upsert_conversation and insert_message, as sent.
UPSERT_CONVERSATION_SQL = """
INSERT INTO whatsapp_conversation AS existing (business_id, canonical_key, phone_e164, lead_id,
    status, started_at, last_message_at, message_seq, contact_name, wa_user_id)
VALUES ($1, $2, $3, NULL, 'open', $4, $4, 1, NULL, NULL)
ON CONFLICT (business_id, canonical_key) DO UPDATE SET
    message_seq = existing.message_seq + 1,
    started_at = least(existing.started_at, excluded.started_at),
    last_message_at = greatest(existing.last_message_at, excluded.last_message_at),
    phone_e164 = coalesce(excluded.phone_e164, existing.phone_e164),
    contact_name = coalesce(excluded.contact_name, existing.contact_name),
    wa_user_id = coalesce(excluded.wa_user_id, existing.wa_user_id),
    status = 'open'
RETURNING *
"""
INSERT_MESSAGE_SQL = """
INSERT INTO whatsapp_message (business_id, conversation_id, seq, provider_message_id, direction,
    source, status, body, sent_at, created_at, historical, message_type)
VALUES ($1, $2, $3, $4, 'in', 'customer', 'received', $5, $6, clock_timestamp(), false, 'text')
ON CONFLICT (business_id, provider_message_id) DO NOTHING
RETURNING *
"""

READS = ("unread_badge", "thread_list", "thread_end")
INGESTS = ("ingest_mutation", "webhook_1", "webhook_10")
TARGETS = {
    # name: (what the ratio is, the target, whether higher is better)
    "unread_badge": ("seed SQL / app", 50.0, True),
    "thread_list": ("app / floor", 3.0, False),
    "thread_end": ("app / floor", None, False),
    "ingest_mutation": ("app / floor rate", 0.5, True),
    "webhook_1": ("app / floor rate", 0.5, True),
    "webhook_10": ("app / floor rate", 0.5, True),
    "growth": ("large / small", 1.5, False),
}


@dataclass(frozen=True)
class Plan:
    sizes: tuple[str, ...]
    repeat: int
    ingest_messages: int
    profile_repeat: int
    long_thread_messages: int


# --- machine and database ------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """CPU count and model, RAM, Python: the figures mean little without them."""
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ram_gb = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "ram_gb": ram_gb,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# --- the two server processes --------------------------------------------------------------


@contextlib.contextmanager
def process_serving(
    module: str, env_extra: dict[str, str], log_path: Path, argv: tuple[str, ...] = ()
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`python -m module *argv` on a free port; yields its base URL once /healthz answers."""
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "WA_INBOX_DATA_DIR", "AUTH_SECRET", "LOG_LEVEL"}
    }
    env.update(HOST="127.0.0.1", PORT=str(port), LOG_LEVEL="WARNING", **env_extra)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module, *argv],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{module} exited with {process.returncode}:\n{_tail(log_path)}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{module}: no /healthz after {START_TIMEOUT_S} s")
            time.sleep(0.1)
        yield base_url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)


def _complaints(path: Path) -> list[str]:
    """The first warning, error and traceback lines the two servers logged."""
    keys = (" WARNING ", " ERROR ", " CRITICAL ", "Traceback")
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return [line[:300] for line in lines if any(key in line for key in keys)][:10]


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# --- figures -------------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _summary(seconds: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(seconds) * 1000, 3),
        "p99_ms": round(_percentile(seconds, 99) * 1000, 3),
        "samples": len(seconds),
    }


def _check(response: httpx.Response) -> None:
    if response.status_code != 200 or b'"errors"' in response.content[:20]:
        raise RuntimeError(f"{response.request.url}: {response.status_code} {response.text[:500]}")


# --- reads ---------------------------------------------------------------------------------


@dataclass
class Readers:
    """One request of each side of each read; each returns its elapsed seconds."""

    app: httpx.AsyncClient
    floor: httpx.AsyncClient
    database: asyncpg.Connection
    business_id: int
    long_thread_id: int

    async def _graphql(self, query: str, variables: dict[str, Any] | None = None) -> float:
        started = time.perf_counter()
        response = await self.app.post("/graphql", json={"query": query, "variables": variables})
        elapsed = time.perf_counter() - started
        _check(response)
        return elapsed

    async def _floor(self, path: str, params: dict[str, Any]) -> float:
        started = time.perf_counter()
        response = await self.floor.get(path, params=params)
        elapsed = time.perf_counter() - started
        _check(response)
        return elapsed

    async def badge_app(self) -> float:
        return await self._graphql(BADGE)

    async def badge_seed(self) -> float:
        started = time.perf_counter()
        await self.database.fetchval(SEED_BADGE_SQL, self.business_id)
        return time.perf_counter() - started

    async def threads_app(self) -> float:
        return await self._graphql(THREADS)

    async def threads_floor(self) -> float:
        return await self._floor("/threads", {"business_id": self.business_id, "first": 50})

    async def end_app(self) -> float:
        return await self._graphql(MESSAGES, {"id": str(self.long_thread_id)})

    async def end_floor(self) -> float:
        params = {"business_id": self.business_id, "thread_id": self.long_thread_id, "last": 50}
        return await self._floor("/messages", params)

    def pairs(self) -> dict[str, tuple[Callable[[], Awaitable[float]], ...]]:
        return {
            "unread_badge": (self.badge_app, self.badge_seed),
            "thread_list": (self.threads_app, self.threads_floor),
            "thread_end": (self.end_app, self.end_floor),
        }

    async def same_answers(self) -> dict[str, bool]:
        """Whether both sides of each read agree (a floor answering less would flatter it)."""
        badge = await self.app.post("/graphql", json={"query": BADGE})
        seed = await self.database.fetchval(SEED_BADGE_SQL, self.business_id)
        threads = (await self.app.post("/graphql", json={"query": THREADS})).json()
        floor_threads = (
            await self.floor.get("/threads", params={"business_id": self.business_id})
        ).json()
        end = (
            await self.app.post(
                "/graphql", json={"query": MESSAGES, "variables": {"id": str(self.long_thread_id)}}
            )
        ).json()
        floor_end = (
            await self.floor.get(
                "/messages",
                params={"business_id": self.business_id, "thread_id": self.long_thread_id},
            )
        ).json()

        def thread_rows(body: dict[str, Any]) -> list[tuple[Any, ...]]:
            return [
                (
                    e["node"]["id"],
                    e["node"]["unreadCount"],
                    (e["node"]["lastMessage"] or {}).get("body"),
                )
                for e in body["data"]["threads"]["edges"]
            ]

        def message_ids(body: dict[str, Any]) -> list[str]:
            return [e["node"]["id"] for e in body["data"]["thread"]["messages"]["edges"]]

        return {
            "unread_badge": badge.json()["data"]["unreadCount"] == seed,
            "thread_list": thread_rows(threads) == thread_rows(floor_threads),
            "thread_end": message_ids(end) == message_ids(floor_end),
        }


async def measure_reads(readers: Readers, repeat: int) -> dict[str, Any]:
    pairs = readers.pairs()
    for _ in range(max(3, repeat // 10)):  # warm-up: plans, pools, caches on both sides
        for app_side, base_side in pairs.values():
            await app_side()
            await base_side()
    samples: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in pairs}
    for index in range(repeat):
        for name, (app_side, base_side) in pairs.items():
            # A then B, then B then A: neither side always follows the other.
            first, second = (app_side, base_side) if index % 2 == 0 else (base_side, app_side)
            one, two = await first(), await second()
            app_s, base_s = (one, two) if index % 2 == 0 else (two, one)
            samples[name][0].append(app_s)
            samples[name][1].append(base_s)
    agreement = await readers.same_answers()
    results = {}
    for name, (app_samples, base_samples) in samples.items():
        app, base = _summary(app_samples), _summary(base_samples)
        results[name] = {
            "app": app,
            "baseline": base,
            "baseline_kind": "seed COUNT(*) FILTER on asyncpg"
            if name == "unread_badge"
            else "hand-written SQL behind Starlette (bench/floor.py)",
            "app_over_baseline": round(app["median_ms"] / base["median_ms"], 3),
            "same_answer": agreement[name],
        }
    return results


# --- ingest --------------------------------------------------------------------------------


def _phone(index: int) -> str:
    return f"+1650555{1000 + index % PHONES}"


def _webhook_body(provider_ids: list[str], phones: list[str], at: int) -> bytes:
    messages = [
        {
            "from": phone.lstrip("+"),
            "id": provider_id,
            "timestamp": str(at),
            "type": "text",
            "text": {"body": f"benchmark message {provider_id}"},
        }
        for provider_id, phone in zip(provider_ids, phones, strict=True)
    ]
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_NUMBER_ID},
        "messages": messages,
    }
    delivery = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"value": value, "field": "messages"}]}],
    }
    return json.dumps(delivery).encode()


class Ingest:
    """The four ways of storing messages; each sends `count` messages from 16 clients."""

    def __init__(
        self, app: httpx.AsyncClient, pool: asyncpg.Pool, business_id: int, service_token: str
    ) -> None:
        self.app = app
        self.pool = pool
        self.business_id = business_id
        self.service = {"Authorization": f"Bearer {service_token}"}
        self.serial = itertools.count()
        self.clock = datetime(2027, 1, 1, tzinfo=UTC)

    def _next(self) -> tuple[int, str]:
        number = next(self.serial)
        return number, f"wamid.suite.{uuid.uuid4().hex[:8]}.{number}"

    async def mutation(self) -> int:
        number, provider_id = self._next()
        variables = {
            "input": {
                "phone": _phone(number),
                "direction": "INBOUND",
                "source": "CUSTOMER",
                "body": f"benchmark message {number}",
                "providerMessageId": provider_id,
            }
        }
        response = await self.app.post(
            "/graphql", json={"query": INGEST, "variables": variables}, headers=self.service
        )
        _check(response)
        return 1

    async def _webhook(self, per_delivery: int) -> int:
        numbered = [self._next() for _ in range(per_delivery)]
        body = _webhook_body(
            [provider_id for _, provider_id in numbered],
            [_phone(number) for number, _ in numbered],
            int(time.time()),
        )
        response = await self.app.post(
            "/webhooks/whatsapp",
            content=body,
            headers={
                "Content-Type": "application/json",
                "X-Hub-Signature-256": signature_of(body, APP_SECRET),
            },
        )
        if response.status_code != 200:
            raise RuntimeError(f"webhook: {response.status_code} {response.text[:500]}")
        return per_delivery

    async def webhook_1(self) -> int:
        return await self._webhook(1)

    async def webhook_10(self) -> int:
        return await self._webhook(10)

    async def floor(self) -> int:
        number, provider_id = self._next()
        phone = _phone(number)
        sent_at = self.clock + timedelta(seconds=number)
        async with self.pool.acquire() as connection, connection.transaction():
            conversation = await connection.fetchrow(
                UPSERT_CONVERSATION_SQL,
                self.business_id,
                f"phone:{self.business_id}:{phone}",
                phone,
                sent_at,
            )
            await connection.fetchrow(
                INSERT_MESSAGE_SQL,
                self.business_id,
                conversation["id"],
                conversation["message_seq"],
                provider_id,
                f"benchmark message {number}",
                sent_at,
            )
        return 1

    def ways(self) -> dict[str, Callable[[], Awaitable[int]]]:
        return {
            "floor": self.floor,
            "ingest_mutation": self.mutation,
            "webhook_1": self.webhook_1,
            "webhook_10": self.webhook_10,
        }


async def _run_clients(
    send: Callable[[], Awaitable[int]], requests: int
) -> tuple[int, float, list[float]]:
    """`requests` sent by CLIENTS concurrent clients: (messages, wall seconds, latencies)."""
    issued = sent = 0
    latencies: list[float] = []

    async def client() -> None:
        nonlocal issued, sent
        while issued < requests:
            issued += 1  # claimed before the await, so no more than needed are in flight
            started = time.perf_counter()
            stored = await send()
            latencies.append(time.perf_counter() - started)
            sent += stored

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return sent, time.perf_counter() - started, latencies


async def measure_ingest(ingest: Ingest, messages: int) -> dict[str, Any]:
    ways = ingest.ways()
    for send in ways.values():  # warm-up
        await _run_clients(send, CLIENTS)  # in requests
    totals = {name: [0, 0.0, []] for name in ways}  # type: dict[str, list[Any]]
    per_round = max(CLIENTS, messages // INGEST_ROUNDS)
    for index in range(INGEST_ROUNDS):
        order = list(ways.items())
        if index % 2:
            order.reverse()
        for name, send in order:
            per_request = 10 if name == "webhook_10" else 1
            sent, wall, latencies = await _run_clients(send, max(1, per_round // per_request))
            totals[name][0] += sent
            totals[name][1] += wall
            totals[name][2].extend(latencies)
    rates = {name: sent / wall for name, (sent, wall, _) in totals.items()}
    results: dict[str, Any] = {
        "clients": CLIENTS,
        "phones": PHONES,
        "floor": {
            "messages": totals["floor"][0],
            "messages_per_s": round(rates["floor"], 1),
            "request": _summary(totals["floor"][2]),
        },
    }
    for name in INGESTS:
        results[name] = {
            "messages": totals[name][0],
            "messages_per_s": round(rates[name], 1),
            "request": _summary(totals[name][2]),
            "app_over_floor_rate": round(rates[name] / rates["floor"], 3),
        }
    return results


# --- the profile ---------------------------------------------------------------------------


async def profile(url: str, dataset: LoadedDataset, repeat: int) -> dict[str, Any]:
    """Each request in-process: statements, time inside them, time in Python (cProfile top)."""
    from sqlalchemy import event

    from gql.app import create_app
    from gql.settings import Settings

    settings = Settings(
        database_url=url,
        auth_secret=AUTH_SECRET,
        whatsapp_app_secret=APP_SECRET,
        database_pool_size=4,
        log_level="WARNING",
    )
    app = create_app(settings)
    statements: list[float] = []
    open_at: list[float] = []

    def before(*_: Any) -> None:
        open_at.append(time.perf_counter())

    def after(*_: Any) -> None:
        statements.append(time.perf_counter() - open_at.pop())

    engine = app.state.engine.sync_engine
    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    agent = issue_token(AUTH_SECRET, user_id="bench", business_id=dataset.business_id)
    service = issue_token(
        AUTH_SECRET, user_id="bench", business_id=dataset.business_id, role=Role.SERVICE
    )
    results: dict[str, Any] = {}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://bench",
            headers={"Authorization": f"Bearer {agent}"},
            timeout=REQUEST_TIMEOUT_S,
        ) as client,
    ):
        # Only the application's side of each request is used here: no floor, no database.
        ingest = Ingest(client, None, dataset.business_id, service)
        readers = Readers(client, client, None, dataset.business_id, dataset.long_thread_id or 0)
        operations: dict[str, Callable[[], Awaitable[Any]]] = {
            "unread_badge": readers.badge_app,
            "thread_list": readers.threads_app,
            "thread_end": readers.end_app,
            "ingest_mutation": ingest.mutation,
            "webhook_1": ingest.webhook_1,
            "webhook_10": ingest.webhook_10,
        }
        for name, operation in operations.items():
            await operation()  # warm
            statements.clear()
            started = time.perf_counter()
            for _ in range(repeat):
                await operation()
            total = (time.perf_counter() - started) / repeat
            database = sum(statements) / repeat
            results[name] = {
                "statements_per_request": round(len(statements) / repeat, 2),
                "request_ms": round(total * 1000, 3),
                "in_statements_ms": round(database * 1000, 3),
                "outside_statements_ms": round((total - database) * 1000, 3),
            }
        # A separate pass: cProfile's own overhead must not inflate the figures above. It sees
        # this process, so httpx's ASGI client appears too (a small share).
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(repeat):
            await readers.threads_app()
        profiler.disable()
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream)
    stats.sort_stats("tottime")
    top = []
    for (file, line, function), (_, calls, own, cumulative, _) in sorted(
        stats.stats.items(),  # type: ignore[attr-defined]
        key=lambda item: item[1][2],
        reverse=True,
    )[:12]:
        where = file.split("site-packages/")[-1].replace(str(PROJECT_ROOT) + "/", "")
        top.append(
            {
                "function": f"{where}:{line}({function})",
                "calls_per_request": round(calls / repeat, 1),
                "own_ms_per_request": round(own * 1000 / repeat, 3),
                "cumulative_ms_per_request": round(cumulative * 1000 / repeat, 3),
            }
        )
    results["thread_list_cprofile_top"] = top
    return results


# --- one size ------------------------------------------------------------------------------


async def measure_size(server: str, size_name: str, plan: Plan, logs: Path) -> dict[str, Any]:
    size = SIZES[size_name]
    long_messages = min(plan.long_thread_messages, size.messages // 4)
    async with scratch_database(server, "wa_inbox_suite") as url:
        await asyncio.to_thread(upgrade_to_head, url)
        connection = await asyncpg.connect(asyncpg_dsn(url))
        try:
            started = time.perf_counter()
            dataset = await load(connection, size, seed=7, long_thread_messages=long_messages)
            load_s = time.perf_counter() - started
            print(
                f"[{size_name}] loaded {size.threads:,} threads, {size.messages:,} messages "
                f"+ noise in {load_s:.1f} s",
                flush=True,
            )
            result: dict[str, Any] = {
                "size": size_name,
                "threads": size.threads,
                "messages": size.messages,
                "rows_by_business": dataset.rows_by_business,
                "long_thread_messages": long_messages,
                "load_seconds": round(load_s, 2),
                "repeat": plan.repeat,
            }
            env = {
                "DATABASE_URL": url,
                "AUTH_SECRET": AUTH_SECRET,
                "WHATSAPP_APP_SECRET": APP_SECRET,
            }
            log_path = logs / f"{size_name}.log"
            with (
                process_serving("gql", env, log_path, ("serve",)) as (app_url, _),
                process_serving(
                    "bench.floor", {"FLOOR_DATABASE_URL": asyncpg_dsn(url)}, log_path
                ) as (
                    floor_url,
                    _,
                ),
            ):
                result.update(await _measure_servers(url, app_url, floor_url, dataset, plan))
            result["server_log_complaints"] = _complaints(log_path)
            for line in result["server_log_complaints"]:
                print(f"  server log: {line}", flush=True)
            print(f"[{size_name}] profiling in-process", flush=True)
            result["profile"] = await profile(url, dataset, plan.profile_repeat)
        finally:
            await connection.close()
    return result


async def _measure_servers(
    url: str, app_url: str, floor_url: str, dataset: LoadedDataset, plan: Plan
) -> dict[str, Any]:
    business_id = dataset.business_id
    agent = issue_token(AUTH_SECRET, user_id="bench", business_id=business_id, role=Role.AGENT)
    admin = issue_token(AUTH_SECRET, user_id="bench", business_id=business_id, role=Role.ADMIN)
    service = issue_token(AUTH_SECRET, user_id="bench", business_id=business_id, role=Role.SERVICE)
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with (
        httpx.AsyncClient(
            base_url=app_url,
            headers={"Authorization": f"Bearer {agent}"},
            timeout=REQUEST_TIMEOUT_S,
            limits=limits,
        ) as app,
        httpx.AsyncClient(base_url=floor_url, timeout=REQUEST_TIMEOUT_S) as floor,
        contextlib.AsyncExitStack() as stack,
    ):
        database = await asyncpg.connect(asyncpg_dsn(url))
        stack.push_async_callback(database.close)
        pool = await asyncpg.create_pool(asyncpg_dsn(url), min_size=CLIENTS, max_size=CLIENTS)
        assert pool is not None
        stack.push_async_callback(pool.close)
        version = await database.fetchval("SHOW server_version")
        readers = Readers(app, floor, database, business_id, dataset.long_thread_id or 0)
        print(f"  reads: {plan.repeat} of each, interleaved", flush=True)
        reads = await measure_reads(readers, plan.repeat)
        connected = await app.post(
            "/graphql",
            json={"query": CONNECT, "variables": {"id": PHONE_NUMBER_ID}},
            headers={"Authorization": f"Bearer {admin}"},
        )
        _check(connected)
        print(f"  ingest: {plan.ingest_messages} messages per way, {CLIENTS} clients", flush=True)
        ingest = await measure_ingest(Ingest(app, pool, business_id, service), plan.ingest_messages)
    return {"postgresql": version, "reads": reads, "ingest": ingest}


# --- report --------------------------------------------------------------------------------


def _met(value: float | None, target: float | None, higher_is_better: bool) -> str:
    if value is None or target is None:
        return "-"
    return "yes" if (value >= target if higher_is_better else value <= target) else "no"


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Ratios against the targets, and growth between the smallest and the largest size."""
    rows = []
    for size in results["sizes"]:
        for name in READS:
            figures = size["reads"][name]
            kind, target, higher = TARGETS[name]
            ratio = (
                figures["baseline"]["median_ms"] / figures["app"]["median_ms"]
                if name == "unread_badge"
                else figures["app_over_baseline"]
            )
            checked = target if name != "unread_badge" or size["size"] == "large" else None
            rows.append(
                {
                    "measurement": name,
                    "size": size["size"],
                    "app_median_ms": figures["app"]["median_ms"],
                    "app_p99_ms": figures["app"]["p99_ms"],
                    "baseline_median_ms": figures["baseline"]["median_ms"],
                    "baseline_p99_ms": figures["baseline"]["p99_ms"],
                    "ratio": round(ratio, 2),
                    "ratio_is": kind,
                    "target": checked,
                    "met": _met(ratio, checked, higher),
                    "same_answer": figures["same_answer"],
                }
            )
        for name in INGESTS:
            figures = size["ingest"][name]
            kind, target, higher = TARGETS[name]
            rows.append(
                {
                    "measurement": name,
                    "size": size["size"],
                    "app_messages_per_s": figures["messages_per_s"],
                    "floor_messages_per_s": size["ingest"]["floor"]["messages_per_s"],
                    "app_p50_request_ms": figures["request"]["median_ms"],
                    "app_p99_request_ms": figures["request"]["p99_ms"],
                    "ratio": figures["app_over_floor_rate"],
                    "ratio_is": kind,
                    "target": target,
                    "met": _met(figures["app_over_floor_rate"], target, higher),
                }
            )
    growth = []
    if len(results["sizes"]) > 1:
        smallest, largest = results["sizes"][0], results["sizes"][-1]
        for name in READS:
            ratio = (
                largest["reads"][name]["app"]["median_ms"]
                / smallest["reads"][name]["app"]["median_ms"]
            )
            growth.append(
                {
                    "measurement": name,
                    "sizes": f"{largest['size']} / {smallest['size']}",
                    "ratio": round(ratio, 2),
                    "target": TARGETS["growth"][1],
                    "met": _met(ratio, TARGETS["growth"][1], False),
                }
            )
    return {"rows": rows, "growth": growth}


def print_report(results: dict[str, Any]) -> None:
    host = results["machine"]
    print(
        f"\nwa-inbox benchmark suite: {host['cpus']} CPUs ({host['cpu_model']}), "
        f"{host['ram_gb']} GB RAM, PostgreSQL {results['postgresql']}, Python {host['python']}"
    )
    for size in results["sizes"]:
        print(
            f"  {size['size']}: {size['threads']:,} threads, {size['messages']:,} messages "
            f"+ noise, loaded in {size['load_seconds']} s; {size['repeat']} requests per read"
        )
    print(
        f"\n{'read':<14}{'size':<7}{'app med/p99 ms':>20}{'baseline med/p99 ms':>23}"
        f"{'ratio':>9}  {'ratio is':<16}{'target':>7}{'met':>5}"
    )
    summary = results["summary"]
    for row in summary["rows"]:
        if "app_median_ms" not in row:
            continue
        target = "-" if row["target"] is None else f"{row['target']:g}"
        same = "" if row["same_answer"] else "  (answers differ!)"
        print(
            f"{row['measurement']:<14}{row['size']:<7}"
            f"{row['app_median_ms']:>10.2f} /{row['app_p99_ms']:>8.2f}"
            f"{row['baseline_median_ms']:>13.2f} /{row['baseline_p99_ms']:>8.2f}"
            f"{row['ratio']:>9.2f}  {row['ratio_is']:<16}{target:>7}{row['met']:>5}{same}"
        )
    print(
        f"\n{'ingest':<16}{'size':<7}{'app msg/s':>10}{'floor msg/s':>12}"
        f"{'req p50/p99 ms':>18}{'app/floor':>10}{'target':>7}{'met':>5}"
    )
    for row in summary["rows"]:
        if "app_messages_per_s" not in row:
            continue
        print(
            f"{row['measurement']:<16}{row['size']:<7}{row['app_messages_per_s']:>10.0f}"
            f"{row['floor_messages_per_s']:>12.0f}"
            f"{row['app_p50_request_ms']:>9.1f} /{row['app_p99_request_ms']:>7.1f}"
            f"{row['ratio']:>10.2f}{row['target']:>7g}{row['met']:>5}"
        )
    if summary["growth"]:
        print(f"\n{'growth':<14}{'sizes':<16}{'median ratio':>13}{'target':>8}{'met':>5}")
        for row in summary["growth"]:
            print(
                f"{row['measurement']:<14}{row['sizes']:<16}{row['ratio']:>13.2f}"
                f"{row['target']:>8g}{row['met']:>5}"
            )
    print("\nprofile (in-process, per request: SQL statements, time in them, time outside them)")
    print(
        f"{'request':<16}{'size':<7}{'statements':>11}{'total ms':>10}{'in SQL':>9}{'outside':>9}"
    )
    for size in results["sizes"]:
        for name, row in size["profile"].items():
            if name.endswith("_top"):
                continue
            print(
                f"{name:<16}{size['size']:<7}{row['statements_per_request']:>11g}"
                f"{row['request_ms']:>10.2f}{row['in_statements_ms']:>9.2f}"
                f"{row['outside_statements_ms']:>9.2f}"
            )
    largest = results["sizes"][-1]
    print(f"\nthread_list at {largest['size']}: cProfile, top functions by own time per request")
    for entry in largest["profile"]["thread_list_cprofile_top"][:8]:
        print(
            f"  {entry['own_ms_per_request']:>7.3f} ms own "
            f"{entry['cumulative_ms_per_request']:>8.3f} ms cum "
            f"{entry['calls_per_request']:>8g} calls  {entry['function']}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.suite",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["small", "large"])
    parser.add_argument("--repeat", type=int, default=200, help="requests per side of each read")
    parser.add_argument("--ingest-messages", type=int, default=2_000, help="per way of ingesting")
    parser.add_argument("--smoke", action="store_true", help="tiny data, a few requests")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--chart", type=Path, default=None, help=f"default {DEFAULT_CHART}")
    args = parser.parse_args(argv)
    if args.smoke:
        plan = Plan(("tiny",), 5, 4 * CLIENTS, 3, LONG_THREAD_MESSAGES)
        chart = args.chart or Path(tempfile.gettempdir()) / "wa-inbox-bench-suite-smoke.png"
    else:
        order = sorted(args.sizes, key=lambda name: SIZES[name].messages)
        plan = Plan(tuple(order), args.repeat, args.ingest_messages, 20, LONG_THREAD_MESSAGES)
        chart = args.chart or DEFAULT_CHART
    results = asyncio.run(run(plan))
    print_report(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    from bench.chart import draw

    draw(results, chart)
    print(f"\nJSON: {args.json}\nchart: {chart}")
    return 0


async def run(plan: Plan) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="wa-inbox-suite-") as scratch,
        database_server(Path(scratch)) as (server, described),
    ):
        print(f"database: {described}", flush=True)
        sizes = []
        for size_name in plan.sizes:
            sizes.append(await measure_size(server, size_name, plan, Path(scratch)))
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(),
        "machine": machine(),
        "postgresql": sizes[0]["postgresql"],
        "database": described,
        "plan": {
            "sizes": list(plan.sizes),
            "repeat": plan.repeat,
            "ingest_messages": plan.ingest_messages,
            "clients": CLIENTS,
        },
        "sizes": sizes,
    }
    results["summary"] = summarize(results)
    return results


if __name__ == "__main__":
    sys.exit(main())
