"""The SQL of wa-inbox: every statement that reads or writes conversations and messages.

Functions take the unit of work's session and never commit: the caller owns the transaction.
Every read is scoped by `business_id`.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    DateTime,
    RowMapping,
    String,
    and_,
    case,
    cast,
    delete,
    func,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from db import advisory_locks
from db.errors import (
    INSUFFICIENT_PRIVILEGE,
    NO_MATCHING_CONFLICT_TARGET,
    MissingConflictTarget,
    sqlstate_of,
)
from db.tables import (
    CONFLICT_TARGETS,
    UNREAD_SHARDS,
    business_unread,
    channels,
    conversations,
    messages,
    pending_statuses,
    webhook_rejections,
)
from db.unit_of_work import DriverStatements


def counts_as_unread() -> ColumnElement[bool]:
    """The unread rule on a message row joined to its conversation row."""
    return and_(is_unread_candidate(), messages.c.seq > conversations.c.read_seq)


def is_unread_candidate() -> ColumnElement[bool]:
    """A message that is unread while above its thread's read point: inbound from the
    customer, not a history import, not deleted, not a system notice (a number change)."""
    return and_(
        messages.c.direction == "in",
        messages.c.historical.is_(False),
        messages.c.status != "deleted",
        messages.c.message_type != "system",
    )


def _raise_if_conflict_target_missing(error: DBAPIError, statement_name: str) -> None:
    if sqlstate_of(error) == NO_MATCHING_CONFLICT_TARGET:
        raise MissingConflictTarget(statement_name) from error


# --- writes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContactDetails:
    """What a message tells about its customer beyond the key: kept on the conversation."""

    name: str | None = None
    wa_user_id: str | None = None


NO_CONTACT_DETAILS = ContactDetails()


def _new_conversation(
    business_id: int,
    canonical_key: str,
    phone_e164: str | None,
    lead_id: str | None,
    message_at: datetime,
    contact: ContactDetails,
    unread_delta: int = 0,
) -> dict[str, Any]:
    """A conversation row as its first message creates it (that message takes seq 1)."""
    return {
        "business_id": business_id,
        "canonical_key": canonical_key,
        "phone_e164": phone_e164,
        "lead_id": lead_id,
        "status": "open",
        "started_at": message_at,
        "last_message_at": message_at,
        "message_seq": 1,
        "unread_count": unread_delta,
        "contact_name": contact.name,
        "wa_user_id": contact.wa_user_id,
    }


async def upsert_conversation(
    session: AsyncSession,
    *,
    business_id: int,
    canonical_key: str,
    phone_e164: str | None,
    lead_id: str | None,
    message_at: datetime,
    reopen: bool,
    contact: ContactDetails = NO_CONTACT_DETAILS,
    unread_delta: int = 0,
) -> RowMapping:
    """Create the conversation or touch it, in one statement; takes the next message seq.

    The conflict update holds the conversation's row lock until commit, which serializes
    concurrent writers of one thread (the order `markRead` relies on).
    """
    existing = conversations
    proposed = insert(conversations).values(
        _new_conversation(
            business_id, canonical_key, phone_e164, lead_id, message_at, contact, unread_delta
        )
    )
    statement = proposed.on_conflict_do_update(
        index_elements=[conversations.c.business_id, conversations.c.canonical_key],
        set_={
            "message_seq": existing.c.message_seq + 1,
            "unread_count": existing.c.unread_count + unread_delta,
            "started_at": func.least(existing.c.started_at, proposed.excluded.started_at),
            "last_message_at": func.greatest(
                existing.c.last_message_at, proposed.excluded.last_message_at
            ),
            "phone_e164": func.coalesce(proposed.excluded.phone_e164, existing.c.phone_e164),
            "contact_name": func.coalesce(proposed.excluded.contact_name, existing.c.contact_name),
            "wa_user_id": func.coalesce(proposed.excluded.wa_user_id, existing.c.wa_user_id),
            "status": literal("open") if reopen else existing.c.status,
        },
    ).returning(*conversations.c)
    try:
        result = await session.execute(statement)
    except DBAPIError as error:
        _raise_if_conflict_target_missing(error, "conversation upsert")
        raise
    return result.mappings().one()


async def upsert_conversation_serialized(
    session: AsyncSession,
    *,
    business_id: int,
    canonical_key: str,
    phone_e164: str | None,
    lead_id: str | None,
    message_at: datetime,
    reopen: bool,
    contact: ContactDetails = NO_CONTACT_DETAILS,
    unread_delta: int = 0,
) -> RowMapping:
    """The same effect as `upsert_conversation` without relying on the unique constraint.

    Writers of one canonical key queue on a transaction-level advisory lock, so the
    select-then-insert below cannot create two conversations even when the constraint is gone.
    """
    await advisory_locks.lock(session, advisory_locks.CONVERSATION_KEYS, business_id, canonical_key)
    found = (
        await session.execute(
            select(conversations.c.id)
            .where(
                conversations.c.business_id == business_id,
                conversations.c.canonical_key == canonical_key,
            )
            .order_by(conversations.c.id)
            .limit(1)
            .with_for_update()
        )
    ).scalar_one_or_none()
    if found is None:
        created = await session.execute(
            insert(conversations)
            .values(
                _new_conversation(
                    business_id,
                    canonical_key,
                    phone_e164,
                    lead_id,
                    message_at,
                    contact,
                    unread_delta,
                )
            )
            .returning(*conversations.c)
        )
        return created.mappings().one()
    touched = await touch_conversation(
        session,
        found,
        phone_e164=phone_e164,
        message_at=message_at,
        reopen=reopen,
        contact=contact,
        unread_delta=unread_delta,
    )
    assert touched is not None  # locked above
    return touched


async def touch_conversation(
    session: AsyncSession,
    conversation_id: int,
    *,
    phone_e164: str | None,
    message_at: datetime,
    reopen: bool,
    contact: ContactDetails = NO_CONTACT_DETAILS,
    unread_delta: int = 0,
    phone_is_current: bool = True,
) -> RowMapping | None:
    """What `upsert_conversation` does to an existing conversation, found by id.

    `phone_is_current`: the phone becomes the thread's phone; otherwise it only fills a
    missing one (a bot writing to an earlier number must not move the thread back to it).
    """
    touched = await session.execute(
        update(conversations)
        .where(conversations.c.id == conversation_id)
        .values(
            message_seq=conversations.c.message_seq + 1,
            unread_count=conversations.c.unread_count + unread_delta,
            started_at=func.least(conversations.c.started_at, message_at),
            last_message_at=func.greatest(conversations.c.last_message_at, message_at),
            phone_e164=func.coalesce(phone_e164, conversations.c.phone_e164)
            if phone_is_current
            else func.coalesce(conversations.c.phone_e164, phone_e164),
            contact_name=func.coalesce(contact.name, conversations.c.contact_name),
            wa_user_id=func.coalesce(contact.wa_user_id, conversations.c.wa_user_id),
            status="open" if reopen else conversations.c.status,
        )
        .returning(*conversations.c)
    )
    return touched.mappings().one_or_none()


def _message_values(**values: Any) -> dict[str, Any]:
    return {**values, "created_at": func.clock_timestamp()}


async def insert_message(session: AsyncSession, **values: Any) -> RowMapping | None:
    """Insert a message unless its provider id is already stored for the business.

    Returns the new row, or None when the provider id was taken (by a committed row, or by a
    concurrent transaction that committed while this one waited on it).
    """
    statement = (
        insert(messages)
        .values(_message_values(**values))
        .on_conflict_do_nothing(
            index_elements=[messages.c.business_id, messages.c.provider_message_id]
        )
        .returning(*messages.c)
    )
    try:
        result = await session.execute(statement)
    except DBAPIError as error:
        _raise_if_conflict_target_missing(error, "message insert")
        raise
    return result.mappings().one_or_none()


async def insert_message_serialized(session: AsyncSession, **values: Any) -> RowMapping | None:
    """`insert_message` without relying on the unique constraint (advisory lock, then check)."""
    provider_message_id = values.get("provider_message_id")
    if provider_message_id is not None:
        business_id = values["business_id"]
        await lock_provider_id(session, business_id, provider_message_id)
        if await find_message_by_provider_id(session, business_id, provider_message_id):
            return None
    result = await session.execute(
        insert(messages).values(_message_values(**values)).returning(*messages.c)
    )
    return result.mappings().one()


async def mark_conversation_read(
    session: AsyncSession, business_id: int, conversation_id: int
) -> RowMapping | None:
    """Move the read point to the thread's latest message; never backwards.

    Runs under the conversation's row lock: an ingest that touched the thread first is
    waited for and counted as read, one that comes after gets a higher seq and stays unread.
    """
    before = (
        select(conversations.c.id, conversations.c.unread_count.label("cleared"))
        .where(conversations.c.id == conversation_id, conversations.c.business_id == business_id)
        .with_for_update()
        .cte("before")
    )
    result = await session.execute(
        update(conversations)
        .where(conversations.c.id == before.c.id)
        .values(
            read_seq=func.greatest(conversations.c.read_seq, conversations.c.message_seq),
            last_read_at=func.greatest(conversations.c.last_read_at, func.clock_timestamp()),
            # Everything stored so far is now at or below the read point.
            unread_count=0,
        )
        .returning(*conversations.c, before.c.cleared)
    )
    row = result.mappings().one_or_none()
    if row is not None and row["cleared"]:
        await add_business_unread(session, business_id, conversation_id, -row["cleared"])
    return row


async def add_business_unread(
    session: AsyncSession, business_id: int, conversation_id: int, delta: int
) -> None:
    """Move the business's unread total by `delta`, on the shard row of this thread."""
    if delta == 0:
        return
    shard = conversation_id % UNREAD_SHARDS
    if delta < 0:
        # What is taken away was added before, so the row exists (and an INSERT would check
        # its CHECK (unread >= 0) against the negative proposal before seeing the conflict).
        await session.execute(
            update(business_unread)
            .where(business_unread.c.business_id == business_id, business_unread.c.shard == shard)
            .values(unread=business_unread.c.unread + delta)
        )
        return
    proposed = insert(business_unread).values(business_id=business_id, shard=shard, unread=delta)
    await session.execute(
        proposed.on_conflict_do_update(
            index_elements=[business_unread.c.business_id, business_unread.c.shard],
            set_={"unread": business_unread.c.unread + proposed.excluded.unread},
        )
    )


async def delete_message(
    session: AsyncSession, business_id: int, message_id: int
) -> tuple[RowMapping, bool] | None:
    """Mark a message deleted; returns it and whether it was counted unread (None: not found).

    The thread's row is locked first, as every writer of the thread does, so the unread rule
    is read and the counters changed without a concurrent ingest or markRead in between.
    """
    # A merge may move the message to another thread between finding and locking its thread:
    # look again until the thread locked is the thread holding it.
    for _ in range(5):
        target = (
            await session.execute(
                select(messages.c.conversation_id).where(
                    messages.c.id == message_id, messages.c.business_id == business_id
                )
            )
        ).scalar_one_or_none()
        if target is None:
            return None
        thread = (
            await session.execute(
                select(conversations.c.read_seq)
                .where(conversations.c.id == target)
                .with_for_update()
            )
        ).one_or_none()
        if thread is None:
            continue
        before = (
            (
                await session.execute(
                    select(messages).where(messages.c.id == message_id).with_for_update()
                )
            )
            .mappings()
            .one_or_none()
        )
        if before is None:
            return None
        if before["conversation_id"] == target:
            break
    else:
        raise RuntimeError(f"message {message_id} kept moving between threads")
    was_unread = (
        before["direction"] == "in"
        and not before["historical"]
        and before["status"] != "deleted"
        and before["message_type"] != "system"
        and before["seq"] > thread.read_seq
    )
    deleted = (
        (
            await session.execute(
                update(messages)
                .where(messages.c.id == message_id)
                .values(status="deleted")
                .returning(*messages.c)
            )
        )
        .mappings()
        .one()
    )
    if was_unread:
        await session.execute(
            update(conversations)
            .where(conversations.c.id == target)
            .values(unread_count=conversations.c.unread_count - 1)
        )
        await add_business_unread(session, business_id, target, -1)
    return deleted, was_unread


async def set_conversation_status(
    session: AsyncSession, business_id: int, conversation_id: int, status: str
) -> RowMapping | None:
    result = await session.execute(
        update(conversations)
        .where(conversations.c.id == conversation_id, conversations.c.business_id == business_id)
        .values(status=status)
        .returning(*conversations.c)
    )
    return result.mappings().one_or_none()


# --- outbound delivery statuses ---------------------------------------------------------------


# Delivery progress; `failed` stands apart (see `_replaces`).
_PROGRESS = {"pending": 0, "sent": 1, "delivered": 2, "read": 3, "played": 4}


def _replaces(
    current: ColumnElement[Any],
    current_at: ColumnElement[Any],
    proposed: ColumnElement[Any],
    proposed_at: ColumnElement[Any],
) -> ColumnElement[bool]:
    """Whether a status reported for an outbound message replaces the one it has.

    Statuses only move forward (pending < sent < delivered < read < played), whatever order
    the webhooks arrive in. A failure replaces any status short of played, and a delivered,
    read or played reported after it replaces it (WhatsApp reports failed, then read, when a
    retry of its own succeeded); "after" by the statuses' own times, so a redelivered old
    failure cannot undo a later read, nor an old read a later failure.
    """
    not_earlier = current_at.is_(None) | (proposed_at >= current_at)
    progress = case(_PROGRESS, value=current, else_=99) < case(_PROGRESS, value=proposed, else_=-1)
    return case(
        (proposed == "failed", current.in_(["pending", "sent", "delivered", "read"]) & not_earlier),
        (current == "failed", proposed.in_(["delivered", "read", "played"]) & not_earlier),
        else_=progress,
    )


async def lock_provider_id(
    session: AsyncSession, business_id: int, provider_message_id: str
) -> None:
    """Queue behind every other writer of this provider message id until the transaction ends.

    Taken by status updates and by outbound messages with a provider id, so a status that
    arrives while its message is being stored is either applied or kept pending, never lost.
    """
    await advisory_locks.lock(
        session, advisory_locks.PROVIDER_IDS, business_id, provider_message_id
    )


async def advance_message_status(
    session: AsyncSession,
    business_id: int,
    provider_message_id: str,
    *,
    status: str,
    status_at: datetime,
    error_code: int | None,
    error_title: str | None,
) -> RowMapping | None:
    """Move an outbound message's status forward (`_replaces`); None when it is not stored or
    its status stays."""
    proposed = cast(literal(status), String)
    result = await session.execute(
        update(messages)
        .where(
            messages.c.business_id == business_id,
            messages.c.provider_message_id == provider_message_id,
            messages.c.direction == "out",
            _replaces(
                messages.c.status,
                messages.c.status_at,
                proposed,
                cast(literal(status_at), DateTime(timezone=True)),
            ),
        )
        .values(status=status, status_at=status_at, error_code=error_code, error_title=error_title)
        .returning(*messages.c)
    )
    return result.mappings().one_or_none()


async def keep_pending_status(
    session: AsyncSession,
    business_id: int,
    provider_message_id: str,
    *,
    status: str,
    status_at: datetime,
    error_code: int | None,
    error_title: str | None,
) -> None:
    """Keep a status for a message not stored yet; of several, the one `_replaces` lets win."""
    proposed = insert(pending_statuses).values(
        business_id=business_id,
        provider_message_id=provider_message_id,
        status=status,
        status_at=status_at,
        error_code=error_code,
        error_title=error_title,
    )
    await session.execute(
        proposed.on_conflict_do_update(
            index_elements=[pending_statuses.c.business_id, pending_statuses.c.provider_message_id],
            set_={
                "status": proposed.excluded.status,
                "status_at": proposed.excluded.status_at,
                "error_code": proposed.excluded.error_code,
                "error_title": proposed.excluded.error_title,
            },
            where=_replaces(
                pending_statuses.c.status,
                pending_statuses.c.status_at,
                proposed.excluded.status,
                proposed.excluded.status_at,
            ),
        )
    )


async def take_pending_status(
    session: AsyncSession, business_id: int, provider_message_id: str
) -> RowMapping | None:
    """Remove and return the status kept for a message that is being stored now."""
    result = await session.execute(
        delete(pending_statuses)
        .where(
            pending_statuses.c.business_id == business_id,
            pending_statuses.c.provider_message_id == provider_message_id,
        )
        .returning(*pending_statuses.c)
    )
    return result.mappings().one_or_none()


# --- channels and webhook bookkeeping ---------------------------------------------------------


async def connect_channel(
    session: AsyncSession,
    business_id: int,
    phone_number_id: str,
    display_phone_number: str | None,
    access_token_sealed: bytes | None = None,
) -> RowMapping | None:
    """Connect a WhatsApp number to the business; None when another business has it. A token
    given replaces the stored one; none given keeps it."""
    proposed = insert(channels).values(
        business_id=business_id,
        phone_number_id=phone_number_id,
        display_phone_number=display_phone_number,
        access_token_sealed=access_token_sealed,
        access_token_set_at=None if access_token_sealed is None else func.now(),
    )
    try:
        result = await session.execute(
            proposed.on_conflict_do_update(
                index_elements=[channels.c.phone_number_id],
                set_={
                    "display_phone_number": func.coalesce(
                        proposed.excluded.display_phone_number, channels.c.display_phone_number
                    ),
                    "access_token_sealed": func.coalesce(
                        proposed.excluded.access_token_sealed, channels.c.access_token_sealed
                    ),
                    "access_token_set_at": func.coalesce(
                        proposed.excluded.access_token_set_at, channels.c.access_token_set_at
                    ),
                },
                where=channels.c.business_id == proposed.excluded.business_id,
            ).returning(*channels.c)
        )
    except DBAPIError as error:
        _raise_if_conflict_target_missing(error, "channel upsert")
        if sqlstate_of(error) == INSUFFICIENT_PRIVILEGE:
            # Row-level security: the number's row belongs to another business, and an upsert
            # that meets a row its policy hides fails instead of skipping it.
            return None
        raise
    return result.mappings().one_or_none()


async def replace_channel_token(
    session: AsyncSession, business_id: int, phone_number_id: str, access_token_sealed: bytes
) -> RowMapping | None:
    result = await session.execute(
        update(channels)
        .where(channels.c.business_id == business_id, channels.c.phone_number_id == phone_number_id)
        .values(access_token_sealed=access_token_sealed, access_token_set_at=func.now())
        .returning(*channels.c)
    )
    return result.mappings().one_or_none()


async def sealed_channel_tokens(session: AsyncSession) -> int:
    """How many channels of every business hold a token (asked before any business is known,
    so through the owner's function)."""
    result = await session.execute(text("SELECT wa_inbox_sealed_channel_tokens()"))
    return int(result.scalar_one())


async def disconnect_channel(
    session: AsyncSession, business_id: int, phone_number_id: str
) -> RowMapping | None:
    result = await session.execute(
        delete(channels)
        .where(channels.c.business_id == business_id, channels.c.phone_number_id == phone_number_id)
        .returning(*channels.c)
    )
    return result.mappings().one_or_none()


async def business_channels(session: AsyncSession, business_id: int) -> list[RowMapping]:
    result = await session.execute(
        select(channels).where(channels.c.business_id == business_id).order_by(channels.c.id)
    )
    return list(result.mappings())


_CHANNEL_OWNERS = "SELECT phone_number_id, business_id FROM wa_inbox_channel_owners($1::text[])"


async def businesses_of_phone_number_ids(
    statements: DriverStatements, phone_number_ids: Sequence[str]
) -> dict[str, int]:
    """The business that owns each connected phone number id (unknown ids are absent).

    One statement of its own (db/unit_of_work.py `run_statement`): every webhook delivery
    asks it first, before any business is known, so through the owner's function (row-level
    security would show this transaction no channel at all).
    """
    rows = await statements.fetch(_CHANNEL_OWNERS, list(phone_number_ids))
    return {phone_number_id: business_id for phone_number_id, business_id in rows}


async def record_webhook_rejection(
    session: AsyncSession,
    *,
    business_id: int | None,
    phone_number_id: str | None,
    provider_message_id: str | None,
    reason: str,
    fragment: Any,
) -> None:
    await session.execute(
        insert(webhook_rejections).values(
            business_id=business_id,
            phone_number_id=phone_number_id,
            provider_message_id=provider_message_id,
            reason=reason,
            fragment=fragment,
        )
    )


# --- reads --------------------------------------------------------------------------------


async def find_message(
    session: AsyncSession, business_id: int, message_id: int
) -> RowMapping | None:
    result = await session.execute(
        select(messages).where(messages.c.id == message_id, messages.c.business_id == business_id)
    )
    return result.mappings().one_or_none()


async def find_message_by_provider_id(
    session: AsyncSession, business_id: int, provider_message_id: str
) -> RowMapping | None:
    result = await session.execute(
        select(messages).where(
            messages.c.business_id == business_id,
            messages.c.provider_message_id == provider_message_id,
        )
    )
    return result.mappings().first()


async def find_latest_conversation_by_phone(
    session: AsyncSession, business_id: int, phone_e164: str
) -> RowMapping | None:
    result = await session.execute(
        select(conversations)
        .where(
            conversations.c.business_id == business_id,
            conversations.c.phone_e164 == phone_e164,
        )
        .order_by(conversations.c.last_message_at.desc().nulls_last(), conversations.c.id.desc())
        .limit(1)
    )
    return result.mappings().one_or_none()


async def unread_counts(
    session: AsyncSession, business_id: int, conversation_ids: Sequence[int]
) -> dict[int, int]:
    """Unread messages per conversation (its counter), in one statement; absent ids have none."""
    result = await session.execute(
        select(conversations.c.id, conversations.c.unread_count).where(
            conversations.c.business_id == business_id,
            conversations.c.id.in_(conversation_ids),
        )
    )
    return {conversation_id: count for conversation_id, count in result.all()}


async def total_unread_by_definition(session: AsyncSession, business_id: int) -> int:
    """The unread total counted from the messages themselves (what the counters must equal)."""
    result = await session.execute(
        select(func.count(messages.c.id))
        .select_from(conversations)
        .join(messages, messages.c.conversation_id == conversations.c.id)
        .where(conversations.c.business_id == business_id, counts_as_unread())
    )
    return int(result.scalar_one())


async def conversations_active_since(
    session: AsyncSession, business_id: int, since: datetime, limit: int
) -> list[int]:
    """Ids of the conversations written to or read since `since`, latest activity first."""
    result = await session.execute(
        select(conversations.c.id)
        .where(
            conversations.c.business_id == business_id,
            (conversations.c.last_message_at >= since) | (conversations.c.last_read_at >= since),
        )
        .order_by(conversations.c.last_message_at.desc(), conversations.c.id.desc())
        .limit(limit)
    )
    return list(result.scalars())


_UNIQUE_INDEXES_ON = text(
    """
    SELECT array_agg(a.attname::text ORDER BY a.attname::text) AS columns
    FROM pg_index i
    JOIN pg_class t ON t.oid = i.indrelid
    JOIN pg_namespace n ON n.oid = t.relnamespace
    JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = ANY (i.indkey)
    WHERE i.indisunique AND i.indisvalid AND i.indpred IS NULL
      AND n.nspname = ANY (current_schemas(false)) AND t.relname = :table
    GROUP BY i.indexrelid
    """
)


async def missing_conflict_targets(session: AsyncSession) -> list[str]:
    """Names of the unique constraints our ON CONFLICT statements need that are not in place.

    A target counts as present when a valid, non-partial unique index covers exactly its
    columns: that is what PostgreSQL's ON CONFLICT inference accepts.
    """
    missing = []
    for name, table, columns in CONFLICT_TARGETS:
        found = await session.execute(_UNIQUE_INDEXES_ON, {"table": table})
        if sorted(columns) not in [list(row.columns) for row in found]:
            missing.append(name)
    return missing
