"""Changes agents make to what is stored: deleting a message, closing or reopening a thread.

Deleting an unread message lowers the thread's and the business's unread counters in the same
transaction. A thread's status does not change what is unread.
"""

import logging
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from db import outbox, statements
from db.unit_of_work import Sessions, run_unit_of_work
from domain.customer_identities import on_current_thread
from domain.errors import NotFound
from domain.events import ThreadRead
from domain.models import Message, Thread, ThreadStatus

log = logging.getLogger("wa_inbox.thread_changes")


@dataclass(frozen=True)
class DeletedMessage:
    message: Message
    event: ThreadRead | None  # set when the unread counts moved


async def delete_message(sessions: Sessions, business_id: int, message_id: int) -> DeletedMessage:
    """Mark the business's message deleted (it stays in the thread, never counted unread)."""

    async def work(session: AsyncSession) -> DeletedMessage:
        found = await statements.delete_message(session, business_id, message_id)
        if found is None:
            raise NotFound("no message with that id")
        row, was_unread = found
        # A reply deleted before the sender took it is never sent; one being posted already
        # goes out (and stays deleted here).
        await outbox.cancel_send(session, business_id, message_id)
        message = Message.from_row(row)
        event = ThreadRead(business_id, message.thread_id) if was_unread else None
        return DeletedMessage(message, event)

    deleted = await run_unit_of_work(sessions, work, business_id=business_id)
    log.info(
        "[WA-SESSION] message_id=%s of thread_id=%s deleted for business_id=%s",
        message_id,
        deleted.message.thread_id,
        business_id,
    )
    return deleted


async def set_thread_status(
    sessions: Sessions, business_id: int, thread_id: int, status: ThreadStatus
) -> Thread:
    """Close or reopen the business's thread (an inbound message reopens it by itself)."""

    async def work(session: AsyncSession) -> Thread:
        row = await on_current_thread(
            session,
            business_id,
            thread_id,
            lambda thread: statements.set_conversation_status(
                session, business_id, thread, status.value
            ),
        )
        if row is None:
            raise NotFound("no thread with that id")
        return Thread.from_row(row)

    return await run_unit_of_work(sessions, work, business_id=business_id)
