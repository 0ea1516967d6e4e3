"""Per-request DataLoaders: one statement per field per page, results in key order."""

import functools
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.dataloader import DataLoader

from domain import replies, threads
from domain.models import Message, Thread

T = TypeVar("T")
ReadRunner = Callable[[Callable[[AsyncSession], Awaitable[Any]]], Awaitable[Any]]


class Loaders:
    """A request's DataLoaders, each made when a field first asks for it: most requests (a
    badge, a mutation) need one or none, and a DataLoader costs more to build than a badge's
    whole statement."""

    def __init__(self, run_read: ReadRunner, business_id: int) -> None:
        self._run_read = run_read
        self._business_id = business_id

    @functools.cached_property
    def thread(self) -> DataLoader[int, Thread | None]:
        async def load_threads(ids: Sequence[int]) -> list[Thread | None]:
            found = await self._run_read(
                lambda s: threads.threads_by_ids(s, self._business_id, ids)
            )
            return [found.get(thread_id) for thread_id in ids]

        return DataLoader(load_fn=load_threads)

    @functools.cached_property
    def phones(self) -> DataLoader[int, list[str]]:
        async def load_phones(ids: Sequence[int]) -> list[list[str]]:
            found = await self._run_read(lambda s: threads.phones_of(s, self._business_id, ids))
            return [found.get(thread_id, []) for thread_id in ids]

        return DataLoader(load_fn=load_phones)

    @functools.cached_property
    def last_message(self) -> DataLoader[int, Message | None]:
        async def load_last_messages(ids: Sequence[int]) -> list[Message | None]:
            found = await self._run_read(
                lambda s: threads.latest_messages(s, self._business_id, ids)
            )
            return [found.get(thread_id) for thread_id in ids]

        return DataLoader(load_fn=load_last_messages)

    @functools.cached_property
    def service_window(self) -> DataLoader[int, datetime | None]:
        async def load_service_windows(ids: Sequence[int]) -> list[datetime | None]:
            found = await self._run_read(
                lambda s: threads.service_windows_expiring(s, self._business_id, ids)
            )
            return [found.get(thread_id) for thread_id in ids]

        return DataLoader(load_fn=load_service_windows)

    @functools.cached_property
    def quoted_message(self) -> DataLoader[str, Message | None]:
        async def load_quoted_messages(provider_ids: Sequence[str]) -> list[Message | None]:
            found = await self._run_read(
                lambda s: replies.quoted_messages(s, self._business_id, provider_ids)
            )
            return [found.get(provider_id) for provider_id in provider_ids]

        return DataLoader(load_fn=load_quoted_messages)
