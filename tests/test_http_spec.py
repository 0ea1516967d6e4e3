"""GraphQL over HTTP where the spec's own audit does not look.

tests/test_graphql_http_audit.py runs graphql-http's `serverAudits` (every MUST, SHOULD and
MAY) against a real server. Those audits check status codes and media types of small
requests; this module keeps what they leave out:

- error bodies: every request error, in both media types, is answered in the negotiated media
  type, without a `data` entry, and with its `extensions.code`;
- the status of request errors the audit never sends (GET parameters that are not JSON, an
  empty or blank `query`, a body that is not UTF-8, an unknown operation name);
- Accept negotiation beyond one media type (q-values, lists, wildcards), GET without Accept,
  and non-ASCII data that round-trips as UTF-8;
- a mutation over GET stores nothing; what the spec leaves to the server: 405/406/413/415,
  batches refused, subscriptions over HTTP, variables that fail to coerce, GraphiQL for
  browsers, JSON nested too deeply.

Every request carries a valid bearer token, so what is tested is the transport, not the auth.
"""

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gql.settings import Settings
from tests.conftest import GraphQLClient, ingest, token_for

GRAPHQL_RESPONSE_JSON = "application/graphql-response+json"
APPLICATION_JSON = "application/json"
GRJ, AJ = GRAPHQL_RESPONSE_JSON, APPLICATION_JSON
BOTH_MEDIA_TYPES = pytest.mark.parametrize(
    "accept", [pytest.param(GRJ, id="graphql_response_json"), pytest.param(AJ, id="json")]
)

TYPENAME = "{ __typename }"
TYPENAME_DATA = {"__typename": "Query"}
TYPE_BY_NAME = "query Type($name: String!) { __type(name: $name) { name } }"
# The audits' "field that does not exist": a name cannot start with a digit, so GraphQL parsers
# (graphql-js's as well as ours) reject it as a syntax error before validation is reached.
AUDIT_MISSING_FIELD = "{ 8f31403dfe404bccbb0e835f2629c6a7 }"
UNKNOWN_FIELD = "{ f8f31403dfe404bccbb0e835f2629c6a7 }"
DEFAULT_MAX_BODY_BYTES = Settings().max_body_bytes

NO_ACCEPT = object()
"""Send no Accept header at all (httpx would otherwise send `*/*`)."""


def bearer() -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for()}"}


async def send(
    http: httpx.AsyncClient,
    method: str = "POST",
    *,
    accept: Any = "*/*",
    content: bytes | None = None,
    content_type: str | None = "application/json",
    params: dict[str, str] | None = None,
    authorized: bool = True,
) -> httpx.Response:
    """One request to /graphql, headers exactly as given (no Accept when NO_ACCEPT)."""
    headers = bearer() if authorized else {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    request = http.build_request(
        method, "/graphql", content=content, params=params, headers=headers
    )
    if accept is NO_ACCEPT:
        del request.headers["accept"]
    else:
        request.headers["accept"] = accept
    return await http.send(request)


async def post_json(
    http: httpx.AsyncClient,
    body: Any,
    *,
    accept: Any = "*/*",
    content_type: str = "application/json",
) -> httpx.Response:
    return await send(
        http, accept=accept, content=json.dumps(body).encode(), content_type=content_type
    )


def media_type(response: httpx.Response) -> str:
    return response.headers["content-type"].split(";")[0].strip().lower()


def error_codes(body: dict[str, Any]) -> list[str]:
    return [error.get("extensions", {}).get("code") for error in body["errors"]]


def assert_request_error(
    response: httpx.Response, accept: str, code: str, *, malformed: bool = False
) -> dict[str, Any]:
    """A request error in the negotiated media type, without `data`, every error coded `code`.

    A malformed request (not JSON, parameters of the wrong kind) is 400 in both media types; a
    GraphQL failure before execution is 400 for graphql-response+json and 200 for
    application/json.
    """
    body: dict[str, Any] = response.json()
    assert media_type(response) == accept, response.headers
    assert response.status_code == (400 if malformed or accept == GRJ else 200), body
    assert "data" not in body, body
    assert body.get("errors"), body
    assert all(isinstance(error.get("message"), str) for error in body["errors"]), body
    assert error_codes(body) == [code] * len(body["errors"]), body
    return body


def assert_success(response: httpx.Response, accept: str, data: dict[str, Any]) -> None:
    body = response.json()
    assert response.status_code == 200, body
    assert media_type(response) == accept, response.headers
    assert "errors" not in body, body
    assert body["data"] == data


# --- Responses in the negotiated media type ----------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "expected_media_type"),
    [
        pytest.param(NO_ACCEPT, AJ, id="no_accept_is_application_json"),
        pytest.param(AJ, AJ, id="application_json"),
        pytest.param(GRJ, GRJ, id="graphql_response_json"),
    ],
)
async def test_queries_over_get_answer_in_the_negotiated_media_type(
    http: httpx.AsyncClient, accept: Any, expected_media_type: str
) -> None:
    params = {"query": TYPE_BY_NAME, "variables": json.dumps({"name": "Thread"})}
    response = await send(http, "GET", accept=accept, params=params, content_type=None)
    assert_success(response, expected_media_type, {"__type": {"name": "Thread"}})


async def test_non_ascii_text_round_trips_as_utf_8(
    http: httpx.AsyncClient, client: GraphQLClient
) -> None:
    text = "héllo wörld 🌍 — ünïcode"
    query = (
        "query($first: Int) { threads(first: $first) { edges { node { lastMessage { body } } } } }"
    )
    await ingest(client, phone="+14155552671", body=text)

    response = await send(
        http,
        content=json.dumps({"query": query, "variables": {"first": 1}}, ensure_ascii=False).encode(
            "utf-8"
        ),
        content_type="application/json; charset=utf-8",
    )

    assert response.status_code == 200, response.text
    charset = response.headers["content-type"].partition("charset=")[2].strip().lower()
    assert charset == "utf-8", response.headers
    assert text.encode("utf-8") in response.content
    edges = json.loads(response.content.decode("utf-8"))["data"]["threads"]["edges"]
    assert edges[0]["node"]["lastMessage"]["body"] == text


@pytest.mark.parametrize(
    ("accept", "expected_media_type"),
    [
        pytest.param(f"{AJ};q=0.5, {GRJ}", GRJ, id="higher_quality_wins"),
        pytest.param(f"{GRJ};q=0.5, {AJ}", AJ, id="higher_quality_wins_over_order"),
        pytest.param(f"{AJ}, {GRJ}", GRJ, id="equal_quality_prefers_graphql_response_json"),
        pytest.param(f"{GRJ}, {AJ};q=0.9", GRJ, id="spec_recommended_client_accept"),
        pytest.param(f"{GRJ};q=0, {AJ}", AJ, id="q_0_refuses_a_media_type"),
        pytest.param(f"text/html, {GRJ};q=0.9, */*;q=0.8", GRJ, id="browser_like_list"),
        pytest.param("application/*", AJ, id="application_wildcard_is_application_json"),
        pytest.param("", AJ, id="empty_accept_is_application_json"),
    ],
)
async def test_accept_header_negotiates_the_response_media_type(
    http: httpx.AsyncClient, accept: str, expected_media_type: str
) -> None:
    response = await post_json(http, {"query": TYPENAME}, accept=accept)
    assert_success(response, expected_media_type, TYPENAME_DATA)


# --- Mutations over GET ------------------------------------------------------------------------


@BOTH_MEDIA_TYPES
async def test_mutation_sent_over_get_is_405_and_stores_nothing(
    http: httpx.AsyncClient, client: GraphQLClient, accept: str
) -> None:
    mutation = (
        'mutation { ingestMessage(input: {phone: "+14155552671", direction: INBOUND, '
        'source: CUSTOMER, body: "over GET"}) { duplicate } }'
    )
    response = await send(http, "GET", accept=accept, params={"query": mutation}, content_type=None)
    body = response.json()
    assert response.status_code == 405, body
    assert response.headers["allow"] == "POST"
    assert media_type(response) == accept
    assert "data" not in body, body
    assert error_codes(body) == ["METHOD_NOT_ALLOWED"]

    data = await client.execute("{ unreadCount threads { edges { cursor } } }")
    assert data == {"unreadCount": 0, "threads": {"edges": []}}


# --- Request errors: status, media type and code -----------------------------------------------

WRONG_KINDS = {
    "query": [{"obj": "ect"}, 0, False, ["array"]],
    "operationName": [{"obj": "ect"}, 0, False, ["array"]],
    "variables": ["string", 0, False, ["array"]],
    "extensions": ["string", 0, False, ["array"]],
}

# (id, raw POST body): not GraphQL over HTTP at all, 400 in both media types, BAD_REQUEST.
MALFORMED_BODIES = [
    ("body_not_json", b'{ "not a JSON'),
    ("body_not_utf_8", b'{"query": "\xff\xfe"}'),
    ("body_missing", b""),
    ("body_json_null", b"null"),
    ("body_json_string", json.dumps(TYPENAME).encode()),
    ("query_missing", json.dumps({"notquery": TYPENAME}).encode()),
    ("query_misspelled", json.dumps({"qeury": TYPENAME}).encode()),
    ("query_empty", json.dumps({"query": ""}).encode()),
    ("query_blank", json.dumps({"query": "   "}).encode()),
    *[
        (
            f"{parameter}_{type(value).__name__}",
            json.dumps(
                {"query": TYPENAME, parameter: value} if parameter != "query" else {"query": value}
            ).encode(),
        )
        for parameter, values in WRONG_KINDS.items()
        for value in values
    ],
]


@BOTH_MEDIA_TYPES
@pytest.mark.parametrize("content", [pytest.param(c, id=i) for i, c in MALFORMED_BODIES])
async def test_malformed_post_is_400_coded_bad_request(
    http: httpx.AsyncClient, accept: str, content: bytes
) -> None:
    response = await send(http, accept=accept, content=content)
    assert_request_error(response, accept, "BAD_REQUEST", malformed=True)


@BOTH_MEDIA_TYPES
@pytest.mark.parametrize(
    "params",
    [
        pytest.param({}, id="no_query"),
        pytest.param({"query": TYPE_BY_NAME, "variables": "{not json"}, id="variables_not_json"),
        pytest.param({"query": TYPE_BY_NAME, "variables": "[1]"}, id="variables_json_array"),
        pytest.param({"query": TYPENAME, "extensions": "{not json"}, id="extensions_not_json"),
        pytest.param({"query": TYPENAME, "extensions": '"x"'}, id="extensions_json_string"),
    ],
)
async def test_malformed_get_is_400_coded_bad_request(
    http: httpx.AsyncClient, accept: str, params: dict[str, str]
) -> None:
    response = await send(http, "GET", accept=accept, params=params, content_type=None)
    assert_request_error(response, accept, "BAD_REQUEST", malformed=True)


# (id, JSON body, code): well-formed requests whose GraphQL fails before execution (variables
# that do not coerce: below).
GRAPHQL_FAILURES = [
    ("document_does_not_parse", {"query": "{"}, "GRAPHQL_PARSE_FAILED"),
    ("audit_missing_field", {"query": AUDIT_MISSING_FIELD}, "GRAPHQL_PARSE_FAILED"),
    ("unknown_field", {"query": UNKNOWN_FIELD}, "GRAPHQL_VALIDATION_FAILED"),
    (
        "unknown_argument",
        {"query": "{ threads(nope: 1) { edges { cursor } } }"},
        "GRAPHQL_VALIDATION_FAILED",
    ),
    (
        "unknown_operation_name",
        {"query": "query A { __typename }", "operationName": "B"},
        "BAD_USER_INPUT",
    ),
]


@BOTH_MEDIA_TYPES
@pytest.mark.parametrize(
    ("body", "code"), [pytest.param(b, c, id=i) for i, b, c in GRAPHQL_FAILURES]
)
async def test_graphql_failing_before_execution_is_answered_by_media_type_with_its_code(
    http: httpx.AsyncClient, accept: str, body: dict[str, Any], code: str
) -> None:
    response = await post_json(http, body, accept=accept)
    assert_request_error(response, accept, code)


# --- Beyond the audit suite --------------------------------------------------------------------

COERCE_QUERY = "query($n: Int!) { threads(first: $n) { edges { cursor } } }"


@pytest.mark.parametrize(
    ("accept", "variables"),
    [
        pytest.param(GRJ, {"n": "x"}, id="string_for_int_graphql_response_json"),
        pytest.param(AJ, {"n": "x"}, id="string_for_int_application_json"),
        pytest.param(GRJ, {}, id="required_variable_missing_graphql_response_json"),
        pytest.param(GRJ, {"n": None}, id="null_for_non_null_graphql_response_json"),
        pytest.param(GRJ, {"n": 2**31}, id="int_out_of_32_bit_range_graphql_response_json"),
    ],
)
async def test_variables_that_fail_to_coerce_are_request_errors_coded_bad_user_input(
    http: httpx.AsyncClient, accept: str, variables: dict[str, Any]
) -> None:
    response = await post_json(http, {"query": COERCE_QUERY, "variables": variables}, accept=accept)
    body = assert_request_error(response, accept, "BAD_USER_INPUT")
    assert "$n" in body["errors"][0]["message"], body


@pytest.mark.parametrize(
    "accept",
    [
        pytest.param("text/plain", id="text_plain"),
        pytest.param("text/html", id="text_html_on_post"),
        pytest.param(f"{GRJ};q=0, {AJ};q=0", id="every_json_type_refused"),
        pytest.param("application/xml", id="application_xml"),
    ],
)
async def test_accept_header_we_cannot_serve_is_406(http: httpx.AsyncClient, accept: str) -> None:
    response = await post_json(http, {"query": TYPENAME}, accept=accept)
    body = response.json()
    assert response.status_code == 406, body
    assert "data" not in body, body
    assert error_codes(body) == ["NOT_ACCEPTABLE"]


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
async def test_methods_other_than_get_and_post_are_405_with_allow(
    http: httpx.AsyncClient, method: str
) -> None:
    response = await send(
        http, method, accept=GRJ, content=json.dumps({"query": TYPENAME}).encode()
    )
    body = response.json()
    assert response.status_code == 405, body
    allowed = {method.strip() for method in response.headers["allow"].split(",")}
    assert allowed == {"GET", "POST"}, response.headers
    assert media_type(response) == GRJ
    assert "data" not in body, body
    assert error_codes(body) == ["METHOD_NOT_ALLOWED"]


def padded_body(size: int) -> bytes:
    """A valid request body of exactly `size` bytes."""
    empty = json.dumps({"query": TYPENAME, "extensions": {"pad": ""}}).encode()
    body = json.dumps({"query": TYPENAME, "extensions": {"pad": "x" * (size - len(empty))}})
    assert len(body.encode()) == size
    return body.encode()


async def test_body_at_the_size_limit_is_served(http: httpx.AsyncClient) -> None:
    response = await send(http, accept=GRJ, content=padded_body(DEFAULT_MAX_BODY_BYTES))
    assert_success(response, GRJ, TYPENAME_DATA)


async def test_body_over_the_size_limit_is_413(http: httpx.AsyncClient) -> None:
    response = await send(http, accept=GRJ, content=padded_body(DEFAULT_MAX_BODY_BYTES + 1))
    body = response.json()
    assert response.request.headers["content-length"] == str(DEFAULT_MAX_BODY_BYTES + 1)
    assert response.status_code == 413, body
    assert "data" not in body, body
    assert error_codes(body) == ["PAYLOAD_TOO_LARGE"]


async def test_streamed_body_over_the_size_limit_without_content_length_is_413(
    http: httpx.AsyncClient,
) -> None:
    payload = padded_body(DEFAULT_MAX_BODY_BYTES + 1)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(payload), 64 * 1024):
            yield payload[start : start + 64 * 1024]

    response = await http.post(
        "/graphql",
        content=chunks(),
        headers={**bearer(), "Content-Type": "application/json", "Accept": GRJ},
    )
    body = response.json()
    assert "content-length" not in response.request.headers
    assert response.status_code == 413, body
    assert error_codes(body) == ["PAYLOAD_TOO_LARGE"]


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "text/plain; charset=utf-8",
        "application/x-www-form-urlencoded",
    ],
)
async def test_post_without_a_json_content_type_is_415(
    http: httpx.AsyncClient, content_type: str | None
) -> None:
    response = await send(
        http,
        accept=GRJ,
        content=json.dumps({"query": TYPENAME}).encode(),
        content_type=content_type,
    )
    body = response.json()
    assert ("content-type" in response.request.headers) == (content_type is not None)
    assert response.status_code == 415, body
    assert "data" not in body, body
    assert error_codes(body) == ["UNSUPPORTED_MEDIA_TYPE"]


@pytest.mark.parametrize("accept", [GRJ, AJ])
async def test_batched_json_array_body_is_a_request_error(
    http: httpx.AsyncClient, accept: str
) -> None:
    response = await post_json(http, [{"query": TYPENAME}, {"query": TYPENAME}], accept=accept)
    assert_request_error(response, accept, "BAD_REQUEST")


@pytest.mark.parametrize("accept", [GRJ, AJ])
async def test_subscription_over_http_is_a_request_error(
    http: httpx.AsyncClient, accept: str
) -> None:
    response = await post_json(
        http, {"query": "subscription OnThreads { __typename }"}, accept=accept
    )
    body = response.json()
    assert response.status_code == (400 if accept == GRJ else 200), body
    assert media_type(response) == accept
    assert "data" not in body, body
    assert body["errors"], body
    assert set(error_codes(body)) <= {"BAD_REQUEST", "GRAPHQL_VALIDATION_FAILED"}, body


async def test_browser_get_without_query_serves_graphiql_without_a_token(
    http: httpx.AsyncClient,
) -> None:
    response = await send(
        http,
        "GET",
        accept="text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        content_type=None,
        authorized=False,
    )
    assert response.status_code == 200, response.text
    assert media_type(response) == "text/html"
    assert "graphiql" in response.text.lower()
    assert "<html" in response.text.lower()


async def test_browser_get_with_a_query_executes_it_instead_of_serving_graphiql(
    http: httpx.AsyncClient,
) -> None:
    response = await send(
        http,
        "GET",
        accept="text/html,*/*;q=0.8",
        params={"query": TYPENAME},
        content_type=None,
    )
    assert_success(response, AJ, TYPENAME_DATA)


async def test_json_nested_too_deeply_is_a_request_error_not_a_500(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/graphql",
        content=b"[" * 100_000,
        headers={
            "Authorization": f"Bearer {token_for()}",
            "Content-Type": "application/json",
            "Accept": "application/graphql-response+json",
        },
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
