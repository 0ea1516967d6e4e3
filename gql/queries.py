"""Query root: thin resolvers that parse arguments, call the domain and convert."""

import strawberry
from strawberry import UNSET
from strawberry.types import Info

from domain import access, channels, read_state, threads
from gql.arguments import given, parse_optional_row_id, parse_row_id
from gql.context import Context
from gql.lookahead import selects
from gql.types import MessageType, ThreadConnection, ThreadType, WhatsAppChannelType


@strawberry.type
class Query:
    @strawberry.field(description="The business's threads, latest activity first.")
    async def threads(
        self,
        info: Info[Context, None],
        first: int | None = 20,
        after: str | None = UNSET,
        unread_only: bool | None = False,
    ) -> ThreadConnection:
        context = info.context
        if not selects(info, "edges", "node", "lastMessage"):
            page = await context.reads.run(
                lambda session: threads.list_threads(
                    session,
                    context.business_id,
                    first=given(first),
                    after=given(after),
                    unread_only=bool(unread_only),
                )
            )
            return ThreadConnection.from_page(page)
        # The inbox list: each thread's last message comes in the same statement.
        page, last_messages = await context.reads.run(
            lambda session: threads.list_threads_with_last_messages(
                session,
                context.business_id,
                first=given(first),
                after=given(after),
                unread_only=bool(unread_only),
            )
        )
        context.loaders.last_message.prime_many(last_messages)
        return ThreadConnection.from_page(page)

    @strawberry.field(description="One thread by id, lead id or phone (any format); null if none.")
    async def thread(
        self,
        info: Info[Context, None],
        id: strawberry.ID | None = UNSET,
        phone: str | None = UNSET,
        lead_id: strawberry.ID | None = UNSET,
    ) -> ThreadType | None:
        context = info.context
        thread_id = parse_optional_row_id(id, "id")
        found = await context.reads.run(
            lambda session: threads.find_thread(
                session,
                context.business_id,
                thread_id=thread_id,
                phone=given(phone),
                lead_id=given(lead_id),
                default_region=context.default_region,
            )
        )
        return ThreadType.from_domain(found) if found is not None else None

    @strawberry.field(description="One message by id; null if none.")
    async def message(self, info: Info[Context, None], id: strawberry.ID) -> MessageType | None:
        context = info.context
        message_id = parse_row_id(id, "id")
        found = await context.reads.run(
            lambda session: threads.find_message(session, context.business_id, message_id)
        )
        return MessageType.from_domain(found) if found is not None else None

    @strawberry.field(description="Unread messages over all the business's threads (the badge).")
    async def unread_count(self, info: Info[Context, None]) -> int:
        context = info.context
        return await context.reads.run(
            lambda session: read_state.total_unread(session, context.business_id)
        )

    @strawberry.field(
        name="whatsAppChannels",
        description="The WhatsApp numbers whose webhooks are stored for the business.",
    )
    async def whatsapp_channels(self, info: Info[Context, None]) -> list[WhatsAppChannelType]:
        context = info.context
        access.require_may_manage_channels(context.role)
        found = await context.reads.run(
            lambda session: channels.list_channels(session, context.business_id)
        )
        return [WhatsAppChannelType.from_domain(channel) for channel in found]
