"""The inbox's hot reads: the thread page, last messages, a thread's messages, the badge.

Every front end runs these all day, so they skip what SQLAlchemy would do per call and does
nothing for us here: building the statement, computing its cache key, the ORM session's
execute and its result machinery (together ~0.3 ms a statement, more than the statement
itself). Each is fixed SQL text, run on the unit of work's own asyncpg connection, so inside
its transaction and under its row-level security setting, and prepared once per connection
by asyncpg's statement cache. Rows come back as asyncpg Records, read by column name like
SQLAlchemy's RowMapping.

Columns are listed from db/tables.py, so a migration that adds one reaches these reads too.
"""

from collections.abc import Sequence
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncSession

from db.tables import conversations, messages
from db.unit_of_work import READ_CONNECTION, DriverStatements


def _columns(table: Table, alias: str) -> str:
    return ", ".join(f"{alias}.{column.name}" for column in table.c)


_CONVERSATION_COLUMNS = _columns(conversations, "c")
_MESSAGE_COLUMNS = _columns(messages, "m")


async def _driver(session: AsyncSession) -> DriverStatements:
    """The session's connection, checked to be inside the unit of work's transaction."""
    known = session.info.get(READ_CONNECTION)
    if known is not None:
        return DriverStatements(*known)
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    driver = raw.driver_connection
    if driver is None or not driver.is_in_transaction():
        # Row-level security reads its setting from the transaction (db/unit_of_work.py
        # enter_business): a read outside one would see nothing, silently.
        raise RuntimeError("inbox reads run inside a unit of work's transaction")
    return DriverStatements(connection.sync_connection, driver)


@cache
def _conversation_page_sql(after: bool, unread_only: bool) -> str:
    conditions = ["c.business_id = $1"]
    if after:
        conditions.append("(c.last_message_at, c.id) < ($3, $4)")
    if unread_only:
        conditions.append("c.unread_count > 0")
    return (
        f"SELECT {_CONVERSATION_COLUMNS} FROM whatsapp_conversation c "
        f"WHERE {' AND '.join(conditions)} "
        "ORDER BY c.last_message_at DESC, c.id DESC LIMIT $2"
    )


async def page_conversations(
    session: AsyncSession,
    business_id: int,
    *,
    limit: int,
    after: tuple[datetime, int] | None,
    unread_only: bool,
) -> list[Any]:
    """Conversations by latest activity first (last_message_at, then id, descending)."""
    driver = await _driver(session)
    sql = _conversation_page_sql(after is not None, unread_only)
    if after is None:
        return await driver.fetch(sql, business_id, limit)
    return await driver.fetch(sql, business_id, limit, *after)


# The thread page with each thread's latest message beside it, as one composite value (asyncpg
# decodes a table's row type into a Record of its columns): the inbox list in one statement,
# as a front end asks for it.
@cache
def _conversation_page_with_last_sql(after: bool, unread_only: bool) -> str:
    page = _conversation_page_sql(after, unread_only)
    select, _, rest = page.partition(" FROM whatsapp_conversation c ")
    return (
        f"{select}, last.message AS last_message FROM whatsapp_conversation c "
        "LEFT JOIN LATERAL ("
        "SELECT latest AS message FROM whatsapp_message latest "
        "WHERE latest.conversation_id = c.id AND latest.business_id = $1 "
        "ORDER BY latest.sent_at DESC, latest.id DESC LIMIT 1"
        f") last ON true {rest}"
    )


async def page_conversations_with_last_messages(
    session: AsyncSession,
    business_id: int,
    *,
    limit: int,
    after: tuple[datetime, int] | None,
    unread_only: bool,
) -> list[tuple[Any, Any]]:
    """`page_conversations`, each conversation with its latest message (None: it has none)."""
    driver = await _driver(session)
    sql = _conversation_page_with_last_sql(after is not None, unread_only)
    rows = await (
        driver.fetch(sql, business_id, limit)
        if after is None
        else driver.fetch(sql, business_id, limit, *after)
    )
    return [(row, row["last_message"]) for row in rows]


_LATEST_MESSAGES = f"""
SELECT {_MESSAGE_COLUMNS}
FROM unnest($2::bigint[]) AS wanted(conversation_id)
JOIN LATERAL (
    SELECT * FROM whatsapp_message latest
    WHERE latest.conversation_id = wanted.conversation_id AND latest.business_id = $1
    ORDER BY latest.sent_at DESC, latest.id DESC
    LIMIT 1
) m ON true
"""


# The customer's latest message of each conversation: inbound, not a system notice (a number
# change is WhatsApp's, not the customer's), by sent_at; walked backwards along the thread's
# chronology index, which stops at the first one.
_LATEST_CUSTOMER_MESSAGE_TIMES = """
SELECT wanted.conversation_id, m.sent_at
FROM unnest($2::bigint[]) AS wanted(conversation_id)
JOIN LATERAL (
    SELECT latest.sent_at FROM whatsapp_message latest
    WHERE latest.conversation_id = wanted.conversation_id AND latest.business_id = $1
      AND latest.direction = 'in' AND latest.message_type <> 'system'
    ORDER BY latest.sent_at DESC, latest.id DESC
    LIMIT 1
) m ON true
"""


async def latest_customer_message_times(
    session: AsyncSession, business_id: int, conversation_ids: Sequence[int]
) -> dict[int, datetime]:
    """When the customer last wrote in each conversation (absent: never), in one statement."""
    driver = await _driver(session)
    rows = await driver.fetch(_LATEST_CUSTOMER_MESSAGE_TIMES, business_id, list(conversation_ids))
    return {row["conversation_id"]: row["sent_at"] for row in rows}


async def latest_messages(
    session: AsyncSession, business_id: int, conversation_ids: Sequence[int]
) -> dict[int, Any]:
    """The latest message (by sent_at, then id) of each conversation, in one statement."""
    driver = await _driver(session)
    rows = await driver.fetch(_LATEST_MESSAGES, business_id, list(conversation_ids))
    return {row["conversation_id"]: row for row in rows}


@cache
def _message_page_sql(after: bool, before: bool, from_end: bool) -> str:
    conditions = ["m.business_id = $1", "m.conversation_id = $2"]
    parameter = 4
    if after:
        conditions.append(f"(m.sent_at, m.id) > (${parameter}, ${parameter + 1})")
        parameter += 2
    if before:
        conditions.append(f"(m.sent_at, m.id) < (${parameter}, ${parameter + 1})")
    order = "m.sent_at DESC, m.id DESC" if from_end else "m.sent_at, m.id"
    return (
        f"SELECT {_MESSAGE_COLUMNS} FROM whatsapp_message m "
        f"WHERE {' AND '.join(conditions)} ORDER BY {order} LIMIT $3"
    )


async def page_messages(
    session: AsyncSession,
    business_id: int,
    conversation_id: int,
    *,
    after: tuple[datetime, int] | None,
    before: tuple[datetime, int] | None,
    limit: int,
    from_end: bool,
) -> list[Any]:
    """A slice of one thread in chronological order (sent_at, then id).

    With `from_end` the slice is taken from the end of the range (Relay's `last`); rows are
    returned in chronological order either way.
    """
    driver = await _driver(session)
    sql = _message_page_sql(after is not None, before is not None, from_end)
    arguments: list[Any] = [business_id, conversation_id, limit]
    if after is not None:
        arguments.extend(after)
    if before is not None:
        arguments.extend(before)
    rows = await driver.fetch(sql, *arguments)
    return rows[::-1] if from_end else rows


_CONVERSATIONS_BY_IDS = (
    f"SELECT {_CONVERSATION_COLUMNS} FROM whatsapp_conversation c "
    "WHERE c.business_id = $1 AND c.id = ANY($2::bigint[])"
)


async def conversations_by_ids(
    session: AsyncSession, business_id: int, conversation_ids: Sequence[int]
) -> dict[int, Any]:
    """The business's conversations with these ids, in one statement; absent ids are absent."""
    driver = await _driver(session)
    rows = await driver.fetch(_CONVERSATIONS_BY_IDS, business_id, list(conversation_ids))
    return {row["id"]: row for row in rows}


_MESSAGES_BY_PROVIDER_IDS = (
    f"SELECT {_MESSAGE_COLUMNS} FROM whatsapp_message m "
    "WHERE m.business_id = $1 AND m.provider_message_id = ANY($2::text[])"
)


async def messages_by_provider_ids(
    session: AsyncSession, business_id: int, provider_message_ids: Sequence[str]
) -> dict[str, Any]:
    """The business's messages with these provider ids, in one statement; absent ids are absent."""
    driver = await _driver(session)
    rows = await driver.fetch(_MESSAGES_BY_PROVIDER_IDS, business_id, list(provider_message_ids))
    return {row["provider_message_id"]: row for row in rows}


# The badge: the sum of the business's shard counters (db/statements.py keeps them).
_TOTAL_UNREAD = (
    "SELECT coalesce(sum(unread), 0)::bigint FROM whatsapp_business_unread WHERE business_id = $1"
)


async def total_unread(session: AsyncSession, business_id: int) -> int:
    """The business's unread total: the sum of its shard rows, whatever the history's size."""
    driver = await _driver(session)
    (row,) = await driver.fetch(_TOTAL_UNREAD, business_id)
    return int(row[0])
