"""Helpers for webhook tests: the shared sample payloads, signing, and payload builders."""

import copy
import json
from pathlib import Path
from typing import Any

import httpx

from gql.whatsapp_webhook import signature_of
from tests.conftest import WHATSAPP_APP_SECRET, GraphQLClient

# A copy of the team's reference payloads (../shared/whatsapp), so a clone alone can run them.
SAMPLES = Path(__file__).resolve().parent / "whatsapp_samples"
# The business number most samples are addressed to, and the second one of the batch sample.
SAMPLE_PHONE_NUMBER_ID = "106540352242922"
SECOND_PHONE_NUMBER_ID = "109999999999999"
WEBHOOK = "/webhooks/whatsapp"

CONNECT = """
mutation Connect($id: String!, $display: String) {
  connectWhatsAppChannel(phoneNumberId: $id, displayPhoneNumber: $display) {
    id phoneNumberId displayPhoneNumber connectedAt
  }
}
"""


def sample(name: str) -> dict[str, Any]:
    """A sample delivery from tests/whatsapp_samples (a fresh copy: tests may change it)."""
    loaded: dict[str, Any] = json.loads((SAMPLES / f"{name}.json").read_text())
    return copy.deepcopy(loaded)


def signed_headers(body: bytes, secret: str = WHATSAPP_APP_SECRET) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Hub-Signature-256": signature_of(body, secret),
    }


async def post_delivery(
    http: httpx.AsyncClient, payload: Any, *, secret: str = WHATSAPP_APP_SECRET
) -> httpx.Response:
    """POST `payload` (JSON-encoded unless already bytes) signed with `secret`."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return await http.post(WEBHOOK, content=body, headers=signed_headers(body, secret))


async def connect_channel(
    client: GraphQLClient,
    phone_number_id: str = SAMPLE_PHONE_NUMBER_ID,
    display_phone_number: str | None = None,
) -> dict[str, Any]:
    data = await client.execute(CONNECT, {"id": phone_number_id, "display": display_phone_number})
    channel: dict[str, Any] = data["connectWhatsAppChannel"]
    return channel


def delivery(
    *,
    messages: list[dict[str, Any]] | None = None,
    statuses: list[dict[str, Any]] | None = None,
    contacts: list[dict[str, Any]] | None = None,
    phone_number_id: str = SAMPLE_PHONE_NUMBER_ID,
) -> dict[str, Any]:
    """One delivery with one change for `phone_number_id`."""
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": phone_number_id},
    }
    if contacts is not None:
        value["contacts"] = contacts
    if messages is not None:
        value["messages"] = messages
    if statuses is not None:
        value["statuses"] = statuses
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"value": value, "field": "messages"}]}],
    }


def text_message(
    provider_message_id: str,
    *,
    sender: str | None = "16505551234",
    user_id: str | None = None,
    body: str = "hello",
    timestamp: int = 1_764_000_000,
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "id": provider_message_id,
        "timestamp": str(timestamp),
        "type": "text",
        "text": {"body": body},
    }
    if sender is not None:
        message["from"] = sender
    if user_id is not None:
        message["from_user_id"] = user_id
    return message


def status(
    provider_message_id: str, name: str, *, timestamp: int = 1_764_000_100, **extra: Any
) -> dict[str, Any]:
    return {
        "id": provider_message_id,
        "status": name,
        "timestamp": str(timestamp),
        "recipient_id": "16505551234",
        **extra,
    }
