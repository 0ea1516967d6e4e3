"""One place where errors become what clients see: a message and `extensions.code`.

Domain errors keep their message and code. GraphQL's own request errors (syntax, validation,
variable coercion) keep their message. Anything else is masked as INTERNAL_SERVER_ERROR with
a request id, and logged in full under that id: no trace, SQL or internal name leaves.
"""

import logging
from collections.abc import Iterator, Mapping
from typing import Any

from graphql import GraphQLError
from strawberry.extensions import SchemaExtension

from domain.errors import DomainError

log = logging.getLogger("wa_inbox.errors")

INTERNAL_MESSAGE = "Internal server error"


def request_error_code(error: GraphQLError) -> str:
    """The code of an error raised before execution (the document or its variables)."""
    if error.message.startswith("Syntax Error"):
        return "GRAPHQL_PARSE_FAILED"
    if error.message.startswith("Variable '$"):
        return "BAD_USER_INPUT"
    return "GRAPHQL_VALIDATION_FAILED"


def shape_error(error: GraphQLError, request_id: str) -> GraphQLError:
    original = error.original_error
    if isinstance(original, DomainError):
        return _with_code(error, original.message, original.code, original.extensions)
    if original is None or isinstance(original, GraphQLError) or error.path is None:
        # GraphQL's own errors about the request (values that do not coerce included): the
        # message is written for the client and names nothing internal.
        if error.extensions and "code" in error.extensions:
            return error
        return _with_code(error, error.message, request_error_code(error))
    log.error(
        "unexpected error in request_id=%s at %s",
        request_id,
        ".".join(str(part) for part in error.path),
        exc_info=original,
    )
    return GraphQLError(
        INTERNAL_MESSAGE,
        nodes=error.nodes,
        path=error.path,
        extensions={"code": "INTERNAL_SERVER_ERROR", "requestId": request_id},
    )


def _with_code(
    error: GraphQLError, message: str, code: str, details: Mapping[str, Any] | None = None
) -> GraphQLError:
    return GraphQLError(
        message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        extensions={**(error.extensions or {}), **(details or {}), "code": code},
    )


class ErrorShaping(SchemaExtension):
    """Applies `shape_error` to every result, over HTTP and websockets alike."""

    def on_operation(self) -> Iterator[None]:
        yield
        result = self.execution_context.result
        if result is None or not result.errors:
            return
        context = self.execution_context.context
        request_id = getattr(context, "request_id", "-")
        result.errors = [shape_error(error, request_id) for error in result.errors]
