"""The OpenAPI 3.1 document of the legacy REST endpoints, served at /api/openapi.json.

tests/test_legacy_rest.py validates every route's actual answers (errors included) against
these schemas, so the document cannot drift from what gql/legacy_rest.py sends.
"""

import copy
from typing import Any

from domain.models import Direction, MessageStatus, Source, ThreadStatus
from domain.pagination import MAX_PAGE_SIZE

ERROR_CODES = [
    "BAD_USER_INPUT",
    "UNAUTHENTICATED",
    "FORBIDDEN",
    "NOT_FOUND",
    "CONFLICT",
    "METHOD_NOT_ALLOWED",
    "PAYLOAD_TOO_LARGE",
    "INTERNAL_SERVER_ERROR",
]

_TIME = {"type": "string", "format": "date-time", "description": "ISO 8601 with its offset."}
_OPTIONAL_TIME = {"type": ["string", "null"], "format": "date-time"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _closed_object(properties: dict[str, Any], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
        "additionalProperties": False,
    }


_SCHEMAS: dict[str, Any] = {
    "Message": _closed_object(
        {
            "id": {"type": "integer"},
            "conversation_id": {"type": "integer", "description": "The thread's id."},
            "direction": {"enum": [d.value for d in Direction]},
            "source": {"enum": [s.value for s in Source]},
            "status": {"enum": [s.value for s in MessageStatus]},
            "body": {"type": ["string", "null"], "description": "Null for deleted messages."},
            "provider_message_id": {"type": ["string", "null"]},
            "message_type": {"type": "string", "examples": ["text", "image", "location"]},
            "created_at": _TIME,
            "sent_at": _TIME,
        }
    ),
    "Thread": _closed_object(
        {
            "id": {"type": "integer"},
            "canonical_key": {"type": "string"},
            "phone": {"type": ["string", "null"], "description": "E.164, e.g. +972507654321."},
            "lead_id": {"type": ["string", "null"]},
            "status": {"enum": [s.value for s in ThreadStatus]},
            "started_at": _TIME,
            "last_message_at": _OPTIONAL_TIME,
            "last_read_at": _OPTIONAL_TIME,
            "unread_count": {"type": "integer", "minimum": 0},
            "last_message": {"oneOf": [_ref("Message"), {"type": "null"}]},
        }
    ),
    "ThreadPage": _closed_object(
        {
            "threads": {"type": "array", "items": _ref("Thread")},
            "next_cursor": {
                "type": ["string", "null"],
                "description": "Pass as `cursor` for the next page; null on the last page.",
            },
            "total_unread": {"type": "integer", "minimum": 0},
        }
    ),
    "MessagePage": _closed_object(
        {
            "messages": {"type": "array", "items": _ref("Message")},
            "next_cursor": {
                "type": ["string", "null"],
                "description": "Pass as `before` for the older page; null on the oldest.",
            },
        }
    ),
    "MarkReadResult": _closed_object(
        {"thread": _ref("Thread"), "total_unread": {"type": "integer", "minimum": 0}}
    ),
    "Error": _closed_object(
        {
            "error": _closed_object(
                {
                    "code": {"enum": ERROR_CODES},
                    "message": {"type": "string"},
                    "reason": {
                        "type": "string",
                        "description": "UNAUTHENTICATED only: which check the token failed.",
                    },
                    "request_id": {
                        "type": "string",
                        "description": "INTERNAL_SERVER_ERROR only: the id the logs carry.",
                    },
                },
                optional=("reason", "request_id"),
            )
        }
    ),
}

_ERROR_DESCRIPTIONS = {
    "400": "The request can never succeed as sent (BAD_USER_INPUT).",
    "401": "No valid bearer token (UNAUTHENTICATED, with `reason`).",
    "403": "The token's role may not do this (FORBIDDEN).",
    "404": "Nothing of the caller's business matches (NOT_FOUND).",
    "405": "Wrong HTTP method (METHOD_NOT_ALLOWED).",
    "413": "The request body is larger than MAX_BODY_BYTES (PAYLOAD_TOO_LARGE).",
    "500": "Unexpected error, masked (INTERNAL_SERVER_ERROR, with `request_id`).",
}


def _responses(schema: str, description: str, *errors: str) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {
            "description": description,
            "content": {"application/json": {"schema": _ref(schema)}},
        }
    }
    for status in errors:
        responses[status] = {
            "description": _ERROR_DESCRIPTIONS[status],
            "content": {"application/json": {"schema": _ref("Error")}},
        }
    return responses


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


_LIMIT = _query(
    "limit",
    {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE, "default": 50},
    f"Page size, at most {MAX_PAGE_SIZE}.",
)

_PATHS: dict[str, Any] = {
    "/api/crm/threads": {
        "get": {
            "operationId": "listThreads",
            "summary": "The business's threads, latest activity first.",
            "parameters": [
                _LIMIT,
                _query("cursor", {"type": "string"}, "The previous page's next_cursor."),
                _query(
                    "unread_only",
                    {"enum": ["true", "false", "1", "0"], "default": "false"},
                    "Only threads with unread messages.",
                ),
            ],
            "responses": _responses("ThreadPage", "A page of threads.", "400", "401", "405", "500"),
        }
    },
    "/api/crm/threads/{thread_id}/messages": {
        "get": {
            "operationId": "listMessages",
            "summary": (
                "One thread's messages of every source, chronological; the newest page first, "
                "older pages with `before`."
            ),
            "parameters": [
                {
                    "name": "thread_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "integer", "minimum": 1},
                    "description": "A thread id; a merged-away id shows the surviving thread.",
                },
                _LIMIT,
                _query("before", {"type": "string"}, "The next_cursor of the newer page."),
            ],
            "responses": _responses(
                "MessagePage", "A page of messages.", "400", "401", "404", "405", "500"
            ),
        }
    },
    "/api/openapi.json": {
        "get": {
            "operationId": "openApiDocument",
            "summary": "This document.",
            "security": [],
            "responses": {
                "200": {
                    "description": "The OpenAPI 3.1 document of these endpoints.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "405": {
                    "description": _ERROR_DESCRIPTIONS["405"],
                    "content": {"application/json": {"schema": _ref("Error")}},
                },
            },
        }
    },
    "/api/whatsapp/conversations/{id_or_phone}/mark_read": {
        "post": {
            "operationId": "markRead",
            "summary": "Mark a thread read, named by its id or by its customer's phone.",
            "description": (
                "Digits only, no leading 0, at most 19 digits: the business's thread with that "
                "id (or the thread it was merged into), else the same digits as a phone. "
                "Anything else (`+`, spaces, dashes, parentheses, a leading 0, 20 digits or "
                "more) is a phone in any format, URL-encoded. Agents and admins only. A body, "
                "if sent, is ignored."
            ),
            "parameters": [
                {
                    "name": "id_or_phone",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "minLength": 1},
                    "examples": {
                        "id": {"value": "42"},
                        "phone": {"value": "+972 50-765-4321"},
                    },
                }
            ],
            "responses": _responses(
                "MarkReadResult",
                "The thread, now with unread_count 0, and the business's unread total.",
                "400",
                "401",
                "403",
                "404",
                "405",
                "413",
                "500",
            ),
        }
    },
}


def legacy_rest_openapi() -> dict[str, Any]:
    """The document, built fresh: callers may not change the module's schemas by accident."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "wa-inbox legacy REST API",
            "version": "1",
            "description": (
                "The endpoints the old front end calls, served over the same domain as GraphQL "
                "(/graphql). Bearer tokens as for GraphQL."
            ),
        },
        "paths": copy.deepcopy(_PATHS),
        "components": {
            "schemas": copy.deepcopy(_SCHEMAS),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
        "security": [{"bearer": []}],
    }
