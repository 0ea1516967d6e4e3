"""WORKERS=N: `python -m gql serve` runs N processes answering on one port; a subscriber on
either worker receives what any worker stored (PostgreSQL LISTEN/NOTIFY, nothing else to
install); /metrics adds up every worker; SIGTERM of the parent stops them all. WORKERS=1 is
the single process the rest of the suite runs against."""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from gql.settings import Settings, SettingsError, available_cores
from tests.conftest import AUTH_SECRET, PROJECT_ROOT, WHATSAPP_APP_SECRET
from tests.test_live_across_instances import Instance, Subscriber, ingest_on
from tests.test_server_process import server_environment, server_process

# Sockets opened, one by one, until both workers hold some; the kernel hands each new
# connection to whichever worker accepts first, so a few are nearly always enough.
MAX_SOCKETS = 40


# --- the setting ---------------------------------------------------------------------------


def test_workers_default_to_one_and_auto_is_the_number_of_cores() -> None:
    assert Settings.from_environment({}).workers == 1
    assert Settings.from_environment({"WORKERS": "3"}).workers == 3
    assert Settings.from_environment({"WORKERS": " AUTO "}).workers == available_cores()
    assert available_cores() >= 1


@pytest.mark.parametrize("raw", ["0", "-2", "two", "1.5", "257"])
def test_a_wrong_workers_value_is_a_configuration_error(raw: str) -> None:
    with pytest.raises(SettingsError, match=r"WORKERS=.* is a number of server processes"):
        Settings.from_environment({"WORKERS": raw})


def test_a_wrong_workers_value_stops_serve_before_anything_starts() -> None:
    failed = subprocess.run(
        [sys.executable, "-m", "gql", "serve"],
        cwd=PROJECT_ROOT,
        env=server_environment({"WORKERS": "many"}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert failed.returncode == 2
    assert "configuration error: WORKERS='many'" in failed.stderr
    assert "Traceback" not in failed.stderr


# --- a server with workers -----------------------------------------------------------------


@dataclass(frozen=True)
class WorkersServer:
    process: subprocess.Popen[bytes]
    instance: Instance

    @property
    def base_url(self) -> str:
        return self.instance.base_url

    def metrics(self) -> dict[str, list[Sample]]:
        """/metrics parsed by prometheus_client's own parser: samples by family."""
        answer = httpx.get(f"{self.base_url}/metrics", timeout=10)
        assert answer.status_code == 200
        return {
            family.name: family.samples for family in text_string_to_metric_families(answer.text)
        }

    def worker_pids(self, family: str = "wa_inbox_database_pool_size") -> dict[int, float]:
        """Each live worker's value of a per-worker gauge."""
        return {int(s.labels["pid"]): s.value for s in self.metrics()[family]}


@contextlib.contextmanager
def workers_server(
    database_url: str, tmp_path: Path, workers: int = 2, **env: str
) -> Iterator[WorkersServer]:
    """`python -m gql serve` with WORKERS=`workers`, once every worker serves."""
    log_path = tmp_path / "server.log"
    overrides = {
        "DATABASE_URL": database_url,
        "AUTH_SECRET": AUTH_SECRET,
        "WHATSAPP_APP_SECRET": WHATSAPP_APP_SECRET,
        "WORKERS": str(workers),
        "WA_INBOX_DATA_DIR": str(tmp_path / "data"),
        "DATABASE_POOL_SIZE": "5",
        **env,
    }
    with server_process(overrides, log_path) as (base_url, process):
        server = WorkersServer(process, Instance("workers", base_url, log_path))
        try:
            # /healthz answers once one worker is up; wait for every worker's pool gauge.
            deadline = time.monotonic() + 60
            while len(server.worker_pids()) < workers:
                assert process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.2)
            yield server
        except BaseException:
            print(log_path.read_text())
            raise


def parent_of(pid: int) -> int:
    # /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may hold spaces, never ")".
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_workers_are_child_processes_answering_on_one_port_and_sigterm_stops_them_all(
    database_url: str, tmp_path: Path
) -> None:
    # The temporary metrics directory the parent makes lands here, to see it removed.
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    with workers_server(database_url, tmp_path, TMPDIR=str(temporary)) as server:
        pids = set(server.worker_pids())
        assert len(pids) == 2
        assert server.process.pid not in pids
        assert {parent_of(pid) for pid in pids} == {server.process.pid}
        [metrics_dir] = temporary.iterdir()
        assert {path.name for path in metrics_dir.glob("gauge_liveall_*.db")} == {
            f"gauge_liveall_{pid}.db" for pid in pids
        }
        log = server.instance.log_lines()
        assert sum("migrations applied" in line for line in log) == 1
        assert any("2 workers on port" in line and "postgresql" in line for line in log)

        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0
        deadline = time.monotonic() + 10
        while any(running(pid) for pid in pids):
            assert time.monotonic() < deadline, "a worker outlived its parent"
            time.sleep(0.1)
        assert list(temporary.iterdir()) == []
        log = server.instance.log_lines()
        assert sum("Application shutdown complete" in line for line in log) == 2


async def test_a_worker_that_dies_is_replaced_its_counts_kept_and_its_gauges_dropped(
    database_url: str, tmp_path: Path
) -> None:
    with workers_server(database_url, tmp_path) as server:
        for n in range(4):
            await ingest_on(server.instance, f"+1415555{101 + n:04d}", "before")
        before = set(server.worker_pids())
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:
            now = set(await asyncio.to_thread(server.worker_pids))
            if victim not in now and len(now) == 2:
                break
            assert time.monotonic() < deadline, f"worker {victim} not replaced: {now}"
            await asyncio.sleep(0.2)
        assert len(now - before) == 1
        # What the dead worker counted is still the server's.
        [stored] = server.metrics()["wa_inbox_messages_stored"]
        assert stored.value == 4
        await ingest_on(server.instance, "+14155550199", "after")
        [stored] = server.metrics()["wa_inbox_messages_stored"]
        assert stored.value == 5


@contextlib.asynccontextmanager
async def subscribers_on_every_worker(
    server: WorkersServer, minimum: int = 4
) -> AsyncIterator[list[Subscriber]]:
    """Open subscribers (newMessage and the unread badge) until every worker holds some."""
    async with contextlib.AsyncExitStack() as stack:
        subscribers: list[Subscriber] = []
        while True:
            subscribers.append(
                await stack.enter_async_context(Subscriber.open(server.instance, business_id=1))
            )
            held = await asyncio.to_thread(server.worker_pids, "wa_inbox_websockets_open")
            if len(subscribers) >= minimum and len(held) == 2 and all(held.values()):
                assert sum(held.values()) == len(subscribers)
                break
            assert len(subscribers) < MAX_SOCKETS, f"every socket went to one worker: {held}"
        yield subscribers


async def test_every_subscriber_on_either_worker_receives_what_any_worker_stored(
    database_url: str, tmp_path: Path
) -> None:
    with workers_server(database_url, tmp_path) as server:
        async with subscribers_on_every_worker(server) as subscribers:
            # Each ingest on a connection of its own: the workers take turns storing.
            for n in range(6):
                stored = await ingest_on(server.instance, f"+1415555{101 + n:04d}", f"hello {n}")
                thread_id = stored["thread"]["id"]
                for subscriber in subscribers:
                    message = await subscriber.event("messages", thread_id)
                    assert message["id"] == stored["message"]["id"]
                    assert message["body"] == f"hello {n}"
                    badge = await subscriber.event("badge", thread_id)
                    assert badge == {"threadId": thread_id, "unreadCount": 1, "totalUnread": n + 1}

        lag = server.metrics()["wa_inbox_live_delivery_lag_seconds"]
        [delivered] = [
            s.value
            for s in lag
            if s.name.endswith("_count") and s.labels["subscription"] == "newMessage"
        ]
        # Once per event and worker: both workers had newMessage subscribers.
        assert delivered == 2 * 6


def stored_per_worker(metrics_dir: Path) -> dict[int, float]:
    """messages_stored as each worker wrote it to its own file."""
    per_worker = {}
    for path in metrics_dir.glob("counter_*.db"):
        pid = int(path.stem.split("_")[1])
        for family in MultiProcessCollector.merge([str(path)]):  # type: ignore[no-untyped-call]
            if family.name == "wa_inbox_messages_stored":
                per_worker[pid] = sum(s.value for s in family.samples)
    return per_worker


async def test_metrics_add_up_every_worker(database_url: str, tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    # A previous run's values are removed at start, not added to this run's.
    (metrics_dir / "counter_1.db").write_bytes(b"left over from a previous run")
    with workers_server(
        database_url, tmp_path, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)
    ) as server:
        assert not (metrics_dir / "counter_1.db").exists()
        sent = 0
        while True:
            # Eight at once, each on a new connection: both workers store some.
            await asyncio.gather(
                *(ingest_on(server.instance, f"+1650555{sent + n:04d}", "hi") for n in range(8))
            )
            sent += 8
            per_worker = stored_per_worker(metrics_dir)
            if len(per_worker) == 2 and all(per_worker.values()):
                break
            assert sent < 200, f"one worker stored everything: {per_worker}"
        assert sum(per_worker.values()) == sent

        metrics = server.metrics()
        [stored] = metrics["wa_inbox_messages_stored"]
        assert (stored.name, stored.value) == ("wa_inbox_messages_stored_total", sent)
        ingests = {
            s.labels["entry"]: s.value
            for s in metrics["wa_inbox_ingest_duration_seconds"]
            if s.name.endswith("_count")
        }
        assert ingests == {"graphql": sent}
        requests = {
            s.labels["operation"]: s.value
            for s in metrics["wa_inbox_graphql_request_duration_seconds"]
            if s.name.endswith("_count")
        }
        assert requests == {"Ingest": sent}
        # At rest, no worker holds a connection out of its pool.
        assert set(server.worker_pids("wa_inbox_database_pool_checked_out").values()) == {0}
