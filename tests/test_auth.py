"""Authentication: every request carries `Authorization: Bearer <JWT>`, HS256-signed with the
app's secret, with a string `sub`, a positive integer `business_id`, an `exp`, and optionally a
known `role`; anything else is 401 UNAUTHENTICATED. The token's business scopes every read and
write."""

import base64
import json
import time
import warnings
from typing import Any

import httpx
import jwt
import pytest

from tests.conftest import AUTH_SECRET, GraphQLClient, ingest, token_for

GRAPHQL_RESPONSE_JSON = "application/graphql-response+json"
TYPENAME = "{ __typename }"


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid claims, with `overrides` applied (a value of ... drops the claim)."""
    now = int(time.time())
    base: dict[str, Any] = {"sub": "agent-1", "business_id": 1, "iat": now, "exp": now + 3600}
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not ...}


def signed(payload: dict[str, Any], secret: str = AUTH_SECRET, algorithm: str = "HS256") -> str:
    with warnings.catch_warnings():
        # PyJWT warns about short HMAC keys for HS384/HS512; the point here is the algorithm.
        warnings.simplefilter("ignore")
        return jwt.encode(payload, secret, algorithm=algorithm)


def b64url(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unsigned_token(payload: dict[str, Any]) -> str:
    """An `alg: none` token, built by hand: header.payload. with an empty signature."""
    return f"{b64url({'alg': 'none', 'typ': 'JWT'})}.{b64url(payload)}."


async def post(
    http: httpx.AsyncClient,
    authorization: str | None,
    query: str = TYPENAME,
    accept: str = GRAPHQL_RESPONSE_JSON,
) -> httpx.Response:
    headers = {"Content-Type": "application/json", "Accept": accept}
    if authorization is not None:
        headers["Authorization"] = authorization
    return await http.post("/graphql", content=json.dumps({"query": query}), headers=headers)


def assert_unauthenticated(response: httpx.Response) -> None:
    body = response.json()
    assert response.status_code == 401, body
    assert "data" not in body, body
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED", body
    assert response.headers["www-authenticate"].lower().startswith("bearer"), response.headers


REFUSED_AUTHORIZATIONS = [
    pytest.param(None, id="no_authorization_header"),
    pytest.param("", id="empty_authorization_header"),
    pytest.param(f"Basic {token_for()}", id="basic_scheme_with_a_valid_token"),
    pytest.param(f"Token {token_for()}", id="token_scheme_with_a_valid_token"),
    pytest.param(token_for(), id="valid_token_without_a_scheme"),
    pytest.param("Bearer", id="bearer_without_a_token"),
    pytest.param("Bearer    ", id="bearer_with_a_blank_token"),
    pytest.param("Bearer not-a-jwt", id="garbage_token"),
    pytest.param("Bearer a.b.c", id="garbage_three_part_token"),
    pytest.param(
        f"Bearer {signed(claims(), secret='another-secret-that-is-long-enough-for-hs256')}",
        id="signed_with_another_secret",
    ),
    pytest.param(f"Bearer {unsigned_token(claims())}", id="alg_none_unsigned_token"),
    pytest.param(f"Bearer {signed(claims(), algorithm='HS384')}", id="signed_hs384"),
    pytest.param(f"Bearer {signed(claims(), algorithm='HS512')}", id="signed_hs512"),
    pytest.param(f"Bearer {signed(claims(exp=int(time.time()) - 3600))}", id="expired_an_hour_ago"),
    pytest.param(f"Bearer {signed(claims(sub=...))}", id="missing_sub"),
    pytest.param(f"Bearer {signed(claims(sub=''))}", id="empty_sub"),
    pytest.param(f"Bearer {signed(claims(sub=42))}", id="sub_as_a_number"),
    pytest.param(f"Bearer {signed(claims(business_id=...))}", id="missing_business_id"),
    pytest.param(f"Bearer {signed(claims(business_id='1'))}", id="business_id_as_string"),
    pytest.param(f"Bearer {signed(claims(business_id=True))}", id="business_id_as_true"),
    pytest.param(f"Bearer {signed(claims(business_id=0))}", id="business_id_zero"),
    pytest.param(f"Bearer {signed(claims(business_id=-1))}", id="business_id_negative"),
    pytest.param(f"Bearer {signed(claims(business_id=1.5))}", id="business_id_fraction"),
    pytest.param(f"Bearer {signed(claims(business_id=None))}", id="business_id_null"),
    pytest.param(f"Bearer {signed(claims(exp=..., iat=...))}", id="no_exp_claim"),
    pytest.param(f"Bearer {signed(claims(exp='tomorrow'))}", id="exp_not_a_number"),
    pytest.param(
        f"Bearer {signed(claims(exp=int(time.time()) - 60))}", id="expired_beyond_the_leeway"
    ),
    pytest.param(f"Bearer {signed(claims(sub='x' * 257))}", id="sub_too_long"),
    pytest.param(f"Bearer {signed(claims(role='owner'))}", id="unknown_role"),
    pytest.param(f"Bearer {signed(claims(role='ADMIN'))}", id="role_in_the_wrong_case"),
    pytest.param(f"Bearer {signed(claims(role=['admin']))}", id="role_as_a_list"),
    pytest.param(f"Bearer {signed(claims(role=None))}", id="role_null"),
]


@pytest.mark.parametrize("authorization", REFUSED_AUTHORIZATIONS)
async def test_request_without_a_valid_token_is_401_unauthenticated(
    http: httpx.AsyncClient, authorization: str | None
) -> None:
    response = await post(http, authorization)
    assert_unauthenticated(response)


async def test_unauthenticated_is_401_for_application_json_clients_too(
    http: httpx.AsyncClient,
) -> None:
    response = await post(http, None, accept="application/json")
    assert_unauthenticated(response)
    assert response.headers["content-type"].startswith("application/json")


async def test_unauthenticated_get_query_is_401(http: httpx.AsyncClient) -> None:
    response = await http.get(
        "/graphql", params={"query": TYPENAME}, headers={"Accept": GRAPHQL_RESPONSE_JSON}
    )
    assert_unauthenticated(response)


async def test_unauthenticated_mutation_stores_nothing(
    http: httpx.AsyncClient, client: GraphQLClient
) -> None:
    mutation = (
        'mutation { ingestMessage(input: {phone: "+14155552671", direction: INBOUND, '
        'source: CUSTOMER, body: "hi"}) { duplicate } }'
    )
    response = await post(
        http, f"Bearer {signed(claims(), secret='wrong-secret-long-enough!')}", mutation
    )
    assert_unauthenticated(response)

    assert await client.execute("{ unreadCount }") == {"unreadCount": 0}


async def test_expired_token_within_the_leeway_is_still_accepted(http: httpx.AsyncClient) -> None:
    response = await post(http, f"Bearer {signed(claims(exp=int(time.time()) - 5))}")
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(token_for(), id="conftest_token"),
        pytest.param(signed(claims()), id="hs256_with_sub_and_business_id"),
        pytest.param(signed(claims(role="agent")), id="agent_role"),
        pytest.param(signed(claims(role="service")), id="service_role"),
        pytest.param(signed(claims(role="admin")), id="admin_role"),
        pytest.param(signed(claims(business_id=2**40)), id="large_business_id"),
    ],
)
async def test_valid_token_is_served(http: httpx.AsyncClient, token: str) -> None:
    response = await post(http, f"Bearer {token}")
    body = response.json()
    assert response.status_code == 200, body
    assert body == {"data": {"__typename": "Query"}}


async def test_bearer_scheme_is_case_insensitive(http: httpx.AsyncClient) -> None:
    response = await post(http, f"bearer {token_for()}")
    assert response.status_code == 200, response.text


THREAD = "query($id: ID!) { thread(id: $id) { id unreadCount } }"
MARK_READ = "mutation($id: ID!) { markRead(threadId: $id) { totalUnread thread { id } } }"


async def test_token_business_scopes_reads_and_writes(client: GraphQLClient) -> None:
    ingested = await ingest(client, phone="+14155552671", body="hello from business 1")
    thread_id = ingested["thread"]["id"]
    other = client.as_business(2)

    assert await other.execute(THREAD, {"id": thread_id}) == {"thread": None}
    assert await other.execute("{ unreadCount }") == {"unreadCount": 0}
    assert await other.execute("{ threads { edges { cursor } } }") == {"threads": {"edges": []}}
    errors = await other.errors(MARK_READ, {"id": thread_id})
    assert [error["extensions"]["code"] for error in errors] == ["NOT_FOUND"]

    # Business 1 still sees its thread, still unread: business 2's markRead touched nothing.
    own = await client.execute(THREAD, {"id": thread_id})
    assert own == {"thread": {"id": thread_id, "unreadCount": 1}}
    assert await client.execute("{ unreadCount }") == {"unreadCount": 1}
