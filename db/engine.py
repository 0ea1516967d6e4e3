"""Engine and session factory: one per process, built by the application's lifespan."""

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlalchemy import event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

_ASYNC_DRIVER_SCHEME = "postgresql+asyncpg"
_ACCEPTED_SCHEMES = {"postgres", "postgresql", "postgresql+asyncpg"}
# libpq's sslmode values, as asyncpg's `ssl` parameter understands them.
_SSLMODE_TO_ASYNCPG = {
    "disable": "disable",
    "allow": "allow",
    "prefer": "prefer",
    "require": "require",
    "verify-ca": "verify-ca",
    "verify-full": "verify-full",
}


class DatabaseUrlError(ValueError):
    """The configured database URL is not a PostgreSQL URL this server can use."""


def to_async_url(url: str) -> str:
    """Return `url` with the asyncpg driver; accepts postgres://, postgresql:// and +asyncpg."""
    parts = urlsplit(url)
    if parts.scheme not in _ACCEPTED_SCHEMES:
        raise DatabaseUrlError(
            f"DATABASE_URL must start with postgresql:// or postgresql+asyncpg://, not {parts.scheme}://"
        )
    query = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "sslmode":
            key, value = "ssl", _SSLMODE_TO_ASYNCPG.get(value, value)
        query.append((key, value))
    return urlunsplit((_ASYNC_DRIVER_SCHEME, parts.netloc, parts.path, urlencode(query), ""))


@dataclass(frozen=True)
class EngineOptions:
    statement_timeout_ms: int = 15_000
    lock_timeout_ms: int = 10_000
    pool_size: int = 10
    max_overflow: int = 10
    pool_timeout_s: float = 10.0
    connect_timeout_s: float = 10.0
    # The role every connection acts as; row-level security applies to it (None: the login's).
    role: str | None = None


def build_engine(url: str, options: EngineOptions | None = None) -> AsyncEngine:
    """Create the process's engine; every connection carries a statement and lock timeout."""
    options = options or EngineOptions()
    engine = create_async_engine(
        to_async_url(url),
        pool_size=options.pool_size,
        max_overflow=options.max_overflow,
        pool_timeout=options.pool_timeout_s,
        # A connection the server killed (restart, pg_terminate_backend) is noticed on
        # checkout (see _discard_closed_connections) instead of failing the next unit of work.
        # SQLAlchemy's own pre-ping costs three round trips on asyncpg (BEGIN, ping,
        # ROLLBACK) on every checkout: more than a whole inbox read.
        pool_pre_ping=False,
        connect_args={
            "timeout": options.connect_timeout_s,
            # The client-side bound sits above the server-side one, so PostgreSQL normally
            # cancels first and the connection stays usable.
            "command_timeout": options.statement_timeout_ms / 1000 + 5,
            "server_settings": {
                "statement_timeout": str(options.statement_timeout_ms),
                # A lock wait is a statement too: never allowed longer than any statement.
                "lock_timeout": str(min(options.lock_timeout_ms, options.statement_timeout_ms)),
                "idle_in_transaction_session_timeout": "60000",
                "application_name": "wa-inbox",
                **({"role": options.role} if options.role else {}),
            },
        },
    )
    _discard_closed_connections(engine)
    return engine


# A connection idle in the pool longer than this is pinged at checkout (a server restart
# takes longer); one in steady use is not, so busy servers pay no round trip for it.
IDLE_PING_S = 1.0


def _discard_closed_connections(engine: AsyncEngine) -> None:
    """At checkout, replace a connection the server closed. asyncpg sees most closes as they
    happen, so asking costs no round trip; a connection idle for a while is pinged as well.
    Dropped mid-use, a connection fails that unit of work, which is retried whole
    (db/unit_of_work.py), and SQLAlchemy then recycles every connection older than it."""

    @event.listens_for(engine.sync_engine, "checkin")
    def checkin(dbapi_connection: Any, record: Any) -> None:
        record.info["returned_at"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        driver = record.driver_connection
        if driver is None or driver.is_closed():
            raise DisconnectionError("the server closed this pooled connection")
        returned_at = record.info.get("returned_at")
        if returned_at is not None and time.monotonic() - returned_at > IDLE_PING_S:
            try:
                dbapi_connection.ping()
            except Exception as dead:
                raise DisconnectionError("a pooled connection did not answer its ping") from dead


def build_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions for units of work; objects stay readable after commit (no lazy reloads)."""
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
