"""Read tracking: what is unread, and moving a thread's read point.

Unread = inbound, not deleted, not historical, and stored after the thread was last marked
read. "After" is decided by the thread's message sequence, taken under the thread's row
lock, so a late webhook (old provider timestamp, stored after the read) still counts.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from db import inbox_reads, statements
from db.unit_of_work import Sessions, run_unit_of_work
from domain.customer_identities import on_current_thread
from domain.errors import BadInput, NotFound
from domain.events import ThreadRead
from domain.metrics import InboxMetrics
from domain.models import Thread
from domain.threads import find_thread_by_phone

log = logging.getLogger("wa_inbox.read_state")


@dataclass(frozen=True)
class ReadOutcome:
    thread: Thread
    total_unread: int

    @property
    def event(self) -> ThreadRead:
        return ThreadRead(self.thread.business_id, self.thread.id)


async def unread_counts(
    session: AsyncSession, business_id: int, thread_ids: Sequence[int]
) -> dict[int, int]:
    """Unread messages of each thread (0 for threads with none), in one statement."""
    counts = await statements.unread_counts(session, business_id, thread_ids)
    return {thread_id: counts.get(thread_id, 0) for thread_id in thread_ids}


async def total_unread(session: AsyncSession, business_id: int) -> int:
    """The business's unread badge: unread messages over all its threads."""
    return await inbox_reads.total_unread(session, business_id)


@dataclass(frozen=True)
class UnreadSnapshot:
    """Current unread counts of the threads that may have changed, and the business total."""

    business_id: int
    thread_unread: dict[int, int]
    total_unread: int


async def unread_snapshot(
    session: AsyncSession, business_id: int, *, changed_since: datetime, limit: int = 100
) -> UnreadSnapshot:
    """Counts to refresh badges with after events may have been lost (a pub/sub outage).

    Covers the threads written to or read since `changed_since` (at most `limit`), or the most
    recently active thread when none was, so that every badge receives the current total.
    """
    thread_ids = await statements.conversations_active_since(
        session, business_id, changed_since, limit
    )
    if not thread_ids:
        latest = await inbox_reads.page_conversations(
            session, business_id, limit=1, after=None, unread_only=False
        )
        thread_ids = [row["id"] for row in latest]
    return UnreadSnapshot(
        business_id,
        await unread_counts(session, business_id, thread_ids),
        await total_unread(session, business_id),
    )


async def mark_thread_read(
    sessions: Sessions,
    business_id: int,
    *,
    thread_id: int | None = None,
    phone: str | None = None,
    default_region: str,
    metrics: InboxMetrics,
) -> ReadOutcome:
    """Mark everything stored in the thread so far as read; the read point never moves back."""
    if (thread_id is None) == (phone is None):
        raise BadInput("give exactly one of threadId or phone")

    async def mark(session: AsyncSession) -> ReadOutcome:
        target = thread_id
        if target is None:
            assert phone is not None
            found = await find_thread_by_phone(session, business_id, phone, default_region)
            if found is None:
                raise NotFound("no thread for that phone")
            target = found.id
        # An old link to a thread merged away since marks the thread it lives in now.
        row = await on_current_thread(
            session,
            business_id,
            target,
            lambda thread: statements.mark_conversation_read(session, business_id, thread),
        )
        if row is None:
            raise NotFound("no thread with that id")
        return ReadOutcome(Thread.from_row(row), await total_unread(session, business_id))

    outcome = await run_unit_of_work(sessions, mark, business_id=business_id)
    metrics.threads_marked_read += 1
    log.info(
        "[WA-MARK-READ] business_id=%s thread_id=%s marked read; business unread now %s",
        business_id,
        outcome.thread.id,
        outcome.total_unread,
    )
    return outcome
