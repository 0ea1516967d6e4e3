"""A minimal HTTP/1.1 keep-alive client for the suite: a request is its bytes, built once.

httpx spends longer building a request and reading its answer than the floor spends serving
it (measured for issue 14 on the 2-core machine, client and servers sharing it: httpx added 2
to 4 ms to every badge, the floor's whole answer is 1-2 ms), so its cost sat in every figure,
on both sides, diluting each ratio, and capped the requests per second 16 connections offer.
This client writes prepared bytes and reads the status line, the headers and a Content-Length
body; chunked answers and anything else are refused (both servers send Content-Length). Reads
send the same bytes every time; ingest builds each message's request with `prepared_request`
too (issue 15), since on a 2-core machine the client's CPU is taken from the servers'.
"""

import asyncio
import contextlib
import json
from typing import Any
from urllib.parse import urlencode, urlsplit


class HttpError(Exception):
    """A status other than 200, or an answer this client does not read."""


def prepared_request(
    base_url: str,
    method: str,
    path: str,
    *,
    params: dict[str, Any] | None = None,
    json_body: Any = None,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    """The bytes of one request, sent as they are every time: a JSON body given as `json_body`
    (serialized here) or as `content` (bytes already serialized, for a signed webhook)."""
    host = urlsplit(base_url).netloc
    target = f"{path}?{urlencode(params)}" if params else path
    if content is None and json_body is not None:
        content = json.dumps(json_body).encode()
    body = content or b""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: keep-alive"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if content is not None:
        lines += ["Content-Type: application/json"]
    if method != "GET":
        lines += [f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Connection:
    """One keep-alive connection: one request at a time, answers read in full."""

    def __init__(
        self, base_url: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._base_url = base_url
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, base_url: str) -> "Connection":
        parts = urlsplit(base_url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        return cls(base_url, reader, writer)

    async def send(self, request: bytes) -> bytes:
        """The body of the answer to `request`; HttpError unless it is a 200."""
        self._writer.write(request)
        try:
            head = await self._reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as closed:
            if closed.partial:
                raise
            # The server closed the connection while it was idle (uvicorn's keep-alive
            # timeout is 5 s): nothing of the request was answered, so it is safe to resend.
            await self.close()
            parts = urlsplit(self._base_url)
            self._reader, self._writer = await asyncio.open_connection(parts.hostname, parts.port)
            self._writer.write(request)
            head = await self._reader.readuntil(b"\r\n\r\n")
        status_line, _, header_block = head.partition(b"\r\n")
        length = None
        for line in header_block.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
            elif name.strip().lower() == b"transfer-encoding":
                raise HttpError(f"unsupported transfer-encoding: {value.strip().decode()}")
        if length is None:
            raise HttpError(f"no Content-Length in {status_line.decode()}")
        body = await self._reader.readexactly(length)
        if not status_line.startswith(b"HTTP/1.1 200 "):
            raise HttpError(f"{status_line.decode()}: {body[:500].decode(errors='replace')}")
        return body

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()
