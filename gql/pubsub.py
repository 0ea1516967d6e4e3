"""Pub/sub transports between server instances, behind broadcaster's backend interface.

broadcaster picks a backend by URL, but its listener task dies silently when the backend
fails and its subscriber queues are unbounded. These backends raise instead, so that the
fan-out hub's listener (gql/fanout.py) can log, reconnect with backoff and resync; delivery
to local subscribers never goes through them.
"""

import asyncio
from typing import Any
from urllib.parse import urlsplit

import asyncpg
from broadcaster._backends.base import BroadcastBackend
from broadcaster._base import Event
from redis import asyncio as redis

from db.engine import to_async_url

LIVENESS_CHECK_S = 5.0


class BackendLost(ConnectionError):
    """The pub/sub connection is gone; the listener reconnects."""


class RedisBackend(BroadcastBackend):
    """Redis PUBLISH/SUBSCRIBE; a dropped connection raises from `next_published`."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._client: redis.Redis | None = None
        self._pubsub: Any = None

    async def connect(self) -> None:
        client = redis.Redis.from_url(
            self._url,
            socket_connect_timeout=2,
            socket_timeout=5,
            socket_keepalive=True,
            health_check_interval=5,
        )
        try:
            await client.ping()
        except BaseException:
            await client.aclose()
            raise
        self._client = client
        self._pubsub = client.pubsub()

    async def disconnect(self) -> None:
        pubsub, client = self._pubsub, self._client
        self._pubsub = self._client = None
        if pubsub is not None:
            await pubsub.aclose()
        if client is not None:
            await client.aclose()

    async def subscribe(self, channel: str) -> None:
        await self._require_pubsub().subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        await self._require_pubsub().unsubscribe(channel)

    async def publish(self, channel: str, message: Any) -> None:
        if self._client is None:
            raise BackendLost("redis is not connected")
        await self._client.publish(channel, message)

    async def next_published(self) -> Event:
        pubsub = self._require_pubsub()
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None and message["type"] == "message":
                return Event(channel=message["channel"].decode(), message=message["data"].decode())

    def _require_pubsub(self) -> Any:
        if self._pubsub is None:
            raise BackendLost("redis is not connected")
        return self._pubsub


class PostgresBackend(BroadcastBackend):
    """PostgreSQL LISTEN/NOTIFY on one listening and one notifying connection."""

    def __init__(self, url: str) -> None:
        self._dsn = to_async_url(url).replace("postgresql+asyncpg://", "postgresql://", 1)
        self._listener: asyncpg.Connection | None = None
        self._notifier: asyncpg.Connection | None = None
        self._received: asyncio.Queue[Event | None] = asyncio.Queue()

    async def connect(self) -> None:
        self._received = asyncio.Queue()
        self._listener = await asyncpg.connect(self._dsn, timeout=5)
        # A terminated LISTEN connection says so through this callback, not through a read.
        self._listener.add_termination_listener(lambda _: self._received.put_nowait(None))

    async def disconnect(self) -> None:
        for connection in (self._listener, self._notifier):
            if connection is not None and not connection.is_closed():
                connection.terminate()
        self._listener = self._notifier = None

    async def subscribe(self, channel: str) -> None:
        await self._require_listener().add_listener(channel, self._on_notification)

    async def unsubscribe(self, channel: str) -> None:
        await self._require_listener().remove_listener(channel, self._on_notification)

    async def publish(self, channel: str, message: Any) -> None:
        if self._notifier is None or self._notifier.is_closed():
            self._notifier = await asyncpg.connect(self._dsn, timeout=5)
        try:
            await self._notifier.execute("SELECT pg_notify($1, $2)", channel, message, timeout=5)
        except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError):
            self._notifier = None
            raise

    async def next_published(self) -> Event:
        listener = self._require_listener()
        while True:
            try:
                event = await asyncio.wait_for(self._received.get(), LIVENESS_CHECK_S)
            except TimeoutError:
                # A silent network can hide a dead connection; ask it something.
                await listener.fetchval("SELECT 1", timeout=LIVENESS_CHECK_S)
                continue
            if event is None:
                raise BackendLost("the LISTEN connection was terminated")
            return event

    def _on_notification(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        self._received.put_nowait(Event(channel=channel, message=payload))

    def _require_listener(self) -> asyncpg.Connection:
        if self._listener is None or self._listener.is_closed():
            raise BackendLost("the LISTEN connection is not open")
        return self._listener


def backend_for(url: str) -> BroadcastBackend | None:
    """The cross-instance backend for BROADCAST_URL; None for memory:// (one process)."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return None
    if scheme in ("redis", "rediss"):
        return RedisBackend(url)
    if scheme in ("postgres", "postgresql", "postgresql+asyncpg"):
        return PostgresBackend(url)
    raise ValueError(f"BROADCAST_URL must be memory://, redis://... or postgres://..., not {url!r}")
