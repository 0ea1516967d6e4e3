"""GraphQL over websockets at /graphql: Strawberry's protocol handlers, with our rules.

- `graphql-transport-ws` (the `graphql-ws` JS client, Apollo, urql) and the legacy
  `graphql-ws` subprotocol.
- Authentication happens in `connection_init` (payload `{"Authorization": "Bearer <JWT>"}`,
  any case): a missing or bad token closes the socket with 4403, the close reason saying what
  is wrong (`expired: ...`, `wrong_signature: ...`); nothing runs before the acknowledgement.
- Subscriptions are served by the fan-out hub; every frame of a connection, Strawberry's own
  messages included, goes through the connection's outbox, so frames keep their order.
- Queries and mutations sent over the socket run in a unit of work of their own.
"""

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import strawberry
from graphql import (
    DocumentNode,
    GraphQLError,
    OperationDefinitionNode,
    OperationType,
    get_operation_ast,
)
from graphql.execution.values import VariableValues, get_variable_values
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler

from domain.errors import Unauthenticated
from gql.auth import Principal, authenticate
from gql.fanout import LEGACY_WS, TRANSPORT_WS, FanOutHub, Member, Outlet
from gql.http import checked_document
from gql.persisted_documents import DocumentRefused, PersistedDocuments, names_persisted_document

CLOSE_FORBIDDEN = 4403

log = logging.getLogger("wa_inbox.live")


@dataclass
class SocketContext:
    """One websocket connection: who it is (after connection_init) and its outbox."""

    websocket: WebSocket
    connection_params: dict[str, Any] | None = None
    principal: Principal | None = None
    outlet: Outlet | None = field(default=None, repr=False)
    refusal: Unauthenticated | None = None  # why connection_init was refused


# A websocket close reason is at most 123 bytes of UTF-8 (RFC 6455, 5.5).
_MAX_CLOSE_REASON_BYTES = 123


def refusal_close_reason(context: SocketContext) -> str:
    """`{reason}: {message}` of a refused connection_init, cut to fit a close frame."""
    refusal = context.refusal
    if refusal is None:
        return "Forbidden"
    text = f"{refusal.reason}: {refusal.message}".encode()[:_MAX_CLOSE_REASON_BYTES]
    return text.decode(errors="ignore")


def authorization_from(params: dict[str, Any] | None) -> str | None:
    """The Authorization entry of a connection_init payload, whatever its case."""
    for name, value in (params or {}).items():
        if isinstance(name, str) and name.lower() == "authorization" and isinstance(value, str):
            return value
    return None


class InboxWebSocketView(GraphQL[SocketContext, None]):
    def __init__(
        self,
        schema: strawberry.Schema,
        *,
        hub: FanOutHub,
        auth_secret: str,
        connection_init_timeout: timedelta = timedelta(seconds=10),
        max_subscriptions_per_connection: int = 100,
        allowed_origins: tuple[str, ...] = (),
        persisted_documents: PersistedDocuments | None = None,
    ) -> None:
        super().__init__(
            schema,
            graphql_ide=None,
            connection_init_wait_timeout=connection_init_timeout,
            max_subscriptions_per_connection=max_subscriptions_per_connection,
            # Strawberry refuses cross-origin handshakes itself unless they are listed here;
            # gql/origins.py applies the same list in front of it, whatever Strawberry does.
            allowed_origins=allowed_origins,
        )
        self.hub = hub
        self.auth_secret = auth_secret
        self.persisted_documents = persisted_documents or PersistedDocuments()
        self.graphql_transport_ws_handler_class = TransportWSHandler
        self.graphql_ws_handler_class = LegacyWSHandler

    def decode_json(self, data: str | bytes) -> object:
        try:
            return json.loads(data)
        except RecursionError:
            # Nesting deep enough to exhaust the stack is a malformed message, not a crash.
            raise json.JSONDecodeError("nested too deeply", "", 0) from None

    async def get_context(self, request: Any, response: Any) -> SocketContext:
        return SocketContext(websocket=response)

    async def on_ws_connect(self, context: SocketContext) -> None:
        authorization = authorization_from(context.connection_params)
        # Kept for the life of the socket otherwise; the principal is all we need of it.
        context.connection_params = None
        try:
            context.principal = authenticate(authorization, self.auth_secret)
        except Unauthenticated as refused:
            log.info("[WA-AUTH] websocket refused: %s (%s)", refused.reason, refused.message)
            context.refusal = refused
            raise ConnectionRejectionError({"message": refused.message}) from None

    async def execute_once(
        self, context: SocketContext, query: str, variables: Any, operation_name: str | None
    ) -> dict[str, Any]:
        """A query or mutation sent over the socket, in a request context of its own."""
        assert context.principal is not None
        request_context = self.hub.contexts(context.principal, uuid.uuid4().hex)
        try:
            runnable = _runnable(self.schema, query, variables, operation_name)
            result: Any
            if runnable is None:
                # Strawberry reports what does not validate or coerce, shaped as before.
                result = await self.schema.execute(
                    query,
                    variable_values=variables,
                    context_value=request_context,
                    operation_name=operation_name,
                )
            else:
                result = await self.hub.operations.run(query, *runnable, request_context)
        finally:
            await request_context.reads.close(final=True)
        body: dict[str, Any] = {"data": result.data}
        if result.errors:
            body["errors"] = [error.formatted for error in result.errors]
        return body


def _runnable(
    schema: Any, query: str, variables: Any, operation_name: str | None
) -> tuple[DocumentNode, OperationDefinitionNode, VariableValues] | None:
    """The validated document, its operation and coerced variables; None if any fails."""
    document, errors = checked_document(schema, query)
    if errors or document is None:
        return None
    operation = get_operation_ast(document, operation_name)
    if operation is None or (variables is not None and not isinstance(variables, dict)):
        return None
    coerced = get_variable_values(
        schema._schema, operation.variable_definitions or (), variables or {}
    )
    if isinstance(coerced, list):
        return None
    return document, operation, coerced


def _is_subscription(schema: strawberry.Schema, query: str, operation_name: str | None) -> bool:
    document, errors = checked_document(schema, query)
    if errors or document is None:
        return True  # the hub reports the errors in the protocol's own way
    operation = get_operation_ast(document, operation_name)
    return operation is None or operation.operation is OperationType.SUBSCRIPTION


def _well_formed(message: object, protocol: str) -> bool:
    """Whether a client message has the shape its protocol gives it (before any handler)."""
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        return False
    kind = message["type"]
    if kind in ("subscribe", "complete", "start", "stop"):
        operation_id = message.get("id")
        if not isinstance(operation_id, str) or not 0 < len(operation_id) <= 128:
            return False
    if kind in ("subscribe", "start"):
        payload = message.get("payload")
        if not isinstance(payload, dict):
            return False
        query, extensions = payload.get("query"), payload.get("extensions")
        document_id = payload.get("documentId")
        if not isinstance(extensions or {}, dict) or not isinstance(document_id or "", str):
            return False
        # A persisted document's id may stand in for the text (gql/persisted_documents.py).
        return (
            (
                isinstance(query, str)
                or (query is None and names_persisted_document(extensions, document_id))
            )
            and isinstance(payload.get("variables") or {}, dict)
            and isinstance(payload.get("operationName") or "", str)
        )
    return True


INTERNAL_ERROR = {
    "message": "Internal server error",
    "extensions": {"code": "INTERNAL_SERVER_ERROR"},
}


class _OutboxHandler:
    """Gives a Strawberry protocol handler the connection's outbox, for every frame it sends,
    and refuses malformed messages before Strawberry's handlers see them."""

    protocol: str
    view: Any  # the InboxWebSocketView, typed by Strawberry's own handler classes
    context: SocketContext
    websocket: Any
    connection_acknowledged: bool
    # Each protocol's handler answers an operation whose document may not run with its own
    # error message (TransportWSHandler, LegacyWSHandler).
    refuse_operation: Callable[[str, dict[str, Any]], Awaitable[None]]

    async def handle_message(self, message: Any) -> None:
        if not _well_formed(message, self.protocol):
            await self.websocket.close(code=4400, reason="Invalid message")
            return
        if message["type"] in ("subscribe", "start") and self.connection_acknowledged:
            payload = message["payload"]
            try:
                query = self.view.persisted_documents.document_for(
                    payload.get("query"), payload.get("extensions"), payload.get("documentId")
                )
            except DocumentRefused as refused:
                error = {"message": refused.message, "extensions": {"code": refused.code}}
                await self.refuse_operation(message["id"], error)
                return
            message = {**message, "payload": {**payload, "query": query}}
        await super().handle_message(message)  # type: ignore[misc]

    async def handle(self) -> None:
        outlet = self.view.hub.open_outlet(self.context.websocket, self.protocol)
        self.context.outlet = outlet
        try:
            await super().handle()  # type: ignore[misc]
        finally:
            await self.view.hub.close_outlet(outlet)

    async def send_message(self, message: Any) -> None:
        assert self.context.outlet is not None
        self.context.outlet.push(json.dumps(message, separators=(",", ":")))

    async def acknowledge_or_refuse(self, payload: dict[str, Any] | None) -> None:
        """Authenticate `connection_init`: acknowledge it, or close 4403 saying why (both
        protocols; the legacy one would answer a refusal with 1011)."""
        self.context.connection_params = payload
        try:
            await self.view.on_ws_connect(self.context)
        except ConnectionRejectionError:
            await self.websocket.close(
                code=CLOSE_FORBIDDEN, reason=refusal_close_reason(self.context)
            )
            return
        await self.send_message({"type": "connection_ack"})
        self.connection_acknowledged = True


class TransportWSHandler(_OutboxHandler, BaseGraphQLTransportWSHandler[SocketContext, None]):
    protocol = TRANSPORT_WS

    async def refuse_operation(self, operation_id: str, error: dict[str, Any]) -> None:
        if operation_id in self.operations:
            # What Strawberry answers a reused id with, refused document or not.
            await self.websocket.close(
                code=4409, reason=f"Subscriber for {operation_id} already exists"
            )
            return
        await self.send_message({"id": operation_id, "type": "error", "payload": [error]})

    async def handle_connection_init(self, message: Any) -> None:
        # Strawberry 0.341's own, but for the close reason of a refused token, which says
        # what is wrong with it instead of a bare "Forbidden".
        if self.connection_timed_out:
            return
        if self.connection_init_timeout_task:
            self.connection_init_timeout_task.cancel()
            # Strawberry keeps the finished task for the life of the socket (~0.9 KB per
            # subscriber, issue 15); the loop holds it until its cancellation has run.
            self.connection_init_timeout_task = None
        # A null payload carries no token: refused with 4403 like an empty one, not 4400.
        payload = message.get("payload") or {}
        if not isinstance(payload, dict):
            await self.websocket.close(code=4400, reason="Invalid connection init payload")
            return
        if self.connection_init_received:
            await self.websocket.close(code=4429, reason="Too many initialisation requests")
            return
        self.connection_init_received = True
        await self.acknowledge_or_refuse(payload)

    async def handle_subscribe(self, message: Any) -> None:
        # Strawberry 0.341's own, but a subscription is registered with the hub right here
        # instead of in a task of its own that waits for its end: the hub's member is the
        # subscription (a task, its frames and an event cost ~2 KB per subscriber, issue 15).
        # Queries and mutations sent over the socket still run in a task.
        if not self.connection_acknowledged:
            await self.websocket.close(code=4401, reason="Unauthorized")
            return
        operation_id = message["id"]
        if operation_id in self.operations:
            reason = f"Subscriber for {operation_id} already exists"
            await self.websocket.close(code=4409, reason=reason)
            return
        limit = self.max_subscriptions_per_connection
        if limit is not None and len(self.operations) >= limit:
            error = GraphQLError("Subscription limit reached")
            await self.send_message(
                {"id": operation_id, "type": "error", "payload": [error.formatted]}
            )
            return
        payload = message["payload"]
        operation = LiveOperation(
            self,
            operation_id,
            payload["query"],
            payload.get("variables"),
            payload.get("operationName"),
        )
        self.operations[operation_id] = operation
        if _is_subscription(self.schema, operation.query, operation.operation_name):  # type: ignore[arg-type]
            await self._subscribe(operation)
        else:
            operation.task = asyncio.create_task(self.run_operation(operation))
            operation.task.add_done_callback(self._task_done)

    async def _subscribe(self, operation: "LiveOperation") -> None:
        context = self.context
        assert context.outlet is not None
        assert context.principal is not None
        try:
            operation.member = await self.view.hub.subscribe(
                context.outlet,
                context.principal,
                operation.id,
                operation.query,
                operation.variables,
                operation.operation_name,
                released=lambda: self._forget(operation),
            )
        except Exception:
            log.exception("[WA-LIVE] operation %s failed", operation.id)
            self._forget(operation)
            await self.send_message(
                {"id": operation.id, "type": "error", "payload": [INTERNAL_ERROR]}
            )

    def _forget(self, operation: Operation[SocketContext, None]) -> None:
        # The client may already have reused this id for a new operation.
        if self.operations.get(operation.id) is operation:
            del self.operations[operation.id]

    async def cleanup_operation(self, operation_id: str) -> None:
        operation = self.operations.get(operation_id)
        if isinstance(operation, LiveOperation) and operation.task is None:
            del self.operations[operation_id]
            if operation.member is not None:
                self.view.hub.leave(operation.member)
            return
        await super().cleanup_operation(operation_id)

    async def run_operation(self, operation: Operation[SocketContext, None]) -> None:
        """A query or mutation sent over the socket (subscriptions have no task)."""
        context = self.context
        try:
            body = await self.view.execute_once(
                context, operation.query, operation.variables, operation.operation_name
            )
            await self.send_message({"id": operation.id, "type": "next", "payload": body})
            await self.send_message({"id": operation.id, "type": "complete"})
        except Exception:
            log.exception("[WA-LIVE] operation %s failed", operation.id)
            await self.send_message(
                {"id": operation.id, "type": "error", "payload": [INTERNAL_ERROR]}
            )
        finally:
            self._forget(operation)


class LiveOperation(Operation[SocketContext, None]):
    """An operation of a graphql-transport-ws socket: a subscription's hub member stands in
    for the task Strawberry would give it."""

    __slots__ = ("member",)

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.member: Member | None = None


class LegacyWSHandler(_OutboxHandler, BaseGraphQLWSHandler[SocketContext, None]):
    """The legacy `graphql-ws` subprotocol (subscriptions-transport-ws)."""

    protocol = LEGACY_WS

    async def refuse_operation(self, operation_id: str, error: dict[str, Any]) -> None:
        # A start with a running id replaces that operation, refused or not.
        if operation_id in self.tasks:
            await self.cleanup_operation(operation_id)
        await self.send_message({"type": "error", "id": operation_id, "payload": error})

    async def handle(self) -> None:
        # Strawberry bounds the wait for connection_init on graphql-transport-ws only.
        deadline = asyncio.create_task(self._close_unless_acknowledged())
        try:
            await super().handle()
        finally:
            deadline.cancel()

    async def _close_unless_acknowledged(self) -> None:
        await asyncio.sleep(self.view.connection_init_wait_timeout.total_seconds())
        if not self.connection_acknowledged:
            await self.websocket.close(code=4408, reason="Connection initialisation timeout")

    async def handle_connection_init(self, message: Any) -> None:
        if self.connection_acknowledged:
            return
        payload = message.get("payload")
        if payload is not None and not isinstance(payload, dict):
            await self.websocket.close(code=CLOSE_FORBIDDEN, reason="Invalid payload")
            return
        await self.acknowledge_or_refuse(payload)

    async def handle_start(self, message: Any) -> None:
        if not self.connection_acknowledged:
            await self.websocket.close(code=4401, reason="Unauthorized")
            return
        operation_id = message.get("id")
        payload = message.get("payload")
        if not isinstance(operation_id, str) or not isinstance(payload, dict):
            await self.websocket.close(code=4400, reason="Invalid start message")
            return
        if operation_id in self.tasks:
            await self.cleanup_operation(operation_id)
        limit = self.max_subscriptions_per_connection
        if limit is not None and len(self.tasks) >= limit:
            error = GraphQLError("Subscription limit reached")
            await self.send_message(
                {"type": "error", "id": operation_id, "payload": error.formatted}
            )
            return
        self.tasks[operation_id] = asyncio.create_task(
            self._serve(
                operation_id,
                payload.get("query"),
                payload.get("variables"),
                payload.get("operationName"),
            )
        )

    async def _serve(
        self, operation_id: str, query: Any, variables: Any, operation_name: Any
    ) -> None:
        context = self.context
        assert context.outlet is not None
        assert context.principal is not None
        try:
            if not isinstance(query, str):
                error = GraphQLError("`query` must be a string")
                await self.send_message(
                    {"type": "error", "id": operation_id, "payload": error.formatted}
                )
            elif _is_subscription(self.schema, query, operation_name):  # type: ignore[arg-type]
                await self.view.hub.serve(
                    context.outlet,
                    context.principal,
                    operation_id,
                    query,
                    variables,
                    operation_name,
                )
            else:
                body = await self.view.execute_once(context, query, variables, operation_name)
                await self.send_message({"type": "data", "id": operation_id, "payload": body})
                await self.send_message({"type": "complete", "id": operation_id})
        except Exception:
            log.exception("[WA-LIVE] operation %s failed", operation_id)
            await self.send_message(
                {"type": "error", "id": operation_id, "payload": INTERNAL_ERROR}
            )
        except asyncio.CancelledError:
            with suppress(Exception):
                await self.send_message({"type": "complete", "id": operation_id})
            raise
        finally:
            if self.tasks.get(operation_id) is asyncio.current_task():
                del self.tasks[operation_id]
