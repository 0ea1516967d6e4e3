"""Threads and messages as the rest of the code sees them, built from stored rows."""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, TypeVar


class Direction(Enum):
    INBOUND = "in"
    OUTBOUND = "out"


class Source(Enum):
    CUSTOMER = "customer"
    BOT = "bot"
    AUTOMATION = "automation"
    HUMAN = "human"


class MessageStatus(Enum):
    RECEIVED = "received"
    PENDING = "pending"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    PLAYED = "played"  # a voice message listened to
    FAILED = "failed"
    DELETED = "deleted"


class ThreadStatus(Enum):
    OPEN = "open"
    CLOSED = "closed"


# Stored values to members, looked up once per row (the columns' CHECK constraints allow no
# other values).
_DIRECTIONS = {member.value: member for member in Direction}
_SOURCES = {member.value: member for member in Source}
_MESSAGE_STATUSES = {member.value: member for member in MessageStatus}
_THREAD_STATUSES = {member.value: member for member in ThreadStatus}

Built = TypeVar("Built")


def _built(cls: type[Built], **fields: Any) -> Built:
    """An instance of the frozen dataclass `cls` from all of its fields at once.

    A frozen dataclass's __init__ sets each field through object.__setattr__: for a page of 50
    messages of 21 fields that costs more than reading the rows. Every field is given here, so
    the instance is the one __init__ would build.
    """
    if len(fields) != len(cls.__dataclass_fields__):  # type: ignore[attr-defined]
        raise TypeError(f"{cls.__name__} needs all of its fields, got {sorted(fields)}")
    instance = object.__new__(cls)
    instance.__dict__.update(fields)
    return instance


@dataclass(frozen=True)
class Thread:
    id: int
    business_id: int
    canonical_key: str
    phone_e164: str | None
    lead_id: str | None
    status: ThreadStatus
    started_at: datetime
    last_message_at: datetime
    last_read_at: datetime | None
    contact_name: str | None = None
    wa_user_id: str | None = None
    unread_count: int = 0

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> "Thread":
        return _built(
            cls,
            id=row["id"],
            business_id=row["business_id"],
            canonical_key=row["canonical_key"],
            phone_e164=row["phone_e164"],
            lead_id=row["lead_id"],
            status=_THREAD_STATUSES[row["status"]],
            started_at=row["started_at"],
            last_message_at=row["last_message_at"],
            last_read_at=row["last_read_at"],
            contact_name=row["contact_name"],
            wa_user_id=row["wa_user_id"],
            unread_count=row["unread_count"],
        )


@dataclass(frozen=True)
class Message:
    id: int
    business_id: int
    thread_id: int
    direction: Direction
    source: Source
    status: MessageStatus
    body: str | None
    provider_message_id: str | None
    sent_at: datetime
    created_at: datetime
    historical: bool
    message_type: str = "text"
    media_id: str | None = None
    provider_payload: Any = None
    error_code: int | None = None
    error_title: str | None = None
    reply_to_provider_id: str | None = None
    forwarded: bool = False
    referral: Any = None
    edited_at: datetime | None = None
    original_body: str | None = None
    # FAILED because the sender lost WhatsApp's answer: it may have been delivered after all.
    error_outcome_unknown: bool = False

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> "Message":
        return _built(
            cls,
            id=row["id"],
            business_id=row["business_id"],
            thread_id=row["conversation_id"],
            direction=_DIRECTIONS[row["direction"]],
            source=_SOURCES[row["source"]],
            status=_MESSAGE_STATUSES[row["status"]],
            body=row["body"],
            provider_message_id=row["provider_message_id"],
            sent_at=row["sent_at"],
            created_at=row["created_at"],
            historical=row["historical"],
            message_type=row["message_type"],
            media_id=row["media_id"],
            provider_payload=row["provider_payload"],
            error_code=row["error_code"],
            error_title=row["error_title"],
            reply_to_provider_id=row["reply_to_provider_id"],
            forwarded=row["forwarded"],
            referral=row["referral"],
            edited_at=row["edited_at"],
            original_body=row["original_body"],
            error_outcome_unknown=row["error_outcome_unknown"],
        )
