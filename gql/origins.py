"""Which browser origins may use the API: CORS for HTTP, the same list for websockets.

Browsers attach cookies to cross-site websocket handshakes and no CORS preflight guards them.
Starlette checks no Origin, and Strawberry only since 0.341 (given the same list as
`allowed_origins`); this guard refuses the handshake (HTTP 403) in front of both, unless the
page's Origin is on the allow-list or is this server itself. Clients that
are not browsers send no Origin and are judged by their bearer token alone. Credentials travel
only as bearer tokens, never cookies, so an allowed origin gains nothing it could not ask for.
"""

import logging

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("wa_inbox.origins")


class WebSocketOriginGuard:
    """Pure ASGI: refuses websocket handshakes from origins that are not allowed."""

    def __init__(self, app: ASGIApp, allowed_origins: tuple[str, ...]) -> None:
        self.app = app
        self.allowed_origins = frozenset(allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and not self._allows(scope):
            # Closing before accepting makes the server answer the handshake with 403.
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008})
            return
        await self.app(scope, receive, send)

    def _allows(self, scope: Scope) -> bool:
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is None:
            return True
        origin = origin.strip().rstrip("/").lower()
        if origin in self.allowed_origins:
            return True
        host = headers.get("host", "").lower()
        secure = scope.get("scheme") in ("wss", "https")
        same_origin = origin == f"{'https' if secure else 'http'}://{host}"
        if not same_origin:
            log.warning("websocket handshake from origin %r refused (CORS_ALLOWED_ORIGINS)", origin)
        return same_origin
