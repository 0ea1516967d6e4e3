"""Where benchmarks put their data: a PostgreSQL server, and scratch databases on it."""

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from db.engine import to_async_url


def asyncpg_dsn(url: str) -> str:
    return to_async_url(url).replace("postgresql+asyncpg://", "postgresql://", 1)


def with_database(url: str, database: str) -> str:
    # The embedded server's URL names its socket directory in the query string.
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, ""))


@contextlib.contextmanager
def database_server(scratch: Path) -> Iterator[tuple[str, str]]:
    """A PostgreSQL server URL to create scratch databases on, and a description of it:
    BENCH_DATABASE_URL's or TEST_DATABASE_URL's server, else an embedded one in `scratch`."""
    for variable in ("BENCH_DATABASE_URL", "TEST_DATABASE_URL"):
        given = os.environ.get(variable)
        if given:
            yield given, f"scratch databases on {variable}'s server"
            return
    from db.embedded import start_embedded_postgres

    url = start_embedded_postgres(scratch / "pgdata", database="postgres")
    yield url, f"embedded PostgreSQL in {scratch / 'pgdata'}"


@contextlib.asynccontextmanager
async def scratch_database(server: str, prefix: str) -> AsyncIterator[str]:
    """An empty database on `server` for one run, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    await _admin(server, f'CREATE DATABASE "{name}"')
    try:
        yield with_database(server, name)
    finally:
        await _admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _admin(server: str, statement: str) -> None:
    admin = await asyncpg.connect(asyncpg_dsn(server))
    try:
        await admin.execute(statement)
    finally:
        await admin.close()
