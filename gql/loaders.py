"""Per-request DataLoaders: one statement per field per page, results in key order."""

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.dataloader import DataLoader

from domain import replies, threads
from domain.models import Message, Thread

T = TypeVar("T")
ReadRunner = Callable[[Callable[[AsyncSession], Awaitable[Any]]], Awaitable[Any]]


class Loaders:
    def __init__(self, run_read: ReadRunner, business_id: int) -> None:
        async def load_threads(ids: Sequence[int]) -> list[Thread | None]:
            found = await run_read(lambda s: threads.threads_by_ids(s, business_id, ids))
            return [found.get(thread_id) for thread_id in ids]

        async def load_last_messages(ids: Sequence[int]) -> list[Message | None]:
            found = await run_read(lambda s: threads.latest_messages(s, business_id, ids))
            return [found.get(thread_id) for thread_id in ids]

        async def load_quoted_messages(provider_ids: Sequence[str]) -> list[Message | None]:
            found = await run_read(lambda s: replies.quoted_messages(s, business_id, provider_ids))
            return [found.get(provider_id) for provider_id in provider_ids]

        async def load_phones(ids: Sequence[int]) -> list[list[str]]:
            found = await run_read(lambda s: threads.phones_of(s, business_id, ids))
            return [found.get(thread_id, []) for thread_id in ids]

        self.thread = DataLoader(load_fn=load_threads)
        self.phones = DataLoader(load_fn=load_phones)
        self.last_message = DataLoader(load_fn=load_last_messages)
        self.quoted_message = DataLoader(load_fn=load_quoted_messages)
