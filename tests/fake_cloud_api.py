"""A fake WhatsApp Cloud API for send-path tests: a real HTTP server on loopback, in its own
threads, so it keeps answering while the test's event loop is busy or a server process dies.

It serves `POST /{version}/{phone_number_id}/messages`, records every request, and answers from
a script (`answer_next`) before falling back to its default answer (success). Shapes follow
../shared/whatsapp/README.md (sending) and Meta's Cloud API error reference.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import re
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlsplit

MESSAGES_PATH = re.compile(r"^/(?P<version>[^/]+)/(?P<phone_number_id>[^/]+)/messages/?$")

# Titles as Meta documents them; `http_error` uses them when a test gives no title.
ERROR_TITLES: Mapping[int, str] = {
    1: "API Unknown",
    2: "API Service",
    4: "API Too Many Calls",
    100: "Invalid parameter",
    190: "Invalid OAuth access token - Cannot parse access token",
    80007: "Rate limit issues",
    130429: "Rate limit hit",
    130472: "User's number is part of an experiment",
    131000: "Something went wrong",
    131008: "Required parameter is missing",
    131016: "Service unavailable",
    131026: "Message undeliverable",
    131047: "Re-engagement message",
    131049: "This message was not delivered to maintain healthy ecosystem engagement.",
    131050: "User has stopped marketing messages",
    131056: "(Business Account, Consumer Account) pair rate limit hit",
    131057: "Account in maintenance mode",
    132000: "Number of parameters does not match the expected number of params",
    132001: "Template name does not exist in the translation",
    133004: "Server temporarily unavailable",
}
DEFAULT_CODE_BY_STATUS: Mapping[int, int] = {400: 100, 401: 190, 429: 130429, 500: 1, 503: 2}


@dataclass(frozen=True)
class Answer:
    """How the fake answers one request; build it with `success`, `http_error`, `slow`,
    `drop_after_reading` or `hold`."""

    kind: Literal["reply", "drop", "hold"]
    status: int = 200
    # The Cloud API `error` object; None for a success (which carries a fresh wamid).
    error: Mapping[str, Any] | None = None
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0
    # For `hold`: the answer sent once the held request is released.
    then: Answer | None = None
    # For a success: the id to answer with (None: a fresh wamid.FAKE...).
    wamid: str | None = None


def success(wamid: str | None = None) -> Answer:
    """HTTP 200 with `contacts` and `messages[0].id`: `wamid`, or a unique wamid.FAKE..."""
    return Answer(kind="reply", wamid=wamid)


def http_error(
    status: int,
    code: int | None = None,
    title: str | None = None,
    retry_after: float | None = None,
    details: str | None = None,
    subcode: int | None = None,
) -> Answer:
    """An error answer in the Cloud API shape: `{"error": {message, type, code, error_data:
    {messaging_product, details}, [error_subcode], fbtrace_id}}`, with `Retry-After` if given.
    `code` defaults by status (400: 100, 401: 190, 429: 130429, 500: 1, 503: 2, else 131000)."""
    code = code if code is not None else DEFAULT_CODE_BY_STATUS.get(status, 131000)
    title = title if title is not None else ERROR_TITLES.get(code, "Unknown error")
    error: dict[str, Any] = {
        "message": f"(#{code}) {title}",
        "type": "OAuthException",
        "code": code,
        "error_data": {"messaging_product": "whatsapp", "details": details or title},
    }
    if subcode is not None:
        error["error_subcode"] = subcode
    headers = () if retry_after is None else (("Retry-After", f"{retry_after:g}"),)
    return Answer(kind="reply", status=status, error=error, headers=headers)


def slow(seconds: float, then: Answer | None = None) -> Answer:
    """`then` (default: success), given only after `seconds` (the request is recorded at once)."""
    then = then if then is not None else success()
    return dataclasses.replace(then, delay=then.delay + seconds)


def drop_after_reading() -> Answer:
    """Read and record the whole request, then close the connection without any answer."""
    return Answer(kind="drop")


def hold(then: Answer | None = None) -> Answer:
    """Read and record the request, then answer nothing until `release_held()` (then send
    `then`, default success) or `stop()` (then close the connection unanswered)."""
    return Answer(kind="hold", then=then if then is not None else success())


@dataclass
class RecordedRequest:
    """One request as the fake received it. `answer` is the status sent (or about to be sent,
    after a `slow` delay), "dropped", or "held" while held or if `stop()` closed it unanswered."""

    method: str
    path: str
    version: str | None
    phone_number_id: str | None
    # Lower-case names; kept out of repr so tokens never reach a log or a failure message.
    headers: dict[str, str] = field(repr=False)
    json: Any = field(repr=False)
    body: bytes = field(repr=False)
    received_at: float
    answer: int | Literal["dropped", "held"] = "held"
    wamid: str | None = None

    def summary(self) -> str:
        """One line for logs: no headers, no message text."""
        kind = self.json.get("type") if isinstance(self.json, dict) else None
        return f"{self.method} {self.path} type={kind} -> {self.answer}" + (
            f" {self.wamid}" if self.wamid else ""
        )


class FakeCloudApi:
    """A fake Cloud API on http://127.0.0.1:<free port>: `start()`/`stop()` or `with`."""

    def __init__(self, default: Answer | None = None) -> None:
        self.default = default if default is not None else success()
        self._cond = threading.Condition()
        self._requests: list[RecordedRequest] = []
        self._script: deque[Answer] = deque()
        self._held: set[int] = set()
        self._tickets = itertools.count(1)
        self._stopped = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # Life cycle

    def start(self) -> FakeCloudApi:
        """Bind a free loopback port and serve from a daemon thread."""
        if self._server is not None:
            raise RuntimeError("FakeCloudApi already started")
        self._stopped.clear()
        self._server = _Server(("127.0.0.1", 0), _Handler, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-cloud-api",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close every open connection (held ones unanswered). Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        with self._cond:
            self._stopped.set()
            self._cond.notify_all()
            connections = list(self._connections)
        server.shutdown()
        for connection in connections:
            # Wakes handler threads blocked reading an idle keep-alive connection.
            with contextlib.suppress(OSError):  # already closed by its client
                connection.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeCloudApi:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """e.g. "http://127.0.0.1:54321" (no trailing slash)."""
        if self._server is None:
            raise RuntimeError("FakeCloudApi not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # Script and records

    def answer_next(self, *answers: Answer) -> None:
        """Queue answers for the next message requests, in order; then the default applies."""
        with self._cond:
            self._script.extend(answers)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the recorded requests, oldest first."""
        with self._cond:
            return list(self._requests)

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Return the recorded requests once there are at least `n`; AssertionError with the
        log (no headers, no bodies) if that takes longer than `timeout` seconds."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._requests) >= n, timeout=timeout):
                log = "\n".join(f"  {r.summary()}" for r in self._requests) or "  (none)"
                raise AssertionError(
                    f"fake Cloud API: expected {n} request(s) within {timeout}s, "
                    f"got {len(self._requests)}:\n{log}"
                )
            return list(self._requests)

    def release_held(self) -> int:
        """Let every currently held request be answered; returns how many were held."""
        with self._cond:
            released = len(self._held)
            self._held.clear()
            self._cond.notify_all()
            return released

    # Used by the handler threads

    def _record(self, request: RecordedRequest) -> None:
        with self._cond:
            self._requests.append(request)
            self._cond.notify_all()

    def _next_answer(self) -> Answer:
        with self._cond:
            return self._script.popleft() if self._script else self.default

    def _set_outcome(
        self, request: RecordedRequest, answer: int | Literal["dropped", "held"], wamid: str | None
    ) -> None:
        with self._cond:
            request.answer, request.wamid = answer, wamid

    def _hold(self) -> bool:
        """Block until released (True) or stopped (False)."""
        ticket = next(self._tickets)
        with self._cond:
            self._held.add(ticket)
            self._cond.wait_for(lambda: ticket not in self._held or self._stopped.is_set())
            self._held.discard(ticket)
            return not self._stopped.is_set()

    def _wamid(self) -> str:
        return f"wamid.FAKE{next(self._tickets):06d}{secrets.token_hex(8).upper()}"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], handler: type[_Handler], fake: FakeCloudApi
    ) -> None:
        self.fake = fake
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-answer (a timeout, a killed process) is expected here.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.fake._cond:
            self.server.fake._connections.add(self.connection)

    def finish(self) -> None:
        with self.server.fake._cond:
            self.server.fake._connections.discard(self.connection)
        with contextlib.suppress(OSError):  # the client is gone; nothing left to flush to
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: pytest output stays readable, and nothing about a request is printed

    def do_POST(self) -> None:
        self._handle()

    do_GET = do_PUT = do_DELETE = do_PATCH = do_POST

    def _handle(self) -> None:
        fake = self.server.fake
        body = self._read_body()
        path = urlsplit(self.path).path
        match = MESSAGES_PATH.match(path) if self.command == "POST" else None
        try:
            parsed: Any = json.loads(body) if body else None
        except ValueError:
            parsed = None
        request = RecordedRequest(
            method=self.command,
            path=path,
            version=match["version"] if match else None,
            phone_number_id=match["phone_number_id"] if match else None,
            headers={name.lower(): value for name, value in self.headers.items()},
            json=parsed,
            body=body,
            received_at=time.monotonic(),
        )
        if match is None:
            answer = http_error(404, code=100, title=f"Unsupported {self.command} request")
        elif (problem := _invalid_send(parsed)) is not None:
            # Invalid sends are refused as Meta would, without using up a scripted answer.
            answer = http_error(400, code=100, title=problem)
        else:
            answer = fake._next_answer()
        self._answer(request, answer, recorded=False)

    def _answer(self, request: RecordedRequest, answer: Answer, recorded: bool) -> None:
        fake = self.server.fake
        outcome: int | Literal["dropped", "held"] = answer.status
        if answer.kind == "drop":
            outcome = "dropped"
        elif answer.kind == "hold":
            outcome = "held"
        wamid = (
            (answer.wamid or fake._wamid())
            if answer.kind == "reply" and answer.error is None
            else None
        )
        fake._set_outcome(request, outcome, wamid)
        if not recorded:
            fake._record(request)
        if answer.delay and fake._stopped.wait(answer.delay):
            self._hang_up()
            return
        if answer.kind == "drop":
            self._hang_up()
        elif answer.kind == "hold":
            if fake._hold() and answer.then is not None:
                self._answer(request, answer.then, recorded=True)
            else:
                self._hang_up()
        elif answer.error is not None:
            self._send_json(answer.status, {"error": _with_trace_id(answer.error)}, answer.headers)
        else:
            self._send_json(answer.status, _accepted(request.json, wamid or ""), answer.headers)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():
                pass  # trailers
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send_json(
        self, status: int, payload: Mapping[str, Any], headers: tuple[tuple[str, str], ...]
    ) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:  # the client asked for `Connection: close`
            self.send_header("Connection", "close")
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _hang_up(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):  # already gone
            self.connection.shutdown(socket.SHUT_RDWR)


def _invalid_send(body: Any) -> str | None:
    """Why the Cloud API would refuse this send body outright, or None."""
    if not isinstance(body, dict):
        return "The request body must be a JSON object"
    if body.get("messaging_product") != "whatsapp":
        return "The parameter messaging_product is required"
    if not (body.get("to") or body.get("recipient")):
        return "The parameter to is required"
    kind = body.get("type", "text")
    if not isinstance(body.get(kind), dict):
        return f"The parameter {kind} is required"
    return None


def _accepted(body: Any, wamid: str) -> dict[str, Any]:
    recipient = body.get("to") or body.get("recipient") if isinstance(body, dict) else None
    return {
        "messaging_product": "whatsapp",
        "contacts": [{"input": recipient, "wa_id": recipient}],
        "messages": [{"id": wamid}],
    }


def _with_trace_id(error: Mapping[str, Any]) -> dict[str, Any]:
    return {**error, "fbtrace_id": f"AFake{secrets.token_urlsafe(12)}"}
