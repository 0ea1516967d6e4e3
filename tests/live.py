"""A real server for websocket tests, and a small client of both GraphQL websocket protocols."""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from websockets.asyncio.client import ClientConnection, connect

from gql.live_protocol import LeanWebSocketsProtocol
from tests.conftest import token_for

TRANSPORT_WS = "graphql-transport-ws"
LEGACY_WS = "graphql-ws"


@contextlib.asynccontextmanager
async def serving(app: Starlette, **options: Any) -> AsyncIterator[str]:
    """Serve `app` with uvicorn on a free port of 127.0.0.1; yields the ws:// URL of /graphql.

    Websockets use the protocol gql/live_protocol.py gives uvicorn, unless `options` say.
    """
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan="off",  # the app fixture runs the lifespan already
        **{"ws": LeanWebSocketsProtocol, "ws_per_message_deflate": False, **options},
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
        if task.done():
            task.result()
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"ws://127.0.0.1:{port}/graphql"
    finally:
        server.should_exit = True
        await task


class GraphQLSocket:
    """One websocket speaking graphql-transport-ws (default) or the legacy graphql-ws."""

    def __init__(self, connection: ClientConnection, protocol: str) -> None:
        self.connection = connection
        self.protocol = protocol

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, url: str, protocol: str = TRANSPORT_WS, business_id: int | None = 1
    ) -> AsyncIterator["GraphQLSocket"]:
        async with connect(url, subprotocols=[protocol], max_size=2**22) as connection:  # type: ignore[list-item]
            socket = cls(connection, protocol)
            if business_id is not None:
                await socket.init({"Authorization": f"Bearer {token_for(business_id)}"})
            yield socket

    async def send(self, message: dict[str, Any]) -> None:
        await self.connection.send(json.dumps(message))

    async def receive(self, wait_s: float = 5.0) -> dict[str, Any]:
        """The next message that is not a keep-alive."""
        while True:
            raw = await asyncio.wait_for(self.connection.recv(), wait_s)
            message: dict[str, Any] = json.loads(raw)
            if message.get("type") not in ("ping", "pong", "ka"):
                return message

    async def init(self, payload: dict[str, Any] | None) -> dict[str, Any]:
        await self.send({"type": "connection_init", "payload": payload})
        ack = await self.receive()
        assert ack["type"] == "connection_ack", ack
        return ack

    async def subscribe(
        self, operation_id: str, query: str, variables: dict[str, Any] | None = None
    ) -> None:
        kind = "subscribe" if self.protocol == TRANSPORT_WS else "start"
        payload = {"query": query, "variables": variables or {}}
        await self.send({"id": operation_id, "type": kind, "payload": payload})

    async def complete(self, operation_id: str) -> None:
        kind = "complete" if self.protocol == TRANSPORT_WS else "stop"
        await self.send({"id": operation_id, "type": kind})

    async def next_payload(self, wait_s: float = 5.0) -> dict[str, Any]:
        """The payload of the next data message."""
        message = await self.receive(wait_s)
        assert message["type"] in ("next", "data"), message
        payload: dict[str, Any] = message["payload"]
        return payload


NEW_MESSAGE = """
subscription NewMessage($threadId: ID) {
  newMessage(threadId: $threadId) {
    id threadId body direction source status providerMessageId sentAt createdAt
    thread { id phone canonicalKey unreadCount }
  }
}
"""

UNREAD_COUNT_CHANGED = "subscription { unreadCountChanged { threadId unreadCount totalUnread } }"
