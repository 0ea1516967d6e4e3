"""Units of work: one AsyncSession and one transaction each, retried whole when safe."""

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from db.errors import DRIVER_DISCONNECTS, is_retryable

log = logging.getLogger("wa_inbox.db")

T = TypeVar("T")
Sessions = async_sessionmaker[AsyncSession]


_SET_BUSINESS = text("SELECT set_config('wa_inbox.business_id', :business_id, true)")


async def enter_business(session: AsyncSession, business_id: int | None) -> None:
    """Scope the session's transaction to one business for row-level security.

    The setting is transaction-local (`set_config(..., true)`), so it can never leak into the
    next unit of work on the same pooled connection. Without a business (readiness checks,
    finding which business owns a WhatsApp number) no tenant row is visible at all.
    """
    if business_id is not None:
        await session.execute(_SET_BUSINESS, {"business_id": str(business_id)})


@asynccontextmanager
async def unit_of_work(
    sessions: Sessions, *, business_id: int | None
) -> AsyncIterator[AsyncSession]:
    """A session inside one transaction: committed when the block succeeds, else rolled back.

    The session (and its connection) is closed on the way out whatever happened, so a failed
    statement can never leave a broken transaction behind for the next unit of work.
    """
    async with sessions() as session, session.begin():
        await enter_business(session, business_id)
        yield session


async def run_unit_of_work(
    sessions: Sessions,
    work: Callable[[AsyncSession], Awaitable[T]],
    *,
    business_id: int | None,
    attempts: int = 3,
    base_delay_s: float = 0.02,
) -> T:
    """Run `work` in a fresh unit of work for `business_id`, repeated whole when retryable.

    Retryable means a serialization failure, a deadlock or a connection that died: the
    transaction was rolled back as a whole, so running it again cannot apply anything twice.
    """
    for attempt in range(1, attempts + 1):
        committing = False
        try:
            async with unit_of_work(sessions, business_id=business_id) as session:
                result = await work(session)
                committing = True
            return result
        except Exception as error:
            # A connection lost during COMMIT leaves the outcome unknown: the transaction may
            # have committed, so repeating it could store twice. Only a serialization failure
            # or a deadlock reported by the commit itself proves a rollback.
            if attempt == attempts or not is_retryable(error, during_commit=committing):
                raise
            await _pause_before_retry("unit of work", error, attempt, attempts, base_delay_s)
    raise AssertionError("unreachable")  # pragma: no cover


async def _pause_before_retry(
    what: str, error: Exception, attempt: int, attempts: int, base_delay_s: float
) -> None:
    """Log the retry and back off exponentially, with jitter so retries do not collide again."""
    log.warning(
        "[WA-SESSION] %s failed (%s), retrying (attempt %d of %d)",
        what,
        type(error).__name__,
        attempt + 1,
        attempts,
    )
    await asyncio.sleep(base_delay_s * (2 ** (attempt - 1)) * (1 + random.random()))


class DriverStatements:
    """Runs fixed SQL on a unit of work's asyncpg connection; the engine's cursor events still
    see every statement (the tests' statement counts, the benchmark's time in SQL)."""

    __slots__ = ("_connection", "_driver")

    def __init__(self, connection: Any, driver: Any) -> None:
        self._connection = connection
        self._driver = driver

    async def fetch(self, sql: str, *arguments: Any) -> list[Any]:
        dispatch = self._connection.dispatch
        if not dispatch.before_cursor_execute and not dispatch.after_cursor_execute:
            return list(await self._driver.fetch(sql, *arguments))
        dispatch.before_cursor_execute(self._connection, None, sql, arguments, None, False)
        rows = list(await self._driver.fetch(sql, *arguments))
        dispatch.after_cursor_execute(self._connection, None, sql, arguments, None, False)
        return rows


async def run_statement(
    sessions: Sessions,
    work: Callable[[DriverStatements], Awaitable[T]],
    *,
    repeatable_after_lost_connection: bool,
    attempts: int = 3,
    base_delay_s: float = 0.02,
) -> T:
    """Run `work`, one statement, as a whole unit of work: in autocommit, so the statement is
    its own transaction and its answer arrives after its commit, in one round trip where a
    unit_of_work needs four (BEGIN, the business setting, the statement, COMMIT).

    The statement must scope itself to its business (row-level security) and be atomic; db/
    message_ingest.py's function is. It is repeated after a serialization failure or a
    deadlock (rolled back whole). A connection lost while it ran leaves the outcome unknown,
    as a lost COMMIT does: it is repeated only when the caller says repeating is harmless
    (`repeatable_after_lost_connection`: a message with a provider id is stored once however
    often it is sent).
    """
    engine: AsyncEngine = sessions.kw["bind"]
    for attempt in range(1, attempts + 1):
        try:
            async with engine.connect() as connection:
                await connection.execution_options(isolation_level="AUTOCOMMIT")
                driver = (await connection.get_raw_connection()).driver_connection
                try:
                    return await work(DriverStatements(connection.sync_connection, driver))
                except Exception as refused:
                    if not isinstance(refused, asyncpg.PostgresError) and not isinstance(
                        refused.__cause__, asyncpg.PostgresError
                    ):
                        # Lost mid-statement: asyncpg may not go on with this connection.
                        await connection.invalidate()
                    raise  # else the server refused the statement: the connection is fine
                except BaseException:
                    # Cancelled mid-statement: asyncpg may not be able to go on with this
                    # connection, so it is never pooled again.
                    await connection.invalidate()
                    raise
        except Exception as error:
            # The statement is its own commit: a lost connection counts as a lost COMMIT
            # unless repeating it is harmless.
            retryable = is_retryable(error, during_commit=not repeatable_after_lost_connection)
            if attempt == attempts or not retryable:
                raise
            await _pause_before_retry("statement", error, attempt, attempts, base_delay_s)
    raise AssertionError("unreachable")  # pragma: no cover


class ReadOnlyUnit:
    """A read-only unit of work: one session on one connection, in one read-only transaction.

    Reads are most of the traffic, so their transaction starts in one round trip: the BEGIN
    and the row-level security setting are sent together (a unit_of_work sends BEGIN, then the
    setting, each its own statement), and it ends with one ROLLBACK, as nothing was written.
    The connection is in AUTOCOMMIT for SQLAlchemy, so the transaction is ours alone: SQLAlchemy
    starts none of its own inside it, and statements run through the session land in it.
    """

    def __init__(self, session: AsyncSession, connection: AsyncConnection, driver: Any) -> None:
        self.session = session
        self._connection = connection
        self._driver = driver

    async def close(self) -> None:
        """Roll back and give the connection back; a connection that cannot roll back is
        discarded, never pooled with a transaction open, and the request it served goes on."""
        try:
            await self.session.close()
            await self._driver.execute("ROLLBACK")
        except Exception as broken:
            # Nothing was written, so nothing is lost: the reads are done, only the connection
            # goes (a read cancelled mid-statement leaves asyncpg unable to roll back).
            log.info("[WA-SESSION] read connection discarded at close: %r", broken)
            await self._connection.invalidate()
        except BaseException:
            await self._connection.invalidate()
            raise
        finally:
            await self._connection.close()


# A pooled connection the server closed, as asyncpg reports its first use: its disconnects,
# including a protocol state it cannot leave when the server's goodbye arrived while the
# connection sat idle, or any socket error while the BEGIN is sent (nothing is done yet).
_DISCONNECTS = (*DRIVER_DISCONNECTS, OSError)
_READ_ATTEMPTS = 3
# Where a read-only unit's session keeps its connection and the asyncpg connection under it,
# so db/inbox_reads.py finds them without asking SQLAlchemy again for every statement.
READ_CONNECTION = "wa_inbox.read_connection"


async def open_read_only(sessions: Sessions, business_id: int) -> ReadOnlyUnit:
    """A read-only unit of work scoped to `business_id` (row-level security, as above).

    A pooled connection the server closed meanwhile is replaced: the pool checks liveness for
    free at checkout (db/engine.py), and this covers a close it has not seen yet.
    """
    engine: AsyncEngine = sessions.kw["bind"]
    begin = (
        "BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY; "
        f"SELECT set_config('wa_inbox.business_id', '{int(business_id)}', true)"
    )
    for attempt in range(1, _READ_ATTEMPTS + 1):
        connection = await engine.connect()
        try:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            driver = (await connection.get_raw_connection()).driver_connection
            assert driver is not None
            await driver.execute(begin)
        except _DISCONNECTS:
            await connection.invalidate()
            await connection.close()
            if attempt == _READ_ATTEMPTS:
                raise
            continue
        except BaseException:
            await connection.invalidate()
            await connection.close()
            raise
        session = sessions(bind=connection)
        session.info[READ_CONNECTION] = (connection.sync_connection, driver)
        return ReadOnlyUnit(session, connection, driver)
    raise AssertionError("unreachable")  # pragma: no cover


@asynccontextmanager
async def read_only_unit_of_work(
    sessions: Sessions, *, business_id: int
) -> AsyncIterator[AsyncSession]:
    """`open_read_only` as a block: the session of a read-only unit of work, closed after."""
    unit = await open_read_only(sessions, business_id)
    try:
        yield unit.session
    finally:
        await unit.close()
