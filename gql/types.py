"""GraphQL object types, each converted from its domain object at the edge."""

from datetime import datetime
from enum import Enum
from typing import Any

import strawberry
from strawberry import UNSET
from strawberry.scalars import JSON
from strawberry.types import Info

from domain import models, threads
from domain.channels import Channel
from domain.models import Message, Thread
from domain.pagination import Page
from gql.arguments import given
from gql.context import Context


@strawberry.enum(name="MessageDirection")
class MessageDirection(Enum):
    INBOUND = "INBOUND"
    OUTBOUND = "OUTBOUND"

    def to_domain(self) -> models.Direction:
        return models.Direction[self.name]


@strawberry.enum(name="MessageSource")
class MessageSource(Enum):
    CUSTOMER = "CUSTOMER"
    BOT = "BOT"
    AUTOMATION = "AUTOMATION"
    HUMAN = "HUMAN"

    def to_domain(self) -> models.Source:
        return models.Source[self.name]


@strawberry.enum(name="MessageStatus")
class MessageStatus(Enum):
    RECEIVED = "RECEIVED"
    PENDING = "PENDING"
    SENT = "SENT"
    DELIVERED = "DELIVERED"
    READ = "READ"
    PLAYED = strawberry.enum_value("PLAYED", description="A voice message the customer played.")
    FAILED = "FAILED"
    DELETED = "DELETED"


@strawberry.enum(name="ThreadStatus")
class ThreadStatus(Enum):
    OPEN = "OPEN"
    CLOSED = "CLOSED"


@strawberry.type(name="PageInfo")
class PageInfo:
    has_next_page: bool
    has_previous_page: bool
    start_cursor: str | None
    end_cursor: str | None

    @classmethod
    def from_page(cls, page: Page[Thread] | Page[Message]) -> "PageInfo":
        return cls(
            has_next_page=page.has_next_page,
            has_previous_page=page.has_previous_page,
            start_cursor=page.cursors[0] if page.cursors else None,
            end_cursor=page.cursors[-1] if page.cursors else None,
        )


@strawberry.type(
    name="AdReferral",
    description=(
        "The click-to-WhatsApp ad (or post) that brought the customer, as WhatsApp described "
        "it on their first message from it."
    ),
)
class AdReferral:
    source_url: str | None = strawberry.field(description="The URL of the ad or post.")
    source_type: str | None = strawberry.field(description='What was clicked: "ad" or "post".')
    source_id: str | None = strawberry.field(description="Meta's id of the ad or post.")
    headline: str | None = strawberry.field(description="The ad's headline.")
    body: str | None = strawberry.field(description="The ad's text.")
    media_type: str | None = strawberry.field(description='The ad\'s media: "image" or "video".')
    image_url: str | None = strawberry.field(description="The ad's image (image ads).")
    video_url: str | None = strawberry.field(description="The ad's video (video ads).")
    thumbnail_url: str | None = strawberry.field(description="The video's thumbnail.")
    ctwa_clid: str | None = strawberry.field(
        description="The click id Meta's Conversions API takes to attribute the conversation."
    )

    @classmethod
    def from_payload(cls, referral: Any) -> "AdReferral | None":
        """The ad's fields from WhatsApp's `referral` object (fields that are not text: null)."""
        if not isinstance(referral, dict):
            return None

        def text(key: str) -> str | None:
            value = referral.get(key)
            return value if isinstance(value, str) else None

        return cls(
            source_url=text("source_url"),
            source_type=text("source_type"),
            source_id=text("source_id"),
            headline=text("headline"),
            body=text("body"),
            media_type=text("media_type"),
            image_url=text("image_url"),
            video_url=text("video_url"),
            thumbnail_url=text("thumbnail_url"),
            ctwa_clid=text("ctwa_clid"),
        )


@strawberry.type(name="Message")
class MessageType:
    id: strawberry.ID
    thread_id: strawberry.ID
    direction: MessageDirection
    source: MessageSource
    status: MessageStatus
    body: str | None = strawberry.field(
        description=(
            "The text the thread shows (a caption, a location's name, ...); after an edit, the "
            "edited text. Null for DELETED messages."
        )
    )
    provider_message_id: str | None
    sent_at: datetime
    created_at: datetime
    type: str = strawberry.field(
        description=(
            "WhatsApp's message type: text, image, video, audio, document, sticker, location, "
            "contacts, interactive, button, reaction, or a type added since (kept as sent)."
        )
    )
    media_id: str | None = strawberry.field(
        description="The Cloud API media id of an image, video, audio, document or sticker."
    )
    provider_payload: JSON | None = strawberry.field(
        description=(
            "The message exactly as WhatsApp delivered it (webhook messages), or the template "
            "sendTemplate sent ({type, template}). Null for DELETED messages: it holds their "
            "text."
        )
    )
    delivery_error: "DeliveryError | None" = strawberry.field(
        description="Why WhatsApp could not deliver an outbound message (status FAILED)."
    )
    reply_to_provider_id: str | None = strawberry.field(
        description=(
            "The provider message id of the message this one replies to (WhatsApp's "
            "`context.id`), kept whether or not that message is stored."
        )
    )
    forwarded: bool = strawberry.field(
        description="WhatsApp marked the message forwarded (or frequently forwarded)."
    )
    referral: AdReferral | None = strawberry.field(
        description="The click-to-WhatsApp ad the customer came from, on the message it sent."
    )
    edited_at: datetime | None = strawberry.field(
        description="When the customer last edited the message (null: never edited)."
    )
    original_body: str | None = strawberry.field(
        description=(
            "The text as first stored, before the customer's first edit; null when never "
            "edited, and for DELETED messages. `body` holds the edited text."
        )
    )
    row_thread_id: strawberry.Private[int]

    @strawberry.field(
        description=(
            "The message this one replies to, when it is stored (null otherwise; "
            "`replyToProviderId` still names it)."
        )
    )
    async def reply_to(self, info: Info[Context, None]) -> "MessageType | None":
        if self.reply_to_provider_id is None:
            return None
        quoted = await info.context.loaders.quoted_message.load(self.reply_to_provider_id)
        return MessageType.from_domain(quoted) if quoted is not None else None

    @strawberry.field
    async def thread(self, info: Info[Context, None]) -> "ThreadType":
        found = await info.context.loaders.thread.load(self.row_thread_id)
        if found is None:  # a message never outlives its thread (FK, ON DELETE CASCADE)
            raise LookupError(f"thread {self.row_thread_id} of message {self.id} is gone")
        return ThreadType.from_domain(found)

    @classmethod
    def from_domain(cls, message: Message) -> "MessageType":
        # A deleted (or revoked) message stays in its thread; what it said does not show.
        deleted = message.status is models.MessageStatus.DELETED
        return cls(
            id=strawberry.ID(str(message.id)),
            thread_id=strawberry.ID(str(message.thread_id)),
            direction=MessageDirection[message.direction.name],
            source=MessageSource[message.source.name],
            status=MessageStatus[message.status.name],
            body=None if deleted else message.body,
            provider_message_id=message.provider_message_id,
            sent_at=message.sent_at,
            created_at=message.created_at,
            type=message.message_type,
            media_id=message.media_id,
            provider_payload=None if deleted else message.provider_payload,
            delivery_error=DeliveryError.of(
                message.error_code, message.error_title, message.error_outcome_unknown
            ),
            reply_to_provider_id=message.reply_to_provider_id,
            forwarded=message.forwarded,
            referral=AdReferral.from_payload(message.referral),
            edited_at=message.edited_at,
            original_body=None if deleted else message.original_body,
            row_thread_id=message.thread_id,
        )


@strawberry.type(name="DeliveryError")
class DeliveryError:
    code: int | None = strawberry.field(
        description="WhatsApp's error code, e.g. 131047; null for a failure of our own."
    )
    title: str | None
    outcome_unknown: bool = strawberry.field(
        default=False,
        description=(
            "WhatsApp's answer to the send was lost (the connection ended after the request "
            "went out): the message may have reached the customer. It is not sent again by "
            "itself; check the chat before sending it again."
        ),
    )

    @classmethod
    def of(
        cls, code: int | None, title: str | None, outcome_unknown: bool
    ) -> "DeliveryError | None":
        if code is None and title is None and not outcome_unknown:
            return None
        return cls(code=code, title=title, outcome_unknown=outcome_unknown)


@strawberry.type(name="MessageEdge")
class MessageEdge:
    node: MessageType
    cursor: str


@strawberry.type(name="MessageConnection")
class MessageConnection:
    edges: list[MessageEdge]
    page_info: PageInfo

    @classmethod
    def from_page(cls, page: Page[Message]) -> "MessageConnection":
        return cls(
            edges=[
                MessageEdge(node=MessageType.from_domain(message), cursor=cursor)
                for message, cursor in zip(page.items, page.cursors, strict=True)
            ],
            page_info=PageInfo.from_page(page),
        )


@strawberry.type(name="Thread")
class ThreadType:
    id: strawberry.ID
    canonical_key: str
    phone: str | None
    lead_id: strawberry.ID | None
    status: ThreadStatus
    started_at: datetime
    last_message_at: datetime | None
    last_read_at: datetime | None
    contact_name: str | None = strawberry.field(
        description="The customer's WhatsApp profile name, from the latest webhook naming it."
    )
    user_id: str | None = strawberry.field(
        description="WhatsApp's business-scoped user id (BSUID) of the customer, once known."
    )
    row_id: strawberry.Private[int]
    row_unread_count: strawberry.Private[int]

    @strawberry.field(description="Inbound messages stored since the thread was last read.")
    def unread_count(self) -> int:
        # The thread's counter, read with its row: no statement of its own.
        return self.row_unread_count

    @strawberry.field(
        description=(
            "Every phone that names this customer: `phone` (the latest they wrote from) first, "
            "then a lead's other phones and earlier numbers, which all lead to this thread."
        )
    )
    async def phones(self, info: Info[Context, None]) -> list[str]:
        found: list[str] = await info.context.loaders.phones.load(self.row_id)
        current = [self.phone] if self.phone in found else []
        return current + [phone for phone in found if phone != self.phone]

    @strawberry.field(
        description=(
            "When the customer service window closes: 24 hours after the customer's latest "
            "message (business messages do not extend it); null if the customer never wrote. "
            "Outside it WhatsApp only accepts template messages."
        )
    )
    async def service_window_expires_at(self, info: Info[Context, None]) -> datetime | None:
        expires: datetime | None = await info.context.loaders.service_window.load(self.row_id)
        return expires

    @strawberry.field(description="The latest message by sentAt.")
    async def last_message(self, info: Info[Context, None]) -> MessageType | None:
        latest = await info.context.loaders.last_message.load(self.row_id)
        return MessageType.from_domain(latest) if latest is not None else None

    @strawberry.field(
        description=(
            "Messages of every source in chronological order (sentAt, then id). "
            "first/after page forward, last/before backward; at most 100 per page."
        )
    )
    async def messages(
        self,
        info: Info[Context, None],
        first: int | None = UNSET,
        after: str | None = UNSET,
        last: int | None = UNSET,
        before: str | None = UNSET,
    ) -> MessageConnection:
        context = info.context
        page = await context.reads.run(
            lambda session: threads.list_messages(
                session,
                context.business_id,
                self.row_id,
                first=given(first),
                after=given(after),
                last=given(last),
                before=given(before),
            )
        )
        return MessageConnection.from_page(page)

    @classmethod
    def from_domain(cls, thread: Thread) -> "ThreadType":
        return cls(
            id=strawberry.ID(str(thread.id)),
            canonical_key=thread.canonical_key,
            phone=thread.phone_e164,
            lead_id=strawberry.ID(thread.lead_id) if thread.lead_id is not None else None,
            status=ThreadStatus[thread.status.name],
            started_at=thread.started_at,
            last_message_at=thread.last_message_at,
            last_read_at=thread.last_read_at,
            contact_name=thread.contact_name,
            user_id=thread.wa_user_id,
            row_id=thread.id,
            row_unread_count=thread.unread_count,
        )


@strawberry.type(name="ThreadEdge")
class ThreadEdge:
    node: ThreadType
    cursor: str


@strawberry.type(name="ThreadConnection")
class ThreadConnection:
    edges: list[ThreadEdge]
    page_info: PageInfo

    @classmethod
    def from_page(cls, page: Page[Thread]) -> "ThreadConnection":
        return cls(
            edges=[
                ThreadEdge(node=ThreadType.from_domain(thread), cursor=cursor)
                for thread, cursor in zip(page.items, page.cursors, strict=True)
            ],
            page_info=PageInfo.from_page(page),
        )


@strawberry.input(name="IngestMessageInput")
class IngestMessageInput:
    phone: str
    direction: MessageDirection
    source: MessageSource
    lead_id: strawberry.ID | None = UNSET
    body: str | None = UNSET
    provider_message_id: str | None = UNSET
    sent_at: datetime | None = UNSET
    historical: bool | None = strawberry.field(
        default=False,
        description="History imports: threaded and shown, never counted as unread.",
    )


@strawberry.type(name="IngestMessageResult")
class IngestMessageResult:
    message: MessageType
    thread: ThreadType
    duplicate: bool


@strawberry.type(name="MarkReadResult")
class MarkReadResult:
    thread: ThreadType
    total_unread: int


@strawberry.type(name="WhatsAppChannel")
class WhatsAppChannelType:
    id: strawberry.ID
    phone_number_id: str = strawberry.field(description="The Cloud API phone number id.")
    display_phone_number: str | None
    connected_at: datetime
    access_token_set_at: datetime | None = strawberry.field(
        description=(
            "When the Cloud API access token was stored (the token itself is write-only); "
            "null when the channel has none and cannot send."
        )
    )

    @classmethod
    def from_domain(cls, channel: Channel) -> "WhatsAppChannelType":
        return cls(
            id=strawberry.ID(str(channel.id)),
            phone_number_id=channel.phone_number_id,
            display_phone_number=channel.display_phone_number,
            connected_at=channel.connected_at,
            access_token_set_at=channel.access_token_set_at,
        )
