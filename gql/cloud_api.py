"""The WhatsApp Cloud API's send endpoint, as the sender calls it: one POST per attempt, its
answer read into what domain/send_attempts.py decides on.

Whether a failed request may be repeated depends on whether it reached Meta: a connection that
could not be opened is `NotSent`; one that ended after the request was written, or an answer
that did not come in time, is `OutcomeUnknown` (Meta may have taken the message). The token is
sent in the Authorization header only, and never logged.
"""

import asyncio
import logging
from typing import Any

import httpx

from domain.send_attempts import Accepted, AttemptResult, NotSent, OutcomeUnknown, Rejected

log = logging.getLogger("wa_inbox.cloud_api")

DEFAULT_BASE_URL = "https://graph.facebook.com"
DEFAULT_VERSION = "v23.0"
# Longest error title kept: Meta's messages are a sentence or two.
MAX_TITLE_LENGTH = 500


class CloudApi:
    """An HTTP client for `POST {base_url}/{version}/{phone_number_id}/messages`."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        version: str = DEFAULT_VERSION,
        *,
        timeout_s: float = 20.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.version = version
        # httpx's timeouts bound each read; the whole request is bounded by it too (below), so
        # an answer trickling in cannot outlive the lease.
        self._timeout_s = timeout_s
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        # Made at the first send: its TLS context takes ~50 ms to load, which a server that
        # never sends (and every test app) need not pay at start.
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self._timeout_s, connect=min(self._timeout_s, 10.0)),
                # Short keep-alive: a pooled connection the far end has already closed fails
                # as "disconnected without a response", which would count as an unknown outcome.
                limits=httpx.Limits(max_connections=20, keepalive_expiry=4.0),
                transport=self._transport,
                headers={"user-agent": "wa-inbox"},
                follow_redirects=False,
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def post_message(
        self, phone_number_id: str, access_token: str, request: dict[str, Any]
    ) -> AttemptResult:
        url = f"{self.base_url}/{self.version}/{phone_number_id}/messages"
        try:
            async with asyncio.timeout(self._timeout_s):
                response = await self._http().post(
                    url, json=request, headers={"authorization": f"Bearer {access_token}"}
                )
        except TimeoutError:
            return OutcomeUnknown("no whole answer in time")
        except (
            httpx.ConnectError,
            httpx.ConnectTimeout,
            httpx.PoolTimeout,
            httpx.UnsupportedProtocol,
        ) as error:
            return NotSent(f"no connection to the Cloud API ({type(error).__name__})")
        except httpx.TimeoutException as error:
            return OutcomeUnknown(f"no answer in time ({type(error).__name__})")
        except httpx.TransportError as error:
            return OutcomeUnknown(
                f"the connection ended before the answer ({type(error).__name__})"
            )
        return _read_answer(response)


def _read_answer(response: httpx.Response) -> AttemptResult:
    body = _json_object(response)
    if response.status_code == 200:
        messages = body.get("messages") if body is not None else None
        if (
            isinstance(messages, list)
            and messages
            and isinstance(messages[0], dict)
            and isinstance(messages[0].get("id"), str)
            and messages[0]["id"]
        ):
            return Accepted(messages[0]["id"])
        # Meta answered yes without saying to what: the message may well be on its way.
        return OutcomeUnknown("HTTP 200 without a message id")
    error = body.get("error") if body is not None else None
    code = None
    title = f"HTTP {response.status_code} from the Cloud API"
    if isinstance(error, dict):
        if isinstance(error.get("code"), int):
            code = error["code"]
        details = error.get("error_data", {})
        described = details.get("details") if isinstance(details, dict) else None
        message = error.get("message")
        parts = [part for part in (message, described) if isinstance(part, str) and part]
        if len(parts) == 2 and parts[1] in parts[0]:
            parts.pop()  # Meta often repeats the title as the details
        if parts:
            title = ": ".join(parts)[:MAX_TITLE_LENGTH]
    return Rejected(response.status_code, code, title, _retry_after(response))


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        return None  # an HTTP date: rare from Meta, and the backoff covers it
    return min(max(seconds, 0.0), 3600.0)
