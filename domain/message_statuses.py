"""Delivery statuses of outbound messages, as WhatsApp reports them: only ever forward.

sent < delivered < read < played (a voice message listened to), whatever order the webhooks
arrive in; a failure replaces any of them but played, and a delivered, read or played reported
after it (by the statuses' times) replaces the failure: WhatsApp reports failed, then read, when
a retry of its own succeeded (db/statements.py `_replaces`). A status for a message not stored
yet is kept and applied when the message is stored.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from db import outbox, statements
from db.unit_of_work import Sessions, run_unit_of_work
from domain.events import MessageStatusChanged
from domain.models import MessageStatus

REPORTABLE_STATUSES = frozenset(
    {
        MessageStatus.SENT,
        MessageStatus.DELIVERED,
        MessageStatus.READ,
        MessageStatus.PLAYED,
        MessageStatus.FAILED,
    }
)


@dataclass(frozen=True)
class StatusUpdate:
    provider_message_id: str
    status: MessageStatus
    status_at: datetime
    error_code: int | None = None
    error_title: str | None = None
    # The message our sender posted, named by the `biz_opaque_callback_data` it set.
    sent_message_id: int | None = None


def status_changed(row: Mapping[Any, Any]) -> MessageStatusChanged:
    """The event of a message row whose status was just written."""
    return MessageStatusChanged(
        row["business_id"],
        row["conversation_id"],
        row["id"],
        row["status"],
        row["error_code"],
        row["error_title"],
        error_outcome_unknown=row["error_outcome_unknown"],
    )


class StatusOutcome(Enum):
    APPLIED = "applied"
    KEPT_PENDING = "kept_pending"  # the message is not stored yet
    STALE = "stale"  # the message is already at this status or beyond


@dataclass(frozen=True)
class StatusRecorded:
    outcome: StatusOutcome
    event: MessageStatusChanged | None = None  # set when APPLIED


async def record_status(
    sessions: Sessions, business_id: int, update: StatusUpdate
) -> StatusRecorded:
    """Apply `update` to the business's outbound message, or keep it until that is stored."""
    if update.status not in REPORTABLE_STATUSES:
        raise ValueError(f"{update.status} is not a delivery status")

    async def work(session: AsyncSession) -> StatusRecorded:
        # The same lock as storing an outbound message with this provider id: the message is
        # either visible here, or its writer will find the pending status.
        await statements.lock_provider_id(session, business_id, update.provider_message_id)
        advanced = await _advance(session, business_id, update)
        if advanced is not None:
            return StatusRecorded(StatusOutcome.APPLIED, status_changed(advanced))
        stored = await statements.find_message_by_provider_id(
            session, business_id, update.provider_message_id
        )
        if stored is not None:
            return StatusRecorded(StatusOutcome.STALE)
        if update.sent_message_id is not None:
            adopted = await outbox.adopt_provider_id(
                session, business_id, update.sent_message_id, update.provider_message_id
            )
            if adopted is not None:
                # A message whose send answer was lost (or is still on its way): WhatsApp's
                # status names it, so it did go out. It took the id; now the status.
                advanced = await _advance(session, business_id, update)
                settled = advanced if advanced is not None else adopted
                return StatusRecorded(StatusOutcome.APPLIED, status_changed(settled))
        await statements.keep_pending_status(
            session,
            business_id,
            update.provider_message_id,
            status=update.status.value,
            status_at=update.status_at,
            error_code=update.error_code,
            error_title=update.error_title,
        )
        return StatusRecorded(StatusOutcome.KEPT_PENDING)

    return await run_unit_of_work(sessions, work, business_id=business_id)


async def _advance(session: AsyncSession, business_id: int, update: StatusUpdate) -> Any:
    """The message with `update` applied (`_replaces`), None when it is not stored or stays."""
    return await statements.advance_message_status(
        session,
        business_id,
        update.provider_message_id,
        status=update.status.value,
        status_at=update.status_at,
        error_code=update.error_code,
        error_title=update.error_title,
    )
