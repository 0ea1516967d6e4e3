"""Transaction-level advisory locks: writers of one name queue behind each other until commit.

Each lock is `pg_advisory_xact_lock(space, hashtext('{business_id}:{name}'))`, in one namespace
per kind of name, so a customer's phone and a provider message id never share a lock.
"""

from collections.abc import Iterable

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

# The serialized fallback's conversation keys (when the unique constraint is missing).
CONVERSATION_KEYS = 0x5741_0001
# Provider message ids: statuses and revisions against the messages they describe.
PROVIDER_IDS = 0x5741_0002
# The names of customers (canonical keys and aliases) while threads are created or linked.
CUSTOMER_NAMES = 0x5741_0003


async def lock(session: AsyncSession, space: int, business_id: int, name: str) -> None:
    """Lock one name of the business in `space` until the transaction ends."""
    await session.execute(
        select(func.pg_advisory_xact_lock(space, func.hashtext(f"{business_id}:{name}")))
    )


_LOCK_MANY = text(
    """
    SELECT count(pg_advisory_xact_lock(wanted.space, wanted.hash))
    FROM (
        SELECT DISTINCT space, hashtext(name) AS hash
        FROM unnest(CAST(:spaces AS integer[]), CAST(:names AS text[])) AS t (space, name)
        ORDER BY space, hash
    ) AS wanted
    """
)


async def lock_many(
    session: AsyncSession, business_id: int, locks: Iterable[tuple[int, str]]
) -> None:
    """Lock several (space, name) pairs of the business in one statement.

    Taken in one global order (space, then hash), so two writers wanting overlapping sets
    cannot wait for each other in a cycle; the rare cycle through a hash collision is a
    deadlock PostgreSQL detects, and the unit of work is retried whole.
    """
    wanted = sorted(set(locks))
    if not wanted:
        return
    await session.execute(
        _LOCK_MANY,
        {
            "spaces": [space for space, _ in wanted],
            "names": [f"{business_id}:{name}" for _, name in wanted],
        },
    )
