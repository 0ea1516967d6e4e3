"""Mutation root: each mutation is its own unit of work, committed before it returns."""

from typing import Annotated

import strawberry
from strawberry import UNSET
from strawberry.scalars import JSON
from strawberry.types import Info

from domain import access, channels, leads, models, sending, thread_changes
from domain.messages import IncomingMessage, ingest_message
from domain.read_state import mark_thread_read
from gql.arguments import given, parse_optional_row_id, parse_row_id
from gql.context import Context
from gql.types import (
    IngestMessageInput,
    IngestMessageResult,
    MarkReadResult,
    MessageSource,
    MessageType,
    ThreadStatus,
    ThreadType,
    WhatsAppChannelType,
)


def _sending_source(context: Context, source: MessageSource | None) -> models.Source:
    """Who the message is from (HUMAN unless a service token says BOT or AUTOMATION)."""
    chosen = given(source)
    as_source = chosen.to_domain() if chosen is not None else models.Source.HUMAN
    access.require_may_send(context.role, as_source)
    return as_source


async def _send(
    context: Context,
    thread_id: int,
    content: sending.TextToSend | sending.TemplateToSend,
    source: models.Source,
) -> MessageType:
    await context.reads.close()
    outcome = await sending.send(
        context.sessions,
        context.business_id,
        thread_id,
        content,
        source=source,
        deadline=context.sending.deadline,
    )
    context.publish(outcome.event)
    context.sending.wake_sender()
    context.forget_loaded()
    context.loaders.thread.prime(outcome.thread.id, outcome.thread)
    return MessageType.from_domain(outcome.message)


@strawberry.type
class Mutation:
    @strawberry.mutation(
        description=(
            "Store one message in its customer's thread. A providerMessageId already stored "
            "for the business returns the stored message with duplicate: true."
        )
    )
    async def ingest_message(
        self, info: Info[Context, None], input: IngestMessageInput
    ) -> IngestMessageResult:
        context = info.context
        access.require_may_ingest(context.role, input.source.to_domain())
        # A request holds at most one connection at a time: earlier results' reads are done.
        await context.reads.close()
        incoming = IncomingMessage(
            phone=input.phone,
            lead_id=given(input.lead_id),
            direction=input.direction.to_domain(),
            source=input.source.to_domain(),
            body=given(input.body),
            provider_message_id=given(input.provider_message_id),
            sent_at=given(input.sent_at),
            historical=bool(input.historical),
        )
        if context.group_commit is not None:
            outcome = await context.group_commit.ingest(
                context.business_id, incoming, default_region=context.default_region
            )
        else:
            outcome = await ingest_message(
                context.sessions,
                context.business_id,
                incoming,
                default_region=context.default_region,
                metrics=context.metrics,
            )
        for event in outcome.events:
            context.publish(event)
        context.forget_loaded()
        return IngestMessageResult(
            message=MessageType.from_domain(outcome.message),
            thread=ThreadType.from_domain(outcome.thread),
            duplicate=outcome.duplicate,
        )

    @strawberry.mutation(
        description=(
            "Send a text to the thread's customer through WhatsApp. The message is stored "
            "PENDING and returned at once; the server's sender posts it to the Cloud API and "
            "its status moves to SENT (or FAILED, with deliveryError) as messageStatusChanged "
            "reports. Refused unstored outside the customer service window "
            "(OUTSIDE_SERVICE_WINDOW, extensions.serviceWindowExpiresAt) and without a channel "
            "token (CHANNEL_NOT_CONFIGURED)."
        )
    )
    async def send_message(
        self,
        info: Info[Context, None],
        thread_id: strawberry.ID,
        body: str,
        reply_to: Annotated[
            strawberry.ID | None,
            strawberry.argument(
                description="A message of this thread to quote (it needs a providerMessageId)."
            ),
        ] = UNSET,
        source: Annotated[
            MessageSource | None,
            strawberry.argument(
                description="HUMAN (the default, and the only one for agents); service tokens "
                "may send as BOT or AUTOMATION."
            ),
        ] = UNSET,
    ) -> MessageType:
        context = info.context
        as_source = _sending_source(context, source)
        target = parse_row_id(thread_id, "threadId")
        quoted = parse_optional_row_id(reply_to, "replyTo")
        text = sending.TextToSend(sending.check_text(body), quoted)
        return await _send(context, target, text, as_source)

    @strawberry.mutation(
        description=(
            "Send an approved template to the thread's customer (allowed outside the customer "
            "service window). Stored PENDING and returned at once, as sendMessage."
        )
    )
    async def send_template(
        self,
        info: Info[Context, None],
        thread_id: strawberry.ID,
        name: str,
        language: Annotated[
            str, strawberry.argument(description="The template's language code, e.g. en_US.")
        ],
        components: Annotated[
            JSON | None,
            strawberry.argument(
                description="The Cloud API's template components (header, body and button "
                "parameters), as its documentation gives them."
            ),
        ] = UNSET,
        source: MessageSource | None = UNSET,
    ) -> MessageType:
        context = info.context
        as_source = _sending_source(context, source)
        target = parse_row_id(thread_id, "threadId")
        template = sending.check_template(name, language, given(components))
        return await _send(context, target, template, as_source)

    @strawberry.mutation(
        description=(
            "Link a CRM lead to the customer's thread (given by threadId or phone): the thread "
            "is keyed by the lead from now on (its id, messages and read state stay), the "
            "phone becomes one more name of it, and a thread the lead already had is merged in "
            "(the lead's thread survives). Idempotent. CONFLICT when the thread or the phone "
            "already belongs to another lead; NOT_FOUND when nothing names a thread."
        )
    )
    async def link_lead(
        self,
        info: Info[Context, None],
        thread_id: strawberry.ID | None = UNSET,
        phone: str | None = UNSET,
        *,
        lead_id: strawberry.ID,
    ) -> ThreadType:
        context = info.context
        access.require_may_link_leads(context.role)
        target = parse_optional_row_id(thread_id, "threadId")
        await context.reads.close()
        linked = await leads.link_lead(
            context.sessions,
            context.business_id,
            lead_id=str(lead_id),
            thread_id=target,
            phone=given(phone),
            default_region=context.default_region,
        )
        for merge in linked.merges:
            context.publish(merge)
        context.forget_loaded()
        return ThreadType.from_domain(linked.thread)

    @strawberry.mutation(description="Mark a thread read, by threadId or by phone (any format).")
    async def mark_read(
        self,
        info: Info[Context, None],
        thread_id: strawberry.ID | None = UNSET,
        phone: str | None = UNSET,
    ) -> MarkReadResult:
        context = info.context
        access.require_may_mark_read(context.role)
        # A request holds at most one connection at a time: earlier results' reads are done.
        await context.reads.close()
        outcome = await mark_thread_read(
            context.sessions,
            context.business_id,
            thread_id=parse_optional_row_id(thread_id, "threadId"),
            phone=given(phone),
            default_region=context.default_region,
            metrics=context.metrics,
        )
        context.publish(outcome.event)
        context.forget_loaded()
        return MarkReadResult(
            thread=ThreadType.from_domain(outcome.thread), total_unread=outcome.total_unread
        )

    @strawberry.mutation(
        name="connectWhatsAppChannel",
        description=(
            "Store the webhooks of this Cloud API phone number for the caller's business. "
            "Connecting a number twice is harmless; one that belongs to another business is "
            "a CONFLICT."
        ),
    )
    async def connect_whatsapp_channel(
        self,
        info: Info[Context, None],
        phone_number_id: str,
        display_phone_number: str | None = UNSET,
        access_token: Annotated[
            str | None,
            strawberry.argument(
                description=(
                    "The Cloud API access token to send with (a system user's permanent "
                    "token). Write-only: stored encrypted with CHANNEL_SECRET_KEY, never "
                    "returned or logged. Omitted: the stored token is kept."
                )
            ),
        ] = UNSET,
    ) -> WhatsAppChannelType:
        context = info.context
        access.require_may_manage_channels(context.role)
        await context.reads.close()
        channel = await channels.connect_channel(
            context.sessions,
            context.business_id,
            phone_number_id,
            given(display_phone_number),
            access_token=given(access_token),
            vault=context.token_vault,
        )
        return WhatsAppChannelType.from_domain(channel)

    @strawberry.mutation(
        name="rotateWhatsAppToken",
        description=(
            "Replace the channel's Cloud API access token (write-only, stored encrypted); "
            "NOT_FOUND when the number is not connected to the caller's business."
        ),
    )
    async def rotate_whatsapp_token(
        self, info: Info[Context, None], phone_number_id: str, access_token: str
    ) -> WhatsAppChannelType:
        context = info.context
        access.require_may_manage_channels(context.role)
        await context.reads.close()
        channel = await channels.rotate_token(
            context.sessions,
            context.business_id,
            phone_number_id,
            access_token,
            context.token_vault,
        )
        return WhatsAppChannelType.from_domain(channel)

    @strawberry.mutation(
        name="disconnectWhatsAppChannel",
        description=(
            "Stop storing this number's webhooks (they are then acknowledged and dropped); "
            "stored messages stay."
        ),
    )
    async def disconnect_whatsapp_channel(
        self, info: Info[Context, None], phone_number_id: str
    ) -> WhatsAppChannelType:
        context = info.context
        access.require_may_manage_channels(context.role)
        await context.reads.close()
        channel = await channels.disconnect_channel(
            context.sessions, context.business_id, phone_number_id
        )
        return WhatsAppChannelType.from_domain(channel)

    @strawberry.mutation(
        description=(
            "Delete a message: it stays in its thread with status DELETED and is never "
            "counted unread."
        )
    )
    async def delete_message(self, info: Info[Context, None], id: strawberry.ID) -> MessageType:
        context = info.context
        access.require_may_change_threads(context.role)
        message_id = parse_row_id(id, "id")
        await context.reads.close()
        deleted = await thread_changes.delete_message(
            context.sessions, context.business_id, message_id
        )
        context.publish(deleted.event)
        context.forget_loaded()
        return MessageType.from_domain(deleted.message)

    @strawberry.mutation(description="Close or reopen a thread (an inbound message reopens it).")
    async def set_thread_status(
        self, info: Info[Context, None], thread_id: strawberry.ID, status: ThreadStatus
    ) -> ThreadType:
        context = info.context
        access.require_may_change_threads(context.role)
        target = parse_row_id(thread_id, "threadId")
        await context.reads.close()
        thread = await thread_changes.set_thread_status(
            context.sessions, context.business_id, target, models.ThreadStatus[status.name]
        )
        context.forget_loaded()
        return ThreadType.from_domain(thread)
