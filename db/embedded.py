"""An embedded, real PostgreSQL (the `pgserver` wheel) for machines with no database set up."""

import logging
import warnings
from pathlib import Path

log = logging.getLogger("wa_inbox.db")

DATABASE_NAME = "wa_inbox"
LOG_FILE_NAME = "embedded-postgres.log"


def embedded_log_path(data_dir: Path) -> Path:
    return data_dir / LOG_FILE_NAME


def cluster_dir(data_dir: Path) -> Path:
    """Where the cluster lives: `postgres/` of the data directory, beside its log and the
    development secret (initdb wants a directory of its own). A data directory that holds a
    cluster itself (made before the log and the secret were kept) is used as it is."""
    if (data_dir / "PG_VERSION").exists():
        return data_dir
    return data_dir / "postgres"


def _log_into_data_dir(data_dir: Path) -> None:
    """pgserver's chatter (every pg_ctl run, at INFO) goes to a file, not the terminal."""
    chatter = logging.getLogger("pgserver")
    path = str(embedded_log_path(data_dir).resolve())
    if any(getattr(handler, "baseFilename", None) == path for handler in chatter.handlers):
        return
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    chatter.addHandler(handler)
    chatter.setLevel(logging.INFO)
    chatter.propagate = False


def start_embedded_postgres(data_dir: Path, database: str = DATABASE_NAME) -> str:
    """Start (or join) the embedded cluster in `data_dir`; return a URL of `database` in it.

    The cluster keeps its data between runs and stops when the last process using it exits.
    Its output is written to `embedded-postgres.log` in `data_dir`.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    _log_into_data_dir(data_dir)
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI): pgserver falls
        # back to /tmp, which is all it needs.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        # Imported here: only needed when no DATABASE_URL is configured.
        from pgserver.postgres_server import get_server

        server = get_server(cluster_dir(data_dir), cleanup_mode="stop")
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")
    if "(1 row)" not in exists:
        server.psql(f'CREATE DATABASE "{database}";')
    url: str = server.get_uri(database)
    log.info(
        "DATABASE_URL is not set: embedded PostgreSQL running with its data in %s (its log: %s)",
        data_dir,
        embedded_log_path(data_dir),
    )
    return url


def stop_embedded_postgres(data_dir: Path) -> None:
    """Stop the embedded cluster in `data_dir` now, if this process started or joined it."""
    from pgserver.postgres_server import PostgresServer

    server = PostgresServer._instances.get(cluster_dir(data_dir).expanduser().resolve())
    if server is not None:
        server.cleanup()
