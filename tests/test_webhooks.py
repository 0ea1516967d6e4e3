"""The WhatsApp Cloud API webhook (issue 5): the verification handshake, signed deliveries,
channels that route a number to its business, every message type stored as delivered, rejected
parts recorded, redeliveries stored once, and live events for what was stored."""

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette

from gql.app import create_app
from gql.settings import Settings
from gql.whatsapp_webhook import signature_of
from tests.conftest import WHATSAPP_APP_SECRET, WHATSAPP_VERIFY_TOKEN, GraphQLClient, ingest
from tests.live import NEW_MESSAGE, UNREAD_COUNT_CHANGED, GraphQLSocket, serving
from tests.webhooks import (
    SAMPLE_PHONE_NUMBER_ID,
    SECOND_PHONE_NUMBER_ID,
    WEBHOOK,
    connect_channel,
    delivery,
    post_delivery,
    sample,
    status,
    text_message,
)

CUSTOMER = "+16505551234"

THREAD = """
query Thread($phone: String!) {
  thread(phone: $phone) {
    id contactName userId
    messages(first: 50) {
      edges {
        node {
          id type body mediaId providerPayload direction source status sentAt providerMessageId
        }
      }
    }
  }
}
"""

CHANNELS = "{ whatsAppChannels { id phoneNumberId displayPhoneNumber } }"

DISCONNECT = """
mutation Disconnect($id: String!) {
  disconnectWhatsAppChannel(phoneNumberId: $id) { id phoneNumberId }
}
"""

CONNECT = """
mutation Connect($id: String!) { connectWhatsAppChannel(phoneNumberId: $id) { id } }
"""


async def stored_rows(db: asyncpg.Connection) -> dict[str, int]:
    """Row counts of every table a delivery can write to."""
    tables = (
        "whatsapp_message",
        "whatsapp_conversation",
        "whatsapp_webhook_rejection",
        "whatsapp_pending_status",
    )
    return {table: await db.fetchval(f"SELECT count(*) FROM {table}") for table in tables}


NOTHING_STORED = {
    "whatsapp_message": 0,
    "whatsapp_conversation": 0,
    "whatsapp_webhook_rejection": 0,
    "whatsapp_pending_status": 0,
}


async def thread_of(client: GraphQLClient, phone: str) -> dict[str, Any] | None:
    data = await client.execute(THREAD, {"phone": phone})
    thread: dict[str, Any] | None = data["thread"]
    return thread


async def messages_of(client: GraphQLClient, phone: str) -> list[dict[str, Any]]:
    thread = await thread_of(client, phone)
    assert thread is not None, f"no thread for {phone}"
    return [edge["node"] for edge in thread["messages"]["edges"]]


def only_message(payload: dict[str, Any]) -> dict[str, Any]:
    """The one message of a single-message delivery."""
    messages: list[dict[str, Any]] = payload["entry"][0]["changes"][0]["value"]["messages"]
    (message,) = messages
    return message


def at(timestamp: str | int) -> datetime:
    return datetime.fromtimestamp(int(timestamp), UTC)


def error_code(errors: list[dict[str, Any]]) -> str:
    code: str = errors[0]["extensions"]["code"]
    return code


def logged_with(caplog: pytest.LogCaptureFixture, tag: str) -> list[str]:
    return [record.getMessage() for record in caplog.records if tag in record.getMessage()]


@contextlib.asynccontextmanager
async def app_with(settings: Settings, **changes: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of an app built from `settings` with `changes`, its lifespan running."""
    application = create_app(dataclasses.replace(settings, **changes))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


# --- the verification handshake ------------------------------------------------------------


async def test_handshake_echoes_the_challenge_when_the_verify_token_matches(
    http: httpx.AsyncClient,
) -> None:
    response = await http.get(
        WEBHOOK,
        params={
            "hub.mode": "subscribe",
            "hub.verify_token": WHATSAPP_VERIFY_TOKEN,
            "hub.challenge": "1158201444",
        },
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == "1158201444"


REFUSED_HANDSHAKES = {
    "wrong-token": {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
    "empty-token": {"hub.mode": "subscribe", "hub.verify_token": "", "hub.challenge": "1"},
    "wrong-mode": {
        "hub.mode": "unsubscribe",
        "hub.verify_token": WHATSAPP_VERIFY_TOKEN,
        "hub.challenge": "1",
    },
    "no-mode": {"hub.verify_token": WHATSAPP_VERIFY_TOKEN, "hub.challenge": "1"},
    "no-token": {"hub.mode": "subscribe", "hub.challenge": "1"},
    "no-params": {},
}


async def test_handshake_is_refused_unless_mode_and_verify_token_are_right(
    http: httpx.AsyncClient, subtests: pytest.Subtests
) -> None:
    for case, params in REFUSED_HANDSHAKES.items():
        with subtests.test(case):
            response = await http.get(WEBHOOK, params=params)
            assert response.status_code == 403
            assert response.text != "1"


async def test_handshake_is_refused_when_no_verify_token_is_configured(
    settings: Settings, subtests: pytest.Subtests
) -> None:
    async with app_with(settings, whatsapp_verify_token=None) as http:
        for offered in ["", "None", "null", WHATSAPP_VERIFY_TOKEN]:
            with subtests.test(offered=offered):
                response = await http.get(
                    WEBHOOK,
                    params={
                        "hub.mode": "subscribe",
                        "hub.verify_token": offered,
                        "hub.challenge": "42",
                    },
                )
                assert response.status_code == 403
                assert response.text != "42"


# --- signatures ----------------------------------------------------------------------------


def payload_bytes() -> bytes:
    return json.dumps(sample("text_message")).encode()


def headers_with(signature: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    return headers


def valid_hex() -> str:
    return signature_of(payload_bytes(), WHATSAPP_APP_SECRET).removeprefix("sha256=")


# The signature header values a delivery of payload_bytes() must be refused with.
WRONG_SIGNATURES = {
    "missing": None,
    "wrong-secret": signature_of(payload_bytes(), "another-secret"),
    # The same JSON spelled with other bytes: the signature covers bytes, not meaning.
    "other-bytes": signature_of(
        json.dumps(sample("text_message"), indent=2).encode(), WHATSAPP_APP_SECRET
    ),
    "empty": "",
    "prefix-only": "sha256=",
    "no-prefix": valid_hex(),
    "wrong-algorithm": f"sha1={valid_hex()}",
    "truncated": f"sha256={valid_hex()[:-2]}",
    "extended": f"sha256={valid_hex()}00",
    "not-hex": "sha256=" + "zz" * 32,
    "doubled": f"sha256={valid_hex()},sha256={valid_hex()}",
}


async def test_delivery_without_a_valid_signature_is_refused_and_stores_nothing(
    client: GraphQLClient,
    http: httpx.AsyncClient,
    db: asyncpg.Connection,
    subtests: pytest.Subtests,
) -> None:
    await connect_channel(client)
    for case, signature in WRONG_SIGNATURES.items():
        with subtests.test(case):
            response = await http.post(
                WEBHOOK, content=payload_bytes(), headers=headers_with(signature)
            )
            assert response.status_code == 401
            assert await stored_rows(db) == NOTHING_STORED


async def test_signature_in_uppercase_hex_is_accepted(
    client: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await connect_channel(client)
    response = await http.post(
        WEBHOOK, content=payload_bytes(), headers=headers_with(f"sha256={valid_hex().upper()}")
    )
    assert response.status_code == 200, response.text
    assert await db.fetchval("SELECT count(*) FROM whatsapp_message") == 1


async def test_deliveries_are_refused_with_503_while_no_app_secret_is_configured(
    settings: Settings, db: asyncpg.Connection
) -> None:
    async with app_with(settings, whatsapp_app_secret=None) as http:
        await connect_channel(GraphQLClient(http))
        signed = await post_delivery(http, sample("text_message"))
        unsigned = await http.post(WEBHOOK, content=payload_bytes(), headers=headers_with(None))
    assert (signed.status_code, unsigned.status_code) == (503, 503)
    assert await stored_rows(db) == NOTHING_STORED


# --- deliveries that are not WhatsApp payloads ---------------------------------------------


def with_extra_entry(entry: Any) -> dict[str, Any]:
    """A valid text message delivery followed by `entry`."""
    payload = sample("text_message")
    payload["entry"].append(entry)
    return payload


def entry_with_value(value: Any) -> dict[str, Any]:
    return {"id": "102290129340398", "changes": [{"field": "messages", "value": value}]}


METADATA = {"display_phone_number": "15550783881", "phone_number_id": SAMPLE_PHONE_NUMBER_ID}
VALID = sample("text_message")
VALID_ENTRY = VALID["entry"][0]


# Bodies refused whole; where a part of one is valid, the valid part comes first.
MALFORMED_BODIES: dict[str, Any] = {
    "not-json": b"{not json",
    "not-utf8": b"\xff\xfe{}",
    "empty": b"",
    "array": json.dumps([VALID]).encode(),
    "string": b'"whatsapp_business_account"',
    "null": b"null",
    "wrong-object": {**VALID, "object": "page"},
    "no-object": {"entry": VALID["entry"]},
    "entry-not-a-list": {**VALID, "entry": VALID_ENTRY},
    "no-entry": {"object": VALID["object"]},
    "changes-not-a-list": with_extra_entry({"id": "1", "changes": {}}),
    "no-value": with_extra_entry({"id": "1", "changes": [{"field": "messages"}]}),
    "no-metadata": with_extra_entry(entry_with_value({"messages": [text_message("wamid.x")]})),
    "no-phone-number-id": with_extra_entry(
        entry_with_value({"metadata": {"display_phone_number": "1"}, "messages": []})
    ),
    "numeric-phone-number-id": with_extra_entry(
        entry_with_value({"metadata": {**METADATA, "phone_number_id": 7}})
    ),
    "messages-not-a-list": with_extra_entry(
        entry_with_value({"metadata": METADATA, "messages": text_message("wamid.y")})
    ),
    "statuses-not-a-list": with_extra_entry(
        entry_with_value({"metadata": METADATA, "statuses": "read"})
    ),
}


async def test_malformed_delivery_is_refused_whole_and_stores_nothing(
    client: GraphQLClient,
    http: httpx.AsyncClient,
    db: asyncpg.Connection,
    subtests: pytest.Subtests,
) -> None:
    await connect_channel(client)
    for case, body in MALFORMED_BODIES.items():
        with subtests.test(case):
            response = await post_delivery(http, body)
            assert response.status_code == 400, response.text
            assert response.json()["error"]
            assert await stored_rows(db) == NOTHING_STORED


async def stream(body: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(body), 256):
        yield body[start : start + 256]


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "streamed"])
async def test_delivery_over_the_body_limit_is_refused_with_413(
    settings: Settings, db: asyncpg.Connection, declared: bool
) -> None:
    payload = delivery(messages=[text_message("wamid.big", body="x" * 2_000)])
    body = json.dumps(payload).encode()
    headers = {"X-Hub-Signature-256": signature_of(body, WHATSAPP_APP_SECRET)}
    async with app_with(settings, webhook_max_body_bytes=1_024) as http:
        await connect_channel(GraphQLClient(http))
        too_large = await http.post(
            WEBHOOK, content=body if declared else stream(body), headers=headers
        )
        small = await post_delivery(http, delivery(messages=[text_message("wamid.small")]))
    assert too_large.status_code == 413
    assert small.status_code == 200, small.text
    rows = await db.fetch("SELECT provider_message_id FROM whatsapp_message")
    assert [row["provider_message_id"] for row in rows] == ["wamid.small"]


# --- channels ------------------------------------------------------------------------------


async def test_connecting_a_number_twice_returns_the_same_channel(client: GraphQLClient) -> None:
    first = await connect_channel(client, SAMPLE_PHONE_NUMBER_ID, "+1 555-078-3881")
    again = await connect_channel(client, SAMPLE_PHONE_NUMBER_ID)
    assert again["id"] == first["id"]
    assert again["displayPhoneNumber"] == "+1 555-078-3881"
    channels = (await client.execute(CHANNELS))["whatsAppChannels"]
    assert channels == [
        {
            "id": first["id"],
            "phoneNumberId": SAMPLE_PHONE_NUMBER_ID,
            "displayPhoneNumber": "+1 555-078-3881",
        }
    ]


async def test_a_number_of_another_business_can_neither_be_connected_nor_seen(
    client: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    mine = await connect_channel(client)
    other = client.as_business(2)
    errors = await other.errors(CONNECT, {"id": SAMPLE_PHONE_NUMBER_ID})
    assert error_code(errors) == "CONFLICT"
    assert (await other.execute(CHANNELS))["whatsAppChannels"] == []
    errors = await other.errors(DISCONNECT, {"id": SAMPLE_PHONE_NUMBER_ID})
    assert error_code(errors) == "NOT_FOUND"
    owned = (await client.execute(CHANNELS))["whatsAppChannels"]
    assert [channel["id"] for channel in owned] == [mine["id"]]

    response = await post_delivery(http, sample("text_message"))
    assert response.status_code == 200
    assert await db.fetchval("SELECT array_agg(DISTINCT business_id) FROM whatsapp_message") == [1]


NOT_NUMERIC_PHONE_NUMBER_IDS = ["abc", "1065-4035", "", "   ", "١٠٦٥٤٠", "1" * 65]


async def test_connecting_a_phone_number_id_that_is_not_numeric_is_bad_user_input(
    client: GraphQLClient, subtests: pytest.Subtests
) -> None:
    for phone_number_id in NOT_NUMERIC_PHONE_NUMBER_IDS:
        with subtests.test(phone_number_id=phone_number_id):
            errors = await client.errors(CONNECT, {"id": phone_number_id})
            assert error_code(errors) == "BAD_USER_INPUT"
    assert (await client.execute(CHANNELS))["whatsAppChannels"] == []


async def test_disconnecting_a_number_never_connected_is_not_found(client: GraphQLClient) -> None:
    errors = await client.errors(DISCONNECT, {"id": SAMPLE_PHONE_NUMBER_ID})
    assert error_code(errors) == "NOT_FOUND"


async def test_deliveries_for_a_disconnected_number_are_acknowledged_and_dropped(
    client: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await connect_channel(client)
    before = await post_delivery(http, delivery(messages=[text_message("wamid.before")]))
    assert before.json()["stored"] == 1
    disconnected = await client.execute(DISCONNECT, {"id": SAMPLE_PHONE_NUMBER_ID})
    assert disconnected["disconnectWhatsAppChannel"]["phoneNumberId"] == SAMPLE_PHONE_NUMBER_ID
    assert (await client.execute(CHANNELS))["whatsAppChannels"] == []

    after = await post_delivery(
        http,
        delivery(
            messages=[text_message("wamid.after"), {"type": "text"}],
            statuses=[status("wamid.out", "read")],
        ),
    )
    assert after.status_code == 200
    assert before.json()["status"] == "stored"
    assert after.json()["status"] == "ignored"
    assert after.json()["stored"] == 0
    assert after.json()["unknown_numbers"] == 1
    rows = await db.fetch("SELECT provider_message_id FROM whatsapp_message")
    assert [row["provider_message_id"] for row in rows] == ["wamid.before"]
    assert (await stored_rows(db))["whatsapp_webhook_rejection"] == 0
    assert (await stored_rows(db))["whatsapp_pending_status"] == 0


# --- numbers no business owns --------------------------------------------------------------


async def test_delivery_for_an_unknown_number_is_acknowledged_counted_and_logged(
    http: httpx.AsyncClient, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wa_inbox")
    payload = delivery(
        messages=[
            text_message("wamid.unknown-1"),
            text_message("wamid.unknown-2", sender="123"),
            {"type": "text", "text": {"body": "no id"}},
        ],
        statuses=[status("wamid.out", "delivered"), status("wamid.out", "exploded")],
    )
    response = await post_delivery(http, payload)
    assert response.status_code == 200
    # Still 200 (else Meta retries for days), but saying what happened.
    assert response.json()["status"] == "ignored"
    assert response.json()["unknown_numbers"] == 1
    assert response.json()["stored"] == 0
    assert await stored_rows(db) == NOTHING_STORED

    metrics = (await http.get("/metrics")).text.splitlines()
    assert "wa_inbox_webhook_unknown_numbers_total 1" in metrics
    logged = logged_with(caplog, "[WA-WEBHOOK]")
    assert any(SAMPLE_PHONE_NUMBER_ID in line for line in logged), logged


# --- every message type --------------------------------------------------------------------

# sample, customer phone, type, body, media id
SAMPLE_MESSAGES = [
    ("text_message", CUSTOMER, "text", "Does it come in another color?", None),
    ("image_with_caption", CUSTOMER, "image", "This one, in blue?", "1003383421387256"),
    ("interactive_button_reply", CUSTOMER, "interactive", "Confirm", None),
    ("location", "+972501234567", "location", "Shop - 1 Dizengoff St, Tel Aviv", None),
    ("reaction", CUSTOMER, "reaction", "👍", None),
    ("reply_with_context", CUSTOMER, "text", "Yes please", None),
    # Kept with its type and raw JSON (WhatsApp's error included), though it has no text.
    ("unsupported_type", "+972501234567", "unsupported", None, None),
]


@pytest.mark.parametrize(
    ("name", "phone", "message_type", "body", "media_id"),
    SAMPLE_MESSAGES,
    ids=[row[0] for row in SAMPLE_MESSAGES],
)
async def test_each_sample_message_is_stored_with_its_type_content_and_raw_json(
    client: GraphQLClient,
    http: httpx.AsyncClient,
    name: str,
    phone: str,
    message_type: str,
    body: str | None,
    media_id: str | None,
) -> None:
    await connect_channel(client)
    payload = sample(name)
    raw = only_message(payload)
    response = await post_delivery(http, payload)
    assert response.status_code == 200, response.text
    assert response.json()["stored"] == 1

    thread = await thread_of(client, phone)
    assert thread is not None
    expected_name = payload["entry"][0]["changes"][0]["value"]["contacts"][0]["profile"]["name"]
    assert thread["contactName"] == expected_name
    (message,) = [edge["node"] for edge in thread["messages"]["edges"]]
    assert message["type"] == message_type
    assert message["body"] == body
    assert message["mediaId"] == media_id
    assert message["providerPayload"] == raw
    assert message["providerMessageId"] == raw["id"]
    assert (message["direction"], message["source"], message["status"]) == (
        "INBOUND",
        "CUSTOMER",
        "RECEIVED",
    )
    assert datetime.fromisoformat(message["sentAt"]) == at(raw["timestamp"])


OWN_TYPES = [
    pytest.param(
        "video",
        {"caption": "unboxing", "mime_type": "video/mp4", "sha256": "ab12", "id": "2001"},
        "unboxing",
        "2001",
        id="video",
    ),
    pytest.param(
        "audio",
        {"mime_type": "audio/ogg; codecs=opus", "sha256": "ab13", "id": "2002", "voice": True},
        None,
        "2002",
        id="audio",
    ),
    pytest.param(
        "document",
        {
            "caption": "the invoice",
            "filename": "invoice.pdf",
            "mime_type": "application/pdf",
            "sha256": "ab14",
            "id": "2003",
        },
        "the invoice",
        "2003",
        id="document",
    ),
    pytest.param(
        "sticker",
        {"mime_type": "image/webp", "sha256": "ab15", "id": "2004", "animated": False},
        None,
        "2004",
        id="sticker",
    ),
    pytest.param(
        # Cloud API contacts messages carry a list of contact cards.
        "contacts",
        [
            {
                "name": {"formatted_name": "Dana Levi", "first_name": "Dana"},
                "phones": [{"phone": "+972 50 111 2233", "type": "CELL", "wa_id": "972501112233"}],
            }
        ],
        "Dana Levi",
        None,
        id="contacts",
    ),
    pytest.param(
        "button",
        {"payload": "STOP_PROMOTIONS", "text": "Stop promotions"},
        "Stop promotions",
        None,
        id="button",
    ),
    pytest.param(
        # A type added after this server was written: stored, never dropped.
        "futuristic_type",
        {"hologram": {"id": "3001", "duration_s": 12}},
        None,
        None,
        id="futuristic_type",
    ),
]


@pytest.mark.parametrize(("message_type", "content", "body", "media_id"), OWN_TYPES)
async def test_every_message_type_is_stored_with_its_content_and_raw_json(
    client: GraphQLClient,
    http: httpx.AsyncClient,
    db: asyncpg.Connection,
    message_type: str,
    content: Any,
    body: str | None,
    media_id: str | None,
) -> None:
    await connect_channel(client)
    raw = {
        "from": "16505551234",
        "id": f"wamid.{message_type}",
        "timestamp": "1764001000",
        "type": message_type,
        message_type: content,
    }
    contacts = [{"profile": {"name": "Sheena Nelson"}, "wa_id": "16505551234"}]
    response = await post_delivery(http, delivery(messages=[raw], contacts=contacts))
    assert response.status_code == 200, response.text
    assert response.json()["stored"] == 1, response.json()
    assert await db.fetchval("SELECT count(*) FROM whatsapp_webhook_rejection") == 0

    (message,) = await messages_of(client, CUSTOMER)
    assert message["type"] == message_type
    assert message["body"] == body
    assert message["mediaId"] == media_id
    assert message["providerPayload"] == raw
    assert datetime.fromisoformat(message["sentAt"]) == at(1_764_001_000)


async def test_thread_shows_the_latest_profile_name_of_the_customer(
    client: GraphQLClient, http: httpx.AsyncClient
) -> None:
    await connect_channel(client)
    contacts = [{"profile": {"name": "Sheena N."}, "wa_id": "16505551234"}]
    await post_delivery(http, sample("text_message"))
    await post_delivery(http, delivery(messages=[text_message("wamid.renamed")], contacts=contacts))
    thread = await thread_of(client, CUSTOMER)
    assert thread is not None
    assert thread["contactName"] == "Sheena N."
    assert len(thread["messages"]["edges"]) == 2


async def test_batch_for_two_numbers_gives_each_business_only_its_own_messages(
    client: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    second_business = client.as_business(2)
    await connect_channel(client, SAMPLE_PHONE_NUMBER_ID)
    await connect_channel(second_business, SECOND_PHONE_NUMBER_ID)
    response = await post_delivery(http, sample("batch_two_numbers"))
    assert response.status_code == 200
    report = response.json()
    assert (report["stored"], report["unknown_numbers"], report["statuses_pending"]) == (3, 0, 1)

    first_bodies = [message["body"] for message in await messages_of(client, CUSTOMER)]
    assert first_bodies == ["first"]
    assert [m["body"] for m in await messages_of(client, "+972541112233")] == ["shalom"]
    (document,) = await messages_of(second_business, CUSTOMER)
    assert (document["type"], document["body"], document["mediaId"]) == (
        "document",
        "invoice",
        "2093482093482",
    )
    assert await thread_of(second_business, "+972541112233") is None
    pending = await db.fetch("SELECT business_id FROM whatsapp_pending_status")
    assert [row["business_id"] for row in pending] == [2]


async def test_batch_with_one_number_connected_stores_only_that_numbers_messages(
    client: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await connect_channel(client, SAMPLE_PHONE_NUMBER_ID)
    response = await post_delivery(http, sample("batch_two_numbers"))
    assert response.status_code == 200
    report = response.json()
    assert (report["stored"], report["unknown_numbers"]) == (2, 1)
    bodies = await db.fetch("SELECT body FROM whatsapp_message ORDER BY body")
    assert [row["body"] for row in bodies] == ["first", "shalom"]
    assert (await stored_rows(db))["whatsapp_pending_status"] == 0
    assert "wa_inbox_webhook_unknown_numbers_total 1" in (await http.get("/metrics")).text


# --- parts that cannot be stored -----------------------------------------------------------


def without_id(message: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in message.items() if key != "id"}


@pytest.mark.parametrize(
    ("bad", "provider_message_id", "reason_mentions"),
    [
        (without_id(text_message("wamid.bad")), None, '"id"'),
        ({**text_message("wamid.bad"), "timestamp": "soon"}, "wamid.bad", "timestamp"),
        ({**text_message("wamid.bad"), "timestamp": "99"}, "wamid.bad", "timestamp"),
        (text_message("wamid.bad", sender="123"), "wamid.bad", "phone"),
        (text_message("wamid.bad", sender=None), "wamid.bad", "sender"),
        ({**text_message("wamid.bad"), "text": {"body": "  "}}, "wamid.bad", "text.body"),
        ({**text_message("wamid.bad"), "type": None}, "wamid.bad", '"type"'),
        ({**text_message("wamid.bad"), "image": "x", "type": "image"}, "wamid.bad", "image"),
    ],
    ids=[
        "no-id",
        "word-timestamp",
        "implausible-timestamp",
        "impossible-phone",
        "no-sender",
        "blank-text",
        "no-type",
        "media-not-an-object",
    ],
)
async def test_one_unreadable_message_is_rejected_and_the_rest_of_the_batch_stored(
    client: GraphQLClient,
    http: httpx.AsyncClient,
    db: asyncpg.Connection,
    bad: dict[str, Any],
    provider_message_id: str | None,
    reason_mentions: str,
) -> None:
    await connect_channel(client)
    messages = [
        text_message("wamid.good-1", body="before"),
        bad,
        text_message("wamid.good-2", body="after", timestamp=1_764_000_001),
    ]
    response = await post_delivery(http, delivery(messages=messages))
    assert response.status_code == 200, response.text
    assert (response.json()["stored"], response.json()["rejected"]) == (2, 1)

    assert [m["body"] for m in await messages_of(client, CUSTOMER)] == ["before", "after"]
    (rejection,) = await db.fetch(
        "SELECT business_id, phone_number_id, provider_message_id, reason, fragment "
        "FROM whatsapp_webhook_rejection"
    )
    assert rejection["business_id"] == 1
    assert rejection["phone_number_id"] == SAMPLE_PHONE_NUMBER_ID
    assert rejection["provider_message_id"] == provider_message_id
    assert reason_mentions in rejection["reason"]
    assert json.loads(rejection["fragment"]) == bad


async def test_status_with_an_unknown_name_is_rejected_and_the_others_applied(
    client: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await connect_channel(client)
    statuses = [status("wamid.out-1", "delivered"), status("wamid.out-2", "exploded")]
    response = await post_delivery(http, delivery(statuses=statuses))
    assert response.status_code == 200
    assert (response.json()["statuses_pending"], response.json()["rejected"]) == (1, 1)
    (rejection,) = await db.fetch(
        "SELECT business_id, provider_message_id, reason FROM whatsapp_webhook_rejection"
    )
    assert (rejection["business_id"], rejection["provider_message_id"]) == (1, "wamid.out-2")
    assert "exploded" in rejection["reason"]
    pending = await db.fetch("SELECT provider_message_id, status FROM whatsapp_pending_status")
    assert [tuple(row) for row in pending] == [("wamid.out-1", "delivered")]


# --- redeliveries --------------------------------------------------------------------------


async def test_redelivered_batch_is_stored_once_and_acknowledged_every_time(
    client: GraphQLClient,
    http: httpx.AsyncClient,
    db: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="wa_inbox")
    await connect_channel(client, SAMPLE_PHONE_NUMBER_ID)
    await connect_channel(client, SECOND_PHONE_NUMBER_ID)
    body = json.dumps(sample("batch_two_numbers")).encode()
    reports = []
    for _ in range(3):
        response = await post_delivery(http, body)
        assert response.status_code == 200
        reports.append(response.json())
    assert [(r["stored"], r["duplicates"]) for r in reports] == [(3, 0), (0, 3), (0, 3)]
    counts = await db.fetch(
        "SELECT provider_message_id, count(*) AS n FROM whatsapp_message GROUP BY 1"
    )
    assert len(counts) == 3
    assert {row["n"] for row in counts} == {1}
    assert len(logged_with(caplog, "[WA-DEDUPE]")) >= 6


async def test_concurrent_redeliveries_store_each_message_once(
    client: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await connect_channel(client)
    messages = [text_message(f"wamid.race-{n}", body=f"m{n}") for n in range(5)]
    body = json.dumps(delivery(messages=messages)).encode()
    responses = await asyncio.gather(*(post_delivery(http, body) for _ in range(8)))
    assert [response.status_code for response in responses] == [200] * 8
    reports = [response.json() for response in responses]
    assert sum(report["stored"] for report in reports) == 5
    assert sum(report["duplicates"] for report in reports) == 35
    assert await db.fetchval("SELECT count(*) FROM whatsapp_message") == 5
    assert await db.fetchval("SELECT count(*) FROM whatsapp_conversation") == 1


# --- live events ---------------------------------------------------------------------------


async def test_webhook_delivery_publishes_one_event_per_stored_message_and_none_on_redelivery(
    app: Starlette, client: GraphQLClient, db: asyncpg.Connection
) -> None:
    await connect_channel(client, SAMPLE_PHONE_NUMBER_ID)
    await connect_channel(client, SECOND_PHONE_NUMBER_ID)
    body = json.dumps(sample("batch_two_numbers")).encode()
    async with (
        serving(app) as url,
        GraphQLSocket.open(url) as messages_socket,
        GraphQLSocket.open(url) as badge_socket,
        httpx.AsyncClient(base_url=url.replace("ws://", "http://").removesuffix("/graphql")) as web,
    ):
        await messages_socket.subscribe("m", NEW_MESSAGE)
        await badge_socket.subscribe("b", UNREAD_COUNT_CHANGED)
        first = await post_delivery(web, body)
        assert (first.status_code, first.json()["stored"]) == (200, 3)

        events = [(await messages_socket.next_payload())["data"]["newMessage"] for _ in range(3)]
        badges = [
            (await badge_socket.next_payload())["data"]["unreadCountChanged"] for _ in range(3)
        ]
        stored = await db.fetch("SELECT id, conversation_id FROM whatsapp_message")
        assert sorted(int(event["id"]) for event in events) == sorted(row["id"] for row in stored)
        assert {event["body"] for event in events} == {"first", "shalom", "invoice"}
        assert sorted(int(badge["threadId"]) for badge in badges) == sorted(
            row["conversation_id"] for row in stored
        )

        again = await post_delivery(web, body)
        assert (again.json()["stored"], again.json()["duplicates"]) == (0, 3)
        for socket in (messages_socket, badge_socket):
            with pytest.raises(TimeoutError):
                await socket.receive(wait_s=0.5)


# --- one customer, one thread --------------------------------------------------------------


async def test_webhook_messages_share_the_thread_of_ingested_messages_for_the_same_phone(
    client: GraphQLClient, http: httpx.AsyncClient
) -> None:
    await connect_channel(client)
    before = await ingest(client, phone=CUSTOMER, body="agent-side import")
    response = await post_delivery(http, sample("text_message"))
    assert response.status_code == 200
    after = await ingest(
        client,
        phone="+1 650-555-1234",
        body="we have it in blue",
        direction="OUTBOUND",
        source="HUMAN",
    )
    thread = await thread_of(client, CUSTOMER)
    assert thread is not None
    assert before["thread"]["id"] == thread["id"] == after["thread"]["id"]
    bodies = [edge["node"]["body"] for edge in thread["messages"]["edges"]]
    assert sorted(bodies) == sorted(
        ["agent-side import", "Does it come in another color?", "we have it in blue"]
    )
