"""GraphQL over HTTP, as the GraphQL-over-HTTP specification says it (graphql-http's audit,
run in full by tests/test_graphql_http_audit.py).

A request that is not well-formed GraphQL over HTTP (a body that is not JSON, parameters of the
wrong kind, no `query`) is 400 whatever the media type. A well-formed request whose GraphQL
fails before execution (syntax, validation, variables that do not coerce, no such operation)
is 400 without a `data` entry for `application/graphql-response+json` clients, and 200 with
its errors for `application/json` clients, as the legacy media type expects.
"""

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import orjson
import strawberry
from graphql import (
    DocumentNode,
    GraphQLError,
    GraphQLSchema,
    OperationDefinitionNode,
    OperationType,
    get_operation_ast,
    parse,
    specified_rules,
    validate,
)
from graphql.execution import ExecutionResult as GraphQLExecutionResult
from graphql.execution.values import get_variable_values
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.types import Receive, Scope, Send

from domain.errors import Unauthenticated
from gql.auth import Principal, authenticate, refused_request_challenge
from gql.context import ContextFactory
from gql.errors import request_error_code
from gql.graphiql import offline_graphiql_html
from gql.limits import QUERY_TOO_COMPLEX, QueryLimits
from gql.metrics import note_operation
from gql.operations import Operations
from gql.persisted_documents import DocumentRefused, PersistedDocuments, names_persisted_document
from gql.request_bodies import BodyTooLarge, ClientGone, read_bounded_body, request_id_of

log = logging.getLogger("wa_inbox.http")

GRAPHQL_RESPONSE_JSON = "application/graphql-response+json"
APPLICATION_JSON = "application/json"


class RequestRejected(Exception):
    """The request fails before execution; `status` is used whatever the media type."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        headers: Mapping[str, str] = {},
        extensions: Mapping[str, str] = {},
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = dict(headers)
        self.extensions = dict(extensions)

    @property
    def error(self) -> dict[str, Any]:
        shaped = _error(self.message, self.code)
        shaped["extensions"].update(self.extensions)
        return shaped


class MalformedRequest(RequestRejected):
    """Not a well-formed GraphQL-over-HTTP request (the body is not JSON, a parameter is of the
    wrong kind): 400 whatever the media type (graphql-http audits BCF8, 3E3A, A5BF)."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message, "BAD_REQUEST")


class RequestInvalid(Exception):
    """A GraphQL request that fails before execution: 400 for graphql-response+json, else 200."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors[0]["message"])
        self.errors = errors


@dataclass(frozen=True)
class GraphQLParameters:
    # The document's text; "" from a request that names a persisted document instead, until
    # `_execute` resolves it.
    query: str
    operation_name: str | None
    variables: dict[str, Any] | None
    extensions: dict[str, Any] | None = None
    document_id: str | None = None


def _error(message: str, code: str) -> dict[str, Any]:
    return {"message": message, "extensions": {"code": code}}


def negotiate_media_type(accept: str | None) -> str | None:
    """The response media type for an Accept header, or None when we can offer none."""
    if accept is None or not accept.strip():
        return APPLICATION_JSON
    best: tuple[float, int, str] | None = None
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality <= 0:
            continue
        media = media.lower()
        # A wildcard is answered with application/json, which every client understands.
        if media == GRAPHQL_RESPONSE_JSON:
            candidate = (quality, 1, GRAPHQL_RESPONSE_JSON)
        elif media in (APPLICATION_JSON, "application/*", "*/*"):
            candidate = (quality, 0, APPLICATION_JSON)
        else:
            continue
        if best is None or candidate > best:
            best = candidate
    return best[2] if best else None


def checked_document(
    schema: strawberry.Schema, query: str
) -> tuple[DocumentNode | None, tuple[GraphQLError, ...]]:
    """The parsed document and its validation errors, the schema's limits included."""
    limits = getattr(schema, "query_limits", None) or QueryLimits()
    return _checked_document(schema._schema, query, limits)


@lru_cache(maxsize=256)
def _checked_document(
    schema: GraphQLSchema, query: str, limits: QueryLimits
) -> tuple[DocumentNode | None, tuple[GraphQLError, ...]]:
    try:
        document = parse(query, max_tokens=limits.max_tokens)
    except GraphQLError as syntax_error:
        if "Document contains more than" in syntax_error.message:
            return None, (
                GraphQLError(
                    f"the document has more than {limits.max_tokens} tokens (MAX_QUERY_TOKENS)",
                    extensions={"code": QUERY_TOO_COMPLEX},
                ),
            )
        return None, (syntax_error,)
    rules = (*specified_rules, *limits.validation_rules())
    return document, tuple(validate(schema, document, rules))


class GraphQLEndpoint:
    """The `/graphql` HTTP endpoint: GraphiQL on browser GET, operations on GET and POST."""

    def __init__(
        self,
        schema: strawberry.Schema,
        *,
        contexts: ContextFactory,
        auth_secret: str,
        max_body_bytes: int,
        max_batch_operations: int = 1,
        persisted_documents: PersistedDocuments | None = None,
        operations: Operations,
    ) -> None:
        self.schema = schema
        self.operations = operations
        self.persisted_documents = persisted_documents or PersistedDocuments()
        self.contexts = contexts
        self.auth_secret = auth_secret
        self.max_body_bytes = max_body_bytes
        self.max_batch_operations = max_batch_operations
        self.ide_html = offline_graphiql_html()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handle(Request(scope, receive))
        await response(scope, receive, send)

    async def handle(self, request: Request) -> Response:
        request_id = request_id_of(request)
        if request.method == "GET" and _names_no_document(request) and _wants_html(request):
            return HTMLResponse(self.ide_html)
        media_type = negotiate_media_type(request.headers.get("accept"))
        if media_type is None:
            return _respond(
                APPLICATION_JSON,
                406,
                {
                    "errors": [
                        _error(
                            f"responses are {GRAPHQL_RESPONSE_JSON} or {APPLICATION_JSON}",
                            "NOT_ACCEPTABLE",
                        )
                    ]
                },
                request_id,
            )
        try:
            return await self._handle(request, media_type, request_id)
        except RequestRejected as rejected:
            return _respond(
                media_type,
                rejected.status,
                {"errors": [rejected.error]},
                request_id,
                rejected.headers,
            )
        except RequestInvalid as invalid:
            status = 400 if media_type == GRAPHQL_RESPONSE_JSON else 200
            return _respond(media_type, status, {"errors": invalid.errors}, request_id)

    async def _handle(self, request: Request, media_type: str, request_id: str) -> Response:
        if request.method not in ("GET", "POST"):
            raise RequestRejected(
                405,
                "GraphQL is served over GET and POST",
                "METHOD_NOT_ALLOWED",
                {"Allow": "GET, POST"},
            )
        try:
            principal = authenticate(request.headers.get("authorization"), self.auth_secret)
        except Unauthenticated as refused:
            raise RequestRejected(
                401,
                refused.message,
                refused.code,
                {"WWW-Authenticate": refused_request_challenge(refused, request_id)},
                {"reason": refused.reason},
            ) from None
        raw = await self._read_raw_parameters(request)
        if isinstance(raw, list):
            return await self._handle_batch(request, raw, principal, request_id)
        body = await self._execute(request, _parameters(raw), principal, request_id)
        return _respond(media_type, 200, body, request_id)

    async def _handle_batch(
        self, request: Request, batch: list[Any], principal: Principal, request_id: str
    ) -> Response:
        """Several operations in one POST, run one after the other, answered as a list.

        Each operation succeeds or fails on its own; a batch above MAX_BATCH_OPERATIONS is
        refused whole, before anything runs.
        """
        if self.max_batch_operations == 1:
            raise RequestInvalid(
                [
                    _error(
                        "batched operations are off: send one operation per request "
                        "(MAX_BATCH_OPERATIONS)",
                        "BAD_REQUEST",
                    )
                ]
            )
        if not batch or len(batch) > self.max_batch_operations:
            raise RequestInvalid(
                [
                    _error(
                        f"a batch holds 1 to {self.max_batch_operations} operations "
                        "(MAX_BATCH_OPERATIONS)",
                        "BAD_REQUEST",
                    )
                ]
            )
        bodies: list[dict[str, Any]] = []
        for item in batch:
            try:
                bodies.append(
                    await self._execute(request, _parameters(item), principal, request_id)
                )
            except RequestInvalid as invalid:
                bodies.append({"errors": invalid.errors})
            except RequestRejected as rejected:
                bodies.append({"errors": [rejected.error]})
        return _respond(APPLICATION_JSON, 200, bodies, request_id)

    async def _execute(
        self,
        request: Request,
        parameters: GraphQLParameters,
        principal: Principal,
        request_id: str,
    ) -> dict[str, Any]:
        try:
            query = self.persisted_documents.document_for(
                parameters.query, parameters.extensions, parameters.document_id
            )
        except DocumentRefused as refused:
            raise RequestRejected(refused.status, refused.message, refused.code) from None
        parameters = replace(parameters, query=query)
        graphql_schema = self.schema._schema
        document, errors = checked_document(self.schema, parameters.query)
        if errors:
            raise RequestInvalid([_formatted(error) for error in errors])
        assert document is not None
        operation = get_operation_ast(document, parameters.operation_name)
        if operation is None:
            message = (
                f"no operation named {parameters.operation_name!r} in the document"
                if parameters.operation_name
                else "the document has several operations: give operationName"
            )
            raise RequestInvalid([_error(message, "BAD_USER_INPUT")])
        note_operation(request, operation)
        self._check_operation_type(request, operation)
        coerced = get_variable_values(
            graphql_schema, operation.variable_definitions or (), parameters.variables or {}
        )
        if isinstance(coerced, list):
            raise RequestInvalid([_formatted(error) for error in coerced])

        context = self.contexts(principal, request_id)
        try:
            result = await self.operations.run(
                parameters.query, document, operation, coerced, context
            )
        finally:
            await context.reads.close(final=True)
        return _result_body(result)

    async def _read_raw_parameters(self, request: Request) -> Any:
        """The request's parameters as decoded JSON: an object, or a list for a batch."""
        if request.method == "GET":
            raw: Any = dict(request.query_params)
            for name in ("variables", "extensions"):
                if isinstance(raw.get(name), str) and raw[name]:
                    raw[name] = _decode_json(raw[name], name)
            return raw
        content_type = request.headers.get("content-type")
        if not content_type:
            raise RequestRejected(
                415, "send the request as Content-Type: application/json", "UNSUPPORTED_MEDIA_TYPE"
            )
        media, *params = (part.strip().lower() for part in content_type.split(";"))
        charset = next(
            (p.partition("=")[2].strip('"') for p in params if p.startswith("charset=")), "utf-8"
        )
        if media != APPLICATION_JSON or charset not in ("utf-8", "utf8"):
            raise RequestRejected(
                415,
                "send the request as Content-Type: application/json (UTF-8)",
                "UNSUPPORTED_MEDIA_TYPE",
            )
        body = await self._read_body(request)
        if not body:
            raise MalformedRequest("a POST needs a JSON body with a `query`")
        return _decode_json(body, "body")

    async def _read_body(self, request: Request) -> bytes:
        try:
            return await read_bounded_body(request, self.max_body_bytes)
        except BodyTooLarge as too_large:
            raise RequestRejected(413, str(too_large), "PAYLOAD_TOO_LARGE") from None
        except ClientGone:
            raise RequestRejected(400, "the client went away mid-request", "BAD_REQUEST") from None

    @staticmethod
    def _check_operation_type(request: Request, operation: OperationDefinitionNode) -> None:
        if operation.operation is OperationType.SUBSCRIPTION:
            raise RequestInvalid(
                [_error("subscriptions are served over websockets at /graphql", "BAD_REQUEST")]
            )
        if request.method == "GET" and operation.operation is OperationType.MUTATION:
            raise RequestRejected(
                405, "mutations must be sent with POST", "METHOD_NOT_ALLOWED", {"Allow": "POST"}
            )


def _names_no_document(request: Request) -> bool:
    """A GET without a document, its persisted hash or its id: a person opening /graphql."""
    return not any(name in request.query_params for name in ("query", "extensions", "documentId"))


def _wants_html(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "text/html" in accept


def _decode_json(raw: str | bytes, what: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise MalformedRequest(f"the {what} is not valid JSON") from None


def _parameters(raw: Any) -> GraphQLParameters:
    if not isinstance(raw, dict):
        raise MalformedRequest("the request must be a JSON object")
    query = raw.get("query")
    document_id = raw.get("documentId")
    extensions = raw.get("extensions")
    # A request naming a persisted document may leave `query` out (gql/persisted_documents.py).
    named = names_persisted_document(
        extensions if isinstance(extensions, dict) else None, document_id
    )
    if named and (query is None or (isinstance(query, str) and not query.strip())):
        query = ""
    elif not isinstance(query, str) or not query.strip():
        raise MalformedRequest("`query` must be a non-empty string")
    if document_id is not None and not isinstance(document_id, str):
        raise MalformedRequest("`documentId` must be a string or null")
    operation_name = raw.get("operationName")
    if operation_name is not None and not isinstance(operation_name, str):
        raise MalformedRequest("`operationName` must be a string or null")
    variables = raw.get("variables")
    if variables is not None and not isinstance(variables, dict):
        raise MalformedRequest("`variables` must be an object or null")
    if extensions is not None and not isinstance(extensions, dict):
        raise MalformedRequest("`extensions` must be an object or null")
    return GraphQLParameters(
        query=query,
        operation_name=operation_name or None,
        variables=variables,
        extensions=extensions,
        document_id=document_id,
    )


def _formatted(error: GraphQLError) -> dict[str, Any]:
    formatted: dict[str, Any] = dict(error.formatted)
    extensions = formatted.get("extensions") or {}
    formatted["extensions"] = {"code": request_error_code(error), **extensions}
    return formatted


def _result_body(result: GraphQLExecutionResult) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if result.errors:
        # Already shaped (gql/operations.py), as websockets' are by the ErrorShaping extension.
        body["errors"] = [dict(error.formatted) for error in result.errors]
    body["data"] = result.data
    if result.extensions:
        body["extensions"] = result.extensions
    return body


def response_json(body: Any) -> bytes:
    """`body` as JSON bytes: orjson, or the standard library for what orjson refuses (integers
    beyond 64 bits, which a webhook's raw payload may hold, and lone surrogates)."""
    try:
        return orjson.dumps(body, default=str)
    except orjson.JSONEncodeError:
        # ASCII escapes: a lone surrogate in a stored text has no UTF-8 bytes of its own.
        return json.dumps(body, separators=(",", ":"), default=str).encode()


def _respond(
    media_type: str,
    status: int,
    body: dict[str, Any] | list[dict[str, Any]],
    request_id: str,
    headers: Mapping[str, str] | None = None,
) -> Response:
    return Response(
        response_json(body),
        status_code=status,
        media_type=f"{media_type}; charset=utf-8",
        headers={"X-Request-Id": request_id, "Cache-Control": "no-store", **(headers or {})},
    )
