"""The per-request context: who is asking, the request's reads, its DataLoaders."""

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from db.unit_of_work import ReadOnlyUnit, Sessions, open_read_only
from domain.access import Role
from domain.channel_tokens import TokenVault
from domain.events import InboxEvent
from domain.group_commit import GroupCommit
from domain.metrics import InboxMetrics
from domain.send_attempts import DEFAULT_SEND_DEADLINE
from gql.auth import Principal
from gql.loaders import Loaders

T = TypeVar("T")


class RequestReads:
    """The request's read unit of work: one read-only transaction (db/unit_of_work.py
    open_read_only), opened on first use, rolled back at the end.

    Resolvers run concurrently while a session serves one statement at a time, so reads
    queue on a lock. Writes never go through here: each mutation has its own unit of work.
    """

    def __init__(self, sessions: Sessions, business_id: int) -> None:
        self._sessions = sessions
        self._business_id = business_id
        self._unit: ReadOnlyUnit | None = None
        self._lock = asyncio.Lock()
        self._finished = False

    async def run(self, read: Callable[[AsyncSession], Awaitable[T]]) -> T:
        async with self._lock:
            if self._finished:
                # A resolver that outlived its request (a sibling field failed and execution
                # returned early): its result is discarded, and it must not open a session
                # that nobody would close.
                raise RequestFinished
            if self._unit is None:
                self._unit = await open_read_only(self._sessions, self._business_id)
            return await read(self._unit.session)

    async def close(self, *, final: bool = False) -> None:
        """Give the connection back; `final` at the end of the request (no reads after it).

        Waits for a read in progress: closing a session under a running statement would break
        the connection it is using.
        """
        async with self._lock:
            self._finished = self._finished or final
            if self._unit is not None:
                unit, self._unit = self._unit, None
                await unit.close()


class RequestFinished(Exception):
    """A read was asked for after its request had ended."""


def _no_sender() -> None:
    """Without a sender (tools, tests of the edge alone) queued sends wait for one."""


@dataclass(frozen=True)
class Sending:
    """What sendMessage needs from the server: how long a send may be tried, and the sender
    to wake once the message is committed."""

    deadline: timedelta = DEFAULT_SEND_DEADLINE
    wake_sender: Callable[[], None] = _no_sender


@dataclass
class Context:
    request_id: str
    principal: Principal
    sessions: Sessions
    default_region: str
    metrics: InboxMetrics
    # Hands committed events to the live-updates hub (gql/fanout.py) without waiting.
    publish: Callable[[InboxEvent | None], None]
    # Concurrent ingests of a business share one statement (domain/group_commit.py).
    group_commit: GroupCommit | None = None
    # Seals channel access tokens (CHANNEL_SECRET_KEY); None when the server has no key.
    token_vault: TokenVault | None = None
    sending: Sending = field(default_factory=Sending)
    reads: RequestReads = field(init=False)
    loaders: Loaders = field(init=False)

    def __post_init__(self) -> None:
        self.reads = RequestReads(self.sessions, self.principal.business_id)
        self.loaders = Loaders(self.reads.run, self.principal.business_id)

    def forget_loaded(self) -> None:
        """Drop what the loaders cached: a write just changed it."""
        self.loaders = Loaders(self.reads.run, self.principal.business_id)

    @property
    def business_id(self) -> int:
        return self.principal.business_id

    @property
    def role(self) -> Role:
        return self.principal.role


@dataclass(frozen=True)
class ContextFactory:
    """Builds the context of each unit of work: HTTP requests, socket operations, events."""

    sessions: Sessions
    default_region: str
    metrics: InboxMetrics
    publish: Callable[[InboxEvent | None], None]
    group_commit: GroupCommit | None = None
    token_vault: TokenVault | None = None
    sending: "Sending" = field(default_factory=Sending)

    def __call__(self, principal: Principal, request_id: str) -> Context:
        return Context(
            request_id=request_id,
            principal=principal,
            sessions=self.sessions,
            default_region=self.default_region,
            metrics=self.metrics,
            publish=self.publish,
            group_commit=self.group_commit,
            token_vault=self.token_vault,
            sending=self.sending,
        )
