"""Sending from the inbox: `sendMessage` and `sendTemplate` store the message PENDING with its
outbox row, in one transaction, and return; the sender (domain/send_attempts.py) posts it.

Everything that can refuse a send is checked before anything is stored: the thread, the
customer service window (free-form text only; templates may be sent any time), a channel with
an access token, a recipient WhatsApp can address, the message quoted.
"""

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from db import outbox, statements
from db.unit_of_work import Sessions, run_unit_of_work
from domain.customer_identities import on_current_thread
from domain.errors import BadInput, DomainError, NotFound
from domain.events import MessageStored
from domain.models import Direction, Message, MessageStatus, Source, Thread
from domain.storable_text import is_storable
from domain.threads import find_thread_by_id, service_windows_expiring

# The Cloud API's limit for a text message's body.
MAX_TEXT_BODY_LENGTH = 4096
MAX_TEMPLATE_NAME_LENGTH = 512
MAX_TEMPLATE_COMPONENTS_BYTES = 16_384
# Template names are lower case, digits and underscores (Meta's template manager enforces it).
_TEMPLATE_NAME = re.compile(r"^[a-z0-9_]+$")
# A template language: `en`, `en_US`, `pt_BR`, `zh_HK`, `es_LA`...
_TEMPLATE_LANGUAGE = re.compile(r"^[a-z]{2,3}(_[A-Z]{2,3})?$")
# Sent with every message and echoed by WhatsApp in its statuses, to tie them to our row.
CALLBACK_PREFIX = "wa-inbox:"


def callback_data_of(message_id: int) -> str:
    return f"{CALLBACK_PREFIX}{message_id}"


def message_id_in_callback(callback_data: object) -> int | None:
    """The message id a status echoes in `biz_opaque_callback_data` (None: not one of ours)."""
    if not isinstance(callback_data, str) or not callback_data.startswith(CALLBACK_PREFIX):
        return None
    digits = callback_data.removeprefix(CALLBACK_PREFIX)
    if not (digits.isascii() and digits.isdigit() and len(digits) <= 18):
        return None
    return int(digits)


class OutsideServiceWindow(DomainError):
    """Free-form messages reach a customer only within 24 hours of their latest message."""

    code = "OUTSIDE_SERVICE_WINDOW"

    def __init__(self, expired_at: datetime | None) -> None:
        super().__init__(
            "the customer service window is closed: "
            + (
                f"it ended at {expired_at.isoformat()}"
                if expired_at is not None
                else "the customer has not written yet"
            )
            + "; send a template (sendTemplate) instead"
        )
        self.expired_at = expired_at

    @property
    def extensions(self) -> dict[str, Any]:
        expired = self.expired_at.isoformat() if self.expired_at is not None else None
        return {"serviceWindowExpiresAt": expired}


class ChannelNotConfigured(DomainError):
    code = "CHANNEL_NOT_CONFIGURED"


@dataclass(frozen=True)
class TextToSend:
    body: str
    reply_to_message_id: int | None = None


@dataclass(frozen=True)
class TemplateToSend:
    name: str
    language: str
    components: list[Any] | None = None


@dataclass(frozen=True)
class SendOutcome:
    message: Message
    thread: Thread
    event: MessageStored


def check_text(body: str) -> str:
    if not body.strip():
        raise BadInput("body must not be empty")
    if not is_storable(body):
        raise BadInput("body holds a NUL character or a lone surrogate, which cannot be stored")
    if len(body) > MAX_TEXT_BODY_LENGTH:
        raise BadInput(f"body is at most {MAX_TEXT_BODY_LENGTH} characters (WhatsApp's limit)")
    return body


def check_template(name: str, language: str, components: Any) -> TemplateToSend:
    if len(name) > MAX_TEMPLATE_NAME_LENGTH or not _TEMPLATE_NAME.match(name):
        raise BadInput("name is the template's name: lower-case letters, digits and underscores")
    if not _TEMPLATE_LANGUAGE.match(language):
        raise BadInput("language is the template's language code, such as en or en_US")
    if components is not None:
        if not isinstance(components, list) or not all(isinstance(c, dict) for c in components):
            raise BadInput("components is a list of objects, as the Cloud API takes them")
        if not _storable_json(components):
            raise BadInput("components hold a NUL character or a lone surrogate")
        if len(json.dumps(components)) > MAX_TEMPLATE_COMPONENTS_BYTES:
            raise BadInput(f"components is at most {MAX_TEMPLATE_COMPONENTS_BYTES} bytes of JSON")
    return TemplateToSend(name, language, components)


def _storable_json(value: Any) -> bool:
    """jsonb refuses NUL (\\u0000) in keys and strings, as text columns do."""
    if isinstance(value, str):
        return is_storable(value)
    if isinstance(value, list):
        return all(_storable_json(item) for item in value)
    if isinstance(value, dict):
        return all(is_storable(key) and _storable_json(item) for key, item in value.items())
    return True


async def send(
    sessions: Sessions,
    business_id: int,
    thread_id: int,
    content: TextToSend | TemplateToSend,
    *,
    source: Source,
    deadline: timedelta,
    now: datetime | None = None,
) -> SendOutcome:
    """Store `content` PENDING in the thread with its outbox row, or refuse it unstored."""
    if source is Source.CUSTOMER:
        raise BadInput("the inbox sends as the business: source is HUMAN, BOT or AUTOMATION")

    async def work(session: AsyncSession) -> SendOutcome:
        sent_at = now or datetime.now(UTC)
        thread = await find_thread_by_id(session, business_id, thread_id)
        if thread is None:
            raise NotFound("no thread with that id")
        if isinstance(content, TextToSend):
            await _require_open_window(session, business_id, thread.id, sent_at)
        phone_number_id = await _sending_channel(session, business_id)
        request: dict[str, Any] = {"messaging_product": "whatsapp", **_recipient(thread)}
        reply_to_provider_id = None
        if isinstance(content, TextToSend):
            request |= {"type": "text", "text": {"body": content.body}}
            if content.reply_to_message_id is not None:
                reply_to_provider_id = await _quoted_provider_id(
                    session, business_id, thread.id, content.reply_to_message_id
                )
                request["context"] = {"message_id": reply_to_provider_id}
        else:
            template: dict[str, Any] = {
                "name": content.name,
                "language": {"code": content.language},
            }
            if content.components is not None:
                template["components"] = content.components
            request |= {"type": "template", "template": template}

        # The thread's row lock, as every writer of it takes; a merge that moved the thread
        # since it was read leads to the survivor.
        touched = await on_current_thread(
            session,
            business_id,
            thread.id,
            lambda conversation_id: statements.touch_conversation(
                session, conversation_id, phone_e164=None, message_at=sent_at, reopen=False
            ),
        )
        if touched is None:
            raise NotFound("no thread with that id")
        row = await statements.insert_message(
            session,
            business_id=business_id,
            conversation_id=touched["id"],
            seq=touched["message_seq"],
            provider_message_id=None,
            direction=Direction.OUTBOUND.value,
            source=source.value,
            status=MessageStatus.PENDING.value,
            body=content.body if isinstance(content, TextToSend) else None,
            sent_at=sent_at,
            historical=False,
            message_type=request["type"],
            provider_payload=None
            if isinstance(content, TextToSend)
            else {"type": "template", "template": request["template"]},
            reply_to_provider_id=reply_to_provider_id,
        )
        assert row is not None  # no provider id: nothing to conflict with
        request["biz_opaque_callback_data"] = callback_data_of(row["id"])
        await outbox.enqueue_send(
            session,
            business_id,
            row["id"],
            phone_number_id=phone_number_id,
            request=request,
            deadline_at=sent_at + deadline,
        )
        message = Message.from_row(row)
        event = MessageStored(business_id, message.thread_id, message.id, changes_unread=False)
        return SendOutcome(message, Thread.from_row(touched), event)

    return await run_unit_of_work(sessions, work, business_id=business_id)


async def _require_open_window(
    session: AsyncSession, business_id: int, thread_id: int, at: datetime
) -> None:
    expires = (await service_windows_expiring(session, business_id, [thread_id])).get(thread_id)
    if expires is None or expires <= at:
        raise OutsideServiceWindow(expires)


async def _sending_channel(session: AsyncSession, business_id: int) -> str:
    """The number the business sends from: its first connected channel holding a token."""
    for channel in await statements.business_channels(session, business_id):
        if channel["access_token_sealed"] is not None:
            return str(channel["phone_number_id"])
    raise ChannelNotConfigured(
        "no WhatsApp channel of this business has an access token to send with: an admin "
        "connects one with connectWhatsAppChannel(phoneNumberId:, accessToken:)"
    )


def _recipient(thread: Thread) -> dict[str, str]:
    """WhatsApp addresses a customer by phone, or by their business-scoped user id when the
    phone is hidden (usernames)."""
    if thread.phone_e164 is not None:
        return {"recipient_type": "individual", "to": thread.phone_e164.removeprefix("+")}
    if thread.wa_user_id is not None:
        return {"recipient_type": "individual", "recipient": thread.wa_user_id}
    raise BadInput("this thread has neither a phone nor a WhatsApp user id to send to")


async def _quoted_provider_id(
    session: AsyncSession, business_id: int, thread_id: int, message_id: int
) -> str:
    row = await statements.find_message(session, business_id, message_id)
    if row is None:
        raise NotFound("replyTo names no message")
    if row["conversation_id"] != thread_id:
        raise BadInput("replyTo names a message of another thread")
    if row["provider_message_id"] is None:
        raise BadInput("replyTo names a message WhatsApp has no id for yet (still PENDING)")
    return str(row["provider_message_id"])
