"""Database failures classified by what the caller can do about them."""

import asyncpg
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

SERIALIZATION_FAILURE = "40001"
DEADLOCK_DETECTED = "40P01"
NO_MATCHING_CONFLICT_TARGET = "42P10"  # ON CONFLICT names columns with no unique index
UNIQUE_VIOLATION = "23505"
INSUFFICIENT_PRIVILEGE = "42501"  # also: a row-level security policy refused a row
QUERY_CANCELED = "57014"  # statement_timeout, or a cancel request

_RETRYABLE_SQLSTATES = {SERIALIZATION_FAILURE, DEADLOCK_DETECTED}
# A connection lost, as asyncpg itself reports it (the hot reads run on asyncpg directly).
DRIVER_DISCONNECTS = (
    ConnectionError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)

# Storage itself failing (an outage, a timeout, a statement refused), through SQLAlchemy or on
# asyncpg directly (the hot reads and the one-statement ingest): the caller may retry later.
STORAGE_FAILURES = (
    SQLAlchemyError,
    asyncpg.PostgresError,
    *DRIVER_DISCONNECTS,
    OSError,
    TimeoutError,
)


class MissingConflictTarget(Exception):
    """An `ON CONFLICT` statement found no unique constraint to match in the live database."""

    def __init__(self, statement_name: str) -> None:
        super().__init__(f"no unique constraint matches the ON CONFLICT target of {statement_name}")
        self.statement_name = statement_name


def sqlstate_of(error: BaseException) -> str | None:
    """The PostgreSQL SQLSTATE behind `error`, looking through SQLAlchemy's wrappers."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        code = getattr(current, "sqlstate", None) or getattr(current, "pgcode", None)
        if isinstance(code, str):
            return code
        current = getattr(current, "orig", None) or current.__cause__
    return None


def is_retryable(error: BaseException, *, during_commit: bool = False) -> bool:
    """True for failures after which repeating the whole unit of work is safe and useful.

    A dropped connection is retryable before the commit starts, never during it.
    """
    if sqlstate_of(error) in _RETRYABLE_SQLSTATES:
        return True
    if during_commit:
        return False
    if isinstance(error, DBAPIError):
        return error.connection_invalidated
    # The hot reads run on asyncpg itself (db/inbox_reads.py): a connection lost under them
    # is reported by asyncpg, not by SQLAlchemy.
    return isinstance(error, DRIVER_DISCONNECTS)
