"""What changed, as the live-updates layer publishes it once the unit of work has committed."""

from dataclasses import dataclass


@dataclass(frozen=True)
class MessageStored:
    """A new message (never a dedupe-skipped duplicate) is in its thread.

    The unread counts are read in the storing transaction; they are present when the message
    counts as unread (inbound, not historical), None otherwise.
    """

    business_id: int
    thread_id: int
    message_id: int
    thread_unread: int | None = None
    total_unread: int | None = None


@dataclass(frozen=True)
class ThreadRead:
    """A thread's read point moved: its unread count and the business total, as committed."""

    business_id: int
    thread_id: int
    thread_unread: int
    total_unread: int


InboxEvent = MessageStored | ThreadRead
