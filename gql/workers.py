"""WORKERS=N: N server processes on one port, under uvicorn's own supervisor.

The parent process migrates, shows the development token and binds the port; each worker
builds its own application (its own pool of DATABASE_POOL_SIZE connections, its own fan-out
to the subscribers it holds). Live events cross workers over BROADCAST_URL, PostgreSQL
LISTEN/NOTIFY on the database itself unless Redis is given, and /metrics adds up every
worker through prometheus_client's multiprocess mode.
"""

import dataclasses
import gc
import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

from prometheus_client import multiprocess
from starlette.applications import Starlette
from uvicorn import Config
from uvicorn.supervisors import Multiprocess

from gql.app import create_app
from gql.development_secret import load_or_create_development_secret
from gql.settings import LOG_FORMAT, Settings

log = logging.getLogger("wa_inbox")

# Where prometheus_client itself looks (at import, in every worker): the parent sets it.
MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def serving_settings(settings: Settings, database_url: str) -> Settings:
    """The settings a server process runs with once the database is known.

    One process delivers its own events (memory://); several need a transport between them,
    and with nothing else installed that is the database already serving them.
    """
    broadcast_url = settings.broadcast_url
    if settings.workers > 1 and broadcast_url.startswith("memory:"):
        broadcast_url = database_url
    return dataclasses.replace(settings, database_url=database_url, broadcast_url=broadcast_url)


def worker_app() -> Starlette:
    """The application of one worker process (uvicorn calls this factory in each worker).

    The parent validated the same environment, put the resolved DATABASE_URL in it and
    kept the development secret in the data directory, so every worker signs alike.
    """
    settings = Settings.from_environment()
    logging.basicConfig(level=settings.log_level, format=LOG_FORMAT)
    database_url = settings.database_url
    assert database_url is not None, "the parent process sets DATABASE_URL"
    if settings.auth_secret is None:
        secret = load_or_create_development_secret(settings.data_dir)
        settings = dataclasses.replace(settings, auth_secret=secret, development_secret=True)
    app = create_app(serving_settings(settings, database_url))
    # As in a single process (gql/__main__.py): what the app holds lives as long as the worker.
    gc.freeze()
    return app


def prepare_metrics_directory(settings: Settings) -> tuple[Path, bool]:
    """The multiprocess metrics directory, emptied of a previous run's values; and whether
    it was made here (a temporary one, removed at exit) rather than given."""
    given = settings.prometheus_multiproc_dir
    if given is None:
        return Path(tempfile.mkdtemp(prefix="wa-inbox-metrics-")), True
    given.mkdir(parents=True, exist_ok=True)
    # prometheus_client keeps one file per process and kind: old ones would add a previous
    # run's counts to this one's.
    for stale in given.glob("*.db"):
        stale.unlink()
    return given, False


class Supervisor(Multiprocess):
    """uvicorn's worker supervisor, telling prometheus_client which workers have ended.

    A worker that died (and was replaced) or was stopped keeps its counters in the sums,
    but its gauges (open websockets, pool use) must no longer be shown.
    """

    def __init__(self, config: Config, sockets: list[socket.socket], metrics_dir: Path) -> None:
        super().__init__(config, sockets=sockets)
        self.metrics_dir = metrics_dir
        self._workers_seen: set[int] = set()

    def keep_subprocess_alive(self) -> None:
        super().keep_subprocess_alive()
        running = {process.pid for process in self.processes if process.pid is not None}
        self._forget(self._workers_seen - running)
        self._workers_seen = running

    def join_all(self) -> None:
        super().join_all()
        self._forget({process.pid for process in self.processes if process.pid is not None})

    def _forget(self, ended: set[int]) -> None:
        for pid in ended:
            multiprocess.mark_process_dead(pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]


def run_workers(settings: Settings, uvicorn_options: dict[str, Any]) -> None:
    """Serve with `settings.workers` processes until SIGINT or SIGTERM stops them all."""
    assert settings.database_url is not None
    metrics_dir, temporary = prepare_metrics_directory(settings)
    # Spawned workers inherit the environment: the database the parent resolved (an
    # embedded one included) and the metrics directory prometheus_client reads at import.
    os.environ["DATABASE_URL"] = settings.database_url
    os.environ[MULTIPROC_DIR_VARIABLE] = str(metrics_dir)
    log.info(
        "%d workers on port %s, each with its own pool of %d connections; live updates "
        "between them over %s",
        settings.workers,
        settings.port,
        settings.database_pool_size,
        settings.broadcast_url.split(":", 1)[0],
    )
    config = Config(
        "gql.workers:worker_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level.lower(),
        **uvicorn_options,
    )
    try:
        Supervisor(config, sockets=[config.bind_socket()], metrics_dir=metrics_dir).run()
    finally:
        if temporary:
            shutil.rmtree(metrics_dir, ignore_errors=True)
