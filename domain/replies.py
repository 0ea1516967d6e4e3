"""Replies: the message a customer's reply quotes (WhatsApp's `context.id`)."""

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from db import inbox_reads
from domain.models import Message


async def quoted_messages(
    session: AsyncSession, business_id: int, provider_message_ids: Sequence[str]
) -> dict[str, Message]:
    """The business's stored messages by provider id: what replies quote. The id is matched
    exactly (see domain/message_revisions.py on other spellings of one id)."""
    if not provider_message_ids:
        return {}
    rows = await inbox_reads.messages_by_provider_ids(session, business_id, provider_message_ids)
    return {provider_id: Message.from_row(row) for provider_id, row in rows.items()}
