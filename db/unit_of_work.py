"""Units of work: one AsyncSession and one transaction each, retried whole when safe."""

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from db.errors import is_retryable

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
            log.warning(
                "[WA-SESSION] unit of work failed (%s), retrying (attempt %d of %d)",
                type(error).__name__,
                attempt + 1,
                attempts,
            )
            await asyncio.sleep(base_delay_s * (2 ** (attempt - 1)) * (1 + random.random()))
    raise AssertionError("unreachable")  # pragma: no cover
