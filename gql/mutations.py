"""Mutation root: each mutation is its own unit of work, committed before it returns."""

import strawberry
from strawberry import UNSET
from strawberry.types import Info

from domain.messages import IncomingMessage, ingest_message
from domain.read_state import mark_thread_read
from gql.arguments import given, parse_optional_row_id
from gql.context import Context
from gql.types import (
    IngestMessageInput,
    IngestMessageResult,
    MarkReadResult,
    MessageType,
    ThreadType,
)


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
        # A request holds at most one connection at a time: earlier results' reads are done.
        await context.reads.close()
        outcome = await ingest_message(
            context.sessions,
            context.business_id,
            IncomingMessage(
                phone=input.phone,
                lead_id=given(input.lead_id),
                direction=input.direction.to_domain(),
                source=input.source.to_domain(),
                body=given(input.body),
                provider_message_id=given(input.provider_message_id),
                sent_at=given(input.sent_at),
                historical=bool(input.historical),
            ),
            default_region=context.default_region,
            metrics=context.metrics,
        )
        context.publish(outcome.event)
        context.forget_loaded()
        return IngestMessageResult(
            message=MessageType.from_domain(outcome.message),
            thread=ThreadType.from_domain(outcome.thread),
            duplicate=outcome.duplicate,
        )

    @strawberry.mutation(description="Mark a thread read, by threadId or by phone (any format).")
    async def mark_read(
        self,
        info: Info[Context, None],
        thread_id: strawberry.ID | None = UNSET,
        phone: str | None = UNSET,
    ) -> MarkReadResult:
        context = info.context
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
