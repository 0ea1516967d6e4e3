"""Replying from the inbox (issue 16): sendMessage and sendTemplate store the message PENDING
with its outbox row, the server's sender posts it to the Cloud API (a fake one on loopback,
tests/fake_cloud_api.py) and records the answer; retries, final errors, lost answers, the
service window, channels, roles, status webhooks racing the answer, and the live ticks."""

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette

from domain.access import Role
from domain.events import MessageStatusChanged
from gql.app import create_app
from gql.fanout import _from_wire, _to_wire
from gql.settings import Settings, SettingsError
from tests.conftest import GraphQLClient
from tests.fake_cloud_api import (
    FakeCloudApi,
    drop_after_reading,
    hold,
    http_error,
    slow,
    success,
)
from tests.live import GraphQLSocket, serving
from tests.webhooks import SAMPLE_PHONE_NUMBER_ID, delivery, post_delivery, status

ACCESS_TOKEN = "EAAGsendtestTOKEN0123456789abcdefZZ"
CUSTOMER = "+14155550123"
SEND = """
mutation($thread: ID!, $body: String!, $replyTo: ID, $source: MessageSource) {
  sendMessage(threadId: $thread, body: $body, replyTo: $replyTo, source: $source) {
    id threadId status direction source body providerMessageId
    deliveryError { code title outcomeUnknown }
  }
}"""
TEMPLATE = """
mutation($thread: ID!, $name: String!, $language: String!, $components: JSON) {
  sendTemplate(threadId: $thread, name: $name, language: $language, components: $components) {
    id status type body providerPayload
  }
}"""
MESSAGE = """
query($id: ID!) {
  message(id: $id) { id status providerMessageId deliveryError { code title outcomeUnknown } }
}"""
STATUS_TICKS = """
subscription($thread: ID) {
  messageStatusChanged(threadId: $thread) {
    messageId threadId status deliveryError { code title outcomeUnknown }
  }
}"""


@pytest.fixture
def cloud_api() -> Iterator[FakeCloudApi]:
    with FakeCloudApi() as fake:
        yield fake


@pytest.fixture
def settings(settings: Settings, cloud_api: FakeCloudApi) -> Settings:
    return dataclasses.replace(
        settings,
        whatsapp_api_base_url=cloud_api.base_url,
        send_retry_base_ms=20,
        send_max_attempts=4,
        send_request_timeout_s=2,
        send_lease_s=7,
        send_poll_interval_ms=100,
    )


@contextlib.asynccontextmanager
async def served_with(settings: Settings) -> AsyncIterator[tuple[Starlette, GraphQLClient]]:
    """An app of its own for settings the fixture's app does not have, and a client of it."""
    application = create_app(settings)
    async with (
        application.router.lifespan_context(application),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=application), base_url="http://testserver"
        ) as http,
    ):
        yield application, GraphQLClient(http)


async def connect_with_token(client: GraphQLClient, token: str | None = ACCESS_TOKEN) -> None:
    await client.execute(
        "mutation($number: String!, $token: String) { connectWhatsAppChannel("
        "phoneNumberId: $number, accessToken: $token) { id } }",
        {"number": SAMPLE_PHONE_NUMBER_ID, "token": token},
    )


async def customer_wrote(
    client: GraphQLClient, *, phone: str = CUSTOMER, at: datetime | None = None, **extra: Any
) -> dict[str, Any]:
    """An inbound message (opening the service window at `at`); its message and thread."""
    data = await client.execute(
        "mutation($input: IngestMessageInput!) { ingestMessage(input: $input) { "
        "message { id providerMessageId } thread { id } } }",
        {
            "input": {
                "phone": phone,
                "direction": "INBOUND",
                "source": "CUSTOMER",
                "body": "hello, is my order on its way?",
                "sentAt": (at or datetime.now(UTC)).isoformat(),
                **extra,
            }
        },
    )
    result: dict[str, Any] = data["ingestMessage"]
    return result


async def open_thread(client: GraphQLClient) -> str:
    await connect_with_token(client)
    wrote = await customer_wrote(client)
    thread_id: str = wrote["thread"]["id"]
    return thread_id


async def send(client: GraphQLClient, thread_id: str, body: str, **extra: Any) -> dict[str, Any]:
    data = await client.execute(SEND, {"thread": thread_id, "body": body, **extra})
    sent: dict[str, Any] = data["sendMessage"]
    return sent


async def message_once(
    client: GraphQLClient, message_id: str, *statuses: str, wait_s: float = 10
) -> dict[str, Any]:
    """The message once its status is one of `statuses`."""
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        found: dict[str, Any] = (await client.execute(MESSAGE, {"id": message_id}))["message"]
        if found["status"] in statuses:
            return found
        assert asyncio.get_running_loop().time() < deadline, found
        await asyncio.sleep(0.05)


async def requests_after(cloud_api: FakeCloudApi, count: int) -> list[Any]:
    return await asyncio.to_thread(cloud_api.wait_for_requests, count, 10.0)


async def outbox_rows(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM whatsapp_outbox"))


# --- the send path -----------------------------------------------------------------------------


async def test_a_reply_is_stored_pending_and_reaches_the_cloud_api_once_with_its_token(
    client: GraphQLClient, cloud_api: FakeCloudApi, db: asyncpg.Connection
) -> None:
    thread_id = await open_thread(client)
    sent = await send(client, thread_id, "Yes, it left the warehouse this morning.")
    assert (sent["status"], sent["providerMessageId"]) == ("PENDING", None)
    assert (sent["direction"], sent["source"], sent["threadId"]) == (
        "OUTBOUND",
        "HUMAN",
        thread_id,
    )

    [request] = await requests_after(cloud_api, 1)
    assert request.method == "POST"
    assert request.path == f"/v23.0/{SAMPLE_PHONE_NUMBER_ID}/messages"
    assert request.headers["authorization"] == f"Bearer {ACCESS_TOKEN}"
    assert request.json == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": CUSTOMER.removeprefix("+"),
        "type": "text",
        "text": {"body": "Yes, it left the warehouse this morning."},
        "biz_opaque_callback_data": f"wa-inbox:{sent['id']}",
    }
    stored = await message_once(client, sent["id"], "SENT")
    assert stored["providerMessageId"] == request.wamid
    assert stored["deliveryError"] is None
    assert await outbox_rows(db) == 0
    # Sent is done: nothing is posted again, however long the sender keeps polling.
    await asyncio.sleep(0.5)
    assert len(cloud_api.requests) == 1


async def test_a_reply_quotes_the_message_it_answers(
    client: GraphQLClient, cloud_api: FakeCloudApi
) -> None:
    await connect_with_token(client)
    wrote = await customer_wrote(client, providerMessageId="wamid.CUSTOMER-ASKED")
    thread_id = wrote["thread"]["id"]
    sent = await send(client, thread_id, "Answering that", replyTo=wrote["message"]["id"])
    [request] = await requests_after(cloud_api, 1)
    assert request.json["context"] == {"message_id": "wamid.CUSTOMER-ASKED"}
    await message_once(client, sent["id"], "SENT")


async def test_a_reply_to_a_message_whatsapp_has_no_id_for_is_refused(
    client: GraphQLClient, cloud_api: FakeCloudApi, db: asyncpg.Connection
) -> None:
    await connect_with_token(client)
    wrote = await customer_wrote(client)  # ingested without a provider id
    errors = await client.errors(
        SEND, {"thread": wrote["thread"]["id"], "body": "hi", "replyTo": wrote["message"]["id"]}
    )
    assert errors[0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert await outbox_rows(db) == 0


async def test_a_template_is_sent_outside_the_window_with_its_components(
    client: GraphQLClient, cloud_api: FakeCloudApi
) -> None:
    await connect_with_token(client)
    wrote = await customer_wrote(client, at=datetime.now(UTC) - timedelta(days=3))
    components = [{"type": "body", "parameters": [{"type": "text", "text": "A-1042"}]}]
    data = await client.execute(
        TEMPLATE,
        {
            "thread": wrote["thread"]["id"],
            "name": "order_shipped",
            "language": "en_US",
            "components": components,
        },
    )
    sent = data["sendTemplate"]
    assert (sent["status"], sent["type"]) == ("PENDING", "template")
    [request] = await requests_after(cloud_api, 1)
    assert request.json["type"] == "template"
    assert request.json["template"] == {
        "name": "order_shipped",
        "language": {"code": "en_US"},
        "components": components,
    }
    await message_once(client, sent["id"], "SENT")


@pytest.mark.parametrize(
    ("name", "language", "components"),
    [
        ("Order Shipped", "en_US", None),
        ("order_shipped", "english", None),
        ("order_shipped", "en", {"type": "body"}),
        ("order_shipped", "en", [{"type": "body", "text": "a\x00b"}]),
    ],
)
async def test_a_malformed_template_is_refused_unstored(
    client: GraphQLClient, db: asyncpg.Connection, name: str, language: str, components: Any
) -> None:
    await connect_with_token(client)
    wrote = await customer_wrote(client)
    errors = await client.errors(
        TEMPLATE,
        {
            "thread": wrote["thread"]["id"],
            "name": name,
            "language": language,
            "components": components,
        },
    )
    assert errors[0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert await outbox_rows(db) == 0


# --- failures ----------------------------------------------------------------------------------


async def test_throttling_and_server_errors_are_retried_until_whatsapp_takes_the_message(
    app: Starlette, client: GraphQLClient, cloud_api: FakeCloudApi
) -> None:
    cloud_api.answer_next(
        http_error(429, 130429, retry_after=0.05), http_error(500, 131000), http_error(503)
    )
    thread_id = await open_thread(client)
    sent = await send(client, thread_id, "third time lucky")
    stored = await message_once(client, sent["id"], "SENT")
    requests = cloud_api.requests
    assert len(requests) == 4
    assert [r.answer for r in requests] == [429, 500, 503, 200]
    assert {json.dumps(r.json, sort_keys=True) for r in requests} == {
        json.dumps(requests[0].json, sort_keys=True)
    }
    assert stored["providerMessageId"] == requests[-1].wamid
    metrics = app.state.metrics
    assert (metrics.sends_retried, metrics.sends_accepted, metrics.sends_failed) == (3, 1, 0)


async def test_a_connection_that_cannot_be_opened_is_retried(
    settings: Settings, cloud_api: FakeCloudApi
) -> None:
    """Nothing listens at first: the request never left, so trying again is safe."""
    closed = FakeCloudApi().start()
    unreachable = closed.base_url
    closed.stop()
    changed = dataclasses.replace(settings, whatsapp_api_base_url=unreachable, send_max_attempts=2)
    async with served_with(changed) as (_, client):
        thread_id = await open_thread(client)
        sent = await send(client, thread_id, "nobody home")
        failed = await message_once(client, sent["id"], "FAILED")
    assert failed["deliveryError"]["outcomeUnknown"] is False
    assert "not sent" in failed["deliveryError"]["title"]


async def test_retries_stop_at_the_bound_and_the_message_fails_with_the_last_reason(
    client: GraphQLClient, cloud_api: FakeCloudApi
) -> None:
    cloud_api.default = http_error(503)
    thread_id = await open_thread(client)
    sent = await send(client, thread_id, "WhatsApp is down")
    failed = await message_once(client, sent["id"], "FAILED")
    assert failed["deliveryError"]["code"] == 2
    assert len(cloud_api.requests) == 4  # SEND_MAX_ATTEMPTS
    await asyncio.sleep(0.4)
    assert len(cloud_api.requests) == 4


FINAL_ERRORS = [
    (400, 131047),  # outside the 24-hour window
    (400, 131026),  # not a WhatsApp user / undeliverable
    (400, 131049),  # ecosystem engagement
    (400, 131050),  # stopped marketing messages
    (400, 130472),  # experiment
    (400, 132001),  # template does not exist
    (400, 132000),  # template parameter count
    (400, 131008),  # parameter missing
    (401, 190),  # the access token is no longer valid
]


@pytest.mark.parametrize(
    ("http_status", "code"), FINAL_ERRORS, ids=[str(c) for _, c in FINAL_ERRORS]
)
async def test_a_final_error_fails_the_message_at_once_with_whatsapps_code(
    client: GraphQLClient, cloud_api: FakeCloudApi, http_status: int, code: int
) -> None:
    cloud_api.answer_next(http_error(http_status, code))
    thread_id = await open_thread(client)
    sent = await send(client, thread_id, "this one cannot go")
    failed = await message_once(client, sent["id"], "FAILED")
    assert failed["deliveryError"]["code"] == code
    assert failed["deliveryError"]["title"]
    assert failed["deliveryError"]["outcomeUnknown"] is False
    assert failed["providerMessageId"] is None
    await asyncio.sleep(0.3)
    assert len(cloud_api.requests) == 1


async def test_a_connection_dropped_after_the_request_fails_it_as_unknown_and_never_resends(
    client: GraphQLClient, cloud_api: FakeCloudApi, db: asyncpg.Connection
) -> None:
    cloud_api.answer_next(drop_after_reading())
    thread_id = await open_thread(client)
    sent = await send(client, thread_id, "did it arrive?")
    failed = await message_once(client, sent["id"], "FAILED")
    assert failed["deliveryError"]["outcomeUnknown"] is True
    assert failed["deliveryError"]["code"] is None
    assert "may have reached the customer" in failed["deliveryError"]["title"]
    assert await outbox_rows(db) == 0
    await asyncio.sleep(0.5)
    assert len(cloud_api.requests) == 1


async def test_a_status_naming_a_lost_send_settles_it(
    client: GraphQLClient, http: httpx.AsyncClient, cloud_api: FakeCloudApi
) -> None:
    """WhatsApp did take the message whose answer was lost: its status webhook echoes our
    callback data, and the message takes the id and the status instead of staying FAILED."""
    cloud_api.answer_next(drop_after_reading())
    thread_id = await open_thread(client)
    sent = await send(client, thread_id, "it did arrive")
    await message_once(client, sent["id"], "FAILED")
    [request] = cloud_api.requests
    callback = request.json["biz_opaque_callback_data"]
    tick = status(
        "wamid.LOST-ANSWER",
        "delivered",
        timestamp=int(datetime.now(UTC).timestamp()),
        biz_opaque_callback_data=callback,
    )
    answer = await post_delivery(http, delivery(statuses=[tick]))
    assert answer.json()["statuses_applied"] == 1, answer.json()
    settled = await message_once(client, sent["id"], "DELIVERED")
    assert settled["providerMessageId"] == "wamid.LOST-ANSWER"
    assert settled["deliveryError"] is None
    # Callback data naming a message that did not lose its answer changes nothing.
    stray = status("wamid.STRAY", "read", biz_opaque_callback_data=callback)
    answer = await post_delivery(http, delivery(statuses=[stray]))
    assert answer.json()["statuses_pending"] == 1, answer.json()


@pytest.mark.parametrize(
    ("name", "errors", "settled"),
    [
        ("sent", None, "SENT"),
        ("failed", [{"code": 131049, "title": "ecosystem"}], "FAILED"),
    ],
)
async def test_any_status_naming_a_lost_send_is_applied_and_announced(
    app: Starlette,
    client: GraphQLClient,
    http: httpx.AsyncClient,
    cloud_api: FakeCloudApi,
    name: str,
    errors: list[dict[str, Any]] | None,
    settled: str,
) -> None:
    cloud_api.answer_next(drop_after_reading())
    thread_id = await open_thread(client)
    sent = await send(client, thread_id, "lost answer")
    await message_once(client, sent["id"], "FAILED")
    callback = cloud_api.requests[0].json["biz_opaque_callback_data"]
    extra: dict[str, Any] = {"biz_opaque_callback_data": callback}
    if errors is not None:
        extra["errors"] = errors
    # Meta's clock, a little before ours marked the failure.
    tick = status(
        "wamid.LOST-" + name, name, timestamp=int(datetime.now(UTC).timestamp()) - 2, **extra
    )
    async with serving(app) as url, GraphQLSocket.open(url) as socket:
        await socket.subscribe("ticks", STATUS_TICKS)
        await until_subscribed(app, 1)
        answer = await post_delivery(http, delivery(statuses=[tick]))
        assert (answer.json()["statuses_applied"], answer.json()["statuses_pending"]) == (1, 0)
        payload = await socket.next_payload(wait_s=5)
    found = await message_once(client, sent["id"], settled)
    assert found["providerMessageId"] == "wamid.LOST-" + name
    assert found["deliveryError"] == (
        None if errors is None else {"code": 131049, "title": "ecosystem", "outcomeUnknown": False}
    )
    assert payload["data"]["messageStatusChanged"]["status"] == settled


async def test_a_status_naming_a_send_whose_answer_is_a_retryable_error_stops_the_retries(
    client: GraphQLClient, http: httpx.AsyncClient, cloud_api: FakeCloudApi
) -> None:
    """Meta took the message but its answer was a 503: the status webhook that names it
    arrives first, and no retry posts it a second time."""
    cloud_api.answer_next(hold(then=http_error(503)))
    thread_id = await open_thread(client)
    sent = await send(client, thread_id, "taken despite the 503")
    [request] = await requests_after(cloud_api, 1)
    tick = status(
        "wamid.TAKEN",
        "delivered",
        timestamp=int(datetime.now(UTC).timestamp()),
        biz_opaque_callback_data=request.json["biz_opaque_callback_data"],
    )
    assert (await post_delivery(http, delivery(statuses=[tick]))).status_code == 200
    cloud_api.release_held()
    found = await message_once(client, sent["id"], "DELIVERED")
    assert found["providerMessageId"] == "wamid.TAKEN"
    await asyncio.sleep(0.5)
    assert len(cloud_api.requests) == 1


async def test_a_reply_deleted_while_it_is_posted_is_not_retried(
    client: GraphQLClient, cloud_api: FakeCloudApi, db: asyncpg.Connection
) -> None:
    cloud_api.answer_next(hold(then=http_error(503)))
    thread_id = await open_thread(client)
    sent = await send(client, thread_id, "deleted in flight")
    await requests_after(cloud_api, 1)
    await client.execute("mutation($id: ID!) { deleteMessage(id: $id) { id } }", {"id": sent["id"]})
    cloud_api.release_held()
    for _ in range(100):
        if await outbox_rows(db) == 0:
            break
        await asyncio.sleep(0.05)
    assert await outbox_rows(db) == 0
    await asyncio.sleep(0.3)
    assert len(cloud_api.requests) == 1
    assert (await client.execute(MESSAGE, {"id": sent["id"]}))["message"]["status"] == "DELETED"


async def test_a_failure_webhook_stamped_just_before_our_sent_still_fails_the_message(
    client: GraphQLClient, http: httpx.AsyncClient, cloud_api: FakeCloudApi
) -> None:
    """Meta's timestamps are whole seconds of its clock; the API answer has none."""
    thread_id = await open_thread(client)
    sent = await send(client, thread_id, "accepted, then refused")
    stored = await message_once(client, sent["id"], "SENT")
    failure = status(
        stored["providerMessageId"],
        "failed",
        timestamp=int(datetime.now(UTC).timestamp()) - 1,
        errors=[{"code": 131049, "title": "ecosystem"}],
    )
    answer = await post_delivery(http, delivery(statuses=[failure]))
    assert answer.json()["statuses_applied"] == 1, answer.json()
    failed = await message_once(client, sent["id"], "FAILED")
    assert failed["deliveryError"]["code"] == 131049


async def test_a_reply_no_sender_took_before_its_deadline_fails_unsent(
    settings: Settings, cloud_api: FakeCloudApi, db: asyncpg.Connection
) -> None:
    async with served_with(dataclasses.replace(settings, send_deadline_s=1)) as (
        application,
        client,
    ):
        thread_id = await open_thread(client)
        sender = application.state.sender
        await sender.stop()  # every sender down
        sent = await send(client, thread_id, "sent too late")
        await asyncio.sleep(1.2)
        await sender.start()
        failed = await message_once(client, sent["id"], "FAILED")
    assert failed["deliveryError"]["outcomeUnknown"] is False
    assert "deadline" in failed["deliveryError"]["title"]
    assert cloud_api.requests == []
    assert await outbox_rows(db) == 0


async def test_a_slow_answer_within_the_timeout_is_waited_for(
    client: GraphQLClient, cloud_api: FakeCloudApi
) -> None:
    cloud_api.answer_next(slow(0.8))
    thread_id = await open_thread(client)
    sent = await send(client, thread_id, "take your time")
    await message_once(client, sent["id"], "SENT")
    assert len(cloud_api.requests) == 1


async def test_an_answer_later_than_the_timeout_is_an_unknown_outcome_not_a_retry(
    client: GraphQLClient, cloud_api: FakeCloudApi
) -> None:
    cloud_api.answer_next(slow(4.0))  # SEND_REQUEST_TIMEOUT_SECONDS is 2 here
    thread_id = await open_thread(client)
    sent = await send(client, thread_id, "too slow")
    failed = await message_once(client, sent["id"], "FAILED")
    assert failed["deliveryError"]["outcomeUnknown"] is True
    assert len(cloud_api.requests) == 1


# --- the service window, channels and roles -----------------------------------------------------


async def test_outside_the_service_window_a_text_is_refused_unstored_with_the_expiry(
    client: GraphQLClient, db: asyncpg.Connection
) -> None:
    await connect_with_token(client)
    wrote_at = datetime.now(UTC) - timedelta(hours=25)
    wrote = await customer_wrote(client, at=wrote_at)
    before = await db.fetchval("SELECT count(*) FROM whatsapp_message")
    errors = await client.errors(SEND, {"thread": wrote["thread"]["id"], "body": "too late"})
    assert errors[0]["extensions"]["code"] == "OUTSIDE_SERVICE_WINDOW"
    expires = datetime.fromisoformat(errors[0]["extensions"]["serviceWindowExpiresAt"])
    assert abs(expires - (wrote_at + timedelta(hours=24))) < timedelta(seconds=1)
    assert await db.fetchval("SELECT count(*) FROM whatsapp_message") == before
    assert await outbox_rows(db) == 0


async def test_a_customer_who_never_wrote_has_no_window(
    client: GraphQLClient, db: asyncpg.Connection
) -> None:
    await connect_with_token(client)
    data = await client.execute(
        "mutation($input: IngestMessageInput!) { ingestMessage(input: $input) { thread { id } } }",
        {"input": {"phone": CUSTOMER, "direction": "OUTBOUND", "source": "BOT", "body": "promo"}},
    )
    errors = await client.errors(
        SEND, {"thread": data["ingestMessage"]["thread"]["id"], "body": "hello?"}
    )
    assert errors[0]["extensions"]["code"] == "OUTSIDE_SERVICE_WINDOW"
    assert errors[0]["extensions"]["serviceWindowExpiresAt"] is None
    assert await outbox_rows(db) == 0


async def test_a_business_without_a_channel_token_cannot_send(
    client: GraphQLClient, db: asyncpg.Connection
) -> None:
    await connect_with_token(client, token=None)
    wrote = await customer_wrote(client)
    errors = await client.errors(SEND, {"thread": wrote["thread"]["id"], "body": "hello"})
    assert errors[0]["extensions"]["code"] == "CHANNEL_NOT_CONFIGURED"
    assert await outbox_rows(db) == 0


async def test_sending_to_a_thread_of_another_business_is_not_found(
    client: GraphQLClient, db: asyncpg.Connection
) -> None:
    thread_id = await open_thread(client)
    errors = await client.as_business(2).errors(SEND, {"thread": thread_id, "body": "hi"})
    assert errors[0]["extensions"]["code"] == "NOT_FOUND"
    assert await outbox_rows(db) == 0


@pytest.mark.parametrize(
    ("role", "source", "allowed"),
    [
        (Role.AGENT, None, True),
        (Role.AGENT, "HUMAN", True),
        (Role.AGENT, "BOT", False),
        (Role.AGENT, "AUTOMATION", False),
        (Role.SERVICE, "BOT", True),
        (Role.SERVICE, "AUTOMATION", True),
        (Role.ADMIN, "CUSTOMER", False),
    ],
)
async def test_agents_send_as_humans_and_service_tokens_as_bots_or_automations(
    client: GraphQLClient,
    cloud_api: FakeCloudApi,
    role: Role,
    source: str | None,
    allowed: bool,
) -> None:
    thread_id = await open_thread(client)
    as_role = client.as_role(role)
    variables = {"thread": thread_id, "body": "from the inbox", "source": source}
    if allowed:
        sent = (await as_role.execute(SEND, variables))["sendMessage"]
        assert sent["source"] == (source or "HUMAN")
        await message_once(client, sent["id"], "SENT")
    else:
        errors = await as_role.errors(SEND, variables)
        assert errors[0]["extensions"]["code"] == "FORBIDDEN"


@pytest.mark.parametrize("body", ["", "   ", "x" * 4097, "a\x00b"])
async def test_an_empty_or_too_long_body_is_refused(client: GraphQLClient, body: str) -> None:
    thread_id = await open_thread(client)
    errors = await client.errors(SEND, {"thread": thread_id, "body": body})
    assert errors[0]["extensions"]["code"] == "BAD_USER_INPUT"


async def test_the_access_token_is_in_no_log_and_no_response(
    client: GraphQLClient, cloud_api: FakeCloudApi, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cloud_api.answer_next(http_error(401, 190), http_error(400, 131026))
    thread_id = await open_thread(client)
    first = await send(client, thread_id, "one")
    second = await send(client, thread_id, "two")
    answers = [
        json.dumps(await message_once(client, first["id"], "FAILED")),
        json.dumps(await message_once(client, second["id"], "FAILED")),
        json.dumps(await client.execute("{ whatsAppChannels { phoneNumberId accessTokenSetAt } }")),
    ]
    assert cloud_api.requests[0].headers["authorization"].endswith(ACCESS_TOKEN)
    assert ACCESS_TOKEN not in caplog.text
    assert not any(ACCESS_TOKEN in answer for answer in answers)


async def test_a_reply_deleted_before_the_sender_takes_it_is_never_sent(
    app: Starlette, client: GraphQLClient, cloud_api: FakeCloudApi, db: asyncpg.Connection
) -> None:
    thread_id = await open_thread(client)
    sender = app.state.sender
    await sender.stop()  # as if it were busy elsewhere: the reply waits in the outbox
    sent = await send(client, thread_id, "oops, wrong customer")
    assert await outbox_rows(db) == 1
    await client.execute("mutation($id: ID!) { deleteMessage(id: $id) { id } }", {"id": sent["id"]})
    assert await outbox_rows(db) == 0
    await sender.start()
    await asyncio.sleep(0.5)
    assert cloud_api.requests == []
    assert (await client.execute(MESSAGE, {"id": sent["id"]}))["message"]["status"] == "DELETED"


# --- statuses and live ticks -------------------------------------------------------------------


async def post_status(http: httpx.AsyncClient, provider_id: str, name: str, at: int) -> None:
    answer = await post_delivery(http, delivery(statuses=[status(provider_id, name, timestamp=at)]))
    assert answer.status_code == 200, answer.text


async def test_a_status_webhook_that_arrives_before_the_apis_answer_is_kept(
    client: GraphQLClient, http: httpx.AsyncClient, cloud_api: FakeCloudApi
) -> None:
    cloud_api.answer_next(hold(then=success("wamid.RACED-ANSWER")))
    thread_id = await open_thread(client)
    sent = await send(client, thread_id, "racing")
    await requests_after(cloud_api, 1)
    now = int(datetime.now(UTC).timestamp())
    await post_status(http, "wamid.RACED-ANSWER", "delivered", now)
    assert cloud_api.release_held() == 1
    stored = await message_once(client, sent["id"], "DELIVERED")
    assert stored["providerMessageId"] == "wamid.RACED-ANSWER"
    # The sender's SENT came after the delivered it found: still delivered, then read.
    await asyncio.sleep(0.2)
    await post_status(http, "wamid.RACED-ANSWER", "read", now + 5)
    await message_once(client, sent["id"], "READ")


async def test_status_changes_are_announced_once_each_in_order(
    app: Starlette, client: GraphQLClient, http: httpx.AsyncClient, cloud_api: FakeCloudApi
) -> None:
    thread_id = await open_thread(client)
    other_thread = (await customer_wrote(client, phone="+14155550999"))["thread"]["id"]
    async with serving(app) as url, GraphQLSocket.open(url) as socket:
        await socket.subscribe("ticks", STATUS_TICKS, {"thread": thread_id})
        await socket.subscribe("other", STATUS_TICKS, {"thread": other_thread})
        await until_subscribed(app, 2)
        sent = await send(client, thread_id, "watch the ticks")
        stored = await message_once(client, sent["id"], "SENT")
        now = int(datetime.now(UTC).timestamp())
        for offset, name in enumerate(["delivered", "read"], start=1):
            await post_status(http, stored["providerMessageId"], name, now + offset)
        # A redelivered status changes nothing, and is not announced again.
        await post_status(http, stored["providerMessageId"], "delivered", now + 1)
        frames = await frames_of(socket, wait_s=2.0)
    ticks = [frame["payload"]["data"]["messageStatusChanged"] for frame in frames]
    assert {frame["id"] for frame in frames} == {"ticks"}
    assert [t["status"] for t in ticks] == ["SENT", "DELIVERED", "READ"]
    assert {(t["messageId"], t["threadId"]) for t in ticks} == {(sent["id"], thread_id)}


async def test_a_failure_is_announced_with_its_reason(
    app: Starlette, client: GraphQLClient, cloud_api: FakeCloudApi
) -> None:
    cloud_api.answer_next(http_error(400, 131026))
    thread_id = await open_thread(client)
    async with serving(app) as url, GraphQLSocket.open(url) as socket:
        await socket.subscribe("ticks", STATUS_TICKS)
        await until_subscribed(app, 1)
        sent = await send(client, thread_id, "undeliverable")
        payload = await socket.next_payload(wait_s=10)
    tick = payload["data"]["messageStatusChanged"]
    assert (tick["messageId"], tick["status"]) == (sent["id"], "FAILED")
    assert tick["deliveryError"]["code"] == 131026


async def until_subscribed(app: Starlette, members: int) -> None:
    for _ in range(200):
        if app.state.hub.registered()[1] == members:
            return
        await asyncio.sleep(0.025)
    raise AssertionError(app.state.hub.registered())


async def frames_of(socket: GraphQLSocket, wait_s: float) -> list[dict[str, Any]]:
    frames = []
    while True:
        try:
            frames.append(await socket.receive(wait_s))
        except TimeoutError:
            return frames


# --- configuration -----------------------------------------------------------------------------


def test_sending_settings_are_read_from_the_environment() -> None:
    settings = Settings.from_environment(
        {
            "WHATSAPP_API_BASE_URL": "http://127.0.0.1:9999/",
            "WHATSAPP_API_VERSION": "v21.0",
            "SEND_MAX_ATTEMPTS": "3",
            "SEND_REQUEST_TIMEOUT_SECONDS": "5",
        }
    )
    assert settings.whatsapp_api_base_url == "http://127.0.0.1:9999"
    assert settings.whatsapp_api_version == "v21.0"
    assert settings.send_max_attempts == 3
    assert settings.send_lease_s == 60  # at least twice the timeout, 60 s by default


@pytest.mark.parametrize(
    ("environment", "named"),
    [
        ({"WHATSAPP_API_BASE_URL": "graph.facebook.com"}, "WHATSAPP_API_BASE_URL"),
        ({"WHATSAPP_API_BASE_URL": "https://graph.facebook.com/v23.0"}, "WHATSAPP_API_BASE_URL"),
        ({"WHATSAPP_API_VERSION": "23"}, "WHATSAPP_API_VERSION"),
        ({"SEND_MAX_ATTEMPTS": "0"}, "SEND_MAX_ATTEMPTS"),
        (
            {"SEND_REQUEST_TIMEOUT_SECONDS": "30", "SEND_LEASE_SECONDS": "30"},
            "SEND_LEASE_SECONDS",
        ),
    ],
)
def test_a_wrong_sending_setting_stops_the_start_naming_it(
    environment: dict[str, str], named: str
) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_environment(environment)


def test_a_status_change_crosses_instances_as_it_was_published() -> None:
    change = MessageStatusChanged(7, 11, 13, "failed", 131026, "Message undeliverable", True)
    assert _from_wire("other-instance", _to_wire("this-instance", change, 1.5)) == (change, 1.5)
