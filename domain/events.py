"""What changed, as the live-updates layer publishes it once the unit of work has committed.

Events name what changed, not the counts it led to: counts read inside concurrent
transactions cannot see each other's writes, so the last event of a burst could carry a
total that is already stale. Whoever delivers an event reads the counts after the commit,
which makes the latest delivered event always carry the latest committed state.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class MessageStored:
    """A new message (never a dedupe-skipped duplicate) is in its thread."""

    business_id: int
    thread_id: int
    message_id: int
    changes_unread: bool  # inbound and not historical: the unread counts moved


@dataclass(frozen=True)
class ThreadRead:
    """A thread's unread count changed without a new message: its read point moved, or an
    unread message was deleted."""

    business_id: int
    thread_id: int


@dataclass(frozen=True)
class ThreadMerged:
    """Two threads turned out to be one customer's: `from_thread_id` is gone, its messages and
    names now live in `into_thread_id` (its unread count is now 0, the survivor's went up)."""

    business_id: int
    from_thread_id: int
    into_thread_id: int

    @property
    def thread_id(self) -> int:
        return self.into_thread_id


@dataclass(frozen=True)
class MessageStatusChanged:
    """An outbound message's delivery status moved (the sender's SENT or FAILED, a status
    webhook). Unlike counts, a status is the message's own: the event carries it, so each
    change is delivered as it was committed, in order."""

    business_id: int
    thread_id: int
    message_id: int
    status: str
    error_code: int | None = None
    error_title: str | None = None
    error_outcome_unknown: bool = False


InboxEvent = MessageStored | ThreadRead | ThreadMerged | MessageStatusChanged
