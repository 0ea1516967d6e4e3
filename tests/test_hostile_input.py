"""Hostile input (issue 6): every limit holds at its default, moves with its setting, and is
answered with a clear GraphQL error before anything runs; unexpected exceptions are masked;
CORS and the websocket Origin follow the allow-list.

The transport contract itself (media types, 405/406/415, the default body bound, the default
refusal of batches) is audited in test_http_spec.py, and the default websocket message bound in
test_live_updates.py; this module does not repeat them.
"""

import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from graphql import get_introspection_query
from starlette.applications import Starlette
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from domain import read_state
from gql.__main__ import websocket_server_options
from gql.app import create_app
from gql.settings import Settings
from tests.conftest import GraphQLClient, ingest, token_for
from tests.live import (
    LEGACY_WS,
    NEW_MESSAGE,
    TRANSPORT_WS,
    UNREAD_COUNT_CHANGED,
    GraphQLSocket,
    serving,
)

GRJ = "application/graphql-response+json"
AJ = "application/json"
BOTH_MEDIA_TYPES = pytest.mark.parametrize("accept", [GRJ, AJ])

DEFAULTS = Settings()
PHONE = "+14155550170"
ALLOWED_ORIGIN = "https://app.example.com"
EVIL_ORIGIN = "https://evil.example"


# --- requests and answers ----------------------------------------------------------------------


async def post(
    http: httpx.AsyncClient, body: Any, accept: str = AJ, **headers: str
) -> httpx.Response:
    """A POST to /graphql with a valid bearer token; `body` is sent as JSON whatever it is."""
    return await http.post(
        "/graphql",
        content=json.dumps(body).encode(),
        headers={
            "Authorization": f"Bearer {token_for()}",
            "Content-Type": "application/json",
            "Accept": accept,
            **headers,
        },
    )


def assert_data(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert response.status_code == 200, body
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"]
    return data


def assert_refused(
    response: httpx.Response, accept: str, code: str, naming: str = ""
) -> dict[str, Any]:
    """Refused before execution, as the HTTP layer answers request errors: 400 for
    graphql-response+json, 200 for application/json, no `data`, every error coded `code`;
    returns the first, whose message contains `naming` (the setting it hit)."""
    body: dict[str, Any] = response.json()
    assert response.status_code == (400 if accept == GRJ else 200), body
    assert response.headers["content-type"].startswith(accept), response.headers
    assert "data" not in body, body
    assert body.get("errors"), body
    assert {error["extensions"]["code"] for error in body["errors"]} == {code}, body
    error: dict[str, Any] = body["errors"][0]
    assert naming in error["message"], body
    return error


async def stored_messages(db: asyncpg.Connection) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM whatsapp_message")
    return count


@contextlib.asynccontextmanager
async def configured_app(settings: Settings, **changes: Any) -> AsyncIterator[Starlette]:
    """The app built with `changes` to the test's settings, its lifespan running."""
    application = create_app(dataclasses.replace(settings, **changes))
    async with application.router.lifespan_context(application):
        yield application


@contextlib.asynccontextmanager
async def http_to(application: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@contextlib.asynccontextmanager
async def configured_http(settings: Settings, **changes: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with configured_app(settings, **changes) as application, http_to(application) as http:
        yield http


# --- documents ---------------------------------------------------------------------------------


def ingest_field(body: str, alias: str = "") -> str:
    prefix = f"{alias}: " if alias else ""
    return (
        f'{prefix}ingestMessage(input: {{phone: "{PHONE}", direction: INBOUND, '
        f'source: CUSTOMER, body: "{body}"}})'
    )


def chain_fields(levels: int) -> list[str]:
    """`levels` field names that nest from a Thread: lastMessage, thread, lastMessage, ..., id."""
    return ["lastMessage" if n % 2 == 0 else "thread" for n in range(levels - 1)] + ["id"]


def type_at(level: int) -> str:
    """The type a chain_fields selection is on at `level` (0: the Thread it starts from)."""
    return "Thread" if level % 2 == 0 else "Message"


def thread_selection(levels: int) -> str:
    """`lastMessage { thread { ... { id } } }`: a selection on Thread `levels` fields deep."""
    fields = chain_fields(levels)
    selection = fields[-1]
    for name in reversed(fields[:-1]):
        selection = f"{name} {{ {selection} }}"
    return selection


def deep_query(depth: int, shape: str = "fields") -> str:
    """A query `depth` fields deep from `thread(phone:)`, its levels written as plain fields,
    one named fragment per level, or one inline fragment per level."""
    root = f'thread(phone: "{PHONE}")'
    if shape == "fields":
        return f"{{ {root} {{ {thread_selection(depth - 1)} }} }}"
    fields = chain_fields(depth - 1)
    if shape == "fragments":
        fragments = [
            f"fragment Level{n} on {type_at(n)} "
            + (f"{{ {name} {{ ...Level{n + 1} }} }}" if name != "id" else "{ id }")
            for n, name in enumerate(fields)
        ]
        return f"{{ {root} {{ ...Level0 }} }} " + " ".join(fragments)
    assert shape == "inline fragments", shape
    selection = f"... on {type_at(len(fields) - 1)} {{ id }}"
    for n in range(len(fields) - 2, -1, -1):
        selection = f"... on {type_at(n)} {{ {fields[n]} {{ {selection} }} }}"
    return f"{{ {root} {{ {selection} }} }}"


def aliased_query(aliases: int) -> str:
    return "{ " + " ".join(f"a{n}: unreadCount" for n in range(aliases)) + " }"


def document_of_tokens(count: int) -> str:
    """A valid document of exactly `count` lexical tokens (at least 10), cheap to validate:
    operations `query Qn { __typename }` of 5 tokens, the last one padded with __typename.
    Run it with operationName Q0."""
    operations = [f"query Q{n} {{ __typename }}" for n in range(count // 5 - 1)]
    padding = " __typename" * (1 + count % 5)
    return " ".join([*operations, f"query Last {{{padding} }}"])


# --- query depth -------------------------------------------------------------------------------


@BOTH_MEDIA_TYPES
@pytest.mark.parametrize("shape", ["fields", "fragments", "inline fragments"])
async def test_operations_at_the_default_depth_run_and_one_level_deeper_are_refused(
    http: httpx.AsyncClient, client: GraphQLClient, accept: str, shape: str
) -> None:
    await ingest(client, phone=PHONE, body="deep")
    assert DEFAULTS.max_query_depth == 10

    at_limit = await post(http, {"query": deep_query(10, shape)}, accept)
    assert assert_data(at_limit)["thread"] is not None

    over = await post(http, {"query": deep_query(11, shape)}, accept)
    error = assert_refused(over, accept, "QUERY_TOO_COMPLEX", "MAX_QUERY_DEPTH")
    assert "11 levels" in error["message"], error
    assert "at most 10" in error["message"], error


async def test_an_over_deep_mutation_stores_nothing(
    http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    # ingestMessage, thread, then 9 more levels: 11.
    mutation = f"mutation {{ {ingest_field('too deep')} {{ thread {{ {thread_selection(9)} }} }} }}"
    response = await post(http, {"query": mutation}, GRJ)
    assert_refused(response, GRJ, "QUERY_TOO_COMPLEX", "MAX_QUERY_DEPTH")
    assert await stored_messages(db) == 0


async def test_configured_max_query_depth_moves_the_limit(
    settings: Settings, client: GraphQLClient
) -> None:
    await ingest(client, phone=PHONE, body="shallow")
    async with configured_http(settings, max_query_depth=3) as http:
        assert_data(await post(http, {"query": deep_query(3)}))
        error = assert_refused(
            await post(http, {"query": deep_query(4)}), AJ, "QUERY_TOO_COMPLEX", "MAX_QUERY_DEPTH"
        )
        assert "at most 3" in error["message"], error


@BOTH_MEDIA_TYPES
async def test_a_cyclic_fragment_is_a_validation_error_not_a_crash(
    http: httpx.AsyncClient, accept: str
) -> None:
    query = (
        f'{{ thread(phone: "{PHONE}") {{ ...Loop }} }} '
        "fragment Loop on Thread { lastMessage { thread { ...Loop } } }"
    )
    error = assert_refused(
        await post(http, {"query": query}, accept), accept, "GRAPHQL_VALIDATION_FAILED"
    )
    assert "Loop" in error["message"], error


@pytest.mark.parametrize(
    "options",
    [
        {},
        {
            "descriptions": True,
            "specified_by_url": True,
            "directive_is_repeatable": True,
            "schema_description": True,
            "input_value_deprecation": True,
        },
    ],
    ids=["graphql-core-default", "graphiql-all-options"],
)
async def test_the_graphiql_introspection_query_passes_the_default_limits(
    http: httpx.AsyncClient, options: dict[str, bool]
) -> None:
    query = get_introspection_query(**options)
    data = assert_data(await post(http, {"query": query}, GRJ))
    type_names = {t["name"] for t in data["__schema"]["types"]}
    assert {"Query", "Mutation", "Subscription", "Thread", "Message"} <= type_names


# --- aliases -----------------------------------------------------------------------------------


@BOTH_MEDIA_TYPES
async def test_thirty_aliases_run_and_thirty_one_are_refused(
    http: httpx.AsyncClient, accept: str
) -> None:
    assert DEFAULTS.max_query_aliases == 30
    data = assert_data(await post(http, {"query": aliased_query(30)}, accept))
    assert data == {f"a{n}": 0 for n in range(30)}

    over = await post(http, {"query": aliased_query(31)}, accept)
    error = assert_refused(over, accept, "QUERY_TOO_COMPLEX", "MAX_QUERY_ALIASES")
    assert "30" in error["message"], error


async def test_an_over_aliased_mutation_stores_nothing(
    http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    fields = " ".join(f"{ingest_field(f'copy {n}', f'm{n}')} {{ duplicate }}" for n in range(31))
    response = await post(http, {"query": f"mutation {{ {fields} }}"}, GRJ)
    assert_refused(response, GRJ, "QUERY_TOO_COMPLEX", "MAX_QUERY_ALIASES")
    assert await stored_messages(db) == 0


async def test_configured_max_query_aliases_moves_the_limit(settings: Settings) -> None:
    async with configured_http(settings, max_query_aliases=2) as http:
        assert_data(await post(http, {"query": aliased_query(2)}))
        error = assert_refused(
            await post(http, {"query": aliased_query(3)}),
            AJ,
            "QUERY_TOO_COMPLEX",
            "MAX_QUERY_ALIASES",
        )
        assert "at most 2" in error["message"], error


async def test_aliases_in_a_fragment_count_at_every_place_it_is_spread(
    http: httpx.AsyncClient, client: GraphQLClient
) -> None:
    # A fragment spread in two places runs its aliased fields twice; spreading one fragment
    # under n aliases, level after level, would otherwise multiply past any alias limit.
    stored = await ingest(client, phone=PHONE, body="spread")

    def spread_twice(aliases: int) -> str:
        many = " ".join(f"a{n}: id" for n in range(aliases))
        return (
            f'{{ thread(phone: "{PHONE}") {{ ...Many }} '
            f'message(id: "{stored["message"]["id"]}") {{ thread {{ ...Many }} }} }} '
            f"fragment Many on Thread {{ {many} }}"
        )

    data = assert_data(await post(http, {"query": spread_twice(15)}))
    assert len(data["thread"]) + len(data["message"]["thread"]) == 30

    over = await post(http, {"query": spread_twice(16)}, GRJ)
    assert_refused(over, GRJ, "QUERY_TOO_COMPLEX", "MAX_QUERY_ALIASES")


# --- tokens ------------------------------------------------------------------------------------


@BOTH_MEDIA_TYPES
async def test_a_document_at_the_token_limit_runs_and_one_token_more_is_refused(
    http: httpx.AsyncClient, accept: str
) -> None:
    limit = DEFAULTS.max_query_tokens
    assert limit == 2_000
    at_limit = {"query": document_of_tokens(limit), "operationName": "Q0"}
    assert assert_data(await post(http, at_limit, accept)) == {"__typename": "Query"}

    over = {"query": document_of_tokens(limit + 1), "operationName": "Q0"}
    error = assert_refused(
        await post(http, over, accept), accept, "QUERY_TOO_COMPLEX", "MAX_QUERY_TOKENS"
    )
    assert str(limit) in error["message"], error


async def test_a_huge_mutation_is_refused_naming_max_query_tokens_and_stores_nothing(
    http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    padding = " __typename" * 50_000
    mutation = f"mutation {{ {ingest_field('huge')} {{ duplicate{padding} }} }}"
    response = await post(http, {"query": mutation}, GRJ)
    assert_refused(response, GRJ, "QUERY_TOO_COMPLEX", "MAX_QUERY_TOKENS")
    assert "__typename" not in response.text
    assert await stored_messages(db) == 0


async def test_configured_max_query_tokens_moves_the_limit(settings: Settings) -> None:
    async with configured_http(settings, max_query_tokens=100) as http:
        at_limit = {"query": document_of_tokens(100), "operationName": "Q0"}
        assert_data(await post(http, at_limit))
        over = {"query": document_of_tokens(101), "operationName": "Q0"}
        error = assert_refused(await post(http, over), AJ, "QUERY_TOO_COMPLEX", "MAX_QUERY_TOKENS")
        assert "100" in error["message"], error


# --- page size and body size -------------------------------------------------------------------


async def test_pages_over_one_hundred_are_refused_with_a_message_naming_the_bound(
    client: GraphQLClient,
) -> None:
    await ingest(client, phone=PHONE, body="paged")
    await client.execute(
        f"{{ threads(first: 100) {{ edges {{ cursor }} }} "
        f'thread(phone: "{PHONE}") {{ messages(first: 100) {{ edges {{ cursor }} }} }} }}'
    )
    for query in (
        "{ threads(first: 101) { edges { cursor } } }",
        f'{{ thread(phone: "{PHONE}") {{ messages(first: 101) {{ edges {{ cursor }} }} }} }}',
        f'{{ thread(phone: "{PHONE}") {{ messages(last: 101) {{ edges {{ cursor }} }} }} }}',
    ):
        [error] = await client.errors(query)
        assert error["extensions"]["code"] == "BAD_USER_INPUT", error
        assert "at most 100" in error["message"], error


async def test_configured_max_body_bytes_moves_the_413_bound(settings: Settings) -> None:
    limit = 4_096
    prefix, suffix = b'{"query": "{ __typename }', b'"}'

    def body_of(size: int) -> bytes:
        return prefix + b" " * (size - len(prefix) - len(suffix)) + suffix

    async with configured_http(settings, max_body_bytes=limit) as http:
        headers = {"Authorization": f"Bearer {token_for()}", "Content-Type": "application/json"}
        at_limit = await http.post("/graphql", content=body_of(limit), headers=headers)
        assert assert_data(at_limit) == {"__typename": "Query"}

        over = await http.post("/graphql", content=body_of(limit + 1), headers=headers)
        body = over.json()
        assert over.status_code == 413, body
        [error] = body["errors"]
        assert error["extensions"]["code"] == "PAYLOAD_TOO_LARGE", body
        assert str(limit) in error["message"], body


# --- batched operations ------------------------------------------------------------------------


def ingest_operation(body: str) -> dict[str, Any]:
    return {"query": f"mutation {{ {ingest_field(body)} {{ duplicate }} }}"}


@BOTH_MEDIA_TYPES
@pytest.mark.parametrize("size", [1, 2])
async def test_batches_are_refused_by_default_and_run_nothing(
    http: httpx.AsyncClient, db: asyncpg.Connection, accept: str, size: int
) -> None:
    assert DEFAULTS.max_batch_operations == 1
    batch = [ingest_operation(f"batched {n}") for n in range(size)]
    response = await post(http, batch, accept)
    assert_refused(response, accept, "BAD_REQUEST", "MAX_BATCH_OPERATIONS")
    assert await stored_messages(db) == 0


async def test_a_batch_at_the_configured_size_answers_each_operation_on_its_own(
    settings: Settings, db: asyncpg.Connection
) -> None:
    batch = [
        ingest_operation("first of three"),
        {"query": deep_query(11)},  # fails alone
        {"query": "{ unreadCount }"},
    ]
    async with configured_http(settings, max_batch_operations=3) as http:
        response = await post(http, batch)
    results = response.json()
    assert response.status_code == 200, results
    assert len(results) == 3, results
    assert results[0] == {"data": {"ingestMessage": {"duplicate": False}}}
    [error] = results[1]["errors"]
    assert error["extensions"]["code"] == "QUERY_TOO_COMPLEX", results
    assert results[1].get("data") is None, results
    assert results[2] == {"data": {"unreadCount": 1}}
    assert await stored_messages(db) == 1


@BOTH_MEDIA_TYPES
async def test_a_batch_over_the_configured_size_is_refused_whole_and_runs_nothing(
    settings: Settings, db: asyncpg.Connection, accept: str
) -> None:
    batch = [ingest_operation(f"one of four {n}") for n in range(4)]
    async with configured_http(settings, max_batch_operations=3) as http:
        response = await post(http, batch, accept)
    error = assert_refused(response, accept, "BAD_REQUEST", "MAX_BATCH_OPERATIONS")
    assert "3" in error["message"], error
    assert await stored_messages(db) == 0


@BOTH_MEDIA_TYPES
async def test_an_empty_batch_is_refused(settings: Settings, accept: str) -> None:
    async with configured_http(settings, max_batch_operations=3) as http:
        response = await post(http, [], accept)
    assert_refused(response, accept, "BAD_REQUEST", "MAX_BATCH_OPERATIONS")


# --- the same limits over websockets -----------------------------------------------------------


def socket_errors(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The errors of an error message: a list in graphql-transport-ws, one object in the legacy
    protocol."""
    assert message["type"] == "error", message
    payload = message["payload"]
    return payload if isinstance(payload, list) else [payload]


async def close_code(socket: GraphQLSocket, wait_s: float = 5.0) -> int | None:
    """The code the server closes `socket` with within `wait_s`; None if it stays open."""
    try:
        message = await socket.receive(wait_s)
    except ConnectionClosed as closed:
        received = closed.rcvd
    except TimeoutError:
        return None
    else:
        pytest.fail(f"expected the socket to be closed, received {message}")
    assert received is not None, "closed without a close frame"
    return received.code


# newMessage, thread, then the rest: 10 and 11 levels.
SUBSCRIPTION_AT_DEPTH_LIMIT = (
    f"subscription {{ newMessage {{ thread {{ {thread_selection(8)} }} }} }}"
)
SUBSCRIPTION_TOO_DEEP = f"subscription {{ newMessage {{ thread {{ {thread_selection(9)} }} }} }}"


@pytest.mark.parametrize(
    ("document", "naming"),
    [
        (SUBSCRIPTION_TOO_DEEP, "MAX_QUERY_DEPTH"),
        (
            "subscription { newMessage { " + " ".join(f"a{n}: id" for n in range(31)) + " } }",
            "MAX_QUERY_ALIASES",
        ),
        ("subscription { newMessage { id" + " __typename" * 2_000 + " } }", "MAX_QUERY_TOKENS"),
        ("{" + " __typename" * 2_000 + " }", "MAX_QUERY_TOKENS"),
    ],
    ids=["depth", "aliases", "tokens", "tokens-query"],
)
async def test_socket_operations_over_a_limit_get_an_error_and_the_socket_stays_usable(
    app: Starlette, client: GraphQLClient, document: str, naming: str
) -> None:
    async with serving(app) as url, GraphQLSocket.open(url) as socket:
        await socket.subscribe("hostile", document)
        message = await socket.receive()
        assert message["id"] == "hostile", message
        [error] = socket_errors(message)
        assert error["extensions"]["code"] == "QUERY_TOO_COMPLEX", error
        assert naming in error["message"], error

        await socket.subscribe("fine", SUBSCRIPTION_AT_DEPTH_LIMIT)
        stored = await ingest(client, phone=PHONE, body="still listening")
        node = (await socket.next_payload())["data"]["newMessage"]["thread"]
        for name in chain_fields(8)[:-1]:
            node = node[name]
        assert node["id"] == stored["message"]["id"]


async def test_configured_ws_max_message_bytes_closes_larger_messages_with_1009(
    app: Starlette, settings: Settings
) -> None:
    options = websocket_server_options(dataclasses.replace(settings, ws_max_message_bytes=2_048))
    query = "{ __typename }"
    async with (
        serving(app, ws_max_size=options["ws_max_size"]) as url,
        GraphQLSocket.open(url) as socket,
    ):
        await socket.subscribe("fits", query + " " * 1_500)
        assert (await socket.next_payload())["data"] == {"__typename": "Query"}
        assert (await socket.receive())["type"] == "complete"
        await socket.subscribe("too-big", query + " " * 3_000)
        assert await close_code(socket) == 1009


async def receive_events(socket: GraphQLSocket, count: int) -> dict[str, dict[str, Any]]:
    """The next `count` data messages by operation id, skipping `complete` messages."""
    events: dict[str, dict[str, Any]] = {}
    while len(events) < count:
        message = await socket.receive()
        if message["type"] == "complete":
            continue
        assert message["type"] in ("next", "data"), message
        events[message["id"]] = message["payload"]["data"]
    return events


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
async def test_subscriptions_past_the_configured_limit_are_refused_and_the_first_keep_working(
    settings: Settings, protocol: str
) -> None:
    async with (
        configured_app(settings, ws_max_subscriptions=2) as app,
        http_to(app) as http,
        serving(app) as url,
        GraphQLSocket.open(url, protocol) as socket,
    ):
        client = GraphQLClient(http)
        await socket.subscribe("messages", NEW_MESSAGE)
        await socket.subscribe("badge", UNREAD_COUNT_CHANGED)
        await socket.subscribe("third", UNREAD_COUNT_CHANGED)
        refusal = await socket.receive()
        assert refusal["id"] == "third", refusal
        [error] = socket_errors(refusal)
        assert "Subscription limit reached" in error["message"], error

        await ingest(client, phone=PHONE, body="to the first two")
        events = await receive_events(socket, 2)
        assert events["messages"]["newMessage"]["body"] == "to the first two"
        assert events["badge"]["unreadCountChanged"]["totalUnread"] == 1

        # The limit counts live subscriptions: a completed one makes room.
        await socket.complete("messages")
        await socket.subscribe("third", NEW_MESSAGE)
        await ingest(client, phone=PHONE, body="after making room")
        events = await receive_events(socket, 2)
        assert events["third"]["newMessage"]["body"] == "after making room"
        assert events["badge"]["unreadCountChanged"]["totalUnread"] == 2


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
async def test_a_socket_that_never_sends_connection_init_is_closed_with_4408(
    settings: Settings, protocol: str
) -> None:
    async with (
        configured_app(settings, ws_connection_init_timeout_s=1) as app,
        serving(app) as url,
        GraphQLSocket.open(url, protocol, business_id=None) as socket,
    ):
        assert await close_code(socket, wait_s=5.0) == 4408


# --- introspection -----------------------------------------------------------------------------


async def test_introspection_is_on_by_default(http: httpx.AsyncClient) -> None:
    assert DEFAULTS.introspection is True
    data = assert_data(await post(http, {"query": "{ __schema { queryType { name } } }"}))
    assert data == {"__schema": {"queryType": {"name": "Query"}}}


INTROSPECTION_QUERIES = pytest.mark.parametrize(
    "query",
    [
        "{ __schema { types { name } } }",
        '{ __type(name: "Thread") { fields { name } } }',
        "{ ...Peek } fragment Peek on Query { __schema { queryType { name } } }",
        '{ unreadCount t: __type(name: "Message") { name } }',
    ],
    ids=["schema", "type", "schema-in-fragment", "type-beside-a-field"],
)


@BOTH_MEDIA_TYPES
@INTROSPECTION_QUERIES
async def test_with_introspection_off_schema_and_type_are_refused_over_http(
    settings: Settings, accept: str, query: str
) -> None:
    async with configured_http(settings, introspection=False) as http:
        response = await post(http, {"query": query}, accept)
    error = assert_refused(response, accept, "GRAPHQL_VALIDATION_FAILED", "introspection")
    assert "disabled" in error["message"], error


async def test_with_introspection_off_ordinary_queries_and_typename_still_work(
    settings: Settings, client: GraphQLClient
) -> None:
    await ingest(client, phone=PHONE, body="typed")
    async with configured_http(settings, introspection=False) as http:
        query = f'{{ __typename unreadCount thread(phone: "{PHONE}") {{ __typename phone }} }}'
        data = assert_data(await post(http, {"query": query}, GRJ))
    assert data == {
        "__typename": "Query",
        "unreadCount": 1,
        "thread": {"__typename": "Thread", "phone": PHONE},
    }


@INTROSPECTION_QUERIES
async def test_with_introspection_off_socket_introspection_is_refused(
    settings: Settings, query: str
) -> None:
    async with (
        configured_app(settings, introspection=False) as app,
        serving(app) as url,
        GraphQLSocket.open(url) as socket,
    ):
        await socket.subscribe("peek", query)
        [error] = socket_errors(await socket.receive())
        assert error["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED", error
        assert "introspection" in error["message"], error

        await socket.subscribe("ordinary", "{ __typename unreadCount }")
        payload = await socket.next_payload()
        assert payload == {"data": {"__typename": "Query", "unreadCount": 0}}


# --- masking of unexpected exceptions ----------------------------------------------------------

SECRET = "secret internal detail SELECT * FROM x"
LEAKS = ("secret", "SELECT", "RuntimeError", "Traceback", "total_unread", "read_state", ".py")


async def total_unread_that_breaks(session: Any, business_id: int) -> int:
    raise RuntimeError(SECRET)


def assert_logged_in_full(caplog: pytest.LogCaptureFixture, request_id: str) -> None:
    [record] = [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR and request_id in r.getMessage() and r.exc_info
    ]
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)
    trace = caplog.text
    assert SECRET in trace
    assert "Traceback" in trace
    assert "total_unread_that_breaks" in trace


async def test_an_unexpected_exception_is_masked_with_a_request_id_that_the_log_has_in_full(
    client: GraphQLClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wa_inbox")
    monkeypatch.setattr(read_state, "total_unread", total_unread_that_breaks)

    response = await client.post("{ unreadCount }")

    body = response.json()
    assert body["data"] is None, body
    [error] = body["errors"]
    assert error["message"] == "Internal server error", body
    assert error["extensions"]["code"] == "INTERNAL_SERVER_ERROR", body
    request_id = error["extensions"]["requestId"]
    assert request_id
    assert response.headers["x-request-id"] == request_id
    for leak in LEAKS:
        assert leak not in response.text, (leak, response.text)
    assert_logged_in_full(caplog, request_id)


async def test_an_unexpected_exception_over_the_socket_is_masked_the_same_way(
    app: Starlette, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wa_inbox")
    monkeypatch.setattr(read_state, "total_unread", total_unread_that_breaks)

    async with serving(app) as url, GraphQLSocket.open(url) as socket:
        await socket.subscribe("badge", "{ unreadCount }")
        raw = await socket.connection.recv()
        payload = json.loads(raw)["payload"]

    [error] = payload["errors"]
    assert error["message"] == "Internal server error", payload
    assert error["extensions"]["code"] == "INTERNAL_SERVER_ERROR", payload
    for leak in LEAKS:
        assert leak not in str(raw), (leak, raw)
    assert_logged_in_full(caplog, error["extensions"]["requestId"])


# --- CORS --------------------------------------------------------------------------------------


async def preflight(http: httpx.AsyncClient, origin: str) -> httpx.Response:
    return await http.options(
        "/graphql",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )


async def test_cors_preflight_from_an_allowed_origin_allows_bearer_requests_without_credentials(
    settings: Settings,
) -> None:
    async with configured_http(settings, cors_allowed_origins=(ALLOWED_ORIGIN,)) as http:
        response = await preflight(http, ALLOWED_ORIGIN)
        assert response.status_code == 200, response.text
        assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
        allowed_headers = response.headers["access-control-allow-headers"].lower()
        assert "authorization" in allowed_headers
        assert "content-type" in allowed_headers
        assert "POST" in response.headers["access-control-allow-methods"]
        assert "access-control-allow-credentials" not in response.headers

        request = await post(http, {"query": "{ __typename }"}, Origin=ALLOWED_ORIGIN)
        assert assert_data(request) == {"__typename": "Query"}
        assert request.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
        assert "access-control-allow-credentials" not in request.headers


@pytest.mark.parametrize(
    "origin",
    [
        EVIL_ORIGIN,
        "null",
        "https://app.example.com.evil.example",
        "http://app.example.com",
        "https://app.example.com:8443",
    ],
)
async def test_cors_gives_other_origins_no_allow_origin(settings: Settings, origin: str) -> None:
    async with configured_http(settings, cors_allowed_origins=(ALLOWED_ORIGIN,)) as http:
        refused = await preflight(http, origin)
        assert refused.status_code >= 400, refused.text
        assert "access-control-allow-origin" not in refused.headers

        request = await post(http, {"query": "{ __typename }"}, Origin=origin)
        assert "access-control-allow-origin" not in request.headers
        assert "access-control-allow-credentials" not in request.headers


async def test_cors_allows_no_origin_by_default(http: httpx.AsyncClient) -> None:
    assert DEFAULTS.cors_allowed_origins == ()
    for origin in (ALLOWED_ORIGIN, EVIL_ORIGIN):
        assert "access-control-allow-origin" not in (await preflight(http, origin)).headers
        request = await post(http, {"query": "{ __typename }"}, Origin=origin)
        assert "access-control-allow-origin" not in request.headers


# --- websocket Origin --------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def handshake(url: str, origin: str | None) -> AsyncIterator[ClientConnection]:
    async with connect(
        url,
        subprotocols=[TRANSPORT_WS],  # type: ignore[list-item]
        origin=origin,  # type: ignore[arg-type]
        proxy=None,
    ) as connection:
        yield connection


@pytest.mark.parametrize(
    "origin",
    [
        EVIL_ORIGIN,
        "null",
        "https://app.example.com.evil.example",
        "http://app.example.com",
        "http://127.0.0.1:1",
    ],
)
async def test_websocket_handshake_from_a_foreign_origin_is_refused_with_403(
    settings: Settings, origin: str
) -> None:
    async with (
        configured_app(settings, cors_allowed_origins=(ALLOWED_ORIGIN,)) as app,
        serving(app) as url,
    ):
        with pytest.raises(InvalidStatus) as refused:
            async with handshake(url, origin):
                pass
        assert refused.value.response.status_code == 403
        assert app.state.hub.registered() == (0, 0, 0)


@pytest.mark.parametrize(
    "origin",
    [ALLOWED_ORIGIN, "HTTPS://App.Example.com/", None, "same-origin"],
    ids=["allowed", "allowed-other-case", "no-origin", "same-origin"],
)
async def test_websocket_handshake_from_an_allowed_origin_or_none_or_this_server_works(
    settings: Settings, origin: str | None
) -> None:
    async with (
        configured_app(settings, cors_allowed_origins=(ALLOWED_ORIGIN,)) as app,
        serving(app) as url,
    ):
        if origin == "same-origin":
            origin = "http://" + url.removeprefix("ws://").removesuffix("/graphql")
        async with handshake(url, origin) as connection:
            socket = GraphQLSocket(connection, TRANSPORT_WS)
            await socket.init({"Authorization": f"Bearer {token_for()}"})
            await socket.subscribe("q", "{ __typename }")
            assert await socket.next_payload() == {"data": {"__typename": "Query"}}
