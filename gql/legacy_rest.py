"""The legacy front end's REST endpoints (issue 13), thin over the same domain as GraphQL.

Each endpoint parses the request, calls the domain functions the GraphQL resolvers call and
converts the result to the legacy's snake_case JSON, so the two APIs cannot answer differently.
Errors are `{"error": {"code", "message"}}` with the matching status; anything unexpected is
masked as INTERNAL_SERVER_ERROR with the request id, and logged in full under it.
"""

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from db.unit_of_work import Sessions, read_only_unit_of_work
from domain import access, read_state, threads
from domain.errors import BadInput, DomainError, NotFound, Unauthenticated
from domain.events import InboxEvent
from domain.metrics import InboxMetrics
from domain.models import Message, MessageStatus, Thread
from domain.pagination import MAX_PAGE_SIZE, decode_cursor
from domain.thread_references import find_thread_by_reference
from gql.arguments import parse_row_id
from gql.auth import Principal, authenticate, refused_request_challenge
from gql.openapi import legacy_rest_openapi
from gql.request_bodies import BodyTooLarge, ClientGone, read_bounded_body, request_id_of

log = logging.getLogger("wa_inbox.legacy_rest")

DEFAULT_LIMIT = 50

# Domain codes keep their names; the status is what a REST client branches on.
_STATUS_OF_CODE = {
    "BAD_USER_INPUT": 400,
    "UNAUTHENTICATED": 401,
    "FORBIDDEN": 403,
    "NOT_FOUND": 404,
    "CONFLICT": 409,
}
# What Flask front ends send for a checkbox, and what an OpenAPI client sends for a boolean.
_TRUE = ("true", "1")
_FALSE = ("false", "0")


class Refused(Exception):
    """A request answered with an error envelope before (or instead of) the domain's answer."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        **details: str,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.details = details


def thread_json(thread: Thread, last_message: Message | None) -> dict[str, Any]:
    return {
        "id": thread.id,
        "canonical_key": thread.canonical_key,
        "phone": thread.phone_e164,
        "lead_id": thread.lead_id,
        "status": thread.status.value,
        "started_at": thread.started_at.isoformat(),
        "last_message_at": thread.last_message_at.isoformat(),
        "last_read_at": thread.last_read_at.isoformat() if thread.last_read_at else None,
        "unread_count": thread.unread_count,
        "last_message": message_json(last_message) if last_message is not None else None,
    }


def message_json(message: Message) -> dict[str, Any]:
    return {
        "id": message.id,
        "conversation_id": message.thread_id,
        "direction": message.direction.value,
        "source": message.source.value,
        "status": message.status.value,
        # As in GraphQL: a deleted (or revoked) message stays in its thread, its text does not.
        "body": None if message.status is MessageStatus.DELETED else message.body,
        "provider_message_id": message.provider_message_id,
        "message_type": message.message_type,
        "created_at": message.created_at.isoformat(),
        "sent_at": message.sent_at.isoformat(),
    }


Handler = Callable[[Request, Principal], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class AnyMethod:
    """An endpoint as a plain ASGI app: Starlette routes every method to it (a function
    endpoint would get Starlette's text 405), so a wrong one gets the JSON error envelope."""

    respond: Callable[[Request], Awaitable[Response]]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.respond(Request(scope, receive))
        await response(scope, receive, send)


@dataclass(frozen=True)
class LegacyRestEndpoints:
    """The routes' handlers; each request authenticates, then runs its own units of work."""

    sessions: Sessions
    auth_secret: str
    default_region: str
    metrics: InboxMetrics
    # Hands committed events to the live-updates hub, as the GraphQL mutations do.
    publish: Callable[[InboxEvent | None], None]
    max_body_bytes: int

    async def threads(self, request: Request) -> Response:
        return await self._serve(request, "GET", self._threads)

    async def messages(self, request: Request) -> Response:
        return await self._serve(request, "GET", self._messages)

    async def mark_read(self, request: Request) -> Response:
        return await self._serve(request, "POST", self._mark_read)

    async def openapi(self, request: Request) -> Response:
        request_id = request_id_of(request)
        if request.method != "GET":
            return _error_response(_wrong_method("GET"), request_id)
        return _json_response(200, legacy_rest_openapi(), request_id)

    async def unknown_route(self, request: Request) -> Response:
        refused = Refused(404, "NOT_FOUND", f"no endpoint at {request.url.path}")
        return _error_response(refused, request_id_of(request))

    async def _threads(self, request: Request, principal: Principal) -> dict[str, Any]:
        limit = _limit(request)
        cursor = request.query_params.get("cursor") or None
        # Checked here so that the message names this API's parameter, not GraphQL's `after`.
        decode_cursor(threads.THREAD_CURSOR, cursor, "cursor")
        unread_only = _flag(request, "unread_only")
        business_id = principal.business_id
        async with read_only_unit_of_work(self.sessions, business_id=business_id) as session:
            page = await threads.list_threads(
                session, business_id, first=limit, after=cursor, unread_only=unread_only
            )
            latest = await threads.latest_messages(
                session, business_id, [thread.id for thread in page.items]
            )
            total = await read_state.total_unread(session, business_id)
        return {
            "threads": [thread_json(thread, latest.get(thread.id)) for thread in page.items],
            "next_cursor": page.cursors[-1] if page.has_next_page else None,
            "total_unread": total,
        }

    async def _messages(self, request: Request, principal: Principal) -> dict[str, Any]:
        thread_id = parse_row_id(request.path_params["thread_id"], "id")
        limit = _limit(request)
        before = request.query_params.get("before") or None
        business_id = principal.business_id
        async with read_only_unit_of_work(self.sessions, business_id=business_id) as session:
            # An old link to a thread merged away since shows the thread it lives in now.
            thread = await threads.find_thread_by_id(session, business_id, thread_id)
            if thread is None:
                raise NotFound("no thread with that id")
            # The newest page first, older pages through `before`, each in chronological
            # order: GraphQL's messages(last:, before:).
            page = await threads.list_messages(
                session, business_id, thread.id, first=None, after=None, last=limit, before=before
            )
        return {
            "messages": [message_json(message) for message in page.items],
            "next_cursor": page.cursors[0] if page.has_previous_page else None,
        }

    async def _mark_read(self, request: Request, principal: Principal) -> dict[str, Any]:
        access.require_may_mark_read(principal.role)
        # The legacy front end may send a body; nothing in it is read, but it stays bounded.
        try:
            await read_bounded_body(request, self.max_body_bytes)
        except BodyTooLarge as too_large:
            raise Refused(413, "PAYLOAD_TOO_LARGE", str(too_large)) from None
        except ClientGone:
            raise Refused(400, "BAD_USER_INPUT", "the client went away mid-request") from None
        reference = request.path_params.get("id_or_phone", "")
        business_id = principal.business_id
        async with read_only_unit_of_work(self.sessions, business_id=business_id) as session:
            found = await find_thread_by_reference(
                session, business_id, reference, default_region=self.default_region
            )
        if found is None:
            raise NotFound("no thread with that id or phone")
        outcome = await read_state.mark_thread_read(
            self.sessions,
            business_id,
            thread_id=found.id,
            default_region=self.default_region,
            metrics=self.metrics,
        )
        self.publish(outcome.event)
        async with read_only_unit_of_work(self.sessions, business_id=business_id) as session:
            latest = await threads.latest_messages(session, business_id, [outcome.thread.id])
        return {
            "thread": thread_json(outcome.thread, latest.get(outcome.thread.id)),
            "total_unread": outcome.total_unread,
        }

    async def _serve(self, request: Request, method: str, handler: Handler) -> Response:
        request_id = request_id_of(request)
        try:
            if request.method != method:
                raise _wrong_method(method)
            principal = self._authenticate(request, request_id)
            return _json_response(200, await handler(request, principal), request_id)
        except Refused as refused:
            return _error_response(refused, request_id)
        except DomainError as error:
            status = _STATUS_OF_CODE.get(error.code, 500)
            return _error_response(Refused(status, error.code, error.message), request_id)
        except Exception:
            log.exception(
                "unexpected error in request_id=%s at %s %s",
                request_id,
                request.method,
                request.url.path,
            )
            masked = Refused(
                500, "INTERNAL_SERVER_ERROR", "Internal server error", request_id=request_id
            )
            return _error_response(masked, request_id)

    def _authenticate(self, request: Request, request_id: str) -> Principal:
        try:
            return authenticate(request.headers.get("authorization"), self.auth_secret)
        except Unauthenticated as refused:
            challenge = refused_request_challenge(refused, request_id)
            raise Refused(
                401,
                refused.code,
                refused.message,
                headers={"WWW-Authenticate": challenge},
                reason=refused.reason,
            ) from None


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit")
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_PAGE_SIZE:
        raise BadInput(f"`limit` must be an integer from 1 to {MAX_PAGE_SIZE}")
    return int(raw)


def _flag(request: Request, name: str) -> bool:
    raw = request.query_params.get(name)
    if raw is None:
        return False
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise BadInput(f"`{name}` must be true, false, 1 or 0")


def _wrong_method(allowed: str) -> Refused:
    return Refused(
        405,
        "METHOD_NOT_ALLOWED",
        f"this endpoint is served over {allowed}",
        headers={"Allow": allowed},
    )


def _error_response(refused: Refused, request_id: str) -> Response:
    error = {"code": refused.code, "message": refused.message, **refused.details}
    return _json_response(refused.status, {"error": error}, request_id, refused.headers)


def _json_response(
    status: int, body: dict[str, Any], request_id: str, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode(),
        status_code=status,
        media_type="application/json; charset=utf-8",
        headers={"X-Request-Id": request_id, "Cache-Control": "no-store", **(headers or {})},
    )
