"""The benchmark suite (issues 7, 14 and 15): reads, ingest and growth, side by side with floors.

    .venv/bin/python -m bench.suite                      # --sizes small large --repeat 200
    .venv/bin/python -m bench.suite --smoke --json /tmp/s.json --chart /tmp/s.png

For each size a scratch database is created (on BENCH_DATABASE_URL's or TEST_DATABASE_URL's
server, else on an embedded PostgreSQL in a temporary directory), migrated, filled by
bench/dataset.load() (seed 7, with one 10,000-message thread), analyzed, and dropped at the
end. Two processes serve each size's reads: `python -m gql serve` (the application, WORKERS=1)
and `python -m bench.floor` (the same reads as one hand-written statement each, and the same
ingest JSON stored by the floor's statements, behind a bare Starlette app under the same
uvicorn). Every size is served until the reads of all sizes are measured, so they are measured
in the same minutes. Ingest then has its own servers, one size at a time (all sizes' pools at
once would pass PostgreSQL's 100 connections): the same two and `python -m gql serve` with
WORKERS=2, each app with DATABASE_POOL_SIZE=16 per process, the floor's pool. This process
measures over real HTTP/1.1 with keep-alive (bench/http_client.py: prepared bytes, so the
client's own cost stays small):

1. unread badge: `{ unreadCount }` vs the floor's /unread (the same shard counters);
2. thread list: `threads(first: 50)` with every thread field, unreadCount and lastMessage,
   vs the floor's /threads;
3. the end of a 10,000-message thread: `messages(last: 50)` vs the floor's /messages;
   each one request at a time, interleaved request by request across sides and sizes, then
   requests per second at 16 concurrent clients for each read, side and size;
4. the seed's badge (COUNT(*) FILTER over every message) on asyncpg, on its own;
5. ingest, 16 concurrent clients: `ingestMessage`, the webhook with one message per delivery
   and with 10, each vs its HTTP floor (bench/floor.py receiving the same JSON) and vs the
   asyncpg floor (the two INSERT ... ON CONFLICT statements in one transaction per message on
   16 asyncpg connections of this process); and `ingestMessage` at 32 clients against the app
   with one worker and with two; every way in the same interleaved rounds, each server's CPU
   per message, this client's per request and what the database's connections were doing
   recorded, and the client's ceiling against the floor's /healthz;
6. growth: each read's median at the largest size over its median at the smallest.

Then a profile: the same requests in-process (httpx's ASGI transport) with every SQL statement
counted and timed, and pyinstrument's top functions of each read, printed for every target
missed. Printed as tables; written as JSON (--json) and as a PNG chart (--chart; `--smoke`
never writes docs/).
"""

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import itertools
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.databases import asyncpg_dsn, database_server, scratch_database
from bench.dataset import SIZES, LoadedDataset, load
from bench.fanout import free_port
from bench.floor import BADGE_SQL as FLOOR_BADGE_SQL
from bench.floor import store_message
from bench.http_client import Connection, prepared_request
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
# The workers comparison's clients: enough requests in flight to keep two server processes
# busy while each waits on PostgreSQL.
WORKER_CLIENTS = 32
PHONES = 300
INGEST_ROUNDS = 4
THROUGHPUT_ROUNDS = 2
PROFILE_REQUESTS = 100
DATABASE_SAMPLE_INTERVAL_S = 0.02
PROFILE_INTERVAL_S = 0.001
PROFILE_LINES = 10
START_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 60.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100  # /proc's CPU unit

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
# What the measured database's connections are doing, sampled while each way of ingesting
# runs: `active: running` is on a CPU, `active: Lock:...` waits for another transaction,
# `active: IO:WALSync` or `LWLock:WALWrite` for a commit's flush, `idle in transaction:
# Client:ClientRead` for its client between statements. The pools' idle connections, the
# sampler's own and autovacuum are left out.
DATABASE_WAITS_SQL = """
SELECT state || ': ' || coalesce(wait_event_type || ':' || wait_event, 'running') AS doing,
       count(*) AS connections
FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend'
  AND pid <> pg_backend_pid() AND state <> 'idle'
GROUP BY 1
"""

READS = ("unread_badge", "thread_list", "thread_end")
INGESTS = ("ingest_mutation", "webhook_1", "webhook_10")
# The floors of ingest (bench/floor.py's two statements per message): straight on asyncpg in
# this process, and behind the floor app's HTTP endpoints for each way.
INGEST_FLOORS = ("floor", "floor_http_mutation", "floor_http_webhook_1", "floor_http_webhook_10")
INGEST_HTTP_FLOOR = {
    "ingest_mutation": "floor_http_mutation",
    "webhook_1": "floor_http_webhook_1",
    "webhook_10": "floor_http_webhook_10",
}
# What each way's target (issue 15) compares it with: one message per request against the
# same JSON served by the HTTP floor; ten per delivery against the asyncpg floor's single
# messages, since batching must win over one message at a time even without HTTP.
INGEST_COMPARED_WITH = {
    "ingest_mutation": "floor_http_mutation",
    "webhook_1": "floor_http_webhook_1",
    "webhook_10": "floor",
}
FLOOR_KIND = {
    "unread_badge": "the shard counters' sum on asyncpg behind Starlette (bench/floor.py)",
    "thread_list": "hand-written SQL behind Starlette (bench/floor.py)",
    "thread_end": "hand-written SQL behind Starlette (bench/floor.py)",
}
INGEST_LABELS = {
    "floor": "floor (asyncpg)",
    "floor_http_mutation": "HTTP floor: mutation",
    "floor_http_webhook_1": "HTTP floor: webhook 1",
    "floor_http_webhook_10": "HTTP floor: webhook 10",
    "workers_1": "mutation, 1 worker",
    "workers_2": "mutation, WORKERS=2",
}
TARGETS = {
    # name: (what the ratio is, the target, whether higher is better); issue 14's for reads.
    "unread_badge": ("app / floor", 1.3, False),
    "thread_list": ("app / floor", 1.5, False),
    "thread_end": ("app / floor", 1.5, False),
    "seed_badge": ("seed SQL / app", 50.0, True),  # issue 7, at the largest size
    "ingest_mutation": ("app / HTTP floor rate", 0.5, True),  # issue 15's, one worker each
    "webhook_1": ("app / HTTP floor rate", 0.5, True),
    "webhook_10": ("app / asyncpg floor rate", 1.0, True),
    "workers_2": ("2 workers / 1 worker rate", 1.4, True),
    "growth": ("large / small", 1.2, False),
}


@dataclass(frozen=True)
class Plan:
    sizes: tuple[str, ...]
    repeat: int
    ingest_messages: int
    profile_repeat: int
    long_thread_messages: int
    throughput_seconds: float
    seed_repeat: int


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
    """The first warning, error and traceback lines the servers logged."""
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


def _graphql_request(base_url: str, token: str, query: str, variables: Any = None) -> bytes:
    return prepared_request(
        base_url,
        "POST",
        "/graphql",
        json_body={"query": query, "variables": variables},
        headers={"Authorization": f"Bearer {token}"},
    )


@dataclass(frozen=True)
class ReadRequests:
    """Both sides of each read for one size, as prepared request bytes: (app, floor)."""

    app_url: str
    floor_url: str
    pairs: dict[str, tuple[bytes, bytes]]

    @classmethod
    def build(
        cls, app_url: str, floor_url: str, token: str, business_id: int, long_thread_id: int
    ) -> "ReadRequests":
        def floor(path: str, **params: int) -> bytes:
            return prepared_request(
                floor_url, "GET", path, params={"business_id": business_id, **params}
            )

        end = {"id": str(long_thread_id)}
        return cls(
            app_url,
            floor_url,
            {
                "unread_badge": (_graphql_request(app_url, token, BADGE), floor("/unread")),
                "thread_list": (
                    _graphql_request(app_url, token, THREADS),
                    floor("/threads", first=50),
                ),
                "thread_end": (
                    _graphql_request(app_url, token, MESSAGES, end),
                    floor("/messages", thread_id=long_thread_id, last=50),
                ),
            },
        )


def _graphql_data(body: bytes) -> Any:
    answer = json.loads(body)
    if answer.get("errors"):
        raise RuntimeError(f"GraphQL errors: {body[:500]!r}")
    return answer["data"]


def same_answers(pairs: dict[str, tuple[bytes, bytes]]) -> dict[str, bool]:
    """Whether both sides of each read agree (a floor answering less would flatter it), from
    one answer of each: {read: (app body, floor body)}."""

    def thread_rows(data: dict[str, Any]) -> list[tuple[Any, ...]]:
        return [
            (
                e["node"]["id"],
                e["node"]["unreadCount"],
                (e["node"]["lastMessage"] or {}).get("body"),
            )
            for e in data["threads"]["edges"]
        ]

    def message_ids(data: dict[str, Any]) -> list[str]:
        return [e["node"]["id"] for e in data["thread"]["messages"]["edges"]]

    compare: dict[str, Callable[[Any], Any]] = {
        "unread_badge": lambda data: data["unreadCount"],
        "thread_list": thread_rows,
        "thread_end": message_ids,
    }
    return {
        name: compare[name](_graphql_data(app)) == compare[name](_graphql_data(floor))
        for name, (app, floor) in pairs.items()
    }


async def _timed(connection: Connection, request: bytes) -> float:
    started = time.perf_counter()
    await connection.send(request)
    return time.perf_counter() - started


async def measure_reads(sites: list["ReadSite"], repeat: int) -> dict[str, dict[str, Any]]:
    """Median and p99 of each read, app and floor, at every size: one request at a time,
    interleaved request by request across sides and sizes, so that whatever else the machine
    does at a moment weighs on all of them alike (the growth figures compare sizes)."""
    connections = []
    for site in sites:
        app = await Connection.open(site.requests.app_url)
        floor = await Connection.open(site.requests.floor_url)
        connections.append((site, app, floor))
    try:
        for _ in range(max(3, repeat // 10)):  # warm-up: plans, pools, caches on both sides
            for site, app, floor in connections:
                for app_request, floor_request in site.requests.pairs.values():
                    await app.send(app_request)
                    await floor.send(floor_request)
        samples: dict[tuple[str, str], tuple[list[float], list[float]]] = {
            (site.name, name): ([], []) for site in sites for name in READS
        }
        for index in range(repeat):
            # A then B, then B then A; small then large, then large then small: neither side
            # nor size always follows the other.
            ordered = connections if (index // 2) % 2 == 0 else connections[::-1]
            for name in READS:
                for site, app, floor in ordered:
                    app_request, floor_request = site.requests.pairs[name]
                    app_samples, floor_samples = samples[(site.name, name)]
                    if index % 2 == 0:
                        app_samples.append(await _timed(app, app_request))
                        floor_samples.append(await _timed(floor, floor_request))
                    else:
                        floor_samples.append(await _timed(floor, floor_request))
                        app_samples.append(await _timed(app, app_request))
        results: dict[str, dict[str, Any]] = {}
        for site, app, floor in connections:
            answers = {
                name: (await app.send(app_request), await floor.send(floor_request))
                for name, (app_request, floor_request) in site.requests.pairs.items()
            }
            agreement = same_answers(answers)
            results[site.name] = {}
            for name in READS:
                app_summary, floor_summary = (_summary(s) for s in samples[(site.name, name)])
                results[site.name][name] = {
                    "app": app_summary,
                    "baseline": floor_summary,
                    "baseline_kind": FLOOR_KIND[name],
                    "app_over_baseline": round(
                        app_summary["median_ms"] / floor_summary["median_ms"], 3
                    ),
                    "same_answer": agreement[name],
                }
    finally:
        for _, app, floor in connections:
            await app.close()
            await floor.close()
    return results


async def requests_per_second(
    base_url: str, request: bytes, seconds: float, clients: int = CLIENTS
) -> tuple[float, int]:
    """Answers per second to `clients` keep-alive connections sending `request` back to back,
    and how many were answered."""
    connections = [await Connection.open(base_url) for _ in range(clients)]
    answered = 0
    deadline = time.perf_counter() + seconds

    async def client(connection: Connection) -> None:
        nonlocal answered
        while time.perf_counter() < deadline:
            await connection.send(request)
            answered += 1

    try:
        started = time.perf_counter()
        await asyncio.gather(*(client(connection) for connection in connections))
        return answered / (time.perf_counter() - started), answered
    finally:
        for connection in connections:
            await connection.close()


async def measure_throughput(sites: list["ReadSite"], seconds: float) -> dict[str, dict[str, Any]]:
    """Requests per second at CLIENTS concurrent clients for each read, app and floor, in
    THROUGHPUT_ROUNDS rounds of `seconds` / rounds each, the order reversed every round."""
    runs = [
        (site, name, side)
        for site in sites
        for name in READS
        for side in (0, 1)  # the app, the floor
    ]
    for site, name, side in runs:  # warm-up: every connection of both pools in use once
        url = (site.requests.app_url, site.requests.floor_url)[side]
        await requests_per_second(url, site.requests.pairs[name][side], 0.2)
    answered: dict[tuple[str, str, int], list[float]] = {
        (site.name, name, side): [] for site, name, side in runs
    }
    for index in range(THROUGHPUT_ROUNDS):
        for site, name, side in runs if index % 2 == 0 else runs[::-1]:
            url = (site.requests.app_url, site.requests.floor_url)[side]
            rate, _ = await requests_per_second(
                url, site.requests.pairs[name][side], seconds / THROUGHPUT_ROUNDS
            )
            answered[(site.name, name, side)].append(rate)
    results: dict[str, dict[str, Any]] = {site.name: {} for site in sites}
    for site in sites:
        for name in READS:
            app = statistics.mean(answered[(site.name, name, 0)])
            floor = statistics.mean(answered[(site.name, name, 1)])
            results[site.name][name] = {
                "clients": CLIENTS,
                "app_requests_per_s": round(app, 1),
                "floor_requests_per_s": round(floor, 1),
                "app_over_floor": round(app / floor, 3),
            }
    return results


async def measure_seed_badge(url: str, business_id: int, repeat: int) -> dict[str, Any]:
    """The seed's badge (every unread message counted from history) on asyncpg, on its own.

    Never interleaved with the HTTP reads: a request that follows it pays for the pause and
    for the caches the scan evicted, more at large, where it runs for hundreds of ms. Measured
    for issue 14, the app server's CPU per badge request was 3.0 ms at small and 2.8 at large
    back to back, but 4.1 and 5.8 ms right after this statement, which is how the badge once
    seemed to grow 1.7x over HTTP while it stayed flat in process.
    """
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        counted = await connection.fetchval(SEED_BADGE_SQL, business_id)
        kept = await connection.fetchval(FLOOR_BADGE_SQL, business_id)
        seconds = []
        for _ in range(repeat):
            started = time.perf_counter()
            await connection.fetchval(SEED_BADGE_SQL, business_id)
            seconds.append(time.perf_counter() - started)
    finally:
        await connection.close()
    return {**_summary(seconds), "counters_equal_the_count": counted == kept}


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


@dataclass(frozen=True)
class IngestRequest:
    """One request that stores `messages` messages: what is POSTed where, as an HTTP client
    or httpx's in-process transport sends it."""

    path: str
    body: bytes
    headers: dict[str, str]
    messages: int


class Ingest:
    """The requests of each way of storing messages, every message new, and the asyncpg floor."""

    def __init__(
        self, business_id: int, service_token: str, pool: asyncpg.Pool | None = None
    ) -> None:
        self.pool = pool
        self.business_id = business_id
        self.service = {"Authorization": f"Bearer {service_token}"}
        self.serial = itertools.count()
        self.clock = datetime(2027, 1, 1, tzinfo=UTC)

    def _next(self) -> tuple[int, str]:
        number = next(self.serial)
        return number, f"wamid.suite.{uuid.uuid4().hex[:8]}.{number}"

    def mutation(self, *, to_floor: bool = False) -> IngestRequest:
        """`ingestMessage`; the floor's /ingest receives the same body, the business in the
        query string since it has no tokens."""
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
        body = json.dumps({"query": INGEST, "variables": variables}).encode()
        if to_floor:
            return IngestRequest(f"/ingest?business_id={self.business_id}", body, {}, 1)
        return IngestRequest("/graphql", body, self.service, 1)

    def webhook(self, per_delivery: int) -> IngestRequest:
        """A signed delivery of `per_delivery` messages (the floor does not check signatures)."""
        numbered = [self._next() for _ in range(per_delivery)]
        body = _webhook_body(
            [provider_id for _, provider_id in numbered],
            [_phone(number) for number, _ in numbered],
            int(time.time()),
        )
        headers = {"X-Hub-Signature-256": signature_of(body, APP_SECRET)}
        return IngestRequest("/webhooks/whatsapp", body, headers, per_delivery)

    async def floor(self) -> int:
        """One message through the floor's statements on a connection of this process."""
        assert self.pool is not None
        number, provider_id = self._next()
        phone = _phone(number)
        async with self.pool.acquire() as connection:
            await store_message(
                connection,
                self.business_id,
                phone,
                provider_id,
                f"benchmark message {number}",
                self.clock + timedelta(seconds=number),
            )
        return 1


def _stored(request: IngestRequest, answer: bytes) -> int:
    """The messages `answer` says were stored; RuntimeError unless every one was new."""
    body = json.loads(answer)
    if request.path == "/webhooks/whatsapp":
        stored = body.get("stored")
    else:
        data = body.get("data") or {}
        stored = 0 if body.get("errors") or data["ingestMessage"]["duplicate"] else 1
    if stored != request.messages:
        raise RuntimeError(f"{request.path}: {answer[:500]!r}")
    return request.messages


@dataclass(frozen=True)
class Way:
    """One way of ingesting as measured: its clients, what one of them sends, and where."""

    clients: int
    build: Callable[[], IngestRequest] | None  # None: Ingest.floor, on asyncpg
    url: str | None = None
    pid: int | None = None  # the server's process, whose CPU is counted


@dataclass
class Run:
    """One way's figures, summed over its rounds."""

    messages: int = 0
    requests: int = 0
    seconds: float = 0.0
    client_cpu_seconds: float = 0.0
    server_cpu_seconds: float = 0.0
    # The database's connections by what they were doing, summed over samples.
    database_waits: Counter[str] = dataclasses.field(default_factory=Counter)
    database_samples: int = 0
    latencies: list[float] = dataclasses.field(default_factory=list)
    round_rates: list[float] = dataclasses.field(default_factory=list)  # messages/s


async def _sample_database(observer: asyncpg.Connection, into: Run, stop: asyncio.Event) -> None:
    """What the database's connections do, every DATABASE_SAMPLE_INTERVAL_S until `stop`."""
    while not stop.is_set():
        for doing, connections in await observer.fetch(DATABASE_WAITS_SQL):
            into.database_waits[doing] += connections
        into.database_samples += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), DATABASE_SAMPLE_INTERVAL_S)


async def _run_clients(
    ingest: Ingest, way: Way, requests: int, into: Run, observer: asyncpg.Connection | None = None
) -> None:
    """`requests` sent by the way's concurrent clients, added to `into`; the database's
    connections sampled on `observer` meanwhile."""
    issued = 0

    async def client(connection: Connection | None) -> None:
        nonlocal issued
        while issued < requests:
            issued += 1  # claimed before the await, so no more than needed are in flight
            started = time.perf_counter()
            if way.build is None:
                stored = await ingest.floor()
            else:
                assert connection is not None
                assert way.url is not None
                request = way.build()
                answer = await connection.send(
                    prepared_request(
                        way.url, "POST", request.path, content=request.body, headers=request.headers
                    )
                )
                stored = _stored(request, answer)
            into.latencies.append(time.perf_counter() - started)
            into.messages += stored
            into.requests += 1

    connections: list[Connection | None] = [None] * way.clients
    if way.url is not None:
        connections = [await Connection.open(way.url) for _ in range(way.clients)]
    try:
        server_started = 0.0 if way.pid is None else process_cpu_seconds(way.pid)
        stop = asyncio.Event()
        sampler = (
            None
            if observer is None
            else asyncio.create_task(_sample_database(observer, into, stop))
        )
        cpu_started, started, messages = time.process_time(), time.perf_counter(), into.messages
        try:
            await asyncio.gather(*(client(connection) for connection in connections))
        finally:
            seconds = time.perf_counter() - started
            stop.set()
            if sampler is not None:
                await sampler
        into.seconds += seconds
        into.client_cpu_seconds += time.process_time() - cpu_started
        if way.pid is not None:
            into.server_cpu_seconds += process_cpu_seconds(way.pid) - server_started
        into.round_rates.append((into.messages - messages) / seconds)
    finally:
        for connection in connections:
            if connection is not None:
                await connection.close()


def process_cpu_seconds(pid: int) -> float:
    """User and system CPU time of `pid` and its live descendants (Linux; 0 elsewhere)."""
    total = 0.0
    pending = [str(pid)]
    while pending:
        current = pending.pop()
        with contextlib.suppress(OSError):
            # Fields after the command's closing parenthesis start at field 3 (state):
            # utime and stime are fields 14 and 15, in clock ticks.
            fields = Path(f"/proc/{current}/stat").read_text().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
            for task in Path(f"/proc/{current}/task").iterdir():
                pending.extend((task / "children").read_text().split())
    return total


def _ways(ingest: Ingest, servers: "Servers") -> dict[str, Way]:
    mutation, floor_mutation = ingest.mutation, functools.partial(ingest.mutation, to_floor=True)
    one, ten = functools.partial(ingest.webhook, 1), functools.partial(ingest.webhook, 10)
    app, floor = (servers.app_url, servers.app_pid), (servers.floor_url, servers.floor_pid)
    workers = (servers.workers_url, servers.workers_pid)
    return {
        "floor": Way(CLIENTS, None),
        "floor_http_mutation": Way(CLIENTS, floor_mutation, *floor),
        "floor_http_webhook_1": Way(CLIENTS, one, *floor),
        "floor_http_webhook_10": Way(CLIENTS, ten, *floor),
        "ingest_mutation": Way(CLIENTS, mutation, *app),
        "webhook_1": Way(CLIENTS, one, *app),
        "webhook_10": Way(CLIENTS, ten, *app),
        "workers_1": Way(WORKER_CLIENTS, mutation, *app),
        "workers_2": Way(WORKER_CLIENTS, mutation, *workers),
    }


def _figures(run: Run, clients: int) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "clients": clients,
        "messages": run.messages,
        "messages_per_s": round(run.messages / run.seconds, 1),
        "request": _summary(run.latencies),
    }
    figures["client_cpu_ms_per_request"] = round(run.client_cpu_seconds / run.requests * 1000, 3)
    figures["server_cpu_ms_per_message"] = round(run.server_cpu_seconds / run.messages * 1000, 3)
    # How many cores the server kept busy: near 1.0 for one process means it is CPU-bound.
    figures["server_cores_busy"] = round(run.server_cpu_seconds / run.seconds, 2)
    figures["round_messages_per_s"] = [round(rate, 1) for rate in run.round_rates]
    if run.database_samples:
        figures["database_connections"] = {
            doing: round(count / run.database_samples, 2)
            for doing, count in run.database_waits.most_common()
        }
    return figures


async def client_ceiling(floor_url: str, seconds: float) -> dict[str, Any]:
    """What this process's client answers per second at WORKER_CLIENTS connections against
    the floor's /healthz (no database), and its CPU per request: the most it could measure."""
    cpu_started = time.process_time()
    rate, answered = await requests_per_second(
        floor_url, prepared_request(floor_url, "GET", "/healthz"), seconds, WORKER_CLIENTS
    )
    cpu = time.process_time() - cpu_started
    return {
        "clients": WORKER_CLIENTS,
        "requests_per_s": round(rate, 1),
        "client_cpu_ms_per_request": round(cpu / answered * 1000, 4),
    }


def _shape(value: Any) -> Any:
    """The JSON shape of `value`: its keys, nested, and the types of its leaves."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(item) for item in value]
    return type(value).__name__


async def same_ingest_answers(ways: dict[str, Way]) -> dict[str, bool]:
    """Whether each HTTP floor answers its way's JSON in the shape the app does (a floor
    answering less would flatter it), from one new message sent to each."""
    agreement = {}
    for name, floor_name in INGEST_HTTP_FLOOR.items():
        shapes = []
        for way in (ways[name], ways[floor_name]):
            assert way.build is not None
            assert way.url is not None
            request = way.build()
            connection = await Connection.open(way.url)
            try:
                answer = await connection.send(
                    prepared_request(
                        way.url, "POST", request.path, content=request.body, headers=request.headers
                    )
                )
            finally:
                await connection.close()
            _stored(request, answer)
            shapes.append(_shape(json.loads(answer)))
        agreement[name] = shapes[0] == shapes[1]
    return agreement


async def measure_ingest(
    ingest: Ingest, messages: int, servers: "Servers", observer: asyncpg.Connection
) -> dict[str, Any]:
    """Every way of ingesting in INGEST_ROUNDS rounds, the order reversed every round, so that
    app, floors and workers share whatever else the machine does in these minutes."""
    ways = _ways(ingest, servers)
    agreement = await same_ingest_answers(ways)
    for way in ways.values():  # warm-up: every connection of every pool in use once
        await _run_clients(ingest, way, way.clients, Run())
    runs = {name: Run() for name in ways}
    per_round = max(CLIENTS, messages // INGEST_ROUNDS)
    for index in range(INGEST_ROUNDS):
        order = list(ways.items())
        if index % 2:
            order.reverse()
        for name, way in order:
            per_request = 10 if name.endswith("webhook_10") else 1
            requests = max(1, per_round // per_request)
            await _run_clients(ingest, way, requests, runs[name], observer)
    figures = {name: _figures(runs[name], way.clients) for name, way in ways.items()}
    # The asyncpg floor runs in this process: no client apart from its server.
    for key in ("client_cpu_ms_per_request", "server_cpu_ms_per_message", "server_cores_busy"):
        del figures["floor"][key]
    results: dict[str, Any] = {"clients": CLIENTS, "phones": PHONES}
    for name in INGEST_FLOORS:
        results[name] = figures[name]
    rates = {name: figures[name]["messages_per_s"] for name in ways}
    for name in INGESTS:
        compared = INGEST_COMPARED_WITH[name]
        results[name] = {
            **figures[name],
            "app_over_floor_rate": round(rates[name] / rates["floor"], 3),
            "http_floor": INGEST_HTTP_FLOOR[name],
            "app_over_http_floor_rate": round(rates[name] / rates[INGEST_HTTP_FLOOR[name]], 3),
            "compared_with": compared,
            "ratio": round(rates[name] / rates[compared], 3),
            "same_answer_shape_as_http_floor": agreement[name],
        }
    results["workers"] = {
        "clients": WORKER_CLIENTS,
        "worker_processes": serving_processes(servers.workers_pid),
        "one_worker": figures["workers_1"],
        "two_workers": figures["workers_2"],
        "ratio": round(rates["workers_2"] / rates["workers_1"], 3),
        # Each round's two figures were measured next to each other: their spread is how far
        # the one ratio above can be trusted on a machine shared with PostgreSQL.
        "round_ratios": [
            round(two / one, 3)
            for one, two in zip(
                runs["workers_1"].round_rates, runs["workers_2"].round_rates, strict=True
            )
        ],
        "client_ceiling": await client_ceiling(servers.floor_url, 1.0),
    }
    return results


# --- the profile ---------------------------------------------------------------------------


async def profile(url: str, dataset: LoadedDataset, repeat: int) -> dict[str, Any]:
    """Each request in-process: statements, time inside them, time in Python; and for each
    read, pyinstrument's top functions by own time (printed for the reads that miss a target)."""
    from pyinstrument import Profiler
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

        async def read(query: str, variables: dict[str, Any] | None = None) -> None:
            _check(await client.post("/graphql", json={"query": query, "variables": variables}))

        end = {"id": str(dataset.long_thread_id or 0)}
        reads: dict[str, Callable[[], Awaitable[Any]]] = {
            "unread_badge": lambda: read(BADGE),
            "thread_list": lambda: read(THREADS),
            "thread_end": lambda: read(MESSAGES, end),
        }
        # Only the application's side of each write is used here: no floor, no database.
        ingest = Ingest(dataset.business_id, service)

        async def store(request: IngestRequest) -> None:
            headers = {"Content-Type": "application/json", **request.headers}
            answer = await client.post(request.path, content=request.body, headers=headers)
            _check(answer)
            _stored(request, answer.content)

        operations: dict[str, Callable[[], Awaitable[Any]]] = {
            **reads,
            "ingest_mutation": lambda: store(ingest.mutation()),
            "webhook_1": lambda: store(ingest.webhook(1)),
            "webhook_10": lambda: store(ingest.webhook(10)),
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
        # A separate pass: the profiler's own overhead must not inflate the figures above. It
        # samples this whole process, so httpx's ASGI client appears too (a small share).
        top: dict[str, list[dict[str, Any]]] = {}
        for name, operation in reads.items():
            profiler = Profiler(interval=PROFILE_INTERVAL_S, async_mode="disabled")
            profiler.start()
            for _ in range(PROFILE_REQUESTS):
                await operation()
            profiler.stop()
            top[name] = _top_functions(profiler, results[name]["request_ms"])
    results["pyinstrument_top"] = top
    return results


def _top_functions(profiler: Any, request_ms: float, limit: int = 12) -> list[dict[str, Any]]:
    """pyinstrument's flat view (functions by their own time) as shares of the profiled time,
    scaled to the unprofiled request's `request_ms`: the sampling hook slows call-heavy code
    (graphql-core's executor) far more than the rest, so its seconds are not the request's."""
    text = profiler.output_text(unicode=False, color=False, flat=True, show_all=False)
    duration = profiler.last_session.duration
    top = []
    for line in text.splitlines():
        seconds, _, where = line.strip().partition(" ")
        try:
            share = float(seconds) / duration
        except ValueError:
            continue  # the banner, blank lines
        top.append(
            {
                "share": round(share, 4),
                "own_ms_per_request": round(share * request_ms, 3),
                "function": where.strip(),
            }
        )
    return top[:limit]


# --- the sizes ---------------------------------------------------------------------------


@dataclass
class Site:
    """One size: its database, loaded and analyzed, and what was measured on it."""

    name: str
    url: str
    dataset: LoadedDataset
    result: dict[str, Any]
    log_path: Path


@dataclass(frozen=True)
class ReadSite:
    """One size's reads while its app and floor serve them."""

    name: str
    requests: ReadRequests


@dataclass(frozen=True)
class Servers:
    """The processes serving one size: the app (WORKERS=1), the floor, and, for ingest, the
    app with WORKERS=2."""

    app_url: str
    app_pid: int
    floor_url: str
    floor_pid: int
    workers_url: str = ""
    workers_pid: int = 0


@contextlib.asynccontextmanager
async def serving_size(server: str, size_name: str, plan: Plan, logs: Path) -> AsyncIterator[Site]:
    """A scratch database filled with `size_name` and analyzed, dropped at the end."""
    size = SIZES[size_name]
    long_messages = min(plan.long_thread_messages, size.messages // 4)
    async with scratch_database(server, "wa_inbox_suite") as url:
        await asyncio.to_thread(upgrade_to_head, url)
        connection = await asyncpg.connect(asyncpg_dsn(url))
        try:
            started = time.perf_counter()
            dataset = await load(connection, size, seed=7, long_thread_messages=long_messages)
            load_s = time.perf_counter() - started
            version = await connection.fetchval("SHOW server_version")
        finally:
            await connection.close()
        print(
            f"[{size_name}] loaded {size.threads:,} threads, {size.messages:,} messages "
            f"+ noise and analyzed in {load_s:.1f} s",
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
            "postgresql": version,
        }
        log_path = logs / f"{size_name}.log"
        try:
            yield Site(size_name, url, dataset, result, log_path)
        except Exception:
            # The servers' side of a failed measurement is only in this log, which goes with
            # the scratch directory.
            print(f"  [{size_name}] the servers' log ends:\n{_tail(log_path, 60)}", flush=True)
            raise
        result["server_log_complaints"] = _complaints(log_path)
        for line in result["server_log_complaints"]:
            print(f"  [{size_name}] server log: {line}", flush=True)


@contextlib.contextmanager
def servers_for(site: Site, *, with_workers: bool) -> Iterator[Servers]:
    """The app and the floor on `site`'s database; the app with WORKERS=2 too if asked."""
    env = {
        "DATABASE_URL": site.url,
        "AUTH_SECRET": AUTH_SECRET,
        "WHATSAPP_APP_SECRET": APP_SECRET,
        # As many connections as the floor's, per process with WORKERS=2.
        "DATABASE_POOL_SIZE": str(CLIENTS),
    }
    floor_env = {"FLOOR_DATABASE_URL": asyncpg_dsn(site.url), "FLOOR_POOL_SIZE": str(CLIENTS)}
    with contextlib.ExitStack() as stack:
        # WORKERS given to both apps: the one-worker figures must not follow the environment
        # `make bench` was started from.
        app_url, app = stack.enter_context(
            process_serving("gql", {**env, "WORKERS": "1"}, site.log_path, ("serve",))
        )
        floor_url, floor = stack.enter_context(
            process_serving("bench.floor", floor_env, site.log_path)
        )
        if not with_workers:
            yield Servers(app_url, app.pid, floor_url, floor.pid)
            return
        workers_url, workers = stack.enter_context(
            process_serving("gql", {**env, "WORKERS": "2"}, site.log_path, ("serve",))
        )
        yield Servers(app_url, app.pid, floor_url, floor.pid, workers_url, workers.pid)


def read_site(site: Site, servers: Servers) -> ReadSite:
    agent = issue_token(
        AUTH_SECRET, user_id="bench", business_id=site.dataset.business_id, role=Role.AGENT
    )
    requests = ReadRequests.build(
        servers.app_url,
        servers.floor_url,
        agent,
        site.dataset.business_id,
        site.dataset.long_thread_id or 0,
    )
    return ReadSite(site.name, requests)


def serving_processes(pid: int) -> int:
    """How many processes serve as `pid`: its children when it has any (uvicorn's workers
    under their supervisor), else itself. Linux only; 1 where /proc cannot tell."""
    workers = 0
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                # Spawning the workers also starts multiprocessing's resource tracker.
                if b"resource_tracker" not in Path(f"/proc/{child}/cmdline").read_bytes():
                    workers += 1
    return workers or 1


async def measure_ingest_on(site: Site, servers: Servers, messages: int) -> dict[str, Any]:
    """Every way of ingesting against one size's app, its floor and its database, and the app
    with two workers."""
    business_id = site.dataset.business_id
    admin = issue_token(AUTH_SECRET, user_id="bench", business_id=business_id, role=Role.ADMIN)
    service = issue_token(AUTH_SECRET, user_id="bench", business_id=business_id, role=Role.SERVICE)
    async with httpx.AsyncClient(base_url=servers.app_url, timeout=REQUEST_TIMEOUT_S) as app:
        connected = await app.post(
            "/graphql",
            json={"query": CONNECT, "variables": {"id": PHONE_NUMBER_ID}},
            headers={"Authorization": f"Bearer {admin}"},
        )
        _check(connected)
    pool = await asyncpg.create_pool(asyncpg_dsn(site.url), min_size=CLIENTS, max_size=CLIENTS)
    assert pool is not None
    observer = await asyncpg.connect(asyncpg_dsn(site.url))
    try:
        return await measure_ingest(Ingest(business_id, service, pool), messages, servers, observer)
    finally:
        await observer.close()
        await pool.close()


# --- report --------------------------------------------------------------------------------


def _met(value: float | None, target: float | None, higher_is_better: bool) -> str:
    if value is None or target is None:
        return "-"
    return "yes" if (value >= target if higher_is_better else value <= target) else "no"


def _ingest_rows(size: dict[str, Any]) -> list[dict[str, Any]]:
    """The ingest table's rows of one size: the floors, each way against what its target
    compares it with, and the workers."""
    ingest = size["ingest"]

    def row(name: str, figures: dict[str, Any], **more: Any) -> dict[str, Any]:
        return {
            "measurement": name,
            "size": size["size"],
            "clients": figures["clients"],
            "messages_per_s": figures["messages_per_s"],
            "p50_request_ms": figures["request"]["median_ms"],
            "p99_request_ms": figures["request"]["p99_ms"],
            "client_cpu_ms_per_request": figures.get("client_cpu_ms_per_request"),
            "server_cpu_ms_per_message": figures.get("server_cpu_ms_per_message"),
            "server_cores_busy": figures.get("server_cores_busy"),
            **more,
        }

    rows = [row(name, ingest[name]) for name in INGEST_FLOORS]
    for name in INGESTS:
        figures = ingest[name]
        kind, target, higher = TARGETS[name]
        compared = figures["compared_with"]
        rows.append(
            row(
                name,
                figures,
                compared_with=compared,
                compared_messages_per_s=ingest[compared]["messages_per_s"],
                # The keys before issue 15, kept: the asyncpg floor's rate and the request's.
                app_messages_per_s=figures["messages_per_s"],
                floor_messages_per_s=ingest["floor"]["messages_per_s"],
                app_p50_request_ms=figures["request"]["median_ms"],
                app_p99_request_ms=figures["request"]["p99_ms"],
                ratio=figures["ratio"],
                ratio_is=kind,
                target=target,
                met=_met(figures["ratio"], target, higher),
                same_answer_shape=figures["same_answer_shape_as_http_floor"],
            )
        )
    workers = ingest["workers"]
    kind, target, higher = TARGETS["workers_2"]
    rows.append(row("workers_1", workers["one_worker"]))
    rows.append(
        row(
            "workers_2",
            workers["two_workers"],
            compared_with="workers_1",
            compared_messages_per_s=workers["one_worker"]["messages_per_s"],
            worker_processes=workers["worker_processes"],
            ratio=workers["ratio"],
            ratio_is=kind,
            target=target,
            met=_met(workers["ratio"], target, higher),
        )
    )
    return rows


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Ratios against the targets, growth from the smallest to the largest size, and the
    targets missed (read, size, why), whose profiles the report prints."""
    rows = []
    missed = []
    largest_name = results["sizes"][-1]["size"]
    for size in results["sizes"]:
        for name in READS:
            figures = size["reads"][name]
            kind, target, higher = TARGETS[name]
            ratio = figures["app_over_baseline"]
            met = _met(ratio, target, higher)
            if met == "no":
                missed.append((name, size["size"], f"{ratio:.2f}x the floor, target {target:g}x"))
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
                    "target": target,
                    "met": met,
                    "same_answer": figures["same_answer"],
                    "app_requests_per_s": figures["throughput"]["app_requests_per_s"],
                    "floor_requests_per_s": figures["throughput"]["floor_requests_per_s"],
                }
            )
        seed = size["seed_badge"]
        kind, target, higher = TARGETS["seed_badge"]
        ratio = seed["median_ms"] / size["reads"]["unread_badge"]["app"]["median_ms"]
        checked = target if size["size"] == largest_name else None
        rows.append(
            {
                "measurement": "seed_badge",
                "size": size["size"],
                "seed_median_ms": seed["median_ms"],
                "seed_p99_ms": seed["p99_ms"],
                "app_median_ms": size["reads"]["unread_badge"]["app"]["median_ms"],
                "ratio": round(ratio, 2),
                "ratio_is": kind,
                "target": checked,
                "met": _met(ratio, checked, higher),
                "counters_equal_the_count": seed["counters_equal_the_count"],
            }
        )
        rows.extend(_ingest_rows(size))
    growth = []
    if len(results["sizes"]) > 1:
        smallest, largest = results["sizes"][0], results["sizes"][-1]
        target = TARGETS["growth"][1]
        for name in READS:
            large, small = largest["reads"][name], smallest["reads"][name]
            ratio = large["app"]["median_ms"] / small["app"]["median_ms"]
            floor_ratio = large["baseline"]["median_ms"] / small["baseline"]["median_ms"]
            met = _met(ratio, target, False)
            if met == "no":
                missed.append((name, largest["size"], f"grew {ratio:.2f}x, target {target:g}x"))
            growth.append(
                {
                    "measurement": name,
                    "sizes": f"{largest['size']} / {smallest['size']}",
                    "ratio": round(ratio, 2),
                    "floor_ratio": round(floor_ratio, 2),
                    "target": target,
                    "met": met,
                }
            )
    return {
        "rows": rows,
        "growth": growth,
        "missed": [{"read": read, "size": size, "why": why} for read, size, why in missed],
    }


def print_report(results: dict[str, Any]) -> None:
    host = results["machine"]
    print(
        f"\nwa-inbox benchmark suite: {host['cpus']} CPUs ({host['cpu_model']}), "
        f"{host['ram_gb']} GB RAM, PostgreSQL {results['postgresql']}, Python {host['python']}; "
        f"{results['elapsed_seconds']:.0f} s, load average "
        f"{results['load_average']['start']:.2f} at the start, "
        f"{results['load_average']['end']:.2f} at the end"
    )
    for size in results["sizes"]:
        print(
            f"  {size['size']}: {size['threads']:,} threads, {size['messages']:,} messages "
            f"+ noise, loaded and analyzed in {size['load_seconds']} s; {size['repeat']} "
            "requests per read and side"
        )
    summary = results["summary"]
    print(
        f"\n{'read':<14}{'size':<7}{'app med/p99 ms':>18}{'floor med/p99 ms':>19}"
        f"{'app/floor':>10}{'target':>7}{'met':>5}"
        f"{f'req/s at {CLIENTS} clients app / floor':>33}"
    )
    for row in summary["rows"]:
        if row["measurement"] not in READS:
            continue
        same = "" if row["same_answer"] else "  (answers differ!)"
        print(
            f"{row['measurement']:<14}{row['size']:<7}"
            f"{row['app_median_ms']:>9.2f} /{row['app_p99_ms']:>7.2f}"
            f"{row['baseline_median_ms']:>10.2f} /{row['baseline_p99_ms']:>7.2f}"
            f"{row['ratio']:>10.2f}{row['target']:>7g}{row['met']:>5}"
            f"{row['app_requests_per_s']:>20,.0f} / {row['floor_requests_per_s']:<10,.0f}"
            f"{row['app_requests_per_s'] / row['floor_requests_per_s']:>5.2f}{same}"
        )
    print(
        f"\n{'seed badge':<14}{'size':<7}{'seed SQL med/p99 ms':>22}{'app badge med ms':>18}"
        f"{'seed/app':>10}{'target':>7}{'met':>5}"
    )
    for row in summary["rows"]:
        if row["measurement"] != "seed_badge":
            continue
        target = "-" if row["target"] is None else f"{row['target']:g}"
        counters = "" if row["counters_equal_the_count"] else "  (counters differ from count!)"
        print(
            f"{'':<14}{row['size']:<7}{row['seed_median_ms']:>12.2f} /{row['seed_p99_ms']:>8.2f}"
            f"{row['app_median_ms']:>18.2f}{row['ratio']:>10.2f}{target:>7}{row['met']:>5}"
            f"{counters}"
        )
    print(
        f"\n{'ingest':<23}{'size':<7}{'clients':>7}{'msg/s':>8}{'req p50/p99 ms':>16}"
        f"{'server CPU ms/msg, cores':>26}{'client CPU ms/req':>18}  {'compared with':<23}"
        f"{'its msg/s':>9}{'ratio':>7}{'target':>7}{'met':>5}"
    )
    for row in summary["rows"]:
        if "messages_per_s" not in row:
            continue
        cpu = row["client_cpu_ms_per_request"]
        server = (
            "-"
            if row["server_cpu_ms_per_message"] is None
            else f"{row['server_cpu_ms_per_message']:.2f}, {row['server_cores_busy']:.2f}"
        )
        line = (
            f"{INGEST_LABELS.get(row['measurement'], row['measurement']):<23}{row['size']:<7}"
            f"{row['clients']:>7}{row['messages_per_s']:>8.0f}"
            f"{row['p50_request_ms']:>8.1f} /{row['p99_request_ms']:>6.1f}"
            f"{server:>26}{'-' if cpu is None else f'{cpu:.3f}':>18}"
        )
        if "ratio" in row:
            line += (
                f"  {INGEST_LABELS.get(row['compared_with'], row['compared_with']):<23}"
                f"{row['compared_messages_per_s']:>9.0f}{row['ratio']:>7.2f}"
                f"{row['target']:>7g}{row['met']:>5}"
            )
        if "worker_processes" in row:
            line += f"  ({row['worker_processes']} serving processes)"
        if not row.get("same_answer_shape", True):
            line += "  (answers differ from the HTTP floor's!)"
        print(line)
    for size in results["sizes"]:
        workers = size["ingest"]["workers"]
        ratios = ", ".join(f"{ratio:.2f}" for ratio in workers["round_ratios"])
        print(f"  [{size['size']}] WORKERS=2 / 1 worker, round by round: {ratios}")
        ceiling = workers["client_ceiling"]
        print(
            f"  [{size['size']}] this process's client alone: {ceiling['requests_per_s']:,.0f} "
            f"req/s from {ceiling['clients']} connections to the floor's /healthz, "
            f"{ceiling['client_cpu_ms_per_request']:.3f} ms of its CPU per request"
        )
    print(
        "\nthe database's connections while each way ran: how many on average were doing what"
        f" (pg_stat_activity every {DATABASE_SAMPLE_INTERVAL_S * 1000:g} ms; idle ones left out)"
    )
    for size in results["sizes"]:
        ingest = size["ingest"]
        measured = {
            **{name: ingest[name] for name in (*INGEST_FLOORS, *INGESTS)},
            "workers_1": ingest["workers"]["one_worker"],
            "workers_2": ingest["workers"]["two_workers"],
        }
        for name, figures in measured.items():
            connections = figures.get("database_connections", {})
            # The four largest; the JSON has every state seen.
            doing = ", ".join(
                f"{what} {count:.1f}" for what, count in list(connections.items())[:4]
            )
            print(
                f"{INGEST_LABELS.get(name, name):<23}{size['size']:<7}"
                f"{sum(connections.values()):>5.1f}  {doing}"
            )
    if summary["growth"]:
        print(
            f"\n{'growth':<14}{'sizes':<16}{'app over HTTP':>14}{'target':>8}{'met':>5}"
            f"{'floor over HTTP':>17}"
        )
        for row in summary["growth"]:
            print(
                f"{row['measurement']:<14}{row['sizes']:<16}{row['ratio']:>14.2f}"
                f"{row['target']:>8g}{row['met']:>5}{row['floor_ratio']:>17.2f}"
            )
    print(
        "\nprofile (in-process, per request: SQL statements, time in them, time outside them;"
        " BEGIN, ROLLBACK and pool pings are not counted as statements)"
    )
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
    by_size = {size["size"]: size for size in results["sizes"]}
    if not summary["missed"]:
        print("\nevery read target met")
    for miss in summary["missed"]:
        profile_of = by_size[miss["size"]]["profile"]
        row = profile_of[miss["read"]]
        print(
            f"\nwhat is left: {miss['read']} at {miss['size']} ({miss['why']}); in process "
            f"{row['request_ms']:.2f} ms, {row['in_statements_ms']:.2f} ms of it in "
            f"{row['statements_per_request']:g} statements. pyinstrument over "
            f"{PROFILE_REQUESTS} requests, top functions by own time (share, and ms of the "
            "request; the event loop's own time is the wait for PostgreSQL and the compiled code "
            "of uvloop and asyncpg's protocol):"
        )
        for entry in profile_of["pyinstrument_top"][miss["read"]][:PROFILE_LINES]:
            print(
                f"  {entry['share']:>6.1%} {entry['own_ms_per_request']:>7.3f} ms  "
                f"{entry['function']}"
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
    parser.add_argument(
        "--throughput-seconds",
        type=float,
        default=3.0,
        help=f"per read, side and size, at {CLIENTS} concurrent clients",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny data, a few requests")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--chart", type=Path, default=None, help=f"default {DEFAULT_CHART}")
    args = parser.parse_args(argv)
    if args.smoke:
        plan = Plan(("tiny",), 5, 4 * CLIENTS, 3, LONG_THREAD_MESSAGES, 0.4, 3)
        chart = args.chart or Path(tempfile.gettempdir()) / "wa-inbox-bench-suite-smoke.png"
    else:
        order = sorted(args.sizes, key=lambda name: SIZES[name].messages)
        plan = Plan(
            tuple(order),
            args.repeat,
            args.ingest_messages,
            20,
            LONG_THREAD_MESSAGES,
            args.throughput_seconds,
            max(5, args.repeat // 10),
        )
        chart = args.chart or DEFAULT_CHART
    try:
        import uvloop  # installed with uvicorn[standard]; the servers run on it too
    except ImportError:
        results = asyncio.run(run(plan))
    else:
        results = uvloop.run(run(plan))
    print_report(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    from bench.chart import draw

    draw(results, chart)
    print(f"\nJSON: {args.json}\nchart: {chart}")
    return 0


async def run(plan: Plan) -> dict[str, Any]:
    started = time.perf_counter()
    started_at = datetime.now(UTC).isoformat()
    load_at_start = os.getloadavg()[0]
    with (
        tempfile.TemporaryDirectory(prefix="wa-inbox-suite-") as scratch,
        database_server(Path(scratch)) as (server, described),
    ):
        print(f"database: {described}", flush=True)
        async with contextlib.AsyncExitStack() as stack:
            sites = [
                await stack.enter_async_context(serving_size(server, name, plan, Path(scratch)))
                for name in plan.sizes
            ]
            # The reads of every size are measured while all of them are served; ingest then
            # has servers of its own, one size at a time: every size's pools open at once,
            # the app's with two workers too, would pass PostgreSQL's 100 connections.
            with contextlib.ExitStack() as serving:
                read_sites = [
                    read_site(site, serving.enter_context(servers_for(site, with_workers=False)))
                    for site in sites
                ]
                print(
                    f"reads: {plan.repeat} of each per side and size, interleaved across sides "
                    "and sizes",
                    flush=True,
                )
                reads = await measure_reads(read_sites, plan.repeat)
                print(
                    f"reads: requests per second at {CLIENTS} clients, "
                    f"{plan.throughput_seconds:g} s per read, side and size",
                    flush=True,
                )
                throughput = await measure_throughput(read_sites, plan.throughput_seconds)
            for site in sites:
                for name in READS:
                    reads[site.name][name]["throughput"] = throughput[site.name][name]
                site.result["reads"] = reads[site.name]
                print(f"[{site.name}] the seed's badge, {plan.seed_repeat} times", flush=True)
                site.result["seed_badge"] = await measure_seed_badge(
                    site.url, site.dataset.business_id, plan.seed_repeat
                )
                print(
                    f"[{site.name}] ingest: {plan.ingest_messages} messages per way, "
                    f"{CLIENTS} clients ({WORKER_CLIENTS} for the workers)",
                    flush=True,
                )
                with servers_for(site, with_workers=True) as servers:
                    site.result["ingest"] = await measure_ingest_on(
                        site, servers, plan.ingest_messages
                    )
                print(f"[{site.name}] profiling in-process", flush=True)
                site.result["profile"] = await profile(site.url, site.dataset, plan.profile_repeat)
        sizes = [site.result for site in sites]
    results: dict[str, Any] = {
        "started_at": started_at,
        "elapsed_seconds": round(time.perf_counter() - started, 1),
        "load_average": {"start": load_at_start, "end": os.getloadavg()[0]},
        "machine": machine(),
        "postgresql": sizes[0]["postgresql"],
        "database": described,
        "plan": {
            "sizes": list(plan.sizes),
            "repeat": plan.repeat,
            "ingest_messages": plan.ingest_messages,
            "clients": CLIENTS,
            "throughput_seconds": plan.throughput_seconds,
            "seed_repeat": plan.seed_repeat,
        },
        "sizes": sizes,
    }
    results["summary"] = summarize(results)
    return results


if __name__ == "__main__":
    sys.exit(main())
