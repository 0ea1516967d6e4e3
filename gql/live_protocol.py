"""uvicorn's `websockets-sansio` protocol, holding less for each open websocket (issue 15).

A subscriber's connection lives for hours and does almost nothing; what it holds is what a
server with thousands of them pays for. uvicorn's protocol keeps, per connection, an
`asyncio.Queue` for ASGI receive events (four deques and an event, ~3 KB), an `asyncio.Event`
for flow control (~0.9 KB), and the parsed handshake request and response with their headers
(~4.5 KB) that nothing reads once the handshake is done. This subclass swaps the first two for
single-waiter equivalents and lets the handshake go; the wire behaviour is uvicorn's.
Passed to uvicorn as `ws=LeanWebSocketsProtocol` (gql/__main__.py websocket_server_options).
"""

import asyncio
from collections import deque
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


class ReceiveEvents:
    """The `asyncio.Queue` methods uvicorn's protocol uses, for its one consumer (the app's
    `receive`); nothing is allocated until an event has to wait or be waited for."""

    __slots__ = ("_events", "_waiter")

    def __init__(self) -> None:
        self._events: deque[Any] | None = None
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, event: Any) -> None:
        if self._events is None:
            self._events = deque()
        self._events.append(event)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def empty(self) -> bool:
        return not self._events

    async def get(self) -> Any:
        while not self._events:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        event = self._events.popleft()
        if not self._events:
            self._events = None
        return event


class Writable:
    """The `asyncio.Event` methods uvicorn's protocol uses for its write flow control; a
    future only exists while the transport's buffer is full and a send waits."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)
        return True


class LeanWebSocketsProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol with a smaller footprint per connection."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = ReceiveEvents()  # type: ignore[assignment]
        self.writable = Writable()  # type: ignore[assignment]

    def start_keepalive(self) -> None:
        # Called once, right after the handshake's response is written: from here on
        # uvicorn never reads the parsed request or the response again (the ASGI scope has
        # its own copy of the headers). websockets' parser generator keeps the request in a
        # local for the life of the connection, so its headers are emptied, not just dropped.
        super().start_keepalive()
        request = self.__dict__.pop("request", None)
        if request is not None:
            request.headers.clear()
        self.__dict__.pop("response", None)
