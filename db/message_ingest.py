"""The SQL of storing messages in one round trip: migration 0007's `wa_inbox_store_messages`.

One call stores one message (an `ingestMessage`) or a whole webhook delivery, in order,
until a message needs what only the general path does (linking names, merging, re-keying, a
status or revision that came first): that message is answered `SLOW`, unchanged, and nothing
after it is looked at. The call runs as one statement in autocommit (db/unit_of_work.py
`run_statement`): its answer arrives after its commit.
"""

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

import asyncpg
import orjson

from db.errors import NO_MATCHING_CONFLICT_TARGET, MissingConflictTarget
from db.unit_of_work import DriverStatements

# Raised by the function when a provider id was inserted by a writer that skipped its lock.
PROVIDER_ID_TAKEN = "WA001"

_STORE_MESSAGES = (
    "SELECT outcome, message, conversation "
    "FROM wa_inbox_store_messages($1::bigint, $2::wa_inbox_incoming_message[])"
)


@dataclass(frozen=True, slots=True)
class MessageToStore:
    """A checked message as the function takes it (the fields of wa_inbox_incoming_message)."""

    keys: Sequence[str]  # every name of the customer, the preferred one first
    earlier_keys: Sequence[str]
    phone: str | None
    lead_id: str | None
    from_customer: bool
    reopen: bool
    contact_name: str | None
    wa_user_id: str | None
    unread_delta: int
    provider_message_id: str | None
    direction: str
    source: str
    status: str
    body: str | None
    sent_at: datetime
    historical: bool
    message_type: str
    media_id: str | None
    provider_payload: Any
    reply_to_provider_id: str | None
    forwarded: bool
    referral: Any

    def as_record(self) -> tuple[Any, ...]:
        return (
            list(self.keys),
            list(self.earlier_keys),
            self.phone,
            self.lead_id,
            self.from_customer,
            self.reopen,
            self.contact_name,
            self.wa_user_id,
            self.unread_delta,
            self.provider_message_id,
            self.direction,
            self.source,
            self.status,
            self.body,
            self.sent_at,
            self.historical,
            self.message_type,
            self.media_id,
            _json_text(self.provider_payload),
            self.reply_to_provider_id,
            self.forwarded,
            _json_text(self.referral),
        )


class Outcome(Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    SLOW = "slow"  # this message needs the general path; it and those after it are not stored


@dataclass(frozen=True, slots=True)
class StoredRow:
    outcome: Outcome
    message: Any  # the message's row (an asyncpg Record), None when SLOW
    conversation: Any  # its conversation's row, None when SLOW


class ProviderIdTaken(Exception):
    """A writer that skipped the provider id's lock stored it meanwhile: nothing was stored."""


_OUTCOMES = {outcome.value: outcome for outcome in Outcome}


async def store_messages(
    statements: DriverStatements, business_id: int, messages: Sequence[MessageToStore]
) -> list[StoredRow]:
    """Store `messages` in order, one row per message looked at; a SLOW row ends the list."""
    try:
        rows = await statements.fetch(
            _STORE_MESSAGES, business_id, [message.as_record() for message in messages]
        )
    except asyncpg.PostgresError as error:
        if error.sqlstate == NO_MATCHING_CONFLICT_TARGET:
            raise MissingConflictTarget(_statement_name(error)) from error
        if error.sqlstate == PROVIDER_ID_TAKEN:
            raise ProviderIdTaken(str(error)) from error
        raise
    return [StoredRow(_OUTCOMES[row[0]], row[1], row[2]) for row in rows]


_UPSERT_NAMES = {
    "whatsapp_conversation": "conversation upsert",
    "whatsapp_conversation_alias": "alias upsert",
    "whatsapp_message": "message insert",
    "whatsapp_business_unread": "unread counter upsert",
}


def _statement_name(error: asyncpg.PostgresError) -> str:
    """Which of the function's upserts lacks its unique constraint, as operators know them:
    PostgreSQL names the failed statement of a PL/pgSQL function in the error's context."""
    failed = re.search(r'SQL statement "INSERT INTO (\w+)', getattr(error, "context", None) or "")
    return _UPSERT_NAMES.get(failed.group(1), "message store") if failed else "message store"


def _json_text(value: Any) -> str | None:
    """JSON for a jsonb field, as the engine's codec expects it (text)."""
    if value is None:
        return None
    try:
        return orjson.dumps(value).decode()
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(value)  # integers beyond 64 bits
