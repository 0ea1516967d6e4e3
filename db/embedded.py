"""An embedded, real PostgreSQL (the `pgserver` wheel) for machines with no database set up."""

import logging
from pathlib import Path

log = logging.getLogger("wa_inbox.db")

DATABASE_NAME = "wa_inbox"


def start_embedded_postgres(data_dir: Path, database: str = DATABASE_NAME) -> str:
    """Start (or join) the embedded cluster in `data_dir`; return a URL of `database` in it.

    The cluster keeps its data between runs and stops when the last process using it exits.
    """
    # Imported here: only needed when no DATABASE_URL is configured.
    from pgserver.postgres_server import get_server

    data_dir.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir, cleanup_mode="stop")
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")
    if "(1 row)" not in exists:
        server.psql(f'CREATE DATABASE "{database}";')
    url: str = server.get_uri(database)
    log.info("embedded PostgreSQL running with its data in %s", data_dir)
    return url


def stop_embedded_postgres(data_dir: Path) -> None:
    """Stop the embedded cluster in `data_dir` now, if this process started or joined it."""
    from pgserver.postgres_server import PostgresServer

    server = PostgresServer._instances.get(data_dir.expanduser().resolve())
    if server is not None:
        server.cleanup()
