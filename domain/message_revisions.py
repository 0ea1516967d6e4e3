"""A customer's edit or revoke of a message they sent (WhatsApp "coexistence" numbers, issue 11).

Neither is a message of its own. An edit replaces the message's `body` and sets `edited_at`;
the text the message was first stored with stays in `original_body` (saved by the first edit
only). Of several edits the latest wins, whatever order they arrive in. A revoke deletes the
message as `deleteMessage` does: it stays in its thread, `DELETED`, never unread, and the unread
counters go down if it was unread. A deleted message stays deleted: a later edit does nothing.

Webhooks keep no order, so a revision can arrive before its message: it is kept in
`whatsapp_pending_revision` and applied in the transaction that stores the message. Both sides
take the original's provider-id lock first, so a revision arriving while its message is being
stored is either applied by that writer or sees the stored message, never lost.

The original is matched by its provider message id exactly. WhatsApp's ids (base64 of a
structured payload) are not always byte-equal when quoted elsewhere; without a known pair of
spellings to test against, a looser match risks editing or deleting the wrong message, which is
worse than a revision that waits forever (see the README).
"""

import logging
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from sqlalchemy import RowMapping
from sqlalchemy.ext.asyncio import AsyncSession

from db import inbox_reads, message_revisions, statements
from db.unit_of_work import Sessions, run_unit_of_work
from domain.errors import BadInput
from domain.events import ThreadRead
from domain.storable_text import is_storable

log = logging.getLogger("wa_inbox.revisions")


class RevisionKind(Enum):
    EDIT = "edit"
    REVOKE = "revoke"


@dataclass(frozen=True)
class Revision:
    """An edit or revoke as WhatsApp delivered it: its own id, and the id of the message it
    changes. `phone` / `wa_user_id` name the customer who sent it; the original is found by
    its id alone (WhatsApp only lets senders revise their own messages)."""

    kind: RevisionKind
    provider_message_id: str
    original_provider_message_id: str
    revised_at: datetime
    body: str | None = None  # the new text or caption (edits only)
    phone: str | None = None
    wa_user_id: str | None = None


class RevisionOutcome(Enum):
    APPLIED = "applied"
    KEPT_PENDING = "kept_pending"  # the message is not stored yet
    STALE = "stale"  # already applied, overtaken by a later edit, or the message is deleted


@dataclass(frozen=True)
class RevisionResult:
    outcome: RevisionOutcome
    message_id: int | None = None
    thread_id: int | None = None
    event: ThreadRead | None = None  # a revoke that lowered the unread counts


def _check(revision: Revision) -> None:
    """What applying needs; lengths are the payload reader's (domain/webhook_payloads.py)."""
    ids = (revision.provider_message_id, revision.original_provider_message_id)
    if not all(provider_id.strip() for provider_id in ids):
        raise BadInput("a revision names itself and the message it changes")
    if revision.kind is RevisionKind.EDIT and (
        revision.body is None or not revision.body.strip() or not is_storable(revision.body)
    ):
        raise BadInput("an edit carries the new text or caption")
    if revision.revised_at.utcoffset() is None:
        raise BadInput("a revision's time carries a UTC offset")


async def apply_revision(
    sessions: Sessions, business_id: int, revision: Revision
) -> RevisionResult:
    """Apply `revision` to the business's message, or keep it until that message is stored.

    Idempotent: a redelivered revision is STALE. One unit of work; the caller publishes the
    result's event after it returned (the commit happened).
    """
    _check(revision)

    async def work(session: AsyncSession) -> RevisionResult:
        original = revision.original_provider_message_id
        # The lock every writer of this provider id takes, the message's own ingest included.
        await statements.lock_provider_id(session, business_id, original)
        if revision.kind is RevisionKind.EDIT:
            assert revision.body is not None  # checked above
            edited = await message_revisions.edit_message(
                session, business_id, original, body=revision.body, edited_at=revision.revised_at
            )
            if edited is not None:
                return RevisionResult(
                    RevisionOutcome.APPLIED, edited["id"], edited["conversation_id"]
                )
        stored = await statements.find_message_by_provider_id(session, business_id, original)
        if stored is None:
            await message_revisions.keep_pending_revision(
                session,
                business_id,
                original,
                kind=revision.kind.value,
                revision_provider_message_id=revision.provider_message_id,
                body=revision.body,
                revised_at=revision.revised_at,
            )
            return RevisionResult(RevisionOutcome.KEPT_PENDING)
        if revision.kind is RevisionKind.EDIT or stored["status"] == "deleted":
            return RevisionResult(RevisionOutcome.STALE, stored["id"], stored["conversation_id"])
        deleted = await statements.delete_message(session, business_id, stored["id"])
        if deleted is None:  # a message row is never removed, only marked deleted
            raise RuntimeError(f"message {stored['id']} vanished under its provider-id lock")
        row, was_unread = deleted
        thread_id = row["conversation_id"]
        event = ThreadRead(business_id, thread_id) if was_unread else None
        return RevisionResult(RevisionOutcome.APPLIED, row["id"], thread_id, event)

    result = await run_unit_of_work(sessions, work, business_id=business_id)
    log.info(
        "[WA-WEBHOOK] %s provider_message_id=%s of provider_message_id=%s (message_id=%s "
        "thread_id=%s) for business_id=%s: %s",
        revision.kind.value,
        revision.provider_message_id,
        revision.original_provider_message_id,
        result.message_id,
        result.thread_id,
        business_id,
        result.outcome.value,
    )
    return result


async def apply_pending_revisions(
    session: AsyncSession, message: RowMapping, conversation: RowMapping
) -> tuple[RowMapping, RowMapping]:
    """The message just inserted (and its thread) after the revisions that arrived before it.

    Runs in the storing transaction, under the message's provider-id lock, after the unread
    counters counted it: a revoke then un-counts it exactly as `deleteMessage` would.
    """
    business_id = message["business_id"]
    pending = await message_revisions.take_pending_revisions(
        session, business_id, message["provider_message_id"]
    )
    # Edits first: a revoke hides the text whatever it became.
    for kept in sorted(pending, key=lambda row: row["kind"] != RevisionKind.EDIT.value):
        if kept["kind"] == RevisionKind.EDIT.value:
            edited = await message_revisions.edit_message(
                session,
                business_id,
                message["provider_message_id"],
                body=kept["body"],
                edited_at=kept["revised_at"],
            )
            message = edited if edited is not None else message
        else:
            deleted = await statements.delete_message(session, business_id, message["id"])
            assert deleted is not None  # inserted by this transaction
            message, was_unread = deleted
            if was_unread:
                threads = await inbox_reads.conversations_by_ids(
                    session, business_id, [conversation["id"]]
                )
                conversation = threads[conversation["id"]]
        log.info(
            "[WA-WEBHOOK] pending %s provider_message_id=%s applied to message_id=%s "
            "provider_message_id=%s for business_id=%s as it was stored",
            kept["kind"],
            kept["revision_provider_message_id"],
            message["id"],
            message["provider_message_id"],
            business_id,
        )
    return message, conversation
