"""Reading threads and their messages, always within one business."""

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import RowMapping
from sqlalchemy.ext.asyncio import AsyncSession

from db import identity_links, inbox_reads, statements
from domain.canonical_keys import canonical_key, normalize_lead_id
from domain.customer_identities import on_current_thread
from domain.errors import BadInput
from domain.models import Message, Thread
from domain.pagination import (
    DEFAULT_PAGE_SIZE,
    Page,
    Position,
    check_page_size,
    decode_cursor,
    encode_cursor,
)
from domain.phones import normalize_phone

THREAD_CURSOR = "thread"
MESSAGE_CURSOR = "message"


async def find_thread(
    session: AsyncSession,
    business_id: int,
    *,
    thread_id: int | None = None,
    phone: str | None = None,
    lead_id: str | None = None,
    default_region: str,
) -> Thread | None:
    """The thread named by id, by lead id, or by phone (in that order of precedence).

    Every name of the customer leads to their one thread: a lead's phones, earlier numbers,
    and the id of a thread since merged into it.
    """
    if thread_id is not None:
        return await find_thread_by_id(session, business_id, thread_id)
    lead = normalize_lead_id(lead_id)
    if lead is not None:
        key = canonical_key(business_id, lead_id=lead, phone_e164=None)
        return await _thread_named(session, business_id, key)
    if phone is not None:
        return await find_thread_by_phone(session, business_id, phone, default_region)
    raise BadInput("give one of id, leadId or phone")


async def find_thread_by_id(
    session: AsyncSession, business_id: int, thread_id: int
) -> Thread | None:
    """The thread, or the one it was merged into."""

    async def read(conversation_id: int) -> RowMapping | None:
        rows = await inbox_reads.conversations_by_ids(session, business_id, [conversation_id])
        return rows.get(conversation_id)

    row = await on_current_thread(session, business_id, thread_id, read)
    return Thread.from_row(row) if row is not None else None


async def find_thread_by_phone(
    session: AsyncSession, business_id: int, phone: str, default_region: str
) -> Thread | None:
    phone_e164 = normalize_phone(phone, default_region)
    key = canonical_key(business_id, lead_id=None, phone_e164=phone_e164)
    found = await _thread_named(session, business_id, key)
    if found is None:
        # A phone stored on threads of two leads (before migration 0005) names neither.
        row = await statements.find_latest_conversation_by_phone(session, business_id, phone_e164)
        found = Thread.from_row(row) if row is not None else None
    return found


async def _thread_named(session: AsyncSession, business_id: int, key: str) -> Thread | None:
    row = await identity_links.conversation_named(session, business_id, key)
    return Thread.from_row(row) if row is not None else None


async def threads_by_ids(
    session: AsyncSession, business_id: int, thread_ids: Sequence[int]
) -> dict[int, Thread]:
    rows = await inbox_reads.conversations_by_ids(session, business_id, thread_ids)
    return {thread_id: Thread.from_row(row) for thread_id, row in rows.items()}


async def phones_of(
    session: AsyncSession, business_id: int, thread_ids: Sequence[int]
) -> dict[int, list[str]]:
    """Every phone that names each thread's customer (E.164, in key order)."""
    names = await identity_links.names_of(session, business_id, thread_ids)
    return {
        thread_id: [name.rsplit(":", 1)[1] for name in found if name.startswith("phone:")]
        for thread_id, found in names.items()
    }


async def latest_messages(
    session: AsyncSession, business_id: int, thread_ids: Sequence[int]
) -> dict[int, Message]:
    rows = await inbox_reads.latest_messages(session, business_id, thread_ids)
    return {thread_id: Message.from_row(row) for thread_id, row in rows.items()}


# WhatsApp's customer service window: free-form messages to a customer are allowed until 24
# hours after their latest message; business messages do not extend it.
SERVICE_WINDOW = timedelta(hours=24)


async def service_windows_expiring(
    session: AsyncSession, business_id: int, thread_ids: Sequence[int]
) -> dict[int, datetime]:
    """When each thread's customer service window closes (absent: the customer never wrote)."""
    written = await inbox_reads.latest_customer_message_times(session, business_id, thread_ids)
    return {thread_id: at + SERVICE_WINDOW for thread_id, at in written.items()}


async def find_message(session: AsyncSession, business_id: int, message_id: int) -> Message | None:
    row = await statements.find_message(session, business_id, message_id)
    return Message.from_row(row) if row is not None else None


async def list_threads(
    session: AsyncSession,
    business_id: int,
    *,
    first: int | None,
    after: str | None,
    unread_only: bool,
) -> Page[Thread]:
    """Threads by latest activity first, `first` at a time after the cursor `after`."""
    size, position = _thread_page_request(first, after)
    rows = await inbox_reads.page_conversations(
        session, business_id, limit=size + 1, after=position, unread_only=unread_only
    )
    return _thread_page([Thread.from_row(row) for row in rows], size, position)


async def list_threads_with_last_messages(
    session: AsyncSession,
    business_id: int,
    *,
    first: int | None,
    after: str | None,
    unread_only: bool,
) -> tuple[Page[Thread], dict[int, Message | None]]:
    """`list_threads`, with each thread's latest message, read in the same statement."""
    size, position = _thread_page_request(first, after)
    rows = await inbox_reads.page_conversations_with_last_messages(
        session, business_id, limit=size + 1, after=position, unread_only=unread_only
    )
    page = _thread_page([Thread.from_row(row) for row, _ in rows], size, position)
    last_messages = {
        row["id"]: Message.from_row(last) if last is not None else None for row, last in rows[:size]
    }
    return page, last_messages


def _thread_page_request(first: int | None, after: str | None) -> tuple[int, Position | None]:
    size = check_page_size(first, "first")
    return (DEFAULT_PAGE_SIZE if size is None else size), decode_cursor(
        THREAD_CURSOR, after, "after"
    )


def _thread_page(threads: list[Thread], size: int, position: Position | None) -> Page[Thread]:
    shown = threads[:size]
    return Page(
        items=shown,
        cursors=[encode_cursor(THREAD_CURSOR, (t.last_message_at, t.id)) for t in shown],
        has_next_page=len(threads) > size,
        has_previous_page=position is not None,
    )


async def list_messages(
    session: AsyncSession,
    business_id: int,
    thread_id: int,
    *,
    first: int | None,
    after: str | None,
    last: int | None,
    before: str | None,
) -> Page[Message]:
    """A page of one thread in chronological order, with Relay's cursor rules.

    `first`/`after` page forward from the start, `last`/`before` page backward from the end;
    with neither size given, the first DEFAULT_PAGE_SIZE messages are returned.
    """
    first = check_page_size(first, "first")
    last = check_page_size(last, "last")
    if first is not None and last is not None:
        raise BadInput("give `first` or `last`, not both")
    after_position = decode_cursor(MESSAGE_CURSOR, after, "after")
    before_position = decode_cursor(MESSAGE_CURSOR, before, "before")
    from_end = last is not None
    size = last if last is not None else (first if first is not None else DEFAULT_PAGE_SIZE)
    rows = await inbox_reads.page_messages(
        session,
        business_id,
        thread_id,
        after=after_position,
        before=before_position,
        limit=size + 1,
        from_end=from_end,
    )
    more = len(rows) > size
    rows = rows[1:] if from_end and more else rows[:size]
    found = [Message.from_row(row) for row in rows]
    return Page(
        items=found,
        cursors=[encode_cursor(MESSAGE_CURSOR, (m.sent_at, m.id)) for m in found],
        has_next_page=more if not from_end else before_position is not None,
        has_previous_page=more if from_end else after_position is not None,
    )
