"""The SQL of customer names: which thread each name (canonical key or alias) leads to,
linking names to threads, re-keying a thread, and merging two threads of one customer.

Every name of a customer leads to exactly one thread: as that thread's canonical key, or as a
row of `whatsapp_conversation_alias`; never both, never two threads.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import RowMapping, literal, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from db.tables import conversation_aliases, conversations, thread_merges


@dataclass(frozen=True)
class NamedThread:
    """The thread a name leads to, with what deciding about links needs to know of it."""

    conversation_id: int
    canonical_key: str
    lead_id: str | None


async def threads_named(
    session: AsyncSession, business_id: int, names: Sequence[str]
) -> dict[str, NamedThread]:
    """The thread each of `names` leads to; names that lead nowhere are absent."""
    if not names:
        return {}
    by_key = select(
        conversations.c.canonical_key.label("name"),
        conversations.c.id,
        conversations.c.canonical_key,
        conversations.c.lead_id,
    ).where(conversations.c.business_id == business_id, conversations.c.canonical_key.in_(names))
    by_alias = (
        select(
            conversation_aliases.c.alias_key.label("name"),
            conversations.c.id,
            conversations.c.canonical_key,
            conversations.c.lead_id,
        )
        .join(conversations, conversations.c.id == conversation_aliases.c.conversation_id)
        .where(
            conversation_aliases.c.business_id == business_id,
            conversation_aliases.c.alias_key.in_(names),
        )
    )
    found: dict[str, NamedThread] = {}
    # The canonical key wins should a name ever be both (it never is by construction).
    for row in (await session.execute(by_alias.union_all(by_key))).mappings():
        found[row["name"]] = NamedThread(row["id"], row["canonical_key"], row["lead_id"])
    return found


async def conversation_named(
    session: AsyncSession, business_id: int, name: str
) -> RowMapping | None:
    """The conversation `name` leads to, read in one statement: a lookup and a second read
    would miss the customer if a merge committed between them."""
    by_key = select(conversations).where(
        conversations.c.business_id == business_id, conversations.c.canonical_key == name
    )
    by_alias = (
        select(conversations)
        .join(
            conversation_aliases,
            conversation_aliases.c.conversation_id == conversations.c.id,
        )
        .where(
            conversation_aliases.c.business_id == business_id,
            conversation_aliases.c.alias_key == name,
        )
    )
    result = await session.execute(by_key.union_all(by_alias).limit(1))
    return result.mappings().one_or_none()


async def names_of(
    session: AsyncSession, business_id: int, conversation_ids: Sequence[int]
) -> dict[int, list[str]]:
    """Every name (canonical key first, then aliases in key order) of each conversation."""
    canonical = select(
        conversations.c.id, conversations.c.canonical_key.label("name"), literal(0).label("rank")
    ).where(conversations.c.business_id == business_id, conversations.c.id.in_(conversation_ids))
    aliases = select(
        conversation_aliases.c.conversation_id,
        conversation_aliases.c.alias_key,
        literal(1),
    ).where(
        conversation_aliases.c.business_id == business_id,
        conversation_aliases.c.conversation_id.in_(conversation_ids),
    )
    found: dict[int, list[str]] = {}
    for conversation_id, name, _ in (
        await session.execute(canonical.union_all(aliases).order_by("id", "rank", "name"))
    ).all():
        found.setdefault(conversation_id, []).append(name)
    return found


async def link_names(
    session: AsyncSession, business_id: int, names: Sequence[str], conversation_id: int
) -> None:
    """Make each of `names` an alias of the conversation."""
    if not names:
        return
    proposed = insert(conversation_aliases).values(
        [
            {"business_id": business_id, "alias_key": name, "conversation_id": conversation_id}
            for name in sorted(set(names))
        ]
    )
    await session.execute(
        proposed.on_conflict_do_update(
            index_elements=[conversation_aliases.c.business_id, conversation_aliases.c.alias_key],
            set_={"conversation_id": proposed.excluded.conversation_id},
        )
    )


_REKEY = text(
    """
    WITH previous AS (
        SELECT id, business_id, canonical_key FROM whatsapp_conversation
        WHERE id = :conversation_id AND business_id = :business_id
    ), no_longer_alias AS (
        DELETE FROM whatsapp_conversation_alias
        WHERE business_id = :business_id AND alias_key = :canonical_key
    ), kept_as_alias AS (
        INSERT INTO whatsapp_conversation_alias (business_id, alias_key, conversation_id)
        SELECT business_id, canonical_key, id FROM previous WHERE canonical_key <> :canonical_key
        ON CONFLICT (business_id, alias_key)
        DO UPDATE SET conversation_id = EXCLUDED.conversation_id
    )
    UPDATE whatsapp_conversation c
    SET canonical_key = :canonical_key, lead_id = coalesce(:lead_id, c.lead_id)
    FROM previous
    WHERE c.id = previous.id
    RETURNING c.*
    """
)


async def rekey_conversation(
    session: AsyncSession,
    business_id: int,
    conversation_id: int,
    canonical_key: str,
    *,
    lead_id: str | None,
) -> RowMapping:
    """Give the conversation a new canonical key in place (its id, messages and read state
    stay); the old key becomes an alias of it. No other thread may hold the new key."""
    result = await session.execute(
        _REKEY,
        {
            "business_id": business_id,
            "conversation_id": conversation_id,
            "canonical_key": canonical_key,
            "lead_id": lead_id,
        },
    )
    return result.mappings().one()


async def lock_conversations(
    session: AsyncSession, business_id: int, conversation_ids: Sequence[int]
) -> dict[int, RowMapping]:
    """The conversations, row-locked in id order until the transaction ends (absent: gone)."""
    result = await session.execute(
        select(conversations)
        .where(
            conversations.c.business_id == business_id,
            conversations.c.id.in_(sorted(conversation_ids)),
        )
        .order_by(conversations.c.id)
        .with_for_update()
    )
    return {row["id"]: row for row in result.mappings()}


_MERGE = text("SELECT * FROM wa_inbox_merge_threads(:survivor_id, :absorbed_id, :reason)")


async def merge_conversations(
    session: AsyncSession, survivor_id: int, absorbed_id: int, reason: str
) -> RowMapping | None:
    """Move every message and name of `absorbed_id` into `survivor_id`, then drop it.

    Messages are renumbered so that everything either thread had read comes first: the merged
    read point covers exactly what was read before, and unread messages stay unread; the
    counters follow. None when either thread is gone (merged away meanwhile).
    The function is migration 0005's, shared with the migration that heals old splits.
    """
    result = await session.execute(
        _MERGE, {"survivor_id": survivor_id, "absorbed_id": absorbed_id, "reason": reason}
    )
    return result.mappings().one_or_none()


async def merged_into(session: AsyncSession, business_id: int, conversation_id: int) -> int | None:
    """The thread a merged-away thread now lives in (None: it was never merged)."""
    result = await session.execute(
        select(thread_merges.c.into_conversation_id).where(
            thread_merges.c.business_id == business_id,
            thread_merges.c.merged_conversation_id == conversation_id,
        )
    )
    return result.scalar_one_or_none()
