"""Persisted documents: Apollo's automatic persisted queries (APQ), `documentId`, and the
TRUSTED_DOCUMENTS allow-list, over HTTP and websockets, against a real server and PostgreSQL.

The answers are Apollo Server 4's (packages/server/src/requestPipeline.ts and
internalErrorClasses.ts): PersistedQueryNotFound with 200, a hash that is not the text's with
400, an unsupported version with 400.
"""

import asyncio
import dataclasses
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from starlette.applications import Starlette

from gql.app import create_app
from gql.persisted_documents import LearnedDocuments, TrustedDocuments, sha256_hex
from gql.settings import Settings, SettingsError
from tests.conftest import INGEST, PROJECT_ROOT, GraphQLClient, ingest, token_for
from tests.live import LEGACY_WS, NEW_MESSAGE, TRANSPORT_WS, GraphQLSocket, serving
from tests.test_server_process import serve_and_fail

BADGE = "query Badge { unreadCount }"
THREAD_PHONES = "query Phones($first: Int!) { threads(first: $first) { edges { node { phone } } } }"
GRAPHQL_RESPONSE_JSON = "application/graphql-response+json"


def persisted_query(document: str, *, sha256_hash: str | None = None) -> dict[str, Any]:
    return {"persistedQuery": {"version": 1, "sha256Hash": sha256_hash or sha256_hex(document)}}


async def get_by_hash(
    client: GraphQLClient, document: str, accept: str = "application/json"
) -> httpx.Response:
    """A hash-only GET, as Apollo Client's link sends it with useGETForHashedQueries."""
    extensions = json.dumps(persisted_query(document))
    return await client.http.get(
        "/graphql",
        params={"extensions": extensions},
        headers={**client.headers, "Accept": accept},
    )


async def post(client: GraphQLClient, body: dict[str, Any]) -> httpx.Response:
    return await client.http.post("/graphql", json=body, headers=client.headers)


def error_codes(response: httpx.Response) -> list[str]:
    return [error["extensions"]["code"] for error in response.json()["errors"]]


# --- Automatic persisted queries ------------------------------------------------------------


@pytest.mark.parametrize("accept", ["application/json", GRAPHQL_RESPONSE_JSON])
async def test_an_unknown_hash_is_not_found_then_learned_from_the_text_and_run_by_hash(
    client: GraphQLClient, accept: str
) -> None:
    await ingest(client, phone="+14155550100", body="first")

    unknown = await get_by_hash(client, BADGE, accept)
    # Exactly Apollo Server's answer, which Apollo Client and urql retry with the text.
    assert unknown.status_code == 200
    assert unknown.json() == {
        "errors": [
            {
                "message": "PersistedQueryNotFound",
                "extensions": {"code": "PERSISTED_QUERY_NOT_FOUND"},
            }
        ]
    }
    assert unknown.headers["cache-control"] == "no-store"

    registered = await post(client, {"query": BADGE, "extensions": persisted_query(BADGE)})
    assert registered.status_code == 200
    assert registered.json() == {"data": {"unreadCount": 1}}

    by_hash = await get_by_hash(client, BADGE, accept)
    assert by_hash.status_code == 200
    assert by_hash.json() == {"data": {"unreadCount": 1}}


async def test_a_learned_hash_runs_with_its_own_variables_over_post(
    client: GraphQLClient,
) -> None:
    await ingest(client, phone="+14155550101", body="a")
    await ingest(client, phone="+14155550102", body="b")
    await post(
        client,
        {
            "query": THREAD_PHONES,
            "variables": {"first": 2},
            "extensions": persisted_query(THREAD_PHONES),
        },
    )
    answered = await post(
        client, {"variables": {"first": 1}, "extensions": persisted_query(THREAD_PHONES)}
    )
    assert answered.status_code == 200
    assert answered.json() == {
        "data": {"threads": {"edges": [{"node": {"phone": "+14155550102"}}]}}
    }


async def test_a_hash_that_is_not_the_texts_own_is_refused_and_never_learned(
    client: GraphQLClient,
) -> None:
    # A client filing another document under Badge's hash would hijack it for every client.
    hijack = "query Badge { threads(first: 1) { edges { node { phone } } } }"
    refused = await post(
        client,
        {"query": hijack, "extensions": persisted_query(hijack, sha256_hash=sha256_hex(BADGE))},
    )
    assert refused.status_code == 400
    assert refused.json()["errors"] == [
        {"message": "provided sha does not match query", "extensions": {"code": "BAD_REQUEST"}}
    ]
    assert error_codes(await get_by_hash(client, BADGE)) == ["PERSISTED_QUERY_NOT_FOUND"]


async def test_a_document_that_does_not_validate_is_not_learned(client: GraphQLClient) -> None:
    invalid = "query Nope { noSuchField }"
    answered = await post(client, {"query": invalid, "extensions": persisted_query(invalid)})
    assert error_codes(answered) == ["GRAPHQL_VALIDATION_FAILED"]
    assert error_codes(await get_by_hash(client, invalid)) == ["PERSISTED_QUERY_NOT_FOUND"]


@pytest.mark.parametrize("version", [2, "1", True, None])
async def test_an_unsupported_persisted_query_version_is_refused(
    client: GraphQLClient, version: Any
) -> None:
    extensions = {"persistedQuery": {"version": version, "sha256Hash": sha256_hex(BADGE)}}
    refused = await post(client, {"query": BADGE, "extensions": extensions})
    assert refused.status_code == 400
    assert refused.json()["errors"][0]["message"] == "Unsupported persisted query version"


async def test_a_learned_document_runs_by_its_document_id(client: GraphQLClient) -> None:
    await post(client, {"query": BADGE, "extensions": persisted_query(BADGE)})
    answered = await client.http.get(
        "/graphql", params={"documentId": f"sha256:{sha256_hex(BADGE)}"}, headers=client.headers
    )
    assert answered.json() == {"data": {"unreadCount": 0}}
    unknown = await post(client, {"documentId": f"sha256:{sha256_hex('{ unreadCount }')}"})
    assert error_codes(unknown) == ["PERSISTED_QUERY_NOT_FOUND"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(
            {"documentId": 7}, "`documentId` must be a string or null", id="document_id_number"
        ),
        pytest.param(
            {"documentId": "x", "query": BADGE},
            "send `documentId` or `query`, not both",
            id="document_id_and_query",
        ),
        pytest.param(
            {"documentId": "x", "extensions": persisted_query(BADGE)},
            "send `documentId` or `extensions.persistedQuery`, not both",
            id="document_id_and_hash",
        ),
        pytest.param(
            {"extensions": {"persistedQuery": "abc"}},
            "`extensions.persistedQuery` must be an object {version, sha256Hash}",
            id="persisted_query_a_string",
        ),
        pytest.param(
            {"extensions": {"persistedQuery": {"version": 1}}},
            "`extensions.persistedQuery.sha256Hash` must be a non-empty string",
            id="no_hash",
        ),
    ],
)
async def test_a_malformed_persisted_document_request_is_a_bad_request(
    client: GraphQLClient, body: dict[str, Any], message: str
) -> None:
    refused = await post(client, body)
    assert refused.status_code == 400
    assert refused.json()["errors"] == [{"message": message, "extensions": {"code": "BAD_REQUEST"}}]


async def test_a_lone_surrogate_beside_a_hash_is_a_bad_request(client: GraphQLClient) -> None:
    """JSON lets `\\ud800` through into the text, which then has no UTF-8 bytes to hash."""
    body = (
        '{"query": "{ unreadCount } #\\ud800", "extensions": '
        + json.dumps(persisted_query(BADGE))
        + "}"
    )
    refused = await client.http.post(
        "/graphql",
        content=body.encode(),
        headers={**client.headers, "Content-Type": "application/json"},
    )
    assert refused.status_code == 400
    assert refused.json()["errors"] == [
        {"message": "`query` is not valid Unicode text", "extensions": {"code": "BAD_REQUEST"}}
    ]


async def test_a_websocket_learns_a_document_as_http_does(
    app: Starlette, client: GraphQLClient
) -> None:
    async with serving(app) as url, GraphQLSocket.open(url) as socket:
        hash_only = {"query": "", "extensions": persisted_query(BADGE)}
        await socket.send({"id": "unknown", "type": "subscribe", "payload": hash_only})
        unknown = await socket.receive()
        assert unknown == {
            "id": "unknown",
            "type": "error",
            "payload": [
                {
                    "message": "PersistedQueryNotFound",
                    "extensions": {"code": "PERSISTED_QUERY_NOT_FOUND"},
                }
            ],
        }
        with_text = {"query": BADGE, "extensions": persisted_query(BADGE)}
        for operation_id, payload in [("learn", with_text), ("known", hash_only)]:
            await socket.send({"id": operation_id, "type": "subscribe", "payload": payload})
            assert await socket.next_payload() == {"data": {"unreadCount": 0}}
            assert await socket.receive() == {"id": operation_id, "type": "complete"}
    assert (await get_by_hash(client, BADGE)).json() == {"data": {"unreadCount": 0}}


async def test_a_mutation_named_by_hash_is_refused_over_get(client: GraphQLClient) -> None:
    await post(
        client,
        {
            "query": INGEST,
            "extensions": persisted_query(INGEST),
            "variables": {
                "input": {
                    "phone": "+14155550103",
                    "direction": "INBOUND",
                    "source": "CUSTOMER",
                    "body": "x",
                }
            },
        },
    )
    answered = await get_by_hash(client, INGEST)
    assert answered.status_code == 405


async def test_graphiql_and_introspection_still_work_without_an_allow_list(
    client: GraphQLClient,
) -> None:
    page = await client.http.get("/graphql", headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert "graphiql" in page.text.lower()
    schema = await client.execute("{ __schema { queryType { name } } }")
    assert schema == {"__schema": {"queryType": {"name": "Query"}}}


def test_the_learned_documents_are_bounded_in_count_and_bytes() -> None:
    learned = LearnedDocuments(max_documents=3, max_bytes=100)
    for name in "abcd":
        learned.learn(name, name * 10)
    assert len(learned) == 3
    assert learned.get("a") is None  # the least recently used went first
    assert learned.get("b") == "b" * 10
    # 90 more bytes pass 100: the least recently used go (c, d), b was just used and stays.
    learned.learn("big", "x" * 90)
    assert learned.get("c") is None
    assert learned.get("d") is None
    assert learned.get("b") == "b" * 10
    assert learned.get("big") == "x" * 90
    learned.learn("huge", "y" * 101)  # larger than the store itself: never kept
    assert learned.get("huge") is None
    assert learned.get("big") == "x" * 90


# --- The allow-list (TRUSTED_DOCUMENTS) -----------------------------------------------------

TRUSTED = [BADGE, INGEST, NEW_MESSAGE]


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    """GraphQL codegen's persisted-documents.json for TRUSTED."""
    path = tmp_path / "persisted-documents.json"
    path.write_text(json.dumps({sha256_hex(document): document for document in TRUSTED}))
    return path


@pytest.fixture
async def trusted_app(settings: Settings, manifest: Path) -> AsyncIterator[Starlette]:
    on = dataclasses.replace(settings, trusted_documents=TrustedDocuments.load(manifest))
    application = create_app(on)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def trusted(trusted_app: Starlette) -> AsyncIterator[GraphQLClient]:
    transport = httpx.ASGITransport(app=trusted_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield GraphQLClient(http)


async def test_a_listed_document_runs_by_hash_by_document_id_and_by_its_text(
    trusted: GraphQLClient,
) -> None:
    await ingest(trusted, phone="+14155550110", body="listed")  # INGEST is listed, by text
    assert (await get_by_hash(trusted, BADGE)).json() == {"data": {"unreadCount": 1}}
    by_id = await post(trusted, {"documentId": f"sha256:{sha256_hex(BADGE)}"})
    assert by_id.json() == {"data": {"unreadCount": 1}}
    by_bare_id = await post(trusted, {"documentId": sha256_hex(BADGE)})
    assert by_bare_id.json() == {"data": {"unreadCount": 1}}
    assert await trusted.execute(BADGE) == {"unreadCount": 1}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"query": "{ unreadCount }"}, id="unlisted_text"),
        pytest.param({"query": "{ __schema { queryType { name } } }"}, id="introspection"),
        pytest.param({"extensions": persisted_query("{ unreadCount }")}, id="unlisted_hash"),
        pytest.param({"documentId": f"sha256:{sha256_hex('{ unreadCount }')}"}, id="unlisted_id"),
        pytest.param(
            {"query": "{ unreadCount }", "extensions": persisted_query("{ unreadCount }")},
            id="apq_registration",
        ),
    ],
)
async def test_anything_not_listed_is_refused(trusted: GraphQLClient, body: dict[str, Any]) -> None:
    refused = await post(trusted, body)
    assert refused.status_code == 403
    assert error_codes(refused) == ["PERSISTED_QUERY_NOT_ALLOWED"]
    assert "data" not in refused.json()


async def test_apq_registration_is_refused_while_the_allow_list_is_on(
    trusted: GraphQLClient,
) -> None:
    unlisted = "{ unreadCount }"
    await post(trusted, {"query": unlisted, "extensions": persisted_query(unlisted)})
    assert error_codes(await get_by_hash(trusted, unlisted)) == ["PERSISTED_QUERY_NOT_ALLOWED"]


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
async def test_a_listed_subscription_runs_by_hash_over_a_websocket_and_an_unlisted_one_is_refused(
    trusted_app: Starlette, trusted: GraphQLClient, protocol: str
) -> None:
    kind = "subscribe" if protocol == TRANSPORT_WS else "start"
    async with serving(trusted_app) as url, GraphQLSocket.open(url, protocol) as socket:
        await socket.send(
            {
                "id": "unlisted",
                "type": kind,
                "payload": {"query": "subscription { threadMerged { intoThreadId } }"},
            }
        )
        refused = await socket.receive()
        assert refused["type"] == "error"
        assert refused["id"] == "unlisted"
        errors = refused["payload"] if protocol == TRANSPORT_WS else [refused["payload"]]
        assert [error["extensions"]["code"] for error in errors] == ["PERSISTED_QUERY_NOT_ALLOWED"]

        # graphql-ws requires a `query`: persisted-document clients send it empty.
        await socket.send(
            {
                "id": "by-hash",
                "type": kind,
                "payload": {"query": "", "extensions": persisted_query(NEW_MESSAGE)},
            }
        )
        await socket.send(
            {
                "id": "by-id",
                "type": kind,
                "payload": {"documentId": f"sha256:{sha256_hex(NEW_MESSAGE)}"},
            }
        )
        stored = await ingest(trusted, phone="+14155550111", body="live and listed")
        received = {}
        for _ in range(2):
            message = await socket.receive()
            received[message["id"]] = message["payload"]["data"]["newMessage"]["body"]
        assert received == {"by-hash": "live and listed", "by-id": "live and listed"}
        assert stored["message"]["body"] == "live and listed"


def test_an_apollo_persisted_query_manifest_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "persisted-query-manifest.json"
    operations = [{"id": sha256_hex(BADGE), "body": BADGE, "name": "Badge", "type": "query"}]
    path.write_text(
        json.dumps(
            {"format": "apollo-persisted-query-manifest", "version": 1, "operations": operations}
        )
    )
    settings = Settings.from_environment({"TRUSTED_DOCUMENTS": str(path)})
    assert settings.trusted_documents is not None
    assert dict(settings.trusted_documents.by_id) == {sha256_hex(BADGE): BADGE}


def test_a_manifests_sha256_prefixed_ids_are_looked_up_by_their_hash(tmp_path: Path) -> None:
    path = tmp_path / "persisted-documents.json"
    path.write_text(json.dumps({f"sha256:{sha256_hex(BADGE)}": BADGE}))
    trusted = TrustedDocuments.load(path)
    assert dict(trusted.by_id) == {sha256_hex(BADGE): BADGE}


MALFORMED_MANIFESTS = [
    pytest.param(None, "the file does not exist", id="missing"),
    pytest.param("{not json", "the file is not JSON", id="not_json"),
    pytest.param("[]", "expected a JSON object mapping document hashes", id="a_list"),
    pytest.param("{}", "lists no documents", id="empty"),
    pytest.param('{"Badge": 12}', "is not a document hash mapped to", id="not_text"),
    pytest.param(
        json.dumps({"Badge": sha256_hex(BADGE)}), "is not GraphQL", id="the_clients_name_map"
    ),
    pytest.param(
        json.dumps({"format": "apollo-persisted-query-manifest", "version": 2, "operations": []}),
        "version 2 is not supported",
        id="apollo_version_2",
    ),
    pytest.param(
        json.dumps(
            {"format": "apollo-persisted-query-manifest", "version": 1, "operations": [{"id": "x"}]}
        ),
        "operations[0] needs a string `id` and `body`",
        id="apollo_without_body",
    ),
    pytest.param("[" * 100_000, "nested too deeply", id="nested_too_deeply"),
]


@pytest.mark.parametrize(("content", "words"), MALFORMED_MANIFESTS)
def test_a_malformed_manifest_is_a_settings_error(
    tmp_path: Path, content: str | None, words: str
) -> None:
    path = tmp_path / "persisted-documents.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SettingsError, match=r"^TRUSTED_DOCUMENTS=") as refused:
        Settings.from_environment({"TRUSTED_DOCUMENTS": str(path)})
    assert words in str(refused.value)


def test_a_malformed_manifest_stops_the_server_with_a_clear_error(
    database_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "persisted-documents.json"
    path.write_text('{"Badge": "4ef8d269e7944ef2"}')
    failed = serve_and_fail(
        {"DATABASE_URL": database_url, "AUTH_SECRET": "y" * 40, "TRUSTED_DOCUMENTS": str(path)}
    )
    assert failed.returncode == 2
    assert f"configuration error: TRUSTED_DOCUMENTS={path}: document 'Badge' is not GraphQL" in (
        failed.stderr
    )
    assert "Traceback" not in failed.stderr
    assert "serving GraphQL" not in failed.stderr + failed.stdout


# --- A real Apollo Client ---------------------------------------------------------------------

APOLLO_CLIENT = PROJECT_ROOT / "tests" / "apollo_client"
INSTALL_HINT = (
    "`make test` installs it (npm ci in tests/apollo_client), or run "
    "`npm ci --prefix tests/apollo_client`"
)


def apollo_client_script() -> Path:
    """The Node script driving Apollo Client, or a skip saying what to install."""
    if shutil.which("node") is None:
        pytest.skip(f"Node.js is not installed: install Node.js 20 or later; then {INSTALL_HINT}")
    if not (APOLLO_CLIENT / "node_modules" / "@apollo" / "client").is_dir():
        pytest.skip(f"Apollo Client is not installed in tests/apollo_client: {INSTALL_HINT}")
    return APOLLO_CLIENT / "persisted_queries.mjs"


async def test_apollo_clients_persisted_query_link_hashes_over_get_and_resends_the_text_once(
    app: Starlette, client: GraphQLClient
) -> None:
    script = apollo_client_script()
    await ingest(client, phone="+14155550120", body="for apollo")
    async with serving(app) as ws_url:
        node = await asyncio.create_subprocess_exec(
            shutil.which("node") or "node",
            str(script),
            ws_url.replace("ws://", "http://", 1),
            token_for(1),
            cwd=APOLLO_CLIENT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(node.communicate(), 60)
    assert node.returncode == 0, stderr.decode()
    ran = json.loads(stdout)

    badge = {"unreadCount": 1}
    threads = {
        "threads": {
            "__typename": "ThreadConnection",
            "edges": [
                {
                    "__typename": "ThreadEdge",
                    "node": {"__typename": "Thread", "phone": "+14155550120", "unreadCount": 1},
                }
            ],
        }
    }
    assert ran["results"] == [badge, threads, badge, threads]

    # The first tab: each hash over GET is unknown, so the link resends it with its text over
    # POST (learned); the second tab's hashes are known at once.
    sent = [
        (exchange["method"], _sends_the_text(exchange), _answer_kind(exchange))
        for exchange in ran["exchanges"]
    ]
    assert sent == [
        ("GET", False, "PERSISTED_QUERY_NOT_FOUND"),
        ("POST", True, "data"),
        ("GET", False, "PERSISTED_QUERY_NOT_FOUND"),
        ("POST", True, "data"),
        ("GET", False, "data"),
        ("GET", False, "data"),
    ]
    for exchange in ran["exchanges"]:
        assert exchange["status"] == 200, exchange


def _sends_the_text(exchange: dict[str, Any]) -> bool:
    """Whether the request carried the document's text; each one carries its hash."""
    if exchange["method"] == "GET":
        sent = {
            name: values[0] for name, values in parse_qs(urlsplit(exchange["url"]).query).items()
        }
        extensions = json.loads(sent["extensions"])
    else:
        sent, extensions = exchange["body"], exchange["body"]["extensions"]
    assert extensions["persistedQuery"]["version"] == 1, exchange
    return "query" in sent


def _answer_kind(exchange: dict[str, Any]) -> str:
    answer = exchange["answer"]
    if "errors" in answer:
        return ",".join(error["extensions"]["code"] for error in answer["errors"])
    return "data"
