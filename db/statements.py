"""The SQL of wa-inbox: every statement that reads or writes conversations and messages.

Functions take the unit of work's session and never commit: the caller owns the transaction.
Every read is scoped by `business_id`.
"""

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    ColumnElement,
    RowMapping,
    and_,
    cast,
    func,
    literal,
    select,
    text,
    true,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from db.errors import NO_MATCHING_CONFLICT_TARGET, MissingConflictTarget, sqlstate_of
from db.tables import CONFLICT_TARGETS, conversations, messages

# Advisory-lock namespaces (first key of pg_advisory_xact_lock(int, int)) for the fallbacks.
_CONVERSATION_LOCK_SPACE = 0x5741_0001
_PROVIDER_ID_LOCK_SPACE = 0x5741_0002


def counts_as_unread() -> ColumnElement[bool]:
    """The unread rule on a message row joined to its conversation row."""
    return and_(
        messages.c.direction == "in",
        messages.c.historical.is_(False),
        messages.c.status != "deleted",
        messages.c.seq > conversations.c.read_seq,
    )


def _raise_if_conflict_target_missing(error: DBAPIError, statement_name: str) -> None:
    if sqlstate_of(error) == NO_MATCHING_CONFLICT_TARGET:
        raise MissingConflictTarget(statement_name) from error


# --- writes -------------------------------------------------------------------------------


def _new_conversation(
    business_id: int,
    canonical_key: str,
    phone_e164: str | None,
    lead_id: str | None,
    message_at: datetime,
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
) -> RowMapping:
    """Create the conversation or touch it, in one statement; takes the next message seq.

    The conflict update holds the conversation's row lock until commit, which serializes
    concurrent writers of one thread (the order `markRead` relies on).
    """
    existing = conversations
    proposed = insert(conversations).values(
        _new_conversation(business_id, canonical_key, phone_e164, lead_id, message_at)
    )
    statement = proposed.on_conflict_do_update(
        index_elements=[conversations.c.business_id, conversations.c.canonical_key],
        set_={
            "message_seq": existing.c.message_seq + 1,
            "started_at": func.least(existing.c.started_at, proposed.excluded.started_at),
            "last_message_at": func.greatest(
                existing.c.last_message_at, proposed.excluded.last_message_at
            ),
            "phone_e164": func.coalesce(proposed.excluded.phone_e164, existing.c.phone_e164),
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
) -> RowMapping:
    """The same effect as `upsert_conversation` without relying on the unique constraint.

    Writers of one canonical key queue on a transaction-level advisory lock, so the
    select-then-insert below cannot create two conversations even when the constraint is gone.
    """
    await session.execute(
        select(
            func.pg_advisory_xact_lock(
                _CONVERSATION_LOCK_SPACE, func.hashtext(f"{business_id}:{canonical_key}")
            )
        )
    )
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
            .values(_new_conversation(business_id, canonical_key, phone_e164, lead_id, message_at))
            .returning(*conversations.c)
        )
        return created.mappings().one()
    touched = await session.execute(
        update(conversations)
        .where(conversations.c.id == found)
        .values(
            message_seq=conversations.c.message_seq + 1,
            started_at=func.least(conversations.c.started_at, message_at),
            last_message_at=func.greatest(conversations.c.last_message_at, message_at),
            phone_e164=func.coalesce(phone_e164, conversations.c.phone_e164),
            status="open" if reopen else conversations.c.status,
        )
        .returning(*conversations.c)
    )
    return touched.mappings().one()


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
        await session.execute(
            select(
                func.pg_advisory_xact_lock(
                    _PROVIDER_ID_LOCK_SPACE, func.hashtext(f"{business_id}:{provider_message_id}")
                )
            )
        )
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
    result = await session.execute(
        update(conversations)
        .where(conversations.c.id == conversation_id, conversations.c.business_id == business_id)
        .values(
            read_seq=func.greatest(conversations.c.read_seq, conversations.c.message_seq),
            last_read_at=func.greatest(conversations.c.last_read_at, func.clock_timestamp()),
        )
        .returning(*conversations.c)
    )
    return result.mappings().one_or_none()


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


async def find_conversation_by_key(
    session: AsyncSession, business_id: int, canonical_key: str
) -> RowMapping | None:
    result = await session.execute(
        select(conversations)
        .where(
            conversations.c.business_id == business_id,
            conversations.c.canonical_key == canonical_key,
        )
        .order_by(conversations.c.id)
        .limit(1)
    )
    return result.mappings().one_or_none()


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


async def conversations_by_ids(
    session: AsyncSession, business_id: int, conversation_ids: Sequence[int]
) -> dict[int, RowMapping]:
    result = await session.execute(
        select(conversations).where(
            conversations.c.business_id == business_id,
            conversations.c.id.in_(conversation_ids),
        )
    )
    return {row["id"]: row for row in result.mappings()}


async def unread_counts(
    session: AsyncSession, business_id: int, conversation_ids: Sequence[int]
) -> dict[int, int]:
    """Unread messages per conversation, in one statement; absent ids have none."""
    result = await session.execute(
        select(conversations.c.id, func.count(messages.c.id))
        .join(messages, messages.c.conversation_id == conversations.c.id)
        .where(
            conversations.c.business_id == business_id,
            conversations.c.id.in_(conversation_ids),
            counts_as_unread(),
        )
        .group_by(conversations.c.id)
    )
    return {conversation_id: count for conversation_id, count in result.all()}


async def total_unread(session: AsyncSession, business_id: int) -> int:
    result = await session.execute(
        select(func.count(messages.c.id))
        .select_from(conversations)
        .join(messages, messages.c.conversation_id == conversations.c.id)
        .where(conversations.c.business_id == business_id, counts_as_unread())
    )
    return int(result.scalar_one())


async def latest_messages(
    session: AsyncSession, business_id: int, conversation_ids: Sequence[int]
) -> dict[int, RowMapping]:
    """The latest message (by sent_at, then id) of each conversation, in one statement."""
    wanted = select(
        func.unnest(cast(list(conversation_ids), ARRAY(BigInteger))).label("conversation_id")
    ).subquery("wanted")
    latest = (
        select(messages)
        .where(
            messages.c.conversation_id == wanted.c.conversation_id,
            messages.c.business_id == business_id,
        )
        .order_by(messages.c.sent_at.desc(), messages.c.id.desc())
        .limit(1)
        .lateral("latest")
    )
    result = await session.execute(select(latest).select_from(wanted).join(latest, true()))
    return {row["conversation_id"]: row for row in result.mappings()}


async def page_conversations(
    session: AsyncSession,
    business_id: int,
    *,
    limit: int,
    after: tuple[datetime, int] | None,
    unread_only: bool,
) -> list[RowMapping]:
    """Conversations by latest activity first (last_message_at, then id, descending)."""
    statement = select(conversations).where(conversations.c.business_id == business_id)
    if after is not None:
        after_at, after_id = after
        statement = statement.where(
            tuple_(conversations.c.last_message_at, conversations.c.id) < tuple_(after_at, after_id)
        )
    if unread_only:
        statement = statement.where(
            select(messages.c.id)
            .where(messages.c.conversation_id == conversations.c.id, counts_as_unread())
            .exists()
        )
    statement = statement.order_by(
        conversations.c.last_message_at.desc(), conversations.c.id.desc()
    ).limit(limit)
    return list((await session.execute(statement)).mappings())


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


async def page_messages(
    session: AsyncSession,
    business_id: int,
    conversation_id: int,
    *,
    after: tuple[datetime, int] | None,
    before: tuple[datetime, int] | None,
    limit: int,
    from_end: bool,
) -> list[RowMapping]:
    """A slice of one thread in chronological order (sent_at, then id).

    With `from_end` the slice is taken from the end of the range (Relay's `last`); rows are
    returned in chronological order either way.
    """
    position = tuple_(messages.c.sent_at, messages.c.id)
    statement = select(messages).where(
        messages.c.business_id == business_id, messages.c.conversation_id == conversation_id
    )
    if after is not None:
        statement = statement.where(position > tuple_(*after))
    if before is not None:
        statement = statement.where(position < tuple_(*before))
    if from_end:
        statement = statement.order_by(messages.c.sent_at.desc(), messages.c.id.desc())
    else:
        statement = statement.order_by(messages.c.sent_at, messages.c.id)
    rows = list((await session.execute(statement.limit(limit))).mappings())
    return rows[::-1] if from_end else rows


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
