"""gql/live_protocol.py: what an open websocket no longer holds (issue 15).

Every websocket test serves with this protocol (tests/live.py), so its wire behaviour is
uvicorn's as those tests see it; here, what it lets go of once the handshake is done.
"""

import asyncio
import gc
import weakref

from starlette.applications import Starlette
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

from tests.live import UNREAD_COUNT_CHANGED, GraphQLSocket, serving


def _live_objects() -> list[object]:
    """Every object the collector tracks, but weak proxies: isinstance() asks a proxy for its
    referent's class, which raises once the referent is gone (other tests leave some)."""
    return [o for o in gc.get_objects() if type(o) not in weakref.ProxyTypes]


def _open_server_protocols() -> list[WebSocketsSansIOProtocol]:
    return [
        o for o in _live_objects() if isinstance(o, WebSocketsSansIOProtocol) and not o.disconnected
    ]


def _handshake_requests_with_headers() -> list[Request]:
    """Handshake requests to /graphql whose headers are still held (client's and server's)."""
    return [
        o
        for o in _live_objects()
        if isinstance(o, Request) and "Sec-WebSocket-Key" in o.headers and o.path == "/graphql"
    ]


async def test_an_open_subscriber_socket_keeps_no_handshake_and_no_asyncio_queue(
    app: Starlette,
) -> None:
    async with serving(app) as url, GraphQLSocket.open(url) as socket:
        await socket.subscribe("badge", UNREAD_COUNT_CHANGED)
        await asyncio.sleep(0.05)
        [protocol] = _open_server_protocols()
        assert "request" not in vars(protocol)
        assert "response" not in vars(protocol)
        assert not isinstance(protocol.queue, asyncio.Queue)
        assert not isinstance(protocol.writable, asyncio.Event)
        # The client keeps its own request; only that one may still have headers.
        assert len(_handshake_requests_with_headers()) <= 1
