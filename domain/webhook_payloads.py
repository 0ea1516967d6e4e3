"""Reading WhatsApp Cloud API webhook deliveries into messages and statuses to store.

A delivery whose frame is wrong (not an object, no `entry` list, a change without `value` or
`metadata.phone_number_id`) is rejected whole: `MalformedDelivery`. Inside a well-formed frame,
each message and status stands alone: one that cannot be read becomes a `RejectedPart` with a
reason, and the others are stored. Message types this module does not know are kept with their
type and raw JSON, never dropped.

Two change fields carry messages: `messages` (what customers send, and statuses of what the
business sent) and `smb_message_echoes` (what the business typed in the WhatsApp Business app,
on "coexistence" numbers). A customer's `edit` or `revoke` is not a message of its own but a
revision of an earlier one (domain/message_revisions.py); a `system` message (a number change)
names the customer through its `system` object.
"""

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from domain.errors import BadInput
from domain.message_revisions import Revision, RevisionKind
from domain.message_statuses import REPORTABLE_STATUSES, StatusUpdate
from domain.messages import (
    MAX_BODY_LENGTH,
    MAX_PROVIDER_MESSAGE_ID_LENGTH,
    SYSTEM_MESSAGE_TYPE,
    IncomingMessage,
)
from domain.models import Direction, MessageStatus, Source
from domain.sending import message_id_in_callback
from domain.storable_text import is_storable

WHATSAPP_OBJECT = "whatsapp_business_account"
MESSAGES_FIELD = "messages"
ECHOES_FIELD = "smb_message_echoes"
MEDIA_TYPES = frozenset({"image", "video", "audio", "document", "sticker"})
MAX_MESSAGE_TYPE_LENGTH = 32
REVISION_TYPES = frozenset(kind.value for kind in RevisionKind)
# `customer_changed_number` is the name webhooks before v12 gave a number change.
NUMBER_CHANGE_TYPES = frozenset({"user_changed_number", "customer_changed_number"})
USER_ID_CHANGE_TYPE = "user_changed_user_id"
# Unix seconds WhatsApp could plausibly send: 2009-01-01 (WhatsApp's birth) to 2100-01-01.
_EARLIEST_TIMESTAMP = 1_230_768_000
_LATEST_TIMESTAMP = 4_102_444_800


class MalformedDelivery(BadInput):
    """The delivery is not a WhatsApp webhook payload at all; nothing of it is stored."""


@dataclass(frozen=True)
class WebhookMessage:
    phone_number_id: str
    message: IncomingMessage


@dataclass(frozen=True)
class WebhookStatus:
    phone_number_id: str
    update: StatusUpdate


@dataclass(frozen=True)
class WebhookRevision:
    phone_number_id: str
    revision: Revision


@dataclass(frozen=True)
class RejectedPart:
    phone_number_id: str | None
    provider_message_id: str | None
    reason: str
    fragment: Any  # the part as received, when it can be stored as JSON


@dataclass
class WebhookDelivery:
    messages: list[WebhookMessage] = field(default_factory=list)
    statuses: list[WebhookStatus] = field(default_factory=list)
    revisions: list[WebhookRevision] = field(default_factory=list)
    rejected: list[RejectedPart] = field(default_factory=list)
    ignored_fields: list[str] = field(default_factory=list)  # changes of other webhook fields

    @property
    def phone_number_ids(self) -> set[str]:
        numbers = {part.phone_number_id for part in self.messages}
        numbers |= {part.phone_number_id for part in self.statuses}
        numbers |= {part.phone_number_id for part in self.revisions}
        # Rejected parts are recorded for the business owning their number.
        return numbers | {part.phone_number_id for part in self.rejected if part.phone_number_id}


class _UnreadablePart(Exception):
    """One message or status that cannot be stored; the reason goes to the rejection record."""


def read_delivery(payload: Any) -> WebhookDelivery:
    """The messages, statuses and rejected parts of one webhook delivery (parsed JSON)."""
    if not isinstance(payload, dict):
        raise MalformedDelivery("a webhook delivery is a JSON object")
    if payload.get("object") != WHATSAPP_OBJECT:
        raise MalformedDelivery(f'a WhatsApp webhook delivery has "object": "{WHATSAPP_OBJECT}"')
    delivery = WebhookDelivery()
    for change in _changes(payload):
        field_name = change.get("field")
        value = change.get("value")
        if not isinstance(field_name, str) or not isinstance(value, dict):
            raise MalformedDelivery('every change has a "field" string and a "value" object')
        if field_name == MESSAGES_FIELD:
            _read_messages_value(value, delivery)
        elif field_name == ECHOES_FIELD:
            _read_echoes_value(value, delivery)
        else:
            delivery.ignored_fields.append(field_name[:64])
    return delivery


def _changes(payload: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    entries = payload.get("entry")
    if not isinstance(entries, list):
        raise MalformedDelivery('a webhook delivery has an "entry" list')
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("changes"), list):
            raise MalformedDelivery('every entry is an object with a "changes" list')
        for change in entry["changes"]:
            if not isinstance(change, dict):
                raise MalformedDelivery("every change is an object")
            yield change


def _phone_number_id(value: Mapping[str, Any], field_name: str) -> str:
    metadata = value.get("metadata")
    phone_number_id = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
    if (
        not isinstance(phone_number_id, str)
        or not phone_number_id.strip()
        or not is_storable(phone_number_id)
    ):
        raise MalformedDelivery(f'every "{field_name}" change names its "metadata.phone_number_id"')
    return phone_number_id.strip()[:64]


def _read_messages_value(value: Mapping[str, Any], delivery: WebhookDelivery) -> None:
    phone_number_id = _phone_number_id(value, MESSAGES_FIELD)
    messages = value.get("messages", [])
    statuses = value.get("statuses", [])
    contacts = value.get("contacts", [])
    if not all(isinstance(items, list) for items in (messages, statuses, contacts)):
        raise MalformedDelivery('"messages", "statuses" and "contacts" are lists')
    names = _contact_names(contacts)
    for raw in messages:
        _add_part(delivery, phone_number_id, raw, lambda raw: _read_message(raw, names))
    for raw in statuses:
        try:
            update = _read_status(raw)
        except (_UnreadablePart, BadInput) as unreadable:
            delivery.rejected.append(_rejected(phone_number_id, raw, unreadable))
            continue
        delivery.statuses.append(WebhookStatus(phone_number_id, update))


def _read_echoes_value(value: Mapping[str, Any], delivery: WebhookDelivery) -> None:
    phone_number_id = _phone_number_id(value, ECHOES_FIELD)
    echoes = value.get("message_echoes", [])
    if not isinstance(echoes, list):
        raise MalformedDelivery('"message_echoes" is a list')
    for raw in echoes:
        _add_part(delivery, phone_number_id, raw, _read_echo)


def _add_part(
    delivery: WebhookDelivery,
    phone_number_id: str,
    raw: Any,
    read: Callable[[Any], IncomingMessage | Revision],
) -> None:
    try:
        part = read(raw)
    except (_UnreadablePart, BadInput) as unreadable:
        delivery.rejected.append(_rejected(phone_number_id, raw, unreadable))
        return
    if isinstance(part, Revision):
        delivery.revisions.append(WebhookRevision(phone_number_id, part))
    else:
        delivery.messages.append(WebhookMessage(phone_number_id, part))


@dataclass(frozen=True)
class _Contact:
    name: str | None
    wa_id: str | None
    user_id: str | None


def _contact_names(contacts: list[Any]) -> dict[str, _Contact]:
    """Each contact of the change by `wa_id` and by `user_id`; unreadable entries are skipped."""
    found: dict[str, _Contact] = {}
    for raw in contacts:
        if not isinstance(raw, dict):
            continue
        profile = raw.get("profile")
        name = profile.get("name") if isinstance(profile, dict) else None
        try:
            contact = _Contact(
                name=name if isinstance(name, str) and is_storable(name) else None,
                wa_id=_optional_string(raw, "wa_id"),
                user_id=_optional_string(raw, "user_id"),
            )
        except _UnreadablePart:
            continue  # a contact entry only adds a name; the message itself names its sender
        for key in (contact.wa_id, contact.user_id):
            if key:
                found[key] = contact
    return found


def _read_message(raw: Any, contacts: Mapping[str, _Contact]) -> IncomingMessage | Revision:
    """A customer's message, or their edit or revoke of an earlier one."""
    if not isinstance(raw, dict):
        raise _UnreadablePart("a message is a JSON object")
    provider_message_id = _required_string(raw, "id", MAX_PROVIDER_MESSAGE_ID_LENGTH)
    phone = _optional_string(raw, "from")
    user_id = _optional_string(raw, "from_user_id")
    contact = contacts.get(phone or "") or contacts.get(user_id or "")
    if contact is not None:
        phone = phone or contact.wa_id
        user_id = user_id or contact.user_id
    # A system message may name its customer only inside `system` (a user id change).
    if phone is None and user_id is None and raw.get("type") != SYSTEM_MESSAGE_TYPE:
        raise _UnreadablePart('a message names its sender: "from" or "from_user_id"')
    message_type = _required_string(raw, "type", MAX_MESSAGE_TYPE_LENGTH)
    if message_type in REVISION_TYPES:
        return _read_revision(raw, message_type, provider_message_id, phone, user_id)
    names = _CustomerNames(phone, user_id)
    if message_type == SYSTEM_MESSAGE_TYPE:
        names = _system_names(raw, names)
    return _incoming(
        raw,
        provider_message_id,
        message_type,
        names,
        contact_name=contact.name if contact is not None else None,
        direction=Direction.INBOUND,
        source=Source.CUSTOMER,
    )


def _read_echo(raw: Any) -> IncomingMessage:
    """What the business sent from the WhatsApp Business app: `to` is the customer."""
    if not isinstance(raw, dict):
        raise _UnreadablePart("a message echo is a JSON object")
    provider_message_id = _required_string(raw, "id", MAX_PROVIDER_MESSAGE_ID_LENGTH)
    phone = _optional_string(raw, "to")
    user_id = _optional_string(raw, "to_user_id")
    if phone is None and user_id is None:
        raise _UnreadablePart('a message echo names its customer: "to" or "to_user_id"')
    message_type = _required_string(raw, "type", MAX_MESSAGE_TYPE_LENGTH)
    if message_type in REVISION_TYPES:
        # Only customers' revisions are applied (one that came first waits for an inbound
        # message): recorded for operators rather than stored as a message of its own.
        raise _UnreadablePart(
            f'an "{message_type}" of what the business sent from the WhatsApp Business app is '
            "not applied"
        )
    return _incoming(
        raw,
        provider_message_id,
        message_type,
        _CustomerNames(phone, user_id),
        contact_name=None,
        direction=Direction.OUTBOUND,
        source=Source.HUMAN,
    )


@dataclass(frozen=True)
class _CustomerNames:
    phone: str | None
    user_id: str | None
    previous_phone: str | None = None
    previous_user_id: str | None = None


def _incoming(
    raw: Mapping[str, Any],
    provider_message_id: str,
    message_type: str,
    names: _CustomerNames,
    *,
    contact_name: str | None,
    direction: Direction,
    source: Source,
) -> IncomingMessage:
    body, media_id = _content(raw, message_type)
    reply_to_provider_id, forwarded = _context(raw)
    referral = raw.get("referral")
    if referral is not None and not isinstance(referral, dict):
        raise _UnreadablePart('"referral" is a JSON object')
    _require_storable_json(raw)
    return IncomingMessage(
        phone=names.phone,
        wa_user_id=names.user_id,
        previous_phone=names.previous_phone,
        previous_user_id=names.previous_user_id,
        contact_name=contact_name,
        direction=direction,
        source=source,
        body=body,
        provider_message_id=provider_message_id,
        sent_at=_timestamp(raw),
        message_type=message_type,
        media_id=media_id,
        provider_payload=raw,
        reply_to_provider_id=reply_to_provider_id,
        forwarded=forwarded,
        referral=referral,
    )


def _context(raw: Mapping[str, Any]) -> tuple[str | None, bool]:
    """The provider id of the message this one quotes, and whether it was forwarded."""
    context = raw.get("context")
    if context is None:
        return None, False
    if not isinstance(context, dict):
        raise _UnreadablePart('"context" is a JSON object')
    quoted = _optional_string(context, "id", "context.id")
    if quoted is not None and len(quoted) > MAX_PROVIDER_MESSAGE_ID_LENGTH:
        raise _UnreadablePart(
            f'"context.id" is at most {MAX_PROVIDER_MESSAGE_ID_LENGTH} characters'
        )
    # `forwarded`: forwarded up to 5 times; `frequently_forwarded`: more often than that.
    forwarded = context.get("forwarded") is True or context.get("frequently_forwarded") is True
    return quoted, forwarded


def _system_names(raw: Mapping[str, Any], sender: _CustomerNames) -> _CustomerNames:
    """Who a system message is about: a number change names the new number (and user id)
    beside the old ones; any other system notice belongs to its sender."""
    system = raw.get(SYSTEM_MESSAGE_TYPE)
    if not isinstance(system, dict):
        raise _UnreadablePart('a "system" message has a "system" object')
    kind = _optional_string(system, "type", "system.type")
    user_id = _optional_string(system, "user_id", "system.user_id")
    # The sender's own user id (`from_user_id`) is the one the change replaces.
    previous_user_id = _optional_string(system, "previous_user_id", "system.previous_user_id") or (
        sender.user_id if sender.user_id != user_id else None
    )
    if kind in NUMBER_CHANGE_TYPES:
        new_phone = _optional_string(system, "wa_id", "system.wa_id") or _optional_string(
            system, "new_wa_id", "system.new_wa_id"
        )
        if new_phone is None:
            raise _UnreadablePart('a number change names the new number in "system.wa_id"')
        # Sent from the old number: `from` is the number the customer had.
        return _CustomerNames(new_phone, user_id, sender.phone, previous_user_id)
    if kind == USER_ID_CHANGE_TYPE:
        if user_id is None:
            raise _UnreadablePart('a user id change names the new one in "system.user_id"')
        return _CustomerNames(sender.phone, user_id, None, previous_user_id)
    if sender.phone is None and sender.user_id is None:
        raise _UnreadablePart('a message names its sender: "from" or "from_user_id"')
    return sender


def _read_revision(
    raw: Mapping[str, Any],
    kind: str,
    provider_message_id: str,
    phone: str | None,
    user_id: str | None,
) -> Revision:
    """An `edit` (`edit.message` is the message as it reads now) or a `revoke`."""
    content = raw.get(kind)
    if not isinstance(content, dict):
        raise _UnreadablePart(f'a "{kind}" message has a "{kind}" object')
    original = _required_string(
        content,
        "original_message_id",
        MAX_PROVIDER_MESSAGE_ID_LENGTH,
        f"{kind}.original_message_id",
    )
    body = None
    if kind == RevisionKind.EDIT.value:
        edited = content.get("message")
        if not isinstance(edited, dict):
            raise _UnreadablePart('"edit.message" is the edited message as a JSON object')
        edited_type = _required_string(edited, "type", MAX_MESSAGE_TYPE_LENGTH, "edit.message.type")
        body, _ = _content(edited, edited_type)
        if body is None:
            raise _UnreadablePart('"edit.message" carries the new text or caption')
        if len(body) > MAX_BODY_LENGTH:
            raise _UnreadablePart(f"an edited text is at most {MAX_BODY_LENGTH} characters")
    return Revision(
        kind=RevisionKind(kind),
        provider_message_id=provider_message_id,
        original_provider_message_id=original,
        revised_at=_timestamp(raw),
        body=body,
        phone=phone,
        wa_user_id=user_id,
    )


def _content(raw: Mapping[str, Any], message_type: str) -> tuple[str | None, str | None]:
    """The text a thread shows for the message, and its media id, by message type."""
    content = raw.get(message_type)
    if message_type == SYSTEM_MESSAGE_TYPE:
        return _system_body(content), None
    if message_type not in _KNOWN_TYPES:
        return None, None
    if message_type == "contacts":
        # Contact cards come as a list; the thread shows their names.
        if not isinstance(content, list):
            raise _UnreadablePart('a "contacts" message has a "contacts" list')
        return _contact_card_names(content), None
    if not isinstance(content, dict):
        raise _UnreadablePart(f'a "{message_type}" message has a "{message_type}" object')
    if message_type == "text":
        # Kept as typed: leading spaces and line breaks are part of the customer's text.
        text = content.get("body")
        if not isinstance(text, str) or not text.strip():
            raise _UnreadablePart('a "text" message has a non-empty "text.body" string')
        if not is_storable(text):
            raise _UnreadablePart('"text.body" is UTF-8 text without NUL characters')
        return text, None
    if message_type in MEDIA_TYPES:
        return _optional_string(content, "caption"), _optional_string(content, "id")
    if message_type == "location":
        parts = [_optional_string(content, key) for key in ("name", "address")]
        return " - ".join(part for part in parts if part) or None, None
    if message_type == "interactive":
        for reply_kind in ("button_reply", "list_reply"):
            reply = content.get(reply_kind)
            if isinstance(reply, dict):
                return _optional_string(reply, "title"), None
        return None, None
    if message_type == "button":
        return _optional_string(content, "text"), None
    # A reaction with an empty emoji removes an earlier one.
    return _optional_string(content, "emoji"), None


def _system_body(system: Any) -> str | None:
    """WhatsApp's own wording of the notice, kept as sent."""
    text = system.get("body") if isinstance(system, dict) else None
    if text is None:
        return None
    if not isinstance(text, str) or not is_storable(text):
        raise _UnreadablePart('"system.body" is UTF-8 text without NUL characters')
    return text if text.strip() else None


def _contact_card_names(cards: list[Any]) -> str | None:
    names = []
    for card in cards:
        name = card.get("name") if isinstance(card, dict) else None
        if isinstance(name, dict):
            formatted = _optional_string(name, "formatted_name")
            if formatted:
                names.append(formatted)
    return ", ".join(names) or None


_KNOWN_TYPES = frozenset(
    {"text", "location", "contacts", "interactive", "button", "reaction", *MEDIA_TYPES}
)


def _read_status(raw: Any) -> StatusUpdate:
    if not isinstance(raw, dict):
        raise _UnreadablePart("a status is a JSON object")
    provider_message_id = _required_string(raw, "id", MAX_PROVIDER_MESSAGE_ID_LENGTH)
    name = _required_string(raw, "status", 16)
    try:
        status = MessageStatus(name)
    except ValueError:
        status = None
    if status not in REPORTABLE_STATUSES:
        raise _UnreadablePart(
            f'status "{name}" is not one of sent, delivered, read, played, failed'
        )
    assert status is not None
    error_code, error_title = None, None
    errors = raw.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        code = errors[0].get("code")
        if isinstance(code, int) and not isinstance(code, bool) and abs(code) < 2**31:
            error_code = code
        error_title = _optional_string(errors[0], "title")
    return StatusUpdate(
        provider_message_id=provider_message_id,
        status=status,
        status_at=_timestamp(raw),
        error_code=error_code,
        error_title=error_title,
        sent_message_id=message_id_in_callback(raw.get("biz_opaque_callback_data")),
    )


def _timestamp(raw: Mapping[str, Any]) -> datetime:
    value = raw.get("timestamp")
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 12:
        seconds = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    else:
        raise _UnreadablePart('"timestamp" is Unix seconds')
    if not _EARLIEST_TIMESTAMP <= seconds <= _LATEST_TIMESTAMP:
        raise _UnreadablePart(f'"timestamp" {seconds} is not a plausible time')
    return datetime.fromtimestamp(seconds, UTC)


def _required_string(
    raw: Mapping[str, Any], key: str, max_length: int | None, where: str | None = None
) -> str:
    value = _optional_string(raw, key, where)
    if value is None:
        raise _UnreadablePart(f'"{where or key}" is a non-empty string')
    if max_length is not None and len(value) > max_length:
        raise _UnreadablePart(f'"{where or key}" is at most {max_length} characters')
    return value


def _optional_string(raw: Mapping[str, Any], key: str, where: str | None = None) -> str | None:
    """`raw[key]` trimmed (None when absent or blank); `where` names it in the reason."""
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _UnreadablePart(f'"{where or key}" is a string')
    if not is_storable(value):
        raise _UnreadablePart(f'"{where or key}" is UTF-8 text without NUL characters')
    return value.strip() or None


def _require_storable_json(raw: Any) -> None:
    """PostgreSQL's jsonb refuses NUL characters, lone surrogates and non-finite numbers."""
    if _first_unstorable_value(raw) is not None:
        raise _UnreadablePart(
            "the message holds text that is not UTF-8, contains NUL, or a number jsonb cannot hold"
        )


def _first_unstorable_value(value: Any) -> object | None:
    pending = [value]
    while pending:
        current = pending.pop()
        if isinstance(current, float):
            if not math.isfinite(current):
                return current
        elif isinstance(current, str):
            if not is_storable(current):
                return current
        elif isinstance(current, dict):
            pending.extend(current.keys())
            pending.extend(current.values())
        elif isinstance(current, list):
            pending.extend(current)
    return None


def _rejected(phone_number_id: str, raw: Any, reason: Exception) -> RejectedPart:
    provider_message_id = None
    if isinstance(raw, dict) and isinstance(raw.get("id"), str) and is_storable(raw["id"]):
        provider_message_id = raw["id"][:MAX_PROVIDER_MESSAGE_ID_LENGTH]
    storable = _first_unstorable_value(raw) is None
    return RejectedPart(
        phone_number_id=phone_number_id,
        provider_message_id=provider_message_id,
        reason=str(reason)[:500],
        fragment=raw if storable else None,
    )
