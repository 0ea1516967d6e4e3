"""The SQL of customers' edits and revokes: changing a stored message's text, and keeping a
revision whose message is not stored yet until it is.

Revoking is `statements.delete_message`, the statement `deleteMessage` uses, so the unread
counters stay exact whoever deletes.
"""

from datetime import datetime

from sqlalchemy import RowMapping, case, delete, func, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from db.tables import messages, pending_revisions


async def edit_message(
    session: AsyncSession,
    business_id: int,
    provider_message_id: str,
    *,
    body: str,
    edited_at: datetime,
) -> RowMapping | None:
    """Give the message the text of an edit later than any applied so far, keeping the text it
    was first stored with; None when it is not stored, deleted, or already at a later edit.

    Edits are compared by (time, text): WhatsApp's timestamps are whole seconds, and two edits
    within one second must still end the same whichever arrives last.
    """
    result = await session.execute(
        update(messages)
        .where(
            messages.c.business_id == business_id,
            messages.c.provider_message_id == provider_message_id,
            messages.c.status != "deleted",
            messages.c.edited_at.is_(None)
            | (tuple_(messages.c.edited_at, messages.c.body) < tuple_(edited_at, body)),
        )
        .values(
            body=body,
            edited_at=edited_at,
            # Only the first edit saves the text: later ones would save an edit's text.
            original_body=case(
                (messages.c.edited_at.is_(None), messages.c.body), else_=messages.c.original_body
            ),
        )
        .returning(*messages.c)
    )
    return result.mappings().one_or_none()


async def keep_pending_revision(
    session: AsyncSession,
    business_id: int,
    original_provider_message_id: str,
    *,
    kind: str,
    revision_provider_message_id: str,
    body: str | None,
    revised_at: datetime,
) -> None:
    """Keep an edit or revoke for a message not stored yet; of several edits, the latest
    (by time, then text, as `edit_message` decides) is kept."""
    proposed = insert(pending_revisions).values(
        business_id=business_id,
        original_provider_message_id=original_provider_message_id,
        kind=kind,
        revision_provider_message_id=revision_provider_message_id,
        body=body,
        revised_at=revised_at,
    )
    kept = pending_revisions.c
    await session.execute(
        proposed.on_conflict_do_update(
            index_elements=[kept.business_id, kept.original_provider_message_id, kept.kind],
            set_={
                "revision_provider_message_id": proposed.excluded.revision_provider_message_id,
                "body": proposed.excluded.body,
                "revised_at": proposed.excluded.revised_at,
                "received_at": func.now(),
            },
            where=tuple_(kept.revised_at, func.coalesce(kept.body, ""))
            < tuple_(proposed.excluded.revised_at, func.coalesce(proposed.excluded.body, "")),
        )
    )


async def take_pending_revisions(
    session: AsyncSession, business_id: int, original_provider_message_id: str
) -> list[RowMapping]:
    """Remove and return what was kept for a message that is being stored now."""
    result = await session.execute(
        delete(pending_revisions)
        .where(
            pending_revisions.c.business_id == business_id,
            pending_revisions.c.original_provider_message_id == original_provider_message_id,
        )
        .returning(*pending_revisions.c)
    )
    return list(result.mappings())
