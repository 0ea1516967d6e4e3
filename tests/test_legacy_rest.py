"""The legacy REST endpoints (issue 13): envelopes, paging, the id-or-phone rule, roles, errors,
live updates, tenant isolation, and every answer checked against /api/openapi.json."""

import asyncio
import logging
import traceback
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx
import jsonschema_rs
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as examples
from hypothesis import strategies as st
from schemathesis import GenerationMode
from starlette.applications import Starlette

from domain import threads as domain_threads
from domain.access import Role
from domain.thread_references import thread_id_in
from gql.auth import issue_token
from gql.openapi import legacy_rest_openapi
from gql.settings import Settings
from tests.conftest import (
    AUTH_SECRET,
    WHATSAPP_APP_SECRET,
    WHATSAPP_VERIFY_TOKEN,
    GraphQLClient,
    ingest,
    token_for,
)
from tests.live import UNREAD_COUNT_CHANGED, GraphQLSocket, serving

THREADS = "/api/crm/threads"
PHONE = "+972507654321"
OTHER_PHONE = "+972527654321"
MAX_BODY_BYTES = 4096


@pytest.fixture
def settings(database_url: str) -> Settings:
    # The legacy's businesses are Israeli: national numbers ("0507654321") read as IL ones.
    return Settings(
        database_url=database_url,
        auth_secret=AUTH_SECRET,
        default_region="IL",
        whatsapp_app_secret=WHATSAPP_APP_SECRET,
        whatsapp_verify_token=WHATSAPP_VERIFY_TOKEN,
        max_body_bytes=MAX_BODY_BYTES,
    )


def _operations_by_route() -> dict[tuple[str, str], dict[str, Any]]:
    document = legacy_rest_openapi()
    return {
        (method.upper(), path): operation
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    }


class DocumentedRest:
    """Calls the REST endpoints in-process and checks every answer against the OpenAPI
    document: the route's documented status, and the body against that status's schema."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.document = legacy_rest_openapi()
        self.operations = _operations_by_route()
        self.seen: set[tuple[str, str, str]] = set()

    def _route_of(self, method: str, url: str) -> str:
        path = url.split("?", 1)[0]
        if path.startswith("/api/crm/threads/") and path.endswith("/messages"):
            return "/api/crm/threads/{thread_id}/messages"
        if path.startswith("/api/whatsapp/conversations/") and path.endswith("/mark_read"):
            return "/api/whatsapp/conversations/{id_or_phone}/mark_read"
        return path

    async def request(
        self,
        method: str,
        url: str,
        *,
        business_id: int = 1,
        role: Role | None = Role.ADMIN,
        token: str | None = "",
        **options: Any,
    ) -> httpx.Response:
        """`token` "" (the default) sends a valid one of `business_id` and `role`, None none."""
        headers = dict(options.pop("headers", {}))
        if token == "":
            token = token_for(business_id, role=role)
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        response = await self.http.request(method, url, headers=headers, **options)
        self.check(method, url, response)
        return response

    def check(self, method: str, url: str, response: httpx.Response) -> None:
        assert response.headers["content-type"].startswith("application/json"), response.text
        assert response.headers["x-request-id"]
        route = self._route_of(method, url)
        body = response.json()
        status = str(response.status_code)
        if status == "405":
            # A wrong method is an answer of the route's one documented operation.
            documented = [known for known, path in self.operations if path == route]
            assert len(documented) == 1, f"{route} is not documented"
            method = documented[0]
        operation = self.operations.get((method, route))
        assert operation is not None, f"{method} {route} is not documented"
        assert status in operation["responses"], f"{method} {route} answered {status}"
        content = operation["responses"][status]["content"]["application/json"]
        self.seen.add((method, route, status))
        schema = {**content["schema"], "components": self.document["components"]}
        validator = jsonschema_rs.Draft202012Validator(schema, validate_formats=True)
        problems = [error.message for error in validator.iter_errors(body)]
        assert problems == [], f"{method} {url} -> {status} {body}: {problems}"

    async def get(self, url: str, **options: Any) -> httpx.Response:
        return await self.request("GET", url, **options)

    async def mark_read(self, reference: str, **options: Any) -> httpx.Response:
        return await self.request(
            "POST", f"/api/whatsapp/conversations/{reference}/mark_read", **options
        )


@pytest.fixture
def rest(http: httpx.AsyncClient) -> DocumentedRest:
    return DocumentedRest(http)


async def inbound(client: GraphQLClient, phone: str, body: str, **fields: Any) -> dict[str, Any]:
    return await ingest(client, phone=phone, body=body, **fields)


async def seed_threads(client: GraphQLClient, count: int) -> list[str]:
    """`count` threads with one unread message each; their ids, latest activity first."""
    ids = []
    for index in range(count):
        stored = await inbound(
            client,
            f"+1415555{index:04d}",
            f"hello {index}",
            sentAt=f"2026-01-01T10:{index:02d}:00Z",
        )
        ids.append(stored["thread"]["id"])
    return ids[::-1]


def error_of(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    return error


def offset_aware(value: str) -> bool:
    return datetime.fromisoformat(value).utcoffset() is not None


# --- GET /api/crm/threads --------------------------------------------------------------------


async def test_threads_come_in_the_legacy_envelope_with_every_field(
    client: GraphQLClient, rest: DocumentedRest
) -> None:
    first = await inbound(client, PHONE, "first", sentAt="2026-01-01T10:00:00Z")
    last = await ingest(
        client,
        phone=PHONE,
        body="a bot answers",
        direction="OUTBOUND",
        source="BOT",
        providerMessageId="wamid.bot-1",
        sentAt="2026-01-01T10:05:00Z",
    )

    response = await rest.get(THREADS)

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"threads", "next_cursor", "total_unread"}
    assert body["next_cursor"] is None
    assert body["total_unread"] == 1
    (thread,) = body["threads"]
    assert thread["id"] == int(first["thread"]["id"])
    assert thread["canonical_key"] == first["thread"]["canonicalKey"]
    assert thread["phone"] == PHONE
    assert thread["lead_id"] is None
    assert thread["status"] == "open"
    assert thread["unread_count"] == 1
    assert thread["last_read_at"] is None
    assert offset_aware(thread["started_at"])
    assert datetime.fromisoformat(thread["last_message_at"]) == datetime.fromisoformat(
        "2026-01-01T10:05:00+00:00"
    )
    assert thread["last_message"] == {
        "id": int(last["message"]["id"]),
        "conversation_id": thread["id"],
        "direction": "out",
        "source": "bot",
        "status": last["message"]["status"].lower(),
        "body": "a bot answers",
        "provider_message_id": "wamid.bot-1",
        "message_type": "text",
        "created_at": thread["last_message"]["created_at"],
        "sent_at": "2026-01-01T10:05:00+00:00",
    }
    assert offset_aware(thread["last_message"]["created_at"])


async def test_cursor_pages_walk_every_thread_once_in_graphql_order(
    client: GraphQLClient, rest: DocumentedRest
) -> None:
    expected = await seed_threads(client, 7)
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        query = "?limit=3" + (f"&cursor={quote(cursor)}" if cursor else "")
        body = (await rest.get(THREADS + query)).json()
        seen.extend(thread["id"] for thread in body["threads"])
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == [int(thread_id) for thread_id in expected]
    graphql = await client.execute(
        "{ threads(first: 100) { edges { cursor node { id unreadCount } } } unreadCount }"
    )
    assert [int(edge["node"]["id"]) for edge in graphql["threads"]["edges"]] == seen
    # The cursor is GraphQL's own: a REST cursor continues a GraphQL page and the other way.
    third = graphql["threads"]["edges"][2]["cursor"]
    continued = (await rest.get(f"{THREADS}?limit=2&cursor={quote(third)}")).json()
    assert [thread["id"] for thread in continued["threads"]] == seen[3:5]


async def test_limit_defaults_to_fifty_and_is_at_most_a_hundred(
    client: GraphQLClient, rest: DocumentedRest
) -> None:
    await seed_threads(client, 51)
    default = (await rest.get(THREADS)).json()
    assert len(default["threads"]) == 50
    assert default["next_cursor"] is not None
    assert len((await rest.get(f"{THREADS}?limit=100")).json()["threads"]) == 51
    for bad in ("101", "0", "-1", "ten", "2.5"):
        refused = await rest.get(f"{THREADS}?limit={bad}")
        assert refused.status_code == 400, bad
        assert error_of(refused) == {
            "code": "BAD_USER_INPUT",
            "message": "`limit` must be an integer from 1 to 100",
        }


async def test_a_cursor_not_handed_out_by_the_list_is_refused_naming_the_parameter(
    rest: DocumentedRest,
) -> None:
    refused = await rest.get(f"{THREADS}?cursor=not-a-cursor")
    assert refused.status_code == 400
    assert error_of(refused) == {
        "code": "BAD_USER_INPUT",
        "message": "`cursor` is not a cursor from this list",
    }
    assert (await rest.get(f"{THREADS}?unread_only=maybe")).status_code == 400


async def test_unread_only_lists_just_the_threads_with_unread_messages(
    client: GraphQLClient, rest: DocumentedRest
) -> None:
    read, unread = await seed_threads(client, 2)
    assert (await rest.mark_read(read)).status_code == 200
    only = (await rest.get(f"{THREADS}?unread_only=true")).json()
    assert [thread["id"] for thread in only["threads"]] == [int(unread)]
    assert only["total_unread"] == 1
    every = (await rest.get(f"{THREADS}?unread_only=false")).json()
    assert [thread["id"] for thread in every["threads"]] == [int(read), int(unread)]


# --- GET /api/crm/threads/{id}/messages ------------------------------------------------------


async def test_messages_of_every_source_page_backward_from_the_newest(
    client: GraphQLClient, rest: DocumentedRest
) -> None:
    sources = ["CUSTOMER", "BOT", "CUSTOMER", "AUTOMATION", "HUMAN", "CUSTOMER", "BOT"]
    stored = []
    for minute, source in enumerate(sources):
        direction = "INBOUND" if source == "CUSTOMER" else "OUTBOUND"
        stored.append(
            await ingest(
                client,
                phone=PHONE,
                body=f"m{minute}",
                direction=direction,
                source=source,
                sentAt=f"2026-01-01T10:0{minute}:00Z",
            )
        )
    thread_id = stored[0]["thread"]["id"]
    url = f"{THREADS}/{thread_id}/messages?limit=3"

    pages = []
    before = None
    while True:
        body = (await rest.get(url + (f"&before={quote(before)}" if before else ""))).json()
        assert set(body) == {"messages", "next_cursor"}
        pages.append([message["body"] for message in body["messages"]])
        before = body["next_cursor"]
        if before is None:
            break

    assert pages == [["m4", "m5", "m6"], ["m1", "m2", "m3"], ["m0"]]
    newest = (await rest.get(url)).json()["messages"]
    assert [message["source"] for message in newest] == ["human", "customer", "bot"]
    assert [message["direction"] for message in newest] == ["out", "in", "out"]
    assert all(message["conversation_id"] == int(thread_id) for message in newest)
    graphql = await client.execute(
        "query($id: ID!) { thread(id: $id) { messages(first: 100) { edges { node { id } } } } }",
        {"id": thread_id},
    )
    chronological = [int(edge["node"]["id"]) for edge in graphql["thread"]["messages"]["edges"]]
    walked = [message["id"] for message in (await rest.get(f"{url[:-1]}100")).json()["messages"]]
    assert walked == chronological == [int(item["message"]["id"]) for item in stored]


async def test_a_deleted_message_stays_in_its_thread_without_its_text(
    client: GraphQLClient, rest: DocumentedRest
) -> None:
    kept = await inbound(client, PHONE, "keep")
    gone = await inbound(client, PHONE, "a secret the customer took back")
    await client.execute(
        "mutation($id: ID!) { deleteMessage(id: $id) { id } }", {"id": gone["message"]["id"]}
    )
    response = await rest.get(f"{THREADS}/{kept['thread']['id']}/messages")
    shown = {message["id"]: message for message in response.json()["messages"]}
    assert shown[int(gone["message"]["id"])]["status"] == "deleted"
    assert shown[int(gone["message"]["id"])]["body"] is None
    assert shown[int(kept["message"]["id"])]["body"] == "keep"
    listed = (await rest.get(THREADS)).text
    assert "took back" not in listed
    assert "took back" not in response.text


async def test_messages_of_a_thread_nobody_of_the_business_has_are_not_found(
    client: GraphQLClient, rest: DocumentedRest
) -> None:
    thread_id = (await inbound(client, PHONE, "hi"))["thread"]["id"]
    for business_id, path in ((1, "999999"), (2, thread_id)):
        missing = await rest.get(f"{THREADS}/{path}/messages", business_id=business_id)
        assert missing.status_code == 404
        assert error_of(missing) == {"code": "NOT_FOUND", "message": "no thread with that id"}
    malformed = await rest.get(f"{THREADS}/abc/messages")
    assert malformed.status_code == 400
    assert error_of(malformed)["code"] == "BAD_USER_INPUT"
    assert (await rest.get(f"{THREADS}/{thread_id}/messages?before=nope")).status_code == 400


# --- POST /api/whatsapp/conversations/{id_or_phone}/mark_read ---------------------------------


@pytest.mark.parametrize(
    "reference",
    [
        pytest.param(quote("+972 50-765-4321"), id="spaces-and-dashes-url-encoded"),
        pytest.param("%2B972507654321", id="plus-url-encoded"),
        pytest.param("+972507654321", id="plus-as-is"),
        pytest.param(quote("+972 (50) 765.4321"), id="parentheses-and-dots"),
        pytest.param("972507654321", id="international-digits-without-plus"),
        pytest.param("0507654321", id="national-with-leading-zero"),
        pytest.param("050-7654321", id="national-with-dash"),
        pytest.param("{thread_id}", id="thread-id"),
    ],
)
async def test_mark_read_finds_the_thread_by_id_or_by_any_spelling_of_its_phone(
    client: GraphQLClient, rest: DocumentedRest, reference: str
) -> None:
    thread_id = (await inbound(client, PHONE, "one"))["thread"]["id"]
    await inbound(client, PHONE, "two")
    await inbound(client, OTHER_PHONE, "elsewhere")

    response = await rest.mark_read(reference.format(thread_id=thread_id))

    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"thread", "total_unread"}
    assert body["thread"]["id"] == int(thread_id)
    assert body["thread"]["unread_count"] == 0
    assert offset_aware(body["thread"]["last_read_at"])
    assert body["thread"]["last_message"]["body"] == "two"
    assert body["total_unread"] == 1
    graphql = await client.execute(
        "query($id: ID!) { thread(id: $id) { unreadCount } unreadCount }", {"id": thread_id}
    )
    assert graphql == {"thread": {"unreadCount": 0}, "unreadCount": 1}


async def test_an_all_digit_value_is_a_thread_id_first_and_a_phone_otherwise(
    client: GraphQLClient, rest: DocumentedRest
) -> None:
    # A customer whose wa_id digits collide with nothing: the id lookup misses, the phone hits.
    thread_id = int((await inbound(client, PHONE, "one"))["thread"]["id"])
    assert thread_id_in("972507654321") == 972507654321
    assert (await rest.mark_read("972507654321")).json()["thread"]["id"] == thread_id
    # Shapes that never name a thread id.
    assert thread_id_in("0507654321") is None
    assert thread_id_in("1" * 20) is None
    assert thread_id_in("+1") is None
    assert thread_id_in("١٢") is None  # Arabic-Indic digits: isdigit(), but no row id
    assert thread_id_in(str(2**63)) is None


async def test_a_merged_away_thread_id_marks_and_shows_the_surviving_thread(
    client: GraphQLClient, rest: DocumentedRest
) -> None:
    survivor = (
        await ingest(
            client, phone=PHONE, leadId="77", body="lead", direction="OUTBOUND", source="BOT"
        )
    )["thread"]["id"]
    merged_away = (await inbound(client, OTHER_PHONE, "unread"))["thread"]["id"]
    await ingest(
        client, phone=OTHER_PHONE, leadId="77", body="link", direction="OUTBOUND", source="BOT"
    )
    assert merged_away != survivor

    marked = (await rest.mark_read(merged_away)).json()
    assert marked["thread"]["id"] == int(survivor)
    assert marked["thread"]["lead_id"] == "77"
    assert marked["total_unread"] == 0
    shown = (await rest.get(f"{THREADS}/{merged_away}/messages")).json()
    assert {message["conversation_id"] for message in shown["messages"]} == {int(survivor)}
    assert [message["body"] for message in shown["messages"]] == ["lead", "unread", "link"]


@pytest.mark.parametrize(
    ("reference", "status"),
    [
        pytest.param("%2B972529999999", 404, id="unknown-phone"),
        pytest.param("999999", 404, id="unknown-id-and-impossible-phone"),
        pytest.param("hello", 400, id="garbage"),
        pytest.param("%20", 400, id="only-a-space"),
        pytest.param("", 400, id="empty"),
        pytest.param("1" * 25, 400, id="too-long-to-be-an-id-or-a-phone"),
    ],
)
async def test_mark_read_of_a_value_that_names_no_thread_says_why(
    client: GraphQLClient, rest: DocumentedRest, reference: str, status: int
) -> None:
    await inbound(client, PHONE, "one")
    response = await rest.mark_read(reference)
    assert response.status_code == status, response.text
    assert error_of(response)["code"] == {404: "NOT_FOUND", 400: "BAD_USER_INPUT"}[status]
    assert (await client.execute("{ unreadCount }")) == {"unreadCount": 1}


async def test_mark_read_is_for_agents_and_admins_not_service_tokens(
    client: GraphQLClient, rest: DocumentedRest
) -> None:
    thread_id = (await inbound(client, PHONE, "one"))["thread"]["id"]
    refused = await rest.mark_read(thread_id, role=Role.SERVICE)
    assert refused.status_code == 403
    assert error_of(refused) == {
        "code": "FORBIDDEN",
        "message": "marking threads read is for agents and admins",
    }
    assert (await client.execute("{ unreadCount }")) == {"unreadCount": 1}
    assert (await rest.get(THREADS, role=Role.SERVICE)).status_code == 200
    for role in (Role.AGENT, None, Role.ADMIN):
        assert (await rest.mark_read(thread_id, role=role)).status_code == 200, role


async def test_mark_read_logs_its_operators_tag(
    client: GraphQLClient, rest: DocumentedRest, caplog: pytest.LogCaptureFixture
) -> None:
    thread_id = (await inbound(client, PHONE, "one"))["thread"]["id"]
    with caplog.at_level(logging.INFO):
        await rest.mark_read(quote("+972 50-765-4321"))
    assert any(
        "[WA-MARK-READ]" in record.getMessage() and f"thread_id={thread_id}" in record.getMessage()
        for record in caplog.records
    )


async def test_mark_read_refuses_an_oversized_body_and_ignores_a_small_one(
    client: GraphQLClient, rest: DocumentedRest
) -> None:
    thread_id = (await inbound(client, PHONE, "one"))["thread"]["id"]
    too_large = await rest.mark_read(thread_id, content=b"x" * (MAX_BODY_BYTES + 1))
    assert too_large.status_code == 413
    assert error_of(too_large)["code"] == "PAYLOAD_TOO_LARGE"
    assert (await client.execute("{ unreadCount }")) == {"unreadCount": 1}
    assert (await rest.mark_read(thread_id, json={"read": True})).status_code == 200


# --- authentication, methods, unknown routes, unexpected errors -------------------------------


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        pytest.param(None, "missing_token", id="missing"),
        pytest.param("not-a-jwt", "malformed_token", id="malformed"),
        pytest.param("{wrong}", "wrong_signature", id="wrong-secret"),
    ],
)
async def test_every_route_refuses_a_missing_or_bad_token_saying_why(
    client: GraphQLClient, rest: DocumentedRest, token: str | None, reason: str
) -> None:
    thread_id = (await inbound(client, PHONE, "one"))["thread"]["id"]
    if token == "{wrong}":
        token = issue_token("another-secret-long-enough-for-hs256-keys", user_id="u", business_id=1)
    for method, url in (
        ("GET", THREADS),
        ("GET", f"{THREADS}/{thread_id}/messages"),
        ("POST", f"/api/whatsapp/conversations/{thread_id}/mark_read"),
    ):
        refused = await rest.request(method, url, token=token)
        assert refused.status_code == 401
        assert error_of(refused)["code"] == "UNAUTHENTICATED"
        assert error_of(refused)["reason"] == reason
        assert refused.headers["www-authenticate"].startswith('Bearer realm="wa-inbox"')
    assert (await client.execute("{ unreadCount }")) == {"unreadCount": 1}


async def test_a_wrong_method_gets_405_in_the_error_envelope(rest: DocumentedRest) -> None:
    for method, url, allowed in (
        ("POST", THREADS, "GET"),
        ("DELETE", f"{THREADS}/1/messages", "GET"),
        ("GET", "/api/whatsapp/conversations/1/mark_read", "POST"),
        ("PUT", "/api/openapi.json", "GET"),
    ):
        response = await rest.request(method, url)
        assert response.status_code == 405, (method, url)
        assert response.headers["allow"] == allowed
        assert error_of(response)["code"] == "METHOD_NOT_ALLOWED"


async def test_an_unknown_api_path_gets_404_in_the_error_envelope(http: httpx.AsyncClient) -> None:
    response = await http.get("/api/crm/nothing-here")
    assert response.status_code == 404
    assert response.json() == {
        "error": {"code": "NOT_FOUND", "message": "no endpoint at /api/crm/nothing-here"}
    }


async def test_an_unexpected_error_is_masked_with_the_request_id_and_logged(
    rest: DocumentedRest, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("SELECT secret FROM internals")

    monkeypatch.setattr(domain_threads, "list_threads", broken)
    with caplog.at_level(logging.ERROR):
        response = await rest.get(THREADS, headers={"X-Request-Id": "req-legacy-1"})
    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "code": "INTERNAL_SERVER_ERROR",
            "message": "Internal server error",
            "request_id": "req-legacy-1",
        }
    }
    assert "SELECT" not in response.text
    assert any("req-legacy-1" in record.getMessage() for record in caplog.records)


# --- live updates, GraphQL agreement, tenants -------------------------------------------------


async def test_a_rest_mark_read_reaches_unread_count_changed_subscribers(
    app: Starlette, client: GraphQLClient, rest: DocumentedRest
) -> None:
    first = await inbound(client, PHONE, "one")
    await inbound(client, OTHER_PHONE, "two")
    async with serving(app) as url, GraphQLSocket.open(url) as socket:
        await socket.subscribe("badge", UNREAD_COUNT_CHANGED)
        assert (await rest.mark_read("%2B972507654321")).status_code == 200
        event = (await socket.next_payload())["data"]["unreadCountChanged"]
    assert event == {"threadId": first["thread"]["id"], "unreadCount": 0, "totalUnread": 1}


async def test_rest_and_graphql_agree_on_order_counts_and_the_badge(
    client: GraphQLClient, rest: DocumentedRest
) -> None:
    for index in range(4):
        for copy in range(index + 1):
            await inbound(client, f"+1415556{index:04d}", f"m{index}.{copy}")
    await rest.mark_read(quote("+1 415 556 0002"))
    for unread_only in ("false", "true"):
        listed = (await rest.get(f"{THREADS}?unread_only={unread_only}")).json()
        graphql = await client.execute(
            "query($u: Boolean) { threads(first: 100, unreadOnly: $u) "
            "{ edges { node { id unreadCount phone lastMessage { id body } } } } unreadCount }",
            {"u": unread_only == "true"},
        )
        assert [
            (t["id"], t["unread_count"], t["phone"], t["last_message"]["id"])
            for t in listed["threads"]
        ] == [
            (
                int(e["node"]["id"]),
                e["node"]["unreadCount"],
                e["node"]["phone"],
                int(e["node"]["lastMessage"]["id"]),
            )
            for e in graphql["threads"]["edges"]
        ]
        assert listed["total_unread"] == graphql["unreadCount"] == 1 + 2 + 4


async def test_another_business_with_business_one_ids_and_phones_gets_nothing(
    client: GraphQLClient, rest: DocumentedRest
) -> None:
    one = await inbound(client, PHONE, "a secret of business one")
    thread_id, message_id = one["thread"]["id"], one["message"]["id"]
    answers = [
        await rest.get(THREADS, business_id=2),
        await rest.get(f"{THREADS}?unread_only=true", business_id=2),
        await rest.get(f"{THREADS}/{thread_id}/messages", business_id=2),
        await rest.get(f"{THREADS}/{message_id}/messages", business_id=2),
    ]
    for reference in (thread_id, "%2B972507654321", "972507654321", "0507654321"):
        answers.append(await rest.mark_read(reference, business_id=2))
    assert answers[0].json() == {"threads": [], "next_cursor": None, "total_unread": 0}
    assert [answer.status_code for answer in answers[2:]] == [404] * 6
    for answer in answers:
        assert "secret" not in answer.text
        assert PHONE not in answer.text
        assert one["thread"]["canonicalKey"] not in answer.text
    assert (await client.execute("{ unreadCount }")) == {"unreadCount": 1}


async def test_every_documented_answer_of_every_route_is_exercised(
    client: GraphQLClient, rest: DocumentedRest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The document's responses are not wishful: each route gives each one, schema-checked."""
    thread_id = (await inbound(client, PHONE, "one"))["thread"]["id"]
    messages = f"{THREADS}/{thread_id}/messages"
    await rest.get(THREADS)
    await rest.get(f"{THREADS}?limit=0")
    await rest.get(THREADS, token=None)
    await rest.request("POST", THREADS)
    await rest.get(messages)
    await rest.get(f"{messages}?limit=0")
    await rest.get(messages, token=None)
    await rest.get(f"{THREADS}/999999/messages")
    await rest.request("POST", messages)
    await rest.mark_read(thread_id)
    await rest.mark_read("hello")
    await rest.mark_read(thread_id, token=None)
    await rest.mark_read(thread_id, role=Role.SERVICE)
    await rest.mark_read("999999")
    await rest.request("GET", f"/api/whatsapp/conversations/{thread_id}/mark_read")
    await rest.mark_read(thread_id, content=b"x" * (MAX_BODY_BYTES + 1))
    await rest.get("/api/openapi.json", token=None)
    await rest.request("POST", "/api/openapi.json")

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(domain_threads, "list_threads", broken)
    monkeypatch.setattr(domain_threads, "find_thread_by_id", broken)
    monkeypatch.setattr(
        "gql.legacy_rest.find_thread_by_reference", broken
    )  # imported by name there
    await rest.get(THREADS)
    await rest.get(messages)
    await rest.mark_read(thread_id)

    documented = {
        (method, path, status)
        for (method, path), operation in rest.operations.items()
        for status in operation["responses"]
    }
    assert documented - rest.seen == set()


async def test_the_openapi_document_is_served_and_declares_bearer_security(
    http: httpx.AsyncClient,
) -> None:
    response = await http.get("/api/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document == legacy_rest_openapi()
    assert document["openapi"].startswith("3.1")
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert set(document["paths"]) == {
        "/api/openapi.json",
        "/api/crm/threads",
        "/api/crm/threads/{thread_id}/messages",
        "/api/whatsapp/conversations/{id_or_phone}/mark_read",
    }
    jsonschema_rs.meta.validate(document["components"]["schemas"]["Thread"])


def fuzz_rest(base_url: str, headers: dict[str, str]) -> tuple[list[str], set[tuple[str, int]]]:
    """schemathesis against the document: generated requests (valid and not) to every route,
    each answer checked for a 5xx and against the documented status, type and schema."""
    schema = schemathesis.openapi.from_url(f"{base_url}/api/openapi.json", timeout=10)
    failures: list[str] = []
    answered: set[tuple[str, int]] = set()
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            cases = st.one_of(
                operation.as_strategy(GenerationMode.POSITIVE),
                operation.as_strategy(GenerationMode.NEGATIVE),
            )

            @examples(
                max_examples=60,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=cases)
            def answers_are_documented(case: Any) -> None:
                response = case.call(session=session, headers=headers, timeout=10)
                answered.add((case.operation.label, response.status_code))
                assert response.status_code < 500, (case.path, response.text)
                # Unknown query parameters are ignored on purpose (a front end's cache
                # busters), and a generated cursor is a string yet no cursor handed out: the
                # two data checks would call both wrong. The answer checks all run.
                case.validate_response(
                    response,
                    excluded_checks=[
                        schemathesis.checks.negative_data_rejection,
                        schemathesis.checks.positive_data_acceptance,
                    ],
                )

            try:
                answers_are_documented()
            except Exception as failure:
                shown = "".join(traceback.format_exception_only(failure))
                failures.append(f"--- {operation.label} ---\n{shown}")
    return failures, answered


async def test_generated_requests_get_documented_answers_and_no_server_error(
    app: Starlette, client: GraphQLClient
) -> None:
    for index in range(3):
        await inbound(client, f"+97250765432{index}", f"hello {index}")
    async with serving(app) as websocket_url:
        base_url = "http" + websocket_url.removeprefix("ws").removesuffix("/graphql")
        headers = {"Authorization": f"Bearer {token_for(1)}"}
        failures, answered = await asyncio.to_thread(fuzz_rest, base_url, headers)
    assert failures == [], "\n".join(failures)
    # The generated requests got past the parsing into the domain, and met its refusals.
    assert {label for label, _ in answered} >= {
        "GET /api/crm/threads",
        "GET /api/crm/threads/{thread_id}/messages",
        "POST /api/whatsapp/conversations/{id_or_phone}/mark_read",
    }
    assert {status for _, status in answered} >= {200, 400, 404}, answered
