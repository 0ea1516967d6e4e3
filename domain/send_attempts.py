"""What the sender does with each claimed message and with WhatsApp's answer to it.

- Accepted: the returned id becomes the provider id and the status SENT (or the status a
  webhook reported before the answer came, when that is further along).
- Rejected with a retryable code (throttling, a temporary Meta failure, HTTP 429 and 5xx) or
  not sent at all (no connection): tried again with exponential backoff and jitter, up to
  SEND_MAX_ATTEMPTS attempts and the send deadline; then FAILED with the last reason.
- Rejected with a final code (outside the window, not a WhatsApp user, template or parameter
  errors, auth errors): FAILED at once with WhatsApp's code and reason.
- Outcome unknown (the request went out and no answer came back: a dropped connection, a read
  timeout, a sender that died): FAILED with `error_outcome_unknown`, never posted again. The
  Cloud API has no idempotency key, so a second post could reach the customer twice.
"""

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import RowMapping
from sqlalchemy.ext.asyncio import AsyncSession

from db import outbox, statements
from db.unit_of_work import Sessions, run_unit_of_work
from domain.events import MessageStatusChanged
from domain.message_statuses import status_changed

log = logging.getLogger("wa_inbox.sender")

# Cloud API codes worth another attempt (the shared WhatsApp notes, Meta's error code table):
# throttling (130429, 131056, 80007, 4), temporary failures (1, 2, 131000, 131016, 133004) and
# a business-account change in progress (131057).
RETRYABLE_CODES = frozenset({130429, 131056, 80007, 131000, 131016, 133004, 131057, 4, 1, 2})

OUTCOME_UNKNOWN_TITLE = (
    "WhatsApp's answer was lost (the connection ended after the request was sent): the message "
    "may have reached the customer. It is not sent again automatically; check the chat before "
    "resending."
)
NO_TOKEN_TITLE = "the channel has no access token any more (rotateWhatsAppToken sets one)"
NO_CHANNEL_TITLE = "the WhatsApp channel this message was queued for is no longer connected"
UNREADABLE_TOKEN_TITLE = (
    "the channel's access token cannot be decrypted with CHANNEL_SECRET_KEY (a key was "
    "removed): set the token again with rotateWhatsAppToken"
)


@dataclass(frozen=True)
class Accepted:
    provider_message_id: str


@dataclass(frozen=True)
class Rejected:
    http_status: int
    code: int | None
    title: str
    retry_after_s: float | None = None

    @property
    def retryable(self) -> bool:
        if self.code in RETRYABLE_CODES:
            return True
        if self.code is not None and self.http_status < 500 and self.http_status != 429:
            return False
        return self.http_status == 429 or self.http_status >= 500


@dataclass(frozen=True)
class NotSent:
    """The request never reached WhatsApp (no connection): safe to try again."""

    reason: str


@dataclass(frozen=True)
class OutcomeUnknown:
    reason: str


AttemptResult = Accepted | Rejected | NotSent | OutcomeUnknown


DEFAULT_SEND_DEADLINE = timedelta(minutes=10)


@dataclass(frozen=True)
class SendPolicy:
    max_attempts: int = 5
    deadline: timedelta = DEFAULT_SEND_DEADLINE
    retry_base_s: float = 1.0
    retry_max_s: float = 60.0

    def next_attempt_at(
        self,
        *,
        attempts: int,
        deadline_at: datetime,
        now: datetime,
        retry_after_s: float | None = None,
    ) -> datetime | None:
        """When to try again after `attempts` attempts; None when the bound is reached."""
        if attempts >= self.max_attempts:
            return None
        ceiling = min(self.retry_max_s, self.retry_base_s * 2 ** (attempts - 1))
        # "Equal jitter": at least half the backoff, so retries spread without bunching at 0.
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        if retry_after_s is not None:
            delay = max(delay, retry_after_s)
        due = now + timedelta(seconds=delay)
        return due if due <= deadline_at else None


@dataclass(frozen=True)
class ClaimedSend:
    outbox_id: int
    business_id: int
    message_id: int
    thread_id: int
    phone_number_id: str
    access_token_sealed: bytes | None
    request: dict[str, Any]
    attempts: int
    deadline_at: datetime
    channel_connected: bool

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> "ClaimedSend":
        return cls(
            outbox_id=row["outbox_id"],
            business_id=row["business_id"],
            message_id=row["message_id"],
            thread_id=row["thread_id"],
            phone_number_id=row["phone_number_id"],
            access_token_sealed=row["access_token_sealed"],
            request=row["request"],
            attempts=row["attempts"],
            deadline_at=row["deadline_at"],
            channel_connected=row["channel_connected"],
        )


async def claim_sends(
    sessions: Sessions, worker: str, *, lease_seconds: float, batch: int
) -> list[ClaimedSend]:
    """Due messages of any business, leased to `worker` (committed before anything is posted)."""
    rows = await run_unit_of_work(
        sessions,
        lambda session: outbox.claim_due_sends(
            session, worker, lease_seconds=lease_seconds, batch=batch
        ),
        business_id=None,
        # A claim repeated after a lost COMMIT would lease other rows while the first stay
        # leased: they would end as outcome unknown, though never posted.
        attempts=1,
    )
    return [ClaimedSend.from_row(row) for row in rows]


async def fail_abandoned_sends(
    sessions: Sessions, *, batch: int = 100
) -> list[MessageStatusChanged]:
    """Messages whose sender died while posting them: FAILED, outcome unknown."""
    rows = await run_unit_of_work(
        sessions,
        lambda session: outbox.fail_abandoned_sends(
            session, batch=batch, title=OUTCOME_UNKNOWN_TITLE
        ),
        business_id=None,
    )
    for row in rows:
        log.error(
            "[WA-SEND] message_id=%s of business_id=%s: its sender stopped while WhatsApp was "
            "answering; marked FAILED (outcome unknown), not sent again",
            row["message_id"],
            row["business_id"],
        )
    return [
        MessageStatusChanged(
            row["business_id"],
            row["thread_id"],
            row["message_id"],
            "failed",
            None,
            OUTCOME_UNKNOWN_TITLE,
            error_outcome_unknown=True,
        )
        for row in rows
    ]


async def record_attempt(
    sessions: Sessions,
    claimed: ClaimedSend,
    result: AttemptResult,
    *,
    worker: str,
    policy: SendPolicy,
    now: datetime | None = None,
) -> MessageStatusChanged | None:
    """Record what became of one attempt; the event when the message's status moved."""
    at = now or datetime.now(UTC)
    if isinstance(result, Accepted):
        return await _record_accepted(sessions, claimed, result.provider_message_id, worker, at)
    if isinstance(result, OutcomeUnknown):
        return await _record_failed(
            sessions, claimed, worker, at, None, OUTCOME_UNKNOWN_TITLE, outcome_unknown=True
        )
    if isinstance(result, Rejected) and not result.retryable:
        return await _record_failed(sessions, claimed, worker, at, result.code, result.title)
    retry_after = result.retry_after_s if isinstance(result, Rejected) else None
    next_at = policy.next_attempt_at(
        attempts=claimed.attempts,
        deadline_at=claimed.deadline_at,
        now=at,
        retry_after_s=retry_after,
    )
    reason = _describe(result)
    if next_at is None:
        code = result.code if isinstance(result, Rejected) else None
        title = result.title if isinstance(result, Rejected) else f"not sent: {result.reason}"
        log.warning(
            "[WA-SEND] message_id=%s gave up after %d attempts (%s)",
            claimed.message_id,
            claimed.attempts,
            reason,
        )
        return await _record_failed(sessions, claimed, worker, at, code, title)

    async def release(session: AsyncSession) -> None:
        await outbox.release_for_retry(
            session, claimed.outbox_id, worker, next_attempt_at=next_at, last_error=reason
        )

    await run_unit_of_work(sessions, release, business_id=claimed.business_id)
    log.info(
        "[WA-SEND] message_id=%s attempt %d failed (%s): next attempt at %s",
        claimed.message_id,
        claimed.attempts,
        reason,
        next_at.isoformat(),
    )
    return None


async def record_unsendable(
    sessions: Sessions, claimed: ClaimedSend, title: str, *, worker: str
) -> MessageStatusChanged | None:
    """A claimed message that cannot be posted at all (its channel or token is gone)."""
    return await _record_failed(sessions, claimed, worker, datetime.now(UTC), None, title)


def _describe(result: AttemptResult) -> str:
    if isinstance(result, Rejected):
        return f"HTTP {result.http_status}, code {result.code}: {result.title}"
    if isinstance(result, NotSent | OutcomeUnknown):
        return result.reason
    return "accepted"


async def _record_accepted(
    sessions: Sessions,
    claimed: ClaimedSend,
    provider_message_id: str,
    worker: str,
    at: datetime,
) -> MessageStatusChanged | None:
    async def work(session: AsyncSession) -> RowMapping | None:
        # The lock status webhooks take: one for this id that came before the answer is kept
        # pending now and applied here, one that comes after finds the provider id set.
        await statements.lock_provider_id(session, claimed.business_id, provider_message_id)
        # Even when the lease was lost (the row was failed as abandoned) the answer is the
        # truth: the message did go out, and says so.
        await outbox.finish_send(session, claimed.outbox_id, worker)
        row = await outbox.mark_message_sent(session, claimed.message_id, provider_message_id, at)
        if row is None:
            return None
        pending = await statements.take_pending_status(
            session, claimed.business_id, provider_message_id
        )
        if pending is not None:
            advanced = await statements.advance_message_status(
                session,
                claimed.business_id,
                provider_message_id,
                status=pending["status"],
                status_at=pending["status_at"],
                error_code=pending["error_code"],
                error_title=pending["error_title"],
            )
            row = advanced if advanced is not None else row
        return row

    row = await run_unit_of_work(sessions, work, business_id=claimed.business_id)
    log.info(
        "[WA-SEND] message_id=%s of business_id=%s accepted by WhatsApp as %s",
        claimed.message_id,
        claimed.business_id,
        provider_message_id,
    )
    return status_changed(row) if row is not None else None


async def _record_failed(
    sessions: Sessions,
    claimed: ClaimedSend,
    worker: str,
    at: datetime,
    code: int | None,
    title: str,
    *,
    outcome_unknown: bool = False,
) -> MessageStatusChanged | None:
    async def work(session: AsyncSession) -> RowMapping | None:
        if not await outbox.finish_send(session, claimed.outbox_id, worker):
            return None  # failed as abandoned already (the lease ran out)
        return await outbox.mark_message_failed(
            session,
            claimed.message_id,
            failed_at=at,
            error_code=code,
            error_title=title,
            outcome_unknown=outcome_unknown,
        )

    row = await run_unit_of_work(sessions, work, business_id=claimed.business_id)
    if row is not None:
        log.warning(
            "[WA-SEND] message_id=%s of business_id=%s FAILED: code %s, %s",
            claimed.message_id,
            claimed.business_id,
            code,
            title,
        )
    return status_changed(row) if row is not None else None
