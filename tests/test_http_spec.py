"""GraphQL over HTTP as the spec says it: a port of every audit of graphql-http's server audit
suite (graphql/graphql-http, src/audits/server.ts), each test id naming its audit, plus what the
suite leaves out (variables that do not coerce, 405/406/413/415, batching, subscriptions,
GraphiQL).

Every request carries a valid bearer token, so what is audited is the transport, not the auth.
`application/graphql-response+json` clients get 400 and no `data` entry for a request error;
`application/json` clients get 200 with an `errors` entry.
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


def assert_request_error(response: httpx.Response, accept: str, code: str) -> dict[str, Any]:
    """A request error as the negotiated media type says: 400 and no `data` for
    graphql-response+json, 200 with `errors` for application/json; every error coded."""
    body: dict[str, Any] = response.json()
    assert media_type(response) == accept, response.headers
    if accept == GRAPHQL_RESPONSE_JSON:
        assert response.status_code == 400, body
    else:
        assert response.status_code == 200, body
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


# --- Media types and requests that must succeed ------------------------------------------------

# (audit id, audit text, Accept sent, JSON body, Content-Type, media type expected, data)
POST_SUCCESSES = [
    (
        "22EB",
        "SHOULD accept application/graphql-response+json and match the content-type",
        GRJ,
        {"query": TYPENAME},
        "application/json",
        GRJ,
        TYPENAME_DATA,
    ),
    (
        "4655",
        "MUST accept application/json and match the content-type",
        AJ,
        {"query": TYPENAME},
        "application/json",
        AJ,
        TYPENAME_DATA,
    ),
    (
        "47DE",
        "SHOULD accept */* and use application/json for the content-type",
        "*/*",
        {"query": TYPENAME},
        "application/json",
        AJ,
        TYPENAME_DATA,
    ),
    (
        "BF61",
        "MUST accept utf-8 encoded request",
        "*/*",
        {"query": TYPENAME},
        "application/json; charset=utf-8",
        AJ,
        TYPENAME_DATA,
    ),
    (
        "78D5",
        "MUST assume utf-8 in request if encoding is unspecified",
        "*/*",
        {"query": TYPENAME},
        "application/json",
        AJ,
        TYPENAME_DATA,
    ),
    (
        "2C94",
        "MUST accept POST requests",
        "*/*",
        {"query": TYPENAME},
        "application/json",
        AJ,
        TYPENAME_DATA,
    ),
    (
        "03D4",
        "MUST accept application/json POST requests",
        "*/*",
        {"query": TYPENAME},
        "application/json",
        AJ,
        TYPENAME_DATA,
    ),
    (
        "34A2",
        "SHOULD allow string {query} parameter when accepting application/graphql-response+json",
        GRJ,
        {"query": TYPENAME},
        "application/json",
        GRJ,
        TYPENAME_DATA,
    ),
    (
        "13EE",
        "MUST allow string {query} parameter when accepting application/json",
        AJ,
        {"query": TYPENAME},
        "application/json",
        AJ,
        TYPENAME_DATA,
    ),
    (
        "8161",
        "SHOULD allow string {operationName} parameter when accepting "
        "application/graphql-response+json",
        GRJ,
        {"operationName": "Query", "query": "query Query { __typename }"},
        "application/json",
        GRJ,
        TYPENAME_DATA,
    ),
    (
        "B8B3",
        "MUST allow string {operationName} parameter when accepting application/json",
        AJ,
        {"operationName": "Query", "query": "query Query { __typename }"},
        "application/json",
        AJ,
        TYPENAME_DATA,
    ),
    *[
        (
            f"{prefix}{index}",
            f"{level} allow null {{{parameter}}} parameter when accepting {accept}",
            accept,
            {"query": TYPENAME, parameter: None},
            "application/json",
            accept,
            TYPENAME_DATA,
        )
        for index, parameter in enumerate(["variables", "operationName", "extensions"])
        for prefix, level, accept in [("94B", "SHOULD", GRJ), ("022", "MUST", AJ)]
    ],
    (
        "2EA1",
        "SHOULD allow map {variables} parameter when accepting application/graphql-response+json",
        GRJ,
        {"query": TYPE_BY_NAME, "variables": {"name": "sometype"}},
        "application/json",
        GRJ,
        {"__type": None},
    ),
    (
        "28B9",
        "MUST allow map {variables} parameter when accepting application/json",
        AJ,
        {"query": TYPE_BY_NAME, "variables": {"name": "sometype"}},
        "application/json",
        AJ,
        {"__type": None},
    ),
    (
        "428F",
        "SHOULD allow map {extensions} parameter when accepting application/graphql-response+json",
        GRJ,
        {"query": TYPENAME, "extensions": {"some": "value"}},
        "application/json",
        GRJ,
        TYPENAME_DATA,
    ),
    (
        "1B7A",
        "MUST allow map {extensions} parameter when accepting application/json",
        AJ,
        {"query": TYPENAME, "extensions": {"some": "value"}},
        "application/json",
        AJ,
        TYPENAME_DATA,
    ),
]


def audit_id(code: str, text: str) -> str:
    words = "".join(ch if ch.isalnum() else " " for ch in text.replace("+json", "_json"))
    return f"{code}_" + "_".join(words.lower().split())


@pytest.mark.parametrize(
    ("accept", "body", "content_type", "expected_media_type", "data"),
    [pytest.param(*row[2:], id=audit_id(*row[:2])) for row in POST_SUCCESSES],
)
async def test_valid_post_requests_execute_with_the_negotiated_media_type(
    http: httpx.AsyncClient,
    accept: str,
    body: dict[str, Any],
    content_type: str,
    expected_media_type: str,
    data: dict[str, Any],
) -> None:
    response = await post_json(http, body, accept=accept, content_type=content_type)
    assert_success(response, expected_media_type, data)


# (audit id, audit text, Accept sent, query-string parameters, media type expected, data)
GET_SUCCESSES = [
    (
        "80D8",
        "SHOULD assume application/json content-type when accept is missing",
        NO_ACCEPT,
        {"query": TYPENAME},
        AJ,
        TYPENAME_DATA,
    ),
    (
        "5A70",
        "MAY accept application/x-www-form-urlencoded formatted GET requests",
        "*/*",
        {"query": TYPENAME},
        AJ,
        TYPENAME_DATA,
    ),
    (
        "D6D5",
        "MAY allow URL-encoded JSON string {variables} parameter in GETs when accepting "
        "application/graphql-response+json",
        GRJ,
        {"query": TYPE_BY_NAME, "variables": json.dumps({"name": "sometype"})},
        GRJ,
        {"__type": None},
    ),
    (
        "6A70",
        "MAY allow URL-encoded JSON string {variables} parameter in GETs when accepting "
        "application/json",
        AJ,
        {"query": TYPE_BY_NAME, "variables": json.dumps({"name": "sometype"})},
        AJ,
        {"__type": None},
    ),
]


@pytest.mark.parametrize(
    ("accept", "params", "expected_media_type", "data"),
    [pytest.param(*row[2:], id=audit_id(*row[:2])) for row in GET_SUCCESSES],
)
async def test_queries_over_get_execute_with_the_negotiated_media_type(
    http: httpx.AsyncClient,
    accept: Any,
    params: dict[str, str],
    expected_media_type: str,
    data: dict[str, Any],
) -> None:
    response = await send(http, "GET", accept=accept, params=params, content_type=None)
    assert_success(response, expected_media_type, data)


async def test_82A3_must_use_utf_8_encoding_when_responding(http: httpx.AsyncClient) -> None:
    response = await send(http, content=json.dumps({"query": TYPENAME}).encode())
    assert response.status_code == 200
    response.content.decode("utf-8", errors="strict")
    charset = response.headers["content-type"].partition("charset=")[2].strip().lower()
    assert charset in ("", "utf-8"), response.headers


async def test_82A3_BF61_non_ascii_text_round_trips_as_utf_8(
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


# --- Request: GET and POST ---------------------------------------------------------------------


async def test_9C48_may_not_allow_executing_mutations_on_get_requests(
    http: httpx.AsyncClient,
) -> None:
    response = await send(
        http, "GET", accept=GRJ, params={"query": "mutation { __typename }"}, content_type=None
    )
    body = response.json()
    assert 400 <= response.status_code <= 499, body
    assert response.status_code == 405, body
    assert response.headers["allow"] == "POST"
    assert media_type(response) == GRJ
    assert "data" not in body, body
    assert error_codes(body) == ["METHOD_NOT_ALLOWED"]


async def test_mutation_sent_over_get_stores_nothing(
    http: httpx.AsyncClient, client: GraphQLClient
) -> None:
    mutation = (
        'mutation { ingestMessage(input: {phone: "+14155552671", direction: INBOUND, '
        'source: CUSTOMER, body: "over GET"}) { duplicate } }'
    )
    response = await send(http, "GET", accept=AJ, params={"query": mutation}, content_type=None)
    assert response.status_code == 405, response.text
    assert response.headers["allow"] == "POST"

    data = await client.execute("{ unreadCount threads { edges { cursor } } }")
    assert data == {"unreadCount": 0, "threads": {"edges": []}}


async def test_9ABE_should_respond_with_4xx_if_content_type_is_not_supplied_on_post(
    http: httpx.AsyncClient,
) -> None:
    response = await send(http, "POST", content_type=None)
    assert "content-type" not in response.request.headers
    assert 400 <= response.status_code <= 499, response.text
    assert response.json()["errors"], response.text


async def test_7267_must_require_a_request_body_on_post(http: httpx.AsyncClient) -> None:
    response = await send(http, "POST", content=b"")
    if APPLICATION_JSON in response.headers.get("content-type", ""):
        assert response.json().get("errors"), response.text
    else:
        assert response.status_code == 400, response.text
    assert_request_error(response, AJ, "BAD_REQUEST")


async def test_7267_post_without_body_is_400_when_accepting_graphql_response_json(
    http: httpx.AsyncClient,
) -> None:
    response = await send(http, "POST", accept=GRJ, content=b"")
    assert_request_error(response, GRJ, "BAD_REQUEST")


# --- Request parameters ------------------------------------------------------------------------

INVALID_PARAMETER_VALUES = {
    "query": [("object", {"obj": "ect"}), ("number", 0), ("boolean", False), ("array", ["array"])],
    "operationName": [
        ("object", {"obj": "ect"}),
        ("number", 0),
        ("boolean", False),
        ("array", ["array"]),
    ],
    "variables": [("string", "string"), ("number", 0), ("boolean", False), ("array", ["array"])],
    "extensions": [("string", "string"), ("number", 0), ("boolean", False), ("array", ["array"])],
}
# The audit id prefixes for (parameter, graphql-response+json) and (parameter, application/json).
PARAMETER_AUDIT_PREFIXES = {
    "query": ("4F5", "9FE"),
    "operationName": ("E3E", "FB9"),
    "variables": ("69B", "F05"),
    "extensions": ("904", "368"),
}


def invalid_parameter_cases() -> list[Any]:
    cases = []
    for parameter, values in INVALID_PARAMETER_VALUES.items():
        grj_prefix, aj_prefix = PARAMETER_AUDIT_PREFIXES[parameter]
        for index, (kind, value) in enumerate(values):
            body = {"query": value} if parameter == "query" else {"query": TYPENAME}
            body[parameter] = value
            cases.append(
                pytest.param(
                    GRJ,
                    body,
                    id=audit_id(
                        f"{grj_prefix}{index}",
                        f"SHOULD use 400 status code on {kind} {{{parameter}}} parameter "
                        f"when accepting {GRJ}",
                    ),
                )
            )
            cases.append(
                pytest.param(
                    AJ,
                    body,
                    id=audit_id(
                        f"{aj_prefix}{index}",
                        f"SHOULD use 200 status code with errors field on {kind} "
                        f"{{{parameter}}} parameter when accepting {AJ}",
                    ),
                )
            )
    return cases


MISSING_OR_MISSPELLED_QUERY = [
    pytest.param(
        GRJ,
        {"notquery": TYPENAME},
        id=audit_id(
            "6610",
            f"SHOULD use 400 status code on missing {{query}} parameter when accepting {GRJ}",
        ),
    ),
    pytest.param(
        AJ,
        {"notquery": TYPENAME},
        id=audit_id(
            "3715",
            "SHOULD use 200 status code with errors field on missing {query} parameter "
            f"when accepting {AJ}",
        ),
    ),
    pytest.param(
        AJ,
        {"qeury": TYPENAME},
        id=audit_id(
            "F5AF", f"SHOULD use 200 status code if parameters are invalid when accepting {AJ}"
        ),
    ),
    pytest.param(
        GRJ,
        {"qeury": TYPENAME},
        id=audit_id(
            "3E36_17C5_34D6",
            "SHOULD use 400 status code and not contain the data entry if parameters are "
            f"invalid when accepting {GRJ}",
        ),
    ),
    pytest.param(GRJ, {"query": ""}, id="empty_query_string_graphql_response_json"),
    pytest.param(GRJ, {"query": "   "}, id="blank_query_string_graphql_response_json"),
    pytest.param(GRJ, "{ __typename }", id="body_is_a_json_string_graphql_response_json"),
    pytest.param(AJ, None, id="body_is_json_null_application_json"),
]


@pytest.mark.parametrize(
    ("accept", "body"), [*invalid_parameter_cases(), *MISSING_OR_MISSPELLED_QUERY]
)
async def test_malformed_parameters_are_request_errors_coded_bad_request(
    http: httpx.AsyncClient, accept: str, body: Any
) -> None:
    response = await post_json(http, body, accept=accept)
    assert_request_error(response, accept, "BAD_REQUEST")


@pytest.mark.parametrize(
    ("accept", "params"),
    [
        pytest.param(GRJ, {}, id="no_query_graphql_response_json"),
        pytest.param(AJ, {}, id="no_query_application_json"),
        pytest.param(
            GRJ, {"query": TYPE_BY_NAME, "variables": "{not json"}, id="variables_not_json"
        ),
        pytest.param(GRJ, {"query": TYPE_BY_NAME, "variables": "[1]"}, id="variables_json_array"),
        pytest.param(GRJ, {"query": TYPENAME, "extensions": "{not json"}, id="extensions_not_json"),
        pytest.param(GRJ, {"query": TYPENAME, "extensions": '"x"'}, id="extensions_json_string"),
    ],
)
async def test_malformed_get_parameters_are_request_errors_coded_bad_request(
    http: httpx.AsyncClient, accept: str, params: dict[str, str]
) -> None:
    response = await send(http, "GET", accept=accept, params=params, content_type=None)
    assert_request_error(response, accept, "BAD_REQUEST")


# --- Responses to JSON, document and validation failures ---------------------------------------

# (audit id, audit text, Accept sent, raw body, code expected)
FAILURES = [
    (
        "D477",
        f"SHOULD use 200 status code on JSON parsing failure when accepting {AJ}",
        AJ,
        b'{ "not a JSON',
        "BAD_REQUEST",
    ),
    (
        "60AA_2163",
        f"SHOULD use 4xx and 400 status code on JSON parsing failure when accepting {GRJ}",
        GRJ,
        b'{ "not a JSON',
        "BAD_REQUEST",
    ),
    (
        "572B",
        f"SHOULD use 200 status code on document parsing failure when accepting {AJ}",
        AJ,
        json.dumps({"query": "{"}).encode(),
        "GRAPHQL_PARSE_FAILED",
    ),
    (
        "865D_556A_D586",
        "SHOULD use 4xx and 400 status code and not contain the data entry on document parsing "
        f"failure when accepting {GRJ}",
        GRJ,
        json.dumps({"query": "{"}).encode(),
        "GRAPHQL_PARSE_FAILED",
    ),
    (
        "FDE2",
        f"SHOULD use 200 status code on document validation failure when accepting {AJ}",
        AJ,
        json.dumps({"query": AUDIT_MISSING_FIELD}).encode(),
        "GRAPHQL_PARSE_FAILED",
    ),
    (
        "51FE_74FF_5E5B",
        "SHOULD use 4xx and 400 status code and not contain the data entry on document "
        f"validation failure when accepting {GRJ}",
        GRJ,
        json.dumps({"query": AUDIT_MISSING_FIELD}).encode(),
        "GRAPHQL_PARSE_FAILED",
    ),
    (
        "unknown_field",
        f"SHOULD use 200 status code on document validation failure when accepting {AJ}",
        AJ,
        json.dumps({"query": UNKNOWN_FIELD}).encode(),
        "GRAPHQL_VALIDATION_FAILED",
    ),
    (
        "unknown_field",
        "SHOULD use 400 status code and not contain the data entry on document validation "
        f"failure when accepting {GRJ}",
        GRJ,
        json.dumps({"query": UNKNOWN_FIELD}).encode(),
        "GRAPHQL_VALIDATION_FAILED",
    ),
    (
        "unknown_argument",
        f"validation failure on an unknown argument when accepting {GRJ}",
        GRJ,
        json.dumps({"query": "{ threads(nope: 1) { edges { cursor } } }"}).encode(),
        "GRAPHQL_VALIDATION_FAILED",
    ),
    (
        "invalid_utf_8",
        f"body that is not UTF-8 is a JSON parsing failure when accepting {GRJ}",
        GRJ,
        b'{"query": "\xff\xfe"}',
        "BAD_REQUEST",
    ),
]


@pytest.mark.parametrize(
    ("accept", "content", "code"),
    [pytest.param(*row[2:], id=audit_id(*row[:2])) for row in FAILURES],
)
async def test_json_document_and_validation_failures_are_request_errors(
    http: httpx.AsyncClient, accept: str, content: bytes, code: str
) -> None:
    response = await send(http, accept=accept, content=content)
    assert_request_error(response, accept, code)


@pytest.mark.parametrize("accept", [GRJ, AJ])
async def test_unknown_operation_name_is_a_request_error(
    http: httpx.AsyncClient, accept: str
) -> None:
    response = await post_json(
        http, {"query": "query A { __typename }", "operationName": "B"}, accept=accept
    )
    body = response.json()
    assert response.status_code == (400 if accept == GRJ else 200), body
    assert "data" not in body, body
    assert body["errors"], body


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
        "text/plain",
        "text/plain; charset=utf-8",
        "application/x-www-form-urlencoded",
    ],
)
async def test_post_with_a_content_type_other_than_json_is_415(
    http: httpx.AsyncClient, content_type: str
) -> None:
    response = await send(
        http,
        accept=GRJ,
        content=json.dumps({"query": TYPENAME}).encode(),
        content_type=content_type,
    )
    body = response.json()
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
