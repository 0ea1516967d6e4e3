"""Storing a WhatsApp webhook delivery: every message exactly once, every status forward.

A business's messages are stored in their order by the rules of the GraphQL mutation
(domain/messages.py), in one statement for the whole delivery when their threads are settled or
new, each message once: a redelivery of the whole batch stores only what is missing. A storage
failure propagates: the entry point answers 5xx and WhatsApp retries the delivery; what was
committed before it stays, and is announced. A message that breaks a rule is recorded as
rejected and the rest of the batch goes on.

Edits and revokes are applied after the delivery's messages, each in its own unit of work, so
a revision and the message it changes work in one delivery whatever their order in it.
"""

import functools
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from db import statements
from db.unit_of_work import Sessions, run_statement, run_unit_of_work
from domain.errors import BadInput
from domain.events import InboxEvent
from domain.group_commit import GroupCommit
from domain.message_revisions import RevisionOutcome, apply_revision
from domain.message_statuses import StatusOutcome, record_status
from domain.messages import (
    CheckedMessage,
    IngestOutcome,
    check_message,
    store_checked_messages,
)
from domain.metrics import InboxMetrics
from domain.webhook_payloads import (
    RejectedPart,
    WebhookDelivery,
    WebhookMessage,
    WebhookRevision,
)

log = logging.getLogger("wa_inbox.webhooks")


@dataclass
class DeliveryReport:
    """What a delivery led to, for the response body and the log."""

    stored: int = 0
    duplicates: int = 0
    statuses_applied: int = 0
    statuses_pending: int = 0
    statuses_stale: int = 0
    revisions_applied: int = 0
    revisions_pending: int = 0  # their message is not stored yet
    revisions_stale: int = 0  # redelivered, overtaken by a later edit, or the message is deleted
    rejected: int = 0
    unknown_numbers: int = 0
    ignored_fields: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))

    @property
    def outcome(self) -> str:
        """What happened to the delivery as a whole: `stored` when any part concerned a
        connected number (stored, already stored, rejected, a status or a revision), `ignored`
        when none did (unknown numbers, other webhook fields)."""
        counted = dict(vars(self))
        del counted["unknown_numbers"], counted["ignored_fields"]
        return "stored" if any(counted.values()) else "ignored"


async def store_delivery(
    sessions: Sessions,
    delivery: WebhookDelivery,
    *,
    default_region: str,
    metrics: InboxMetrics,
    on_stored: Callable[[InboxEvent], None],
    group_commit: GroupCommit | None = None,
) -> DeliveryReport:
    """Store every part of `delivery` for the business owning its number.

    `on_stored` receives the events of each newly stored message (its merges, then the
    message) and of each status applied as soon as it is committed, also when a later part
    fails: those messages are stored, and a redelivery will not announce them again. With
    `group_commit`, the messages share their statement with the business's concurrent
    deliveries and ingests.
    """
    report = DeliveryReport(ignored_fields=len(delivery.ignored_fields))
    owners = await run_statement(
        sessions,
        functools.partial(
            statements.businesses_of_phone_number_ids,
            phone_number_ids=sorted(delivery.phone_number_ids),
        ),
        repeatable_after_lost_connection=True,  # a read
    )
    for phone_number_id in sorted(delivery.phone_number_ids - owners.keys()):
        report.unknown_numbers += 1
        metrics.webhook_unknown_numbers += 1
        log.warning(
            "[WA-WEBHOOK] phone_number_id=%s is not connected to any business: acknowledged, "
            "nothing stored (connectWhatsAppChannel connects it)",
            phone_number_id,
        )
    # A number no business owns stores nothing, not even its rejected parts.
    rejected = [part for part in delivery.rejected if part.phone_number_id in owners]
    messages_by_business: dict[int, list[WebhookMessage]] = defaultdict(list)
    for part in delivery.messages:
        if part.phone_number_id in owners:
            messages_by_business[owners[part.phone_number_id]].append(part)

    for business_id, parts in messages_by_business.items():
        await _store_messages(
            sessions,
            business_id,
            parts,
            default_region,
            metrics,
            report,
            rejected,
            on_stored,
            group_commit,
        )

    for revision in delivery.revisions:
        if revision.phone_number_id in owners:
            await _apply_revision(
                sessions, owners[revision.phone_number_id], revision, report, rejected, on_stored
            )

    for status in delivery.statuses:
        if status.phone_number_id not in owners:
            continue
        business_id = owners[status.phone_number_id]
        recorded = await record_status(sessions, business_id, status.update)
        result = recorded.outcome
        if recorded.event is not None:
            on_stored(recorded.event)
        if result is StatusOutcome.APPLIED:
            report.statuses_applied += 1
        elif result is StatusOutcome.KEPT_PENDING:
            report.statuses_pending += 1
        else:
            report.statuses_stale += 1
        log.info(
            "[WA-WEBHOOK] status %s for provider_message_id=%s business_id=%s: %s",
            status.update.status.value,
            status.update.provider_message_id,
            business_id,
            result.value,
        )

    if rejected:
        await _record_rejections(sessions, rejected, owners)
        report.rejected = len(rejected)
        metrics.webhook_rejected_parts += len(rejected)
    return report


async def _apply_revision(
    sessions: Sessions,
    business_id: int,
    part: WebhookRevision,
    report: DeliveryReport,
    rejected: list[RejectedPart],
    on_stored: Callable[[InboxEvent], None],
) -> None:
    revision = part.revision
    try:
        result = await apply_revision(sessions, business_id, revision)
    except BadInput as refused:
        rejected.append(
            RejectedPart(part.phone_number_id, revision.provider_message_id, refused.message, None)
        )
        return
    if result.outcome is RevisionOutcome.APPLIED:
        report.revisions_applied += 1
    elif result.outcome is RevisionOutcome.KEPT_PENDING:
        report.revisions_pending += 1
    else:
        report.revisions_stale += 1
    if result.event is not None:
        on_stored(result.event)


async def _store_messages(
    sessions: Sessions,
    business_id: int,
    parts: list[WebhookMessage],
    default_region: str,
    metrics: InboxMetrics,
    report: DeliveryReport,
    rejected: list[RejectedPart],
    on_stored: Callable[[InboxEvent], None],
    group_commit: GroupCommit | None,
) -> None:
    """The business's messages of the delivery, in their order, in one statement when their
    threads are settled or new (domain/messages.py `store_checked_messages`)."""
    checked: list[CheckedMessage] = []
    part_of: dict[int, WebhookMessage] = {}
    for part in parts:
        try:
            message = check_message(business_id, part.message, default_region=default_region)
        except BadInput as refused:
            rejected.append(_rejected(part, refused))
            continue
        checked.append(message)
        part_of[id(message)] = part

    def settled(message: CheckedMessage, outcome: IngestOutcome | BadInput) -> None:
        if isinstance(outcome, BadInput):
            rejected.append(_rejected(part_of[id(message)], outcome))
        elif outcome.duplicate:
            report.duplicates += 1
        else:
            report.stored += 1
            for event in outcome.events:
                on_stored(event)

    if group_commit is not None:
        await group_commit.store(business_id, checked, on_outcome=settled)
    elif checked:
        await store_checked_messages(
            sessions, business_id, checked, metrics=metrics, on_outcome=settled
        )


def _rejected(part: WebhookMessage, refused: BadInput) -> RejectedPart:
    return RejectedPart(
        part.phone_number_id,
        part.message.provider_message_id,
        refused.message,
        part.message.provider_payload,
    )


async def _record_rejections(
    sessions: Sessions, rejected: list[RejectedPart], owners: dict[str, int]
) -> None:
    by_business: dict[int, list[RejectedPart]] = defaultdict(list)
    for part in rejected:
        by_business[owners[part.phone_number_id or ""]].append(part)
    for business_id, parts in by_business.items():
        await run_unit_of_work(
            sessions,
            functools.partial(_record_business_rejections, business_id=business_id, parts=parts),
            business_id=business_id,
        )


async def _record_business_rejections(
    session: AsyncSession, *, business_id: int, parts: list[RejectedPart]
) -> None:
    for part in parts:
        log.warning(
            "[WA-WEBHOOK] rejected part of a delivery for phone_number_id=%s business_id=%s "
            "provider_message_id=%s: %s",
            part.phone_number_id,
            business_id,
            part.provider_message_id,
            part.reason,
        )
        await statements.record_webhook_rejection(
            session,
            business_id=business_id,
            phone_number_id=part.phone_number_id,
            provider_message_id=part.provider_message_id,
            reason=part.reason,
            fragment=part.fragment,
        )
