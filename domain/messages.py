"""Storing a message: threading by the customer's names, dedupe by provider message id.

One ingest is one unit of work. The customer's thread is found (or created, linked, merged)
from every name the message gives them (domain/customer_identities.py), the message is
inserted by `INSERT ... ON CONFLICT DO NOTHING`; the database settles every race between
concurrent deliveries.
"""

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import RowMapping
from sqlalchemy.ext.asyncio import AsyncSession

from db import inbox_reads, message_ingest, statements
from db.errors import MissingConflictTarget
from db.unit_of_work import Sessions, run_statement, run_unit_of_work
from domain.canonical_keys import normalize_lead_id
from domain.customer_identities import CustomerNames, ThreadTouch, settle_customer_thread
from domain.errors import BadInput
from domain.events import InboxEvent, MessageStored, ThreadMerged
from domain.message_revisions import apply_pending_revisions
from domain.metrics import InboxMetrics
from domain.models import Direction, Message, MessageStatus, Source, Thread
from domain.phones import normalize_phone
from domain.storable_text import is_storable

log = logging.getLogger("wa_inbox.messages")

MAX_BODY_LENGTH = 65_536
MAX_PROVIDER_MESSAGE_ID_LENGTH = 128
MAX_MESSAGE_TYPE_LENGTH = 32
MAX_CONTACT_NAME_LENGTH = 256
MAX_MEDIA_ID_LENGTH = 128
SYSTEM_MESSAGE_TYPE = "system"
# A statement holds an advisory lock per provider id and per customer name of its messages
# until it commits, in PostgreSQL's shared lock table (max_locks_per_transaction x
# max_connections entries: 6,400 by default); bounded so a pool of concurrent deliveries fits.
MAX_MESSAGES_PER_STATEMENT = 64


@dataclass(frozen=True)
class IncomingMessage:
    """A message as a caller hands it in, before any rule is applied.

    `phone` may be absent only when `wa_user_id` (WhatsApp's business-scoped user id) names the
    customer instead. `previous_phone` / `previous_user_id` are names the customer had before
    (a number change): they keep leading to the same thread.
    """

    phone: str | None
    direction: Direction
    source: Source
    lead_id: str | None = None
    body: str | None = None
    provider_message_id: str | None = None
    sent_at: datetime | None = None
    historical: bool = False
    wa_user_id: str | None = None
    contact_name: str | None = None
    message_type: str = "text"
    media_id: str | None = None
    provider_payload: Any = None
    previous_phone: str | None = None
    previous_user_id: str | None = None
    reply_to_provider_id: str | None = None
    forwarded: bool = False
    referral: Any = None


@dataclass(frozen=True)
class IngestOutcome:
    message: Message
    thread: Thread
    duplicate: bool
    event: MessageStored | None = None
    merges: tuple[ThreadMerged, ...] = ()

    @property
    def events(self) -> list[InboxEvent]:
        """What to publish after the commit: merges first, so screens follow the thread."""
        return [*self.merges, *([self.event] if self.event is not None else [])]


@dataclass(frozen=True)
class CheckedMessage:
    business_id: int
    names: CustomerNames
    direction: Direction
    source: Source
    status: MessageStatus
    body: str | None
    provider_message_id: str | None
    sent_at: datetime
    historical: bool
    contact: statements.ContactDetails
    counts_unread: bool  # inbound and not historical: the unread counters move
    message_type: str
    media_id: str | None
    provider_payload: Any
    reply_to_provider_id: str | None
    forwarded: bool
    referral: Any

    @property
    def to_store(self) -> message_ingest.MessageToStore:
        """The message as the one-statement store takes it (db/message_ingest.py)."""
        names = self.names
        return message_ingest.MessageToStore(
            keys=names.keys,
            earlier_keys=sorted(names.earlier_keys),
            phone=names.phones[0] if names.phones else None,
            lead_id=names.lead_id,
            from_customer=self.direction is Direction.INBOUND,
            reopen=self.counts_unread,
            contact_name=self.contact.name,
            wa_user_id=self.contact.wa_user_id,
            unread_delta=1 if self.counts_unread else 0,
            provider_message_id=self.provider_message_id,
            direction=self.direction.value,
            source=self.source.value,
            status=self.status.value,
            body=self.body,
            sent_at=self.sent_at,
            historical=self.historical,
            message_type=self.message_type,
            media_id=self.media_id,
            provider_payload=self.provider_payload,
            reply_to_provider_id=self.reply_to_provider_id,
            forwarded=self.forwarded,
            referral=self.referral,
        )


class _ProviderIdTaken(Exception):
    """A concurrent delivery of the same provider id committed first."""


def check_message(
    business_id: int, incoming: IncomingMessage, *, default_region: str
) -> CheckedMessage:
    """Apply every input rule before touching the database, so bad input stores nothing:
    BadInput for a message that breaks one."""
    customer_side = incoming.source is Source.CUSTOMER
    if customer_side != (incoming.direction is Direction.INBOUND):
        raise BadInput(
            f"source {incoming.source.name} does not fit direction {incoming.direction.name}: "
            "customer messages are INBOUND; bot, automation and human messages are OUTBOUND"
        )
    if incoming.phone is None and incoming.wa_user_id is None:
        raise BadInput("a message needs the customer's phone")
    phone_e164 = None if incoming.phone is None else normalize_phone(incoming.phone, default_region)
    previous_phone = (
        None
        if incoming.previous_phone is None
        else normalize_phone(incoming.previous_phone, default_region)
    )
    wa_user_id = _checked_text(incoming.wa_user_id, "userId", MAX_PROVIDER_MESSAGE_ID_LENGTH)
    previous_user_id = _checked_text(
        incoming.previous_user_id, "previous user id", MAX_PROVIDER_MESSAGE_ID_LENGTH
    )
    lead_id = normalize_lead_id(incoming.lead_id)
    message_type = _checked_text(incoming.message_type, "type", MAX_MESSAGE_TYPE_LENGTH)
    if message_type is None:
        raise BadInput("a message needs a type")
    if incoming.body is not None:
        if len(incoming.body) > MAX_BODY_LENGTH:
            raise BadInput(f"body must be at most {MAX_BODY_LENGTH} characters")
        if not is_storable(incoming.body):
            raise BadInput("body must be UTF-8 text without NUL characters")
    provider_message_id = incoming.provider_message_id
    if provider_message_id is not None:
        provider_message_id = provider_message_id.strip()
        if not provider_message_id:
            raise BadInput("providerMessageId must not be empty; omit it instead")
        if len(provider_message_id) > MAX_PROVIDER_MESSAGE_ID_LENGTH or not is_storable(
            provider_message_id
        ):
            raise BadInput(
                f"providerMessageId must be at most {MAX_PROVIDER_MESSAGE_ID_LENGTH} characters"
            )
    sent_at = incoming.sent_at or datetime.now(UTC)
    if sent_at.tzinfo is None or sent_at.utcoffset() is None:
        raise BadInput("sentAt must carry a UTC offset, for example 2026-11-25T10:00:00Z")
    if incoming.direction is Direction.INBOUND:
        status = MessageStatus.RECEIVED
    else:
        status = MessageStatus.SENT if provider_message_id else MessageStatus.PENDING
    return CheckedMessage(
        business_id=business_id,
        names=CustomerNames(
            business_id,
            lead_id=lead_id,
            phones=tuple(dict.fromkeys(p for p in (phone_e164, previous_phone) if p)),
            user_ids=tuple(dict.fromkeys(u for u in (wa_user_id, previous_user_id) if u)),
        ),
        direction=incoming.direction,
        source=incoming.source,
        status=status,
        body=incoming.body,
        provider_message_id=provider_message_id,
        sent_at=sent_at,
        historical=incoming.historical,
        contact=statements.ContactDetails(
            name=_checked_text(incoming.contact_name, "contact name", MAX_CONTACT_NAME_LENGTH),
            wa_user_id=wa_user_id,
        ),
        # A system notice (a number change) is shown in the thread but never unread.
        counts_unread=incoming.direction is Direction.INBOUND
        and not incoming.historical
        and message_type != SYSTEM_MESSAGE_TYPE,
        message_type=message_type,
        media_id=_checked_text(incoming.media_id, "media id", MAX_MEDIA_ID_LENGTH),
        provider_payload=incoming.provider_payload,
        reply_to_provider_id=_checked_text(
            incoming.reply_to_provider_id, "replied-to message id", MAX_PROVIDER_MESSAGE_ID_LENGTH
        ),
        forwarded=incoming.forwarded,
        referral=incoming.referral,
    )


def _checked_text(raw: str | None, name: str, max_length: int) -> str | None:
    """A short identifier or label, trimmed; None when absent or blank."""
    if raw is None:
        return None
    value = raw.strip()
    if not value:
        return None
    if len(value) > max_length or not is_storable(value):
        raise BadInput(f"{name} must be at most {max_length} characters of UTF-8 text")
    return value


async def ingest_message(
    sessions: Sessions,
    business_id: int,
    incoming: IncomingMessage,
    *,
    default_region: str,
    metrics: InboxMetrics,
) -> IngestOutcome:
    """Store `incoming` in its thread once, however often and concurrently it is delivered."""
    message = check_message(business_id, incoming, default_region=default_region)
    [outcome] = await store_checked_messages(sessions, business_id, [message], metrics=metrics)
    if isinstance(outcome, BadInput):
        raise outcome
    return outcome


async def store_checked_messages(
    sessions: Sessions,
    business_id: int,
    checked: Sequence[CheckedMessage],
    *,
    metrics: InboxMetrics,
    on_outcome: Callable[[CheckedMessage, IngestOutcome | BadInput], None] | None = None,
) -> list[IngestOutcome | BadInput]:
    """Store checked messages of one business in order, each once, in as few statements as
    their threads allow: one for every MAX_MESSAGES_PER_STATEMENT of them when their threads
    are settled or new (db/message_ingest.py), and a round of the general path for each
    message that must link, merge or re-key threads, or meets a status or revision that came
    first.

    A message the general path refuses (BadInput) is answered as refused; the rest go on.
    `on_outcome` hears of each message once it is committed, so the caller can announce it
    even when a later one fails: those stay stored, and a redelivery finds them so.
    """
    outcomes: list[IngestOutcome | BadInput] = []

    def settled(message: CheckedMessage, outcome: IngestOutcome | BadInput) -> None:
        outcomes.append(outcome)
        _log_outcome(message, outcome, metrics)
        if on_outcome is not None:
            on_outcome(message, outcome)

    serialized = False
    taken = 0
    while len(outcomes) < len(checked):
        rest = checked[len(outcomes) : len(outcomes) + MAX_MESSAGES_PER_STATEMENT]
        if serialized:
            settled(rest[0], await _store_by_rules(sessions, rest[0], metrics, serialized=True))
            continue
        try:
            rows = await run_statement(
                sessions,
                functools.partial(
                    message_ingest.store_messages,
                    business_id=business_id,
                    messages=[message.to_store for message in rest],
                ),
                repeatable_after_lost_connection=all(m.provider_message_id for m in rest),
            )
        except MissingConflictTarget as failure:
            # The seed incident: an ON CONFLICT target without its unique constraint. The
            # statement was rolled back whole; everything left goes the serialized way.
            _log_serialized_fallback(metrics, failure, rest[0])
            serialized = True
            continue
        except message_ingest.ProviderIdTaken:
            taken += 1
            if taken > 3:
                raise RuntimeError("provider ids kept being stored without their lock") from None
            continue
        if not rows:
            raise RuntimeError("the message store answered nothing")
        for message, row in zip(rest, rows, strict=False):  # rows end at the first SLOW one
            if row.outcome is message_ingest.Outcome.SLOW:
                settled(message, await _store_by_rules(sessions, message, metrics))
                break
            settled(message, _outcome_of(message, row))
    return outcomes


def _outcome_of(message: CheckedMessage, row: message_ingest.StoredRow) -> IngestOutcome:
    stored = Message.from_row(row.message)
    thread = Thread.from_row(row.conversation)
    if row.outcome is message_ingest.Outcome.DUPLICATE:
        return IngestOutcome(stored, thread, duplicate=True)
    event = MessageStored(
        message.business_id, stored.thread_id, stored.id, changes_unread=message.counts_unread
    )
    return IngestOutcome(stored, thread, duplicate=False, event=event)


async def _store_by_rules(
    sessions: Sessions, message: CheckedMessage, metrics: InboxMetrics, *, serialized: bool = False
) -> IngestOutcome | BadInput:
    """The general path: every rule of domain/customer_identities.py, statement by statement."""
    try:
        try:
            return await _store_once(sessions, message, serialized=serialized)
        except MissingConflictTarget as failure:
            if serialized:
                raise
            _log_serialized_fallback(metrics, failure, message)
            return await _store_once(sessions, message, serialized=True)
    except BadInput as refused:
        return refused


def _log_serialized_fallback(
    metrics: InboxMetrics, failure: MissingConflictTarget, message: CheckedMessage
) -> None:
    metrics.conversation_upsert_failures += 1
    metrics.serialized_fallbacks += 1
    log.error(
        "[WA-SESSION] %s failed for business_id=%s canonical_key=%s provider_message_id=%s: "
        "retrying once in a fresh transaction through the serialized fallback",
        failure.statement_name,
        message.business_id,
        message.names.preferred_key,
        message.provider_message_id,
    )


def _log_outcome(
    message: CheckedMessage, outcome: IngestOutcome | BadInput, metrics: InboxMetrics
) -> None:
    if isinstance(outcome, BadInput):
        return  # the caller reports it (an error to the client, a rejected webhook part)
    if outcome.duplicate:
        metrics.duplicates_skipped += 1
        log.info(
            "[WA-DEDUPE] provider_message_id=%s already stored for business_id=%s "
            "(message_id=%s thread_id=%s): skipped",
            message.provider_message_id,
            message.business_id,
            outcome.message.id,
            outcome.thread.id,
        )
    else:
        metrics.messages_stored += 1
        log.info(
            "[WA-SESSION] stored message_id=%s in thread_id=%s for business_id=%s "
            "provider_message_id=%s",
            outcome.message.id,
            outcome.thread.id,
            message.business_id,
            message.provider_message_id,
        )


async def _store_once(
    sessions: Sessions, message: CheckedMessage, *, serialized: bool
) -> IngestOutcome:
    for _ in range(3):
        try:
            return await run_unit_of_work(
                sessions,
                lambda session: _store(session, message, serialized=serialized),
                business_id=message.business_id,
            )
        except _ProviderIdTaken:
            # ON CONFLICT DO NOTHING waited for the concurrent writer to finish, so a fresh
            # read sees its row; if that writer rolled back instead, store ours again.
            duplicate = await run_unit_of_work(
                sessions,
                lambda session: _find_duplicate(session, message),
                business_id=message.business_id,
            )
            if duplicate is not None:
                return duplicate
    raise RuntimeError(f"provider id {message.provider_message_id!r} kept changing hands")


async def _find_duplicate(session: AsyncSession, message: CheckedMessage) -> IngestOutcome | None:
    if message.provider_message_id is None:
        return None
    row = await statements.find_message_by_provider_id(
        session, message.business_id, message.provider_message_id
    )
    if row is None:
        return None
    stored = Message.from_row(row)
    threads = await inbox_reads.conversations_by_ids(
        session, message.business_id, [stored.thread_id]
    )
    return IngestOutcome(stored, Thread.from_row(threads[stored.thread_id]), duplicate=True)


async def _store(
    session: AsyncSession, message: CheckedMessage, *, serialized: bool
) -> IngestOutcome:
    # Redeliveries are the common case for webhooks: answer them without writing.
    duplicate = await _find_duplicate(session, message)
    if duplicate is not None:
        return duplicate

    tracks_status = message.direction is Direction.OUTBOUND and message.provider_message_id
    if message.provider_message_id is not None:
        # Statuses and revisions (edits, revokes) of this id queue on the same lock: one that
        # arrives while the message is being stored is applied now or finds it stored.
        await statements.lock_provider_id(session, message.business_id, message.provider_message_id)
    settled = await settle_customer_thread(
        session,
        message.names,
        touch=ThreadTouch(
            message_at=message.sent_at,
            # What counts unread reopens: not a system notice, not a history import.
            reopen=message.counts_unread,
            contact=message.contact,
            unread_delta=1 if message.counts_unread else 0,
            from_customer=message.direction is Direction.INBOUND,
            serialized=serialized,
        ),
    )
    conversation = settled.conversation
    insert = statements.insert_message_serialized if serialized else statements.insert_message
    row = await insert(
        session,
        business_id=message.business_id,
        conversation_id=conversation["id"],
        seq=conversation["message_seq"],
        provider_message_id=message.provider_message_id,
        direction=message.direction.value,
        source=message.source.value,
        status=message.status.value,
        body=message.body,
        sent_at=message.sent_at,
        historical=message.historical,
        message_type=message.message_type,
        media_id=message.media_id,
        provider_payload=message.provider_payload,
        reply_to_provider_id=message.reply_to_provider_id,
        forwarded=message.forwarded,
        referral=message.referral,
    )
    if row is not None and tracks_status:
        row = await _apply_pending_status(session, row)
    if row is None:
        raise _ProviderIdTaken
    if message.counts_unread:
        await statements.add_business_unread(session, message.business_id, conversation["id"], 1)
    if message.provider_message_id is not None and message.direction is Direction.INBOUND:
        # Customers edit and revoke their own messages. After counting: a revoke that came
        # first un-counts the message as deleteMessage does.
        row, conversation = await apply_pending_revisions(session, row, conversation)
    stored = Message.from_row(row)
    event = MessageStored(
        message.business_id,
        stored.thread_id,
        stored.id,
        changes_unread=message.counts_unread,
    )
    return IngestOutcome(
        stored,
        Thread.from_row(conversation),
        duplicate=False,
        event=event,
        merges=tuple(settled.merges),
    )


async def _apply_pending_status(session: AsyncSession, row: RowMapping) -> RowMapping:
    """A status that arrived before its outbound message is applied as the message is stored."""
    pending = await statements.take_pending_status(
        session, row["business_id"], row["provider_message_id"]
    )
    if pending is None:
        return row
    advanced = await statements.advance_message_status(
        session,
        row["business_id"],
        row["provider_message_id"],
        status=pending["status"],
        status_at=pending["status_at"],
        error_code=pending["error_code"],
        error_title=pending["error_title"],
    )
    return advanced if advanced is not None else row
