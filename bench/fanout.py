"""Fan-out benchmark: commit-to-delivery latency of the unread badge to N live subscribers.

    .venv/bin/python -m bench.fanout --subscribers 1000 5000 --messages 30
    .venv/bin/python -m bench.fanout --smoke          # 20 subscribers, 3 messages, no figures

For every subscriber count N, a fresh `python -m gql serve` process is started (so memory
figures of one N do not mix with another's), on a free port of 127.0.0.1, with an embedded
PostgreSQL in a temporary directory (created once per run, shared by the server processes,
removed at the end). With BENCH_DATABASE_URL set, that database is used as given; with
TEST_DATABASE_URL set, a scratch database is created on that server and dropped afterwards.
Then, against that server:

1. Baseline: a few ingests to warm it up, then M `ingestMessage` requests with no subscriber,
   one at a time and 50 ms apart like the measured ones below (back-to-back requests are
   ~3 ms faster: a warm server); their client-side latency is the "ingest@0" figure.
2. N websocket connections (graphql-transport-ws, no compression) are opened in batches,
   acknowledged and subscribed to `unreadCountChanged`; the server's RSS before and after,
   divided by N, is the memory per subscriber. Warm-up messages are ingested until every
   subscriber has received one, so all N are known to be registered before measuring.
3. M messages are ingested one at a time (inbound, CUSTOMER, one phone, no provider id). The
   message's `createdAt` (PostgreSQL's clock_timestamp() at insert, same machine clock, a
   little before the commit) is the start of the delivery clock; every subscriber stamps
   time.time() when its frame arrives. The next message is sent only once all N have
   received the previous one (or after a 30 s timeout, counting the misses). Frames are
   matched to messages by `totalUnread`, which grows by one per ingest.

Reported per N: commit-to-LAST-subscriber latency (p50/p99 over messages), latency over all
deliveries, commit-to-first-subscriber latency, ingest request latency with N subscribers and
with none (same server process, just before), server RSS per subscriber, server CPU per
delivery (utime+stime of the server process over the M messages, divided by N*M: it includes
the M ingests themselves, which the baseline shows to be small), and missed deliveries.
The JSON also has, with and without subscribers, the time from the message's createdAt to the
ingest's response reaching the client (`response_after_commit_*`): the part of the request
that runs while the fan-out of its own message has started.

`--ws lean|websockets-sansio|websockets|wsproto` serves the websockets with that uvicorn
implementation instead of `gql serve`'s own (bench/fanout_server.py), to compare them.

Client design. The receiving connections live in worker processes (`--workers`, default 1),
each one uvloop event loop (asyncio's own if uvloop is missing) whose per-frame work is: stamp
the time, find `"totalUnread":` in the text, append the stamp to that message's list, and
tell the coordinator over a pipe once all its connections have the message. After connecting,
a worker freezes its objects out of the garbage collector (gc.freeze()): otherwise full
collections over thousands of connections paused it for 0.1-0.2 s every few messages, which
would be measured as delivery latency. The coordinator (this process) only sends the ingests,
so their latency is never measured through an event loop busy receiving thousands of frames.
How this was chosen, on the 2-core development machine, 5000 subscribers x 30 messages
(commit-to-last-delivery p50; client CPU over the 150,000 deliveries; server CPU ~4.4 s):
  asyncio loop: 1 worker 191-202 ms (client 5.3-5.5 s of CPU: the client was the bottleneck),
                2 workers 139-146 ms, 4 workers 142-144 ms (client 4.4-4.8 s);
  uvloop:       1 worker 94 ms, 2 workers 95 ms, 4 workers 102 ms (client 1.9-2.1 s).
With uvloop one client process keeps up and the server is the bottleneck; more processes only
take CPU from it. `--workers N` remains for machines where one client loop falls behind.

Results are printed as a table and written as JSON (default bench-results/fanout.json).
The exit status is 1 when deliveries were missed or connections failed.
"""

import argparse
import asyncio
import contextlib
import gc
import json
import multiprocessing
import multiprocessing.connection
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = PROJECT_ROOT / "bench-results" / "fanout.json"

AUTH_SECRET = "bench-fanout-secret-long-enough-for-hs256-signing"
BUSINESS_ID = 1
PHONE = "+14155550100"
TRANSPORT_WS = "graphql-transport-ws"
UNREAD_COUNT_CHANGED = "subscription { unreadCountChanged { threadId unreadCount totalUnread } }"
INGEST = (
    "mutation Ingest($input: IngestMessageInput!) "
    "{ ingestMessage(input: $input) { message { createdAt } } }"
)
TOTAL_MARK = '"totalUnread":'

START_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 30.0
DELIVERY_TIMEOUT_S = 30.0
WARMUP_TIMEOUT_S = 20.0
WARMUP_ATTEMPTS = 5
CONNECT_TIMEOUT_S = 30.0
CONNECT_BATCH = 200  # connections opened concurrently, over all workers
SERVER_WARMUP_INGESTS = 5
PAUSE_S = 0.05  # between two measured messages, once every subscriber has the previous one
STOP_TIMEOUT_S = 30.0
MAX_CONSECUTIVE_TIMEOUTS = 3  # then the subscriber count is given up (messages left unsent)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- the operating system's view -----------------------------------------------------------


def raise_open_files_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1_048_576
    if soft == resource.RLIM_INFINITY or soft >= hard:
        return soft
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (not its children)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # fields[0] is field 3 (state)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def host_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# --- database and server -------------------------------------------------------------------


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, ""))


def _admin(url: str, statement: str) -> None:
    import asyncpg

    from db.engine import to_async_url

    dsn = to_async_url(url).replace("postgresql+asyncpg://", "postgresql://", 1)

    async def run() -> None:
        connection = await asyncpg.connect(dsn, timeout=REQUEST_TIMEOUT_S)
        try:
            await connection.execute(statement, timeout=REQUEST_TIMEOUT_S)
        finally:
            await connection.close()

    asyncio.run(run())


@contextlib.contextmanager
def database(scratch: Path) -> Iterator[tuple[dict[str, str], str]]:
    """Environment entries naming the benchmark's database, and a description of it."""
    given = os.environ.get("BENCH_DATABASE_URL")
    if given:
        yield {"DATABASE_URL": given}, "BENCH_DATABASE_URL, as given"
        return
    test_server = os.environ.get("TEST_DATABASE_URL")
    if test_server:
        name = f"wa_inbox_bench_{uuid.uuid4().hex[:10]}"
        _admin(test_server, f'CREATE DATABASE "{name}"')
        try:
            yield (
                {"DATABASE_URL": _with_database(test_server, name)},
                f"scratch database {name} on TEST_DATABASE_URL's server",
            )
        finally:
            _admin(test_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        return
    data_dir = scratch / "pgdata"
    yield {"WA_INBOX_DATA_DIR": str(data_dir)}, f"embedded PostgreSQL in {data_dir}"


@dataclass(frozen=True)
class Server:
    base_url: str
    ws_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"the server exited with {self.process.returncode}:\n{_tail(self.log_path)}"
            )


@contextlib.contextmanager
def running_server(
    database_env: dict[str, str], log_path: Path, ws: str | None = None
) -> Iterator[Server]:
    """`python -m gql serve` on a free port; yields once /healthz answers.

    `ws` names another uvicorn websocket implementation (bench/fanout_server.py).
    """
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "AUTH_SECRET", "WA_INBOX_DATA_DIR", "LOG_LEVEL"}
    }
    env.update(
        HOST="127.0.0.1",
        PORT=str(port),
        AUTH_SECRET=AUTH_SECRET,
        LOG_LEVEL="WARNING",
        **database_env,
    )
    with log_path.open("ab") as log:
        command = ["-m", "gql", "serve"] if ws is None else ["-m", "bench.fanout_server", ws]
        process = subprocess.Popen(
            [sys.executable, *command],
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
                raise RuntimeError(
                    f"the server exited with {process.returncode}:\n{_tail(log_path)}"
                )
            try:
                if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"no /healthz after {START_TIMEOUT_S} s:\n{_tail(log_path)}")
            time.sleep(0.2)
        yield Server(base_url, f"ws://127.0.0.1:{port}/graphql", process, log_path)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT_S)


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def server_complaints(log_path: Path, offset: int) -> list[str]:
    """Warning, error and traceback lines the server logged since `offset`."""
    with log_path.open("rb") as log:
        log.seek(offset)
        text = log.read().decode(errors="replace")
    keys = (" WARNING ", " ERROR ", " CRITICAL ", "Traceback")
    return [line for line in text.splitlines() if any(key in line for key in keys)]


class Inbox:
    """The HTTP side: ingests (timed) and the unread count, on one kept-alive connection."""

    def __init__(self, base_url: str, token: str) -> None:
        self.client = httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=REQUEST_TIMEOUT_S,
        )
        self.sent = 0

    def close(self) -> None:
        self.client.close()

    def _post(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self.client.post("/graphql", json={"query": query, "variables": variables})
        body: dict[str, Any] = response.json()
        if response.status_code != 200 or body.get("errors"):
            raise RuntimeError(f"GraphQL request failed ({response.status_code}): {body}")
        return body["data"]  # type: ignore[no-any-return]

    def ingest(self) -> tuple[float, float, float]:
        """Ingest one inbound message: (request latency in s, createdAt, response time).

        createdAt and the response time are UNIX times (time.time()).
        """
        self.sent += 1
        variables = {
            "input": {
                "phone": PHONE,
                "direction": "INBOUND",
                "source": "CUSTOMER",
                "body": f"fan-out benchmark message {self.sent}",
            }
        }
        started = time.perf_counter()
        data = self._post(INGEST, variables)
        latency = time.perf_counter() - started
        answered = time.time()
        created = data["ingestMessage"]["message"]["createdAt"]
        return latency, datetime.fromisoformat(created).timestamp(), answered

    def unread_count(self) -> int:
        return int(self._post("{ unreadCount }")["unreadCount"])


# --- the receiving side (worker processes) -------------------------------------------------


class Sink:
    """What one worker's connections received: arrival times per totalUnread value."""

    def __init__(self, pipe: multiprocessing.connection.Connection) -> None:
        self.pipe = pipe
        self.expected = 0  # connections subscribed; "all" is reported when this many have one
        self.arrivals: dict[int, list[float]] = {}
        self.duplicates = 0
        self.unexpected: list[str] = []
        self.unexpected_count = 0
        self.closed: list[str] = []
        self.stopping = False

    def other(self, raw: str) -> None:
        self.unexpected_count += 1
        if len(self.unexpected) < 10:
            self.unexpected.append(raw[:300])


async def _receive(websocket: Any, sink: Sink) -> None:
    from websockets.exceptions import ConnectionClosed

    last = -1
    arrivals = sink.arrivals
    try:
        async for raw in websocket:
            now = time.time()
            at = raw.find(TOTAL_MARK)
            if at >= 0:
                start = at + len(TOTAL_MARK)
                try:
                    total = int(raw[start : raw.index("}", start)])
                except ValueError:
                    sink.other(raw)
                    continue
                if total == last:
                    sink.duplicates += 1
                    continue
                last = total
                got = arrivals.get(total)
                if got is None:
                    got = arrivals[total] = []
                got.append(now)
                if len(got) == sink.expected:
                    sink.pipe.send(("all", total))
            elif '"type":"ping"' in raw:
                await websocket.send('{"type":"pong"}')
            else:
                sink.other(raw)
    except ConnectionClosed:
        pass
    finally:
        if not sink.stopping:
            sink.closed.append(f"code={websocket.close_code} reason={websocket.close_reason!r}")


async def _open(url: str, token: str) -> Any:
    from websockets.asyncio.client import connect

    websocket = await connect(
        url,
        subprotocols=[TRANSPORT_WS],  # type: ignore[list-item]
        compression=None,
        ping_interval=None,  # the server pings; answering is automatic
        open_timeout=CONNECT_TIMEOUT_S,
        close_timeout=5,
        max_size=2**20,
    )
    try:
        init = {"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"}}
        await websocket.send(json.dumps(init))
        ack = await asyncio.wait_for(websocket.recv(), CONNECT_TIMEOUT_S)
        if '"connection_ack"' not in ack:
            raise RuntimeError(f"expected connection_ack, got {ack[:200]}")
        subscribe = {"id": "badge", "type": "subscribe", "payload": {"query": UNREAD_COUNT_CHANGED}}
        await websocket.send(json.dumps(subscribe))
    except BaseException:
        await websocket.close()
        raise
    return websocket


async def _worker_main(
    pipe: multiprocessing.connection.Connection, url: str, tokens: list[str], batch: int
) -> None:
    sink = Sink(pipe)
    sockets: list[Any] = []
    receivers: list[asyncio.Task[None]] = []
    failures: list[str] = []
    started = time.perf_counter()
    for first in range(0, len(tokens), batch):
        opened = await asyncio.gather(
            *(_open(url, token) for token in tokens[first : first + batch]),
            return_exceptions=True,
        )
        for result in opened:
            if isinstance(result, BaseException):
                failures.append(f"{type(result).__name__}: {result}")
            else:
                sockets.append(result)
                receivers.append(asyncio.create_task(_receive(result, sink)))
    sink.expected = len(sockets)
    # Thousands of connections are thousands of long-lived objects: a full collection would
    # pause this loop for 0.1-0.3 s every few messages and be measured as delivery latency.
    gc.collect()
    gc.freeze()
    pipe.send(("ready", len(sockets), len(failures), failures[:5], time.perf_counter() - started))

    while True:
        # A thread waits for the coordinator: the pipe stays blocking (uvloop's add_reader would
        # make it non-blocking, and a large report would then fail to send).
        try:
            command = await asyncio.to_thread(pipe.recv)
        except (EOFError, OSError):  # the coordinator is gone
            command = "stop"
        if command == "report":
            pipe.send(
                (
                    "report",
                    {
                        "arrivals": sink.arrivals,
                        "duplicates": sink.duplicates,
                        "unexpected": sink.unexpected,
                        "unexpected_count": sink.unexpected_count,
                        "closed": sink.closed,
                    },
                )
            )
        elif command == "stop":
            sink.stopping = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(s.close() for s in sockets), return_exceptions=True),
                    STOP_TIMEOUT_S,
                )
            for receiver in receivers:
                receiver.cancel()
            await asyncio.gather(*receivers, return_exceptions=True)
            with contextlib.suppress(OSError):
                pipe.send(("stopped",))
            return


def _worker_entry(
    pipe: multiprocessing.connection.Connection, url: str, tokens: list[str], batch: int
) -> None:
    raise_open_files_limit()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator stops us
    try:
        import uvloop  # installed with uvicorn[standard]; the server runs on it too
    except ImportError:
        asyncio.run(_worker_main(pipe, url, tokens, batch))
    else:
        uvloop.run(_worker_main(pipe, url, tokens, batch))


class Subscribers:
    """The worker processes holding the websocket connections, seen from the coordinator."""

    def __init__(self, url: str, tokens: list[str], workers: int) -> None:
        context = multiprocessing.get_context("spawn")
        workers = max(1, min(workers, len(tokens)))
        self.count = len(tokens)
        batch = max(1, CONNECT_BATCH // workers)
        self.processes: list[Any] = []
        self.pipes: list[multiprocessing.connection.Connection] = []
        self.opened: dict[multiprocessing.connection.Connection, int] = {}
        self.complete: dict[multiprocessing.connection.Connection, set[int]] = {}
        self.replies: dict[multiprocessing.connection.Connection, list[Any]] = {}
        for index in range(workers):
            ours, theirs = context.Pipe()
            share = tokens[index::workers]
            process = context.Process(
                target=_worker_entry,
                args=(theirs, url, share, batch),
                name=f"fanout-subscribers-{index}",
                daemon=True,
            )
            process.start()
            theirs.close()
            self.processes.append(process)
            self.pipes.append(ours)
            self.complete[ours] = set()
            self.replies[ours] = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def _read(self, pipe: multiprocessing.connection.Connection) -> None:
        try:
            message = pipe.recv()
        except (EOFError, OSError):
            index = self.pipes.index(pipe)
            code = self.processes[index].exitcode
            raise RuntimeError(f"subscriber worker {index} died (exit code {code})") from None
        if message[0] == "all":
            self.complete[pipe].add(message[1])
        else:
            self.replies[pipe].append(message)

    def _reply(self, pipe: multiprocessing.connection.Connection, deadline: float) -> Any:
        while not self.replies[pipe]:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not pipe.poll(remaining):
                raise RuntimeError(f"a subscriber worker did not answer (pid {self.pids})")
            self._read(pipe)
        return self.replies[pipe].pop(0)

    def wait_ready(self, timeout: float) -> tuple[int, int, list[str], float]:
        deadline = time.monotonic() + timeout
        opened = failed = 0
        samples: list[str] = []
        slowest = 0.0
        for pipe in self.pipes:
            _, ok, bad, sample, elapsed = self._reply(pipe, deadline)
            self.opened[pipe] = ok
            opened += ok
            failed += bad
            samples.extend(sample)
            slowest = max(slowest, elapsed)
        return opened, failed, samples, slowest

    def wait_all(self, total: int, timeout: float) -> bool:
        """Whether every open connection received the event with `total`, within `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            pending = [
                p for p in self.pipes if self.opened.get(p) and total not in self.complete[p]
            ]
            if not pending:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            for pipe in multiprocessing.connection.wait(pending, remaining):
                self._read(pipe)  # type: ignore[arg-type]

    def reports(self, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        for pipe in self.pipes:
            pipe.send("report")
        return [self._reply(pipe, deadline)[1] for pipe in self.pipes]

    def stop(self) -> None:
        deadline = time.monotonic() + STOP_TIMEOUT_S + 10
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send("stop")
        for pipe in self.pipes:
            with contextlib.suppress(RuntimeError):
                self._reply(pipe, deadline)
        for process in self.processes:
            process.join(timeout=max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
        for pipe in self.pipes:
            pipe.close()


# --- one subscriber count ------------------------------------------------------------------


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _summary(values: list[float]) -> dict[str, float | None]:
    return {"p50_ms": _ms(percentile(values, 50)), "p99_ms": _ms(percentile(values, 99))}


def measure(
    subscribers: int,
    messages: int,
    workers: int,
    database_env: dict[str, str],
    log_path: Path,
    ws: str | None = None,
) -> dict[str, Any]:
    from domain.access import Role
    from gql.auth import issue_token

    offset = log_path.stat().st_size if log_path.exists() else 0
    result: dict[str, Any] = {"subscribers": subscribers, "messages": messages}
    with running_server(database_env, log_path, ws) as server:
        inbox = Inbox(
            server.base_url,
            issue_token(AUTH_SECRET, user_id="bench", business_id=BUSINESS_ID, role=Role.SERVICE),
        )
        try:
            for _ in range(SERVER_WARMUP_INGESTS):
                inbox.ingest()
            baseline = []
            baseline_after_commit = []
            for _ in range(messages):  # paced like the measured messages below
                latency, created, answered = inbox.ingest()
                baseline.append(latency)
                baseline_after_commit.append(answered - created)
                time.sleep(PAUSE_S)
            result["ingest_without_subscribers"] = _summary(baseline)
            result["response_after_commit_without_subscribers"] = _summary(baseline_after_commit)
            expected_total = inbox.unread_count()
            rss_before = rss_kb(server.pid)
            tokens = [
                issue_token(AUTH_SECRET, user_id=f"bench-{i}", business_id=BUSINESS_ID)
                for i in range(subscribers)
            ]
            clients = Subscribers(server.ws_url, tokens, workers)
            try:
                result.update(_subscribed_phase(server, inbox, clients, expected_total, messages))
            finally:
                clients.stop()
            result["rss_before_kb"] = rss_before
            opened = result["connections_opened"]
            result["memory_per_subscriber_kb"] = (
                round((result["rss_after_kb"] - rss_before) / opened, 2) if opened else None
            )
        finally:
            inbox.close()
    result["server_log_complaints"] = server_complaints(log_path, offset)[:20]
    return result


def _subscribed_phase(
    server: Server, inbox: Inbox, clients: Subscribers, expected_total: int, messages: int
) -> dict[str, Any]:
    opened, failed, failure_samples, connect_s = clients.wait_ready(
        timeout=2 * CONNECT_TIMEOUT_S + 0.05 * clients.count
    )
    phase: dict[str, Any] = {
        "connections_opened": opened,
        "connections_failed": failed,
        "connection_failures_sample": failure_samples,
        "connect_seconds": round(connect_s, 2),
        "workers": len(clients.processes),
    }
    if opened == 0:
        raise RuntimeError(f"no websocket connection could be opened: {failure_samples}")

    warmups = 0
    warmed = False
    while warmups < WARMUP_ATTEMPTS and not warmed:
        inbox.ingest()
        expected_total += 1
        warmups += 1
        warmed = clients.wait_all(expected_total, WARMUP_TIMEOUT_S)
    phase["warmup_messages"] = warmups
    phase["warmed_up"] = warmed
    # One more round with everyone registered, so the measured messages find warm paths.
    inbox.ingest()
    expected_total += 1
    clients.wait_all(expected_total, WARMUP_TIMEOUT_S)
    time.sleep(0.5)
    phase["rss_after_kb"] = rss_kb(server.pid)

    sent: list[tuple[int, float, float]] = []  # (totalUnread, createdAt, answered at)
    ingest_latencies: list[float] = []
    timeouts = consecutive_timeouts = 0
    aborted = False
    server_cpu = cpu_seconds(server.pid)
    client_cpu = sum(cpu_seconds(pid) for pid in clients.pids)
    host_busy, host_total = host_cpu()
    wall = time.perf_counter()
    for _ in range(messages):
        latency, created, answered = inbox.ingest()
        expected_total += 1
        ingest_latencies.append(latency)
        sent.append((expected_total, created, answered))
        if clients.wait_all(expected_total, DELIVERY_TIMEOUT_S):
            consecutive_timeouts = 0
        else:
            timeouts += 1
            consecutive_timeouts += 1
            server.check_alive()
            if consecutive_timeouts >= MAX_CONSECUTIVE_TIMEOUTS:
                aborted = True
                break
        time.sleep(PAUSE_S)
    wall = time.perf_counter() - wall
    server_cpu = cpu_seconds(server.pid) - server_cpu
    client_cpu = sum(cpu_seconds(pid) for pid in clients.pids) - client_cpu
    host_busy_after, host_total_after = host_cpu()

    reports = clients.reports(timeout=60)
    arrivals: dict[int, list[float]] = {}
    for report in reports:
        for total, stamps in report["arrivals"].items():
            arrivals.setdefault(total, []).extend(stamps)
    last: list[float] = []
    first: list[float] = []
    after_commit: list[float] = []
    every: list[float] = []
    per_message: list[dict[str, Any]] = []
    missed = 0
    for (total, created, answered), latency in zip(sent, ingest_latencies, strict=True):
        stamps = arrivals.get(total, [])
        missed += opened - len(stamps)
        after_commit.append(answered - created)
        row: dict[str, Any] = {
            "ingest_ms": _ms(latency),
            "response_after_commit_ms": _ms(answered - created),
            "received": len(stamps),
        }
        if stamps:
            delays = [stamp - created for stamp in stamps]
            every.extend(delays)
            last.append(max(delays))
            first.append(min(delays))
            row.update(
                first_ms=_ms(min(delays)),
                p50_ms=_ms(percentile(delays, 50)),
                last_ms=_ms(max(delays)),
            )
        per_message.append(row)
    deliveries = opened * len(sent)
    phase.update(
        {
            "commit_to_last_delivery": _summary(last),
            "commit_to_first_delivery": _summary(first),
            "commit_to_delivery_all": _summary(every),
            "ingest_with_subscribers": _summary(ingest_latencies),
            "response_after_commit_with_subscribers": _summary(after_commit),
            "missed_deliveries": missed,
            "messages_sent": len(sent),
            "message_timeouts": timeouts,
            "aborted_after_consecutive_timeouts": aborted,
            "server_cpu_seconds": round(server_cpu, 3),
            "server_cpu_us_per_delivery": round(server_cpu / deliveries * 1e6, 2),
            "server_cpu_share_of_one_core": round(server_cpu / wall, 3),
            "client_cpu_seconds": round(client_cpu, 3),
            "host_cpu_busy_share": round(
                (host_busy_after - host_busy) / max(1, host_total_after - host_total), 3
            ),
            "measured_wall_seconds": round(wall, 2),
            "duplicates": sum(r["duplicates"] for r in reports),
            "unexpected_frames": sum(r["unexpected_count"] for r in reports),
            "unexpected_frames_sample": [f for r in reports for f in r["unexpected"]][:5],
            "connections_closed_early": [c for r in reports for c in r["closed"]][:10],
            "per_message": per_message,
        }
    )
    return phase


# --- report --------------------------------------------------------------------------------


COLUMNS = [
    ("subs", lambda r: r["subscribers"]),
    ("open", lambda r: r.get("connections_opened")),
    ("last p50", lambda r: r.get("commit_to_last_delivery", {}).get("p50_ms")),
    ("last p99", lambda r: r.get("commit_to_last_delivery", {}).get("p99_ms")),
    ("all p50", lambda r: r.get("commit_to_delivery_all", {}).get("p50_ms")),
    ("all p99", lambda r: r.get("commit_to_delivery_all", {}).get("p99_ms")),
    ("1st p50", lambda r: r.get("commit_to_first_delivery", {}).get("p50_ms")),
    ("1st p99", lambda r: r.get("commit_to_first_delivery", {}).get("p99_ms")),
    ("ingest p50", lambda r: r.get("ingest_with_subscribers", {}).get("p50_ms")),
    ("ingest p99", lambda r: r.get("ingest_with_subscribers", {}).get("p99_ms")),
    ("ing@0 p50", lambda r: r["ingest_without_subscribers"]["p50_ms"]),
    ("ing@0 p99", lambda r: r["ingest_without_subscribers"]["p99_ms"]),
    ("KB/sub", lambda r: r.get("memory_per_subscriber_kb")),
    ("us/deliv", lambda r: r.get("server_cpu_us_per_delivery")),
    ("srv cpu", lambda r: r.get("server_cpu_share_of_one_core")),
    ("missed", lambda r: r.get("missed_deliveries")),
]


def table(results: list[dict[str, Any]]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
        return str(value)

    rows = [[name for name, _ in COLUMNS]]
    rows += [[cell(get(r)) for _, get in COLUMNS] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


LEGEND = """\
times in ms. last/all/1st: commit (createdAt) to delivery at the last subscriber / at every
subscriber / at the first one. ingest: ingestMessage request latency with the subscribers
connected; ing@0: the same server, just before, with none. KB/sub: server RSS growth per
subscriber. us/deliv: server CPU microseconds per delivery (ingests included). srv cpu: server
CPU seconds per wall second while measuring."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fanout", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--subscribers", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--messages", type=int, default=30)
    parser.add_argument(
        "--workers", type=int, default=1, help="processes holding the subscribers (default 1)"
    )
    parser.add_argument(
        "--ws",
        choices=["lean", "websockets-sansio", "websockets", "wsproto"],
        help="serve websockets with this uvicorn implementation instead of gql serve's own "
        "(bench/fanout_server.py; lean is gql/live_protocol.py)",
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    parser.add_argument("--smoke", action="store_true", help="20 subscribers, 3 messages")
    args = parser.parse_args(argv)
    if args.smoke:
        args.subscribers, args.messages = [20], 3
    if args.messages < 1 or any(n < 1 for n in args.subscribers):
        parser.error("--subscribers and --messages must be positive")

    open_files = raise_open_files_limit()  # inherited by the server and the workers
    needed = max(args.subscribers) + 100
    if open_files < needed:
        print(f"warning: open-files limit {open_files} < {needed}", file=sys.stderr)

    sys.path.insert(0, str(PROJECT_ROOT))
    scratch = Path(tempfile.mkdtemp(prefix="wa-inbox-bench-"))
    log_path = scratch / "server.log"
    mode = "a fresh server process per subscriber count"
    ws_description = args.ws or "gql serve's own"
    results: list[dict[str, Any]] = []
    completed = False
    try:
        with database(scratch) as (database_env, database_description):
            print(f"fan-out benchmark: {mode}; {database_description}", flush=True)
            print(
                f"subscribers {args.subscribers}, {args.messages} messages each, "
                f"{args.workers} subscriber process(es), websockets: {ws_description}, "
                f"server log {log_path}",
                flush=True,
            )
            for count in args.subscribers:
                started = time.monotonic()
                result = measure(
                    count, args.messages, args.workers, database_env, log_path, args.ws
                )
                results.append(result)
                print(
                    f"  {count} subscribers done in {time.monotonic() - started:.0f} s "
                    f"(connect {result.get('connect_seconds')} s, "
                    f"missed {result.get('missed_deliveries')})",
                    flush=True,
                )
                for line in result["server_log_complaints"][:5]:
                    print(f"    server: {line}", flush=True)
        completed = True
    finally:
        shutil.rmtree(scratch / "pgdata", ignore_errors=True)
        if completed and not any(r["server_log_complaints"] for r in results):
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            print(f"the server log is kept in {log_path}", file=sys.stderr)

    baseline_row = {
        "subscribers": 0,
        "ingest_without_subscribers": results[0]["ingest_without_subscribers"],
    }
    print()
    print(table([baseline_row, *results]))
    print(LEGEND)
    document = {
        "benchmark": "fanout",
        "mode": mode,
        "database": database_description,
        "messages": args.messages,
        "workers": args.workers,
        "ws": ws_description,
        "cpus": os.cpu_count(),
        "finished_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "results": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwritten to {args.json}")
    failed = any(
        r["missed_deliveries"]
        or r["connections_failed"]
        or r["aborted_after_consecutive_timeouts"]
        or not r["warmed_up"]
        for r in results
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
