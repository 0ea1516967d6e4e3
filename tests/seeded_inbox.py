"""One business's inbox with every kind of thread and message the API can show, stored through
the public entry points (GraphQL mutations and signed webhooks), and the names that find them.

tests/test_compiled_execution.py runs its documents against it: open and closed threads, read
and unread, named by phone, lead and WhatsApp user id, one merged into another; inbound and
outbound messages of every source, replies (to a stored message and to one that is not), a
forward, an ad referral, an edit, a revoke, a deleted message, a failed delivery with its error.
"""

from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.conftest import GraphQLClient, ingest
from tests.webhooks import connect_channel, delivery, post_delivery, sample

SHEENA = "+16505551234"  # the customer most samples come from
SHEENA_USER_ID = "US.13491208655302741918"
PABLO = "+16315551181"  # referral_ad.json
ISRAELI = "+972501234567"  # location.json, unsupported_type.json
LEAD_PHONE = "+14155550100"
MERGED_PHONE = "+14155550199"
LONG_THREAD_PHONE = "+447700900123"
LEAD_ID = "77"
# The outbound message statuses_sent_delivered_read.json reports on, which reply_with_context.json
# quotes; and the one status_failed.json fails.
STATUS_SAMPLE_ID = "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBJFNzQ3OEQ2MEE2QjIxMkUyNDQA"
FAILED_SAMPLE_ID = "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI3QkM4RDk5RTA4NDhEMzU3MEEA"
# The photo edit_coexistence.json edits (no sample holds it).
PHOTO_ID = "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQkE0RDM5QzE2RkI0MjI4QTdDOQA="

MARK_READ = """
mutation($threadId: ID, $phone: String) {
  markRead(threadId: $threadId, phone: $phone) { totalUnread }
}
"""
SET_STATUS = """
mutation($threadId: ID!, $status: ThreadStatus!) {
  setThreadStatus(threadId: $threadId, status: $status) { id status }
}
"""
LINK_LEAD = """
mutation($threadId: ID, $phone: String, $leadId: ID!) {
  linkLead(threadId: $threadId, phone: $phone, leadId: $leadId) { id }
}
"""
DELETE_MESSAGE = "mutation($id: ID!) { deleteMessage(id: $id) { id status } }"
NAMES = """
{
  threads(first: 100) {
    edges {
      cursor
      node {
        id phone leadId userId
        messages(first: 100) { edges { cursor node { id providerMessageId } } }
      }
    }
  }
}
"""


@dataclass
class SeededInbox:
    """What names the seeded rows, for documents to ask about (and what names nothing)."""

    thread_ids: list[str] = field(default_factory=list)
    # Merged away: the id still leads to the thread it was merged into.
    merged_thread_id: str = ""
    # Another business's: business 1 must get null for them, as for unknown ids.
    foreign_thread_id: str = ""
    foreign_message_id: str = ""
    message_ids: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)
    lead_ids: list[str] = field(default_factory=list)
    user_ids: list[str] = field(default_factory=list)
    thread_cursors: list[str] = field(default_factory=list)
    message_cursors: list[str] = field(default_factory=list)


async def deliver(http: httpx.AsyncClient, payload: dict[str, Any]) -> None:
    response = await post_delivery(http, payload)
    assert response.status_code == 200, response.text


def photo() -> dict[str, Any]:
    """Sheena's photo that edit_coexistence.json edits."""
    return delivery(
        messages=[
            {
                "from": SHEENA.removeprefix("+"),
                "id": PHOTO_ID,
                "timestamp": "1786106900",
                "type": "image",
                "image": {"caption": "the damaged box", "mime_type": "image/jpeg", "id": "27548"},
            }
        ]
    )


async def seed_inbox(client: GraphQLClient, http: httpx.AsyncClient) -> SeededInbox:
    """Store the inbox (business 1, and one thread of business 2) through `client` and `http`."""
    await connect_channel(client)

    # Sheena: a bot's message read by her, replies, a reaction, an edit, a revoke, an echo from
    # the Business app, a failed delivery, her user id; read once, unread since.
    await ingest(
        client,
        phone=SHEENA,
        direction="OUTBOUND",
        source="BOT",
        body="Your order shipped",
        providerMessageId=STATUS_SAMPLE_ID,
        sentAt="2025-11-24T15:59:00+00:00",
    )
    for name in (
        "statuses_sent_delivered_read",
        "image_with_caption",
        "interactive_button_reply",
        "reaction",
        "reply_with_context",
        "context_reply",
        "context_forwarded",
    ):
        await deliver(http, sample(name))
    await client.execute(MARK_READ, {"phone": SHEENA})
    for payload in (
        photo(),
        sample("edit_coexistence"),
        sample("revoke_coexistence"),
        sample("bsuid_with_phone"),
        sample("bsuid_username_no_phone"),
        sample("smb_message_echoes"),
    ):
        await deliver(http, payload)
    await ingest(
        client,
        phone=SHEENA,
        direction="OUTBOUND",
        source="AUTOMATION",
        body="We miss you",
        providerMessageId=FAILED_SAMPLE_ID,
    )
    await deliver(http, sample("status_failed"))

    # A customer of an ad, whose thread an agent closed; a location and an unknown type.
    await deliver(http, sample("referral_ad"))
    await deliver(http, sample("location"))
    await deliver(http, sample("unsupported_type"))

    # A CRM lead's thread, and a phone thread merged into it by linkLead.
    lead = await ingest(
        client,
        phone=LEAD_PHONE,
        leadId=LEAD_ID,
        direction="OUTBOUND",
        source="BOT",
        body="Welcome!",
    )
    await ingest(client, phone=LEAD_PHONE, body="Thanks", sentAt="2026-11-02T09:00:00+00:00")
    await ingest(client, phone=LEAD_PHONE, body="Old chat", historical=True)
    merged = await ingest(client, phone=MERGED_PHONE, body="It's me from my other phone")
    await ingest(client, phone=MERGED_PHONE, direction="OUTBOUND", source="HUMAN", body="Hi!")
    await client.execute(LINK_LEAD, {"threadId": merged["thread"]["id"], "leadId": LEAD_ID})

    # A long thread, to page through: read halfway, one message deleted.
    long_thread_ids = []
    for minute in range(12):
        stored = await ingest(
            client,
            phone=LONG_THREAD_PHONE,
            body=f"message {minute}",
            providerMessageId=f"wamid.long.{minute}",
            sentAt=f"2026-11-01T10:{minute:02d}:00+00:00",
        )
        long_thread_ids.append(stored["message"]["id"])
        if minute == 5:
            await client.execute(MARK_READ, {"phone": LONG_THREAD_PHONE})
    await client.execute(DELETE_MESSAGE, {"id": long_thread_ids[7]})
    pablo = (await client.execute('{ thread(phone: "+16315551181") { id } }'))["thread"]
    await client.execute(SET_STATUS, {"threadId": pablo["id"], "status": "CLOSED"})

    foreign = await ingest(client.as_business(2), phone=SHEENA, body="another business")

    names = (await client.execute(NAMES))["threads"]["edges"]
    seeded = SeededInbox(
        merged_thread_id=merged["thread"]["id"],
        foreign_thread_id=foreign["thread"]["id"],
        foreign_message_id=foreign["message"]["id"],
        lead_ids=[LEAD_ID],
        user_ids=[SHEENA_USER_ID],
    )
    for edge in names:
        thread = edge["node"]
        seeded.thread_cursors.append(edge["cursor"])
        seeded.thread_ids.append(thread["id"])
        seeded.phones.append(thread["phone"])
        for message in thread["messages"]["edges"]:
            seeded.message_cursors.append(message["cursor"])
            seeded.message_ids.append(message["node"]["id"])
    assert lead["thread"]["id"] in seeded.thread_ids
    assert len(seeded.thread_ids) == 5, names
    return seeded
