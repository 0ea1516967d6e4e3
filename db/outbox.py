"""The outbox: messages waiting to be posted to the Cloud API, and the sender's leases on them.

A row is written with its PENDING message (one transaction) and deleted with the outcome
(SENT or FAILED, one transaction). In between it is `queued` (due at `next_attempt_at`) or
`sending` (claimed by one process until `lease_until`). Claiming and failing abandoned rows
work across businesses through the SECURITY DEFINER functions of migration 0010; everything
else runs in the row's business's unit of work (row-level security).
"""

from datetime import datetime
from typing import Any

from sqlalchemy import RowMapping, case, delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from db.tables import messages, outbox


async def enqueue_send(
    session: AsyncSession,
    business_id: int,
    message_id: int,
    *,
    phone_number_id: str,
    request: dict[str, Any],
    deadline_at: datetime,
) -> None:
    await session.execute(
        insert(outbox).values(
            business_id=business_id,
            message_id=message_id,
            phone_number_id=phone_number_id,
            request=request,
            deadline_at=deadline_at,
        )
    )


_CLAIM = text(
    "SELECT outbox_id, business_id, message_id, thread_id, phone_number_id, "
    "access_token_sealed, channel_connected, request, attempts, deadline_at "
    "FROM wa_inbox_claim_sends(:worker, :lease_seconds, :batch)"
)


async def claim_due_sends(
    session: AsyncSession, worker: str, *, lease_seconds: float, batch: int
) -> list[RowMapping]:
    """Take up to `batch` due rows of any business for `worker`, leased for `lease_seconds`.
    The claim must be committed before anything is posted (that is what the lease protects)."""
    result = await session.execute(
        _CLAIM, {"worker": worker, "lease_seconds": lease_seconds, "batch": batch}
    )
    return list(result.mappings())


_FAIL_ABANDONED = text(
    "SELECT business_id, thread_id, message_id, status_at "
    "FROM wa_inbox_fail_abandoned_sends(:batch, :title)"
)


async def fail_abandoned_sends(
    session: AsyncSession, *, batch: int, title: str
) -> list[RowMapping]:
    """Fail the messages whose sender died mid-request (the lease ran out), outcome unknown."""
    result = await session.execute(_FAIL_ABANDONED, {"batch": batch, "title": title})
    return list(result.mappings())


def _held_by(outbox_id: int, worker: str) -> Any:
    return (
        (outbox.c.id == outbox_id) & (outbox.c.state == "sending") & (outbox.c.claimed_by == worker)
    )


async def release_for_retry(
    session: AsyncSession,
    outbox_id: int,
    worker: str,
    *,
    next_attempt_at: datetime,
    last_error: str,
) -> bool:
    """Queue a claimed row again; False when the lease was lost meanwhile."""
    result = await session.execute(
        update(outbox)
        .where(_held_by(outbox_id, worker))
        .values(
            state="queued",
            lease_until=None,
            claimed_by=None,
            next_attempt_at=next_attempt_at,
            last_error=last_error,
        )
        .returning(outbox.c.id)
    )
    return result.first() is not None


async def finish_send(session: AsyncSession, outbox_id: int, worker: str) -> bool:
    """Delete a claimed row as its outcome is recorded; False when the lease was lost (another
    process already failed it as abandoned)."""
    result = await session.execute(
        delete(outbox).where(_held_by(outbox_id, worker)).returning(outbox.c.id)
    )
    return result.first() is not None


async def mark_message_sent(
    session: AsyncSession, message_id: int, provider_message_id: str, sent_at: datetime
) -> RowMapping | None:
    """The Cloud API took the message: its id becomes the provider id and the status SENT,
    also over a FAILED whose outcome was unknown (it did go out). A message deleted meanwhile
    stays deleted. None when the message already has a provider id."""
    sendable = (messages.c.status == "pending") | messages.c.error_outcome_unknown
    result = await session.execute(
        update(messages)
        .where(messages.c.id == message_id, messages.c.provider_message_id.is_(None))
        .values(
            provider_message_id=provider_message_id,
            status=case((sendable, "sent"), else_=messages.c.status),
            status_at=case((sendable, sent_at), else_=messages.c.status_at),
            error_code=case((sendable, None), else_=messages.c.error_code),
            error_title=case((sendable, None), else_=messages.c.error_title),
            error_outcome_unknown=False,
        )
        .returning(*messages.c)
    )
    return result.mappings().one_or_none()


async def mark_message_failed(
    session: AsyncSession,
    message_id: int,
    *,
    failed_at: datetime,
    error_code: int | None,
    error_title: str,
    outcome_unknown: bool = False,
) -> RowMapping | None:
    """The message cannot be sent: FAILED with WhatsApp's (or our) reason. None when it is no
    longer PENDING (deleted meanwhile)."""
    result = await session.execute(
        update(messages)
        .where(messages.c.id == message_id, messages.c.status == "pending")
        .values(
            status="failed",
            status_at=failed_at,
            error_code=error_code,
            error_title=error_title,
            error_outcome_unknown=outcome_unknown,
        )
        .returning(*messages.c)
    )
    return result.mappings().one_or_none()


async def adopt_provider_id(
    session: AsyncSession, business_id: int, message_id: int, provider_message_id: str
) -> bool:
    """A status webhook named our sent message (its callback data) before we knew its id: the
    message takes the id. Only an outbound message without one that the sender posted (still
    PENDING, or FAILED with the outcome unknown); its unknown failure is cleared."""
    result = await session.execute(
        update(messages)
        .where(
            messages.c.business_id == business_id,
            messages.c.id == message_id,
            messages.c.direction == "out",
            messages.c.provider_message_id.is_(None),
            (messages.c.status == "pending") | messages.c.error_outcome_unknown,
        )
        .values(
            provider_message_id=provider_message_id,
            status=case((messages.c.error_outcome_unknown, "sent"), else_=messages.c.status),
            error_code=None,
            error_title=None,
            error_outcome_unknown=False,
        )
        .returning(messages.c.id)
    )
    return result.first() is not None


async def cancel_send(session: AsyncSession, business_id: int, message_id: int) -> bool:
    """Drop a message's queued send (it was deleted before the sender took it); False when
    there was none, or a sender holds it already."""
    result = await session.execute(
        delete(outbox)
        .where(
            outbox.c.business_id == business_id,
            outbox.c.message_id == message_id,
            outbox.c.state == "queued",
        )
        .returning(outbox.c.id)
    )
    return result.first() is not None


async def queued_sends(session: AsyncSession, business_id: int) -> int:
    """How many of the business's messages wait to be sent (for tests and operators)."""
    result = await session.execute(
        select(func.count()).select_from(outbox).where(outbox.c.business_id == business_id)
    )
    return int(result.scalar_one())
