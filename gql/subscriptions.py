"""Subscription root: the fields live clients subscribe to over websockets at /graphql.

Subscriptions are served by the fan-out hub (gql/fanout.py) through the websocket handlers of
gql/websocket.py, which execute each event once per audience of identical subscriptions. The
resolvers below only define the fields; Strawberry's per-subscriber streaming is not used.
"""

from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

import strawberry
from graphql import GraphQLError
from strawberry import UNSET

from gql.types import DeliveryError, MessageStatus, MessageType

if TYPE_CHECKING:
    from domain.events import MessageStatusChanged, ThreadMerged
    from gql.fanout import UnreadCounts


@strawberry.type(name="UnreadCountEvent")
class UnreadCountEvent:
    thread_id: strawberry.ID
    unread_count: int
    total_unread: int

    @classmethod
    def from_counts(cls, counts: "UnreadCounts") -> "UnreadCountEvent":
        return cls(
            thread_id=strawberry.ID(str(counts.thread_id)),
            unread_count=counts.thread_unread,
            total_unread=counts.total_unread,
        )


@strawberry.type(name="ThreadMergedEvent")
class ThreadMergedEvent:
    from_thread_id: strawberry.ID = strawberry.field(
        description="The thread that is gone: its id now leads to intoThreadId."
    )
    into_thread_id: strawberry.ID = strawberry.field(
        description="The thread that holds both threads' messages and names now."
    )

    @classmethod
    def from_domain(cls, merge: "ThreadMerged") -> "ThreadMergedEvent":
        return cls(
            from_thread_id=strawberry.ID(str(merge.from_thread_id)),
            into_thread_id=strawberry.ID(str(merge.into_thread_id)),
        )


@strawberry.type(name="MessageStatusEvent")
class MessageStatusEvent:
    message_id: strawberry.ID
    thread_id: strawberry.ID
    status: MessageStatus
    delivery_error: DeliveryError | None = strawberry.field(
        description="Why the message FAILED (null otherwise)."
    )

    @classmethod
    def from_domain(cls, change: "MessageStatusChanged") -> "MessageStatusEvent":
        return cls(
            message_id=strawberry.ID(str(change.message_id)),
            thread_id=strawberry.ID(str(change.thread_id)),
            status=MessageStatus[change.status.upper()],
            delivery_error=DeliveryError.of(
                change.error_code, change.error_title, change.error_outcome_unknown
            ),
        )


def _served_by_the_hub() -> GraphQLError:
    return GraphQLError("subscriptions are served over websockets at /graphql")


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description="Every new message of the business, or of one thread (threadId)."
    )
    async def new_message(
        self, thread_id: strawberry.ID | None = UNSET
    ) -> AsyncGenerator[MessageType, None]:
        raise _served_by_the_hub()
        yield  # pragma: no cover - makes this an async generator

    @strawberry.subscription(
        description=(
            "The unread count of a thread and the business total, after an inbound message "
            "is stored, after markRead, and after a merge (the merged-away thread then gets a "
            "last event with unreadCount 0)."
        )
    )
    async def unread_count_changed(self) -> AsyncGenerator[UnreadCountEvent, None]:
        raise _served_by_the_hub()
        yield  # pragma: no cover - makes this an async generator

    @strawberry.subscription(
        description=(
            "Two threads of the business turned out to be one customer's (a lead linked, a "
            "number change, a WhatsApp user id) and were merged: show intoThreadId instead of "
            "fromThreadId. Badges also get fromThreadId's final unreadCount 0."
        )
    )
    async def thread_merged(self) -> AsyncGenerator[ThreadMergedEvent, None]:
        raise _served_by_the_hub()
        yield  # pragma: no cover - makes this an async generator

    @strawberry.subscription(
        description=(
            "Delivery ticks of the business's outbound messages, or of one thread's (threadId): "
            "each status change once, after it is committed (SENT when WhatsApp took a sent "
            "message, then DELIVERED, READ, PLAYED as its webhooks arrive, or FAILED)."
        )
    )
    async def message_status_changed(
        self, thread_id: strawberry.ID | None = UNSET
    ) -> AsyncGenerator[MessageStatusEvent, None]:
        raise _served_by_the_hub()
        yield  # pragma: no cover - makes this an async generator
