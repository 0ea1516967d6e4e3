"""Reading request bodies with a size bound, and the request id every log line carries."""

import uuid

from starlette.requests import ClientDisconnect, Request


class BodyTooLarge(Exception):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"request bodies are limited to {max_bytes} bytes")


class ClientGone(Exception):
    """The client disconnected before its body arrived."""


async def read_bounded_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, refused as soon as it (or its declared length) passes `max_bytes`."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise BodyTooLarge(max_bytes)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise BodyTooLarge(max_bytes)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientGone from None
    return b"".join(chunks)


def request_id_of(request: Request) -> str:
    """The caller's X-Request-Id when it is a plain token (it ends up in logs), else a new one."""
    offered = request.headers.get("x-request-id", "")
    if 0 < len(offered) <= 64 and all(ch.isalnum() or ch in "-_." for ch in offered):
        return offered
    return uuid.uuid4().hex
