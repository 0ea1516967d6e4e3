"""What a WhatsApp message says beyond its text (issue 11): replies, forwards, ads, what the
business typed in the WhatsApp Business app, customers' edits and revokes, and number changes.

Every sample of ../shared/whatsapp for these goes through the signed webhook endpoint, and its
effect is read back through GraphQL. Unread counters are compared with the unread rule's
definition after every change that could move them.
"""

import asyncio
import itertools
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette

from tests.conftest import GraphQLClient, StatementCounter, ingest
from tests.live import UNREAD_COUNT_CHANGED, GraphQLSocket, serving
from tests.test_unread_counters import assert_counters_equal_the_definition
from tests.webhooks import connect_channel, delivery, post_delivery, sample, text_message

CUSTOMER = "+16505551234"
CUSTOMER_WA_ID = "16505551234"
NEW_NUMBER = "+12195555358"
OLD_USER_ID = "US.13491208655302741918"
NEW_USER_ID = "US.20778135511460392657"

# The ids the samples share: the reply of context_reply.json is what revoke_coexistence.json
# revokes; edit_coexistence.json edits a photo no sample holds (EDITED_PHOTO builds it).
REPLY_ID = "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQUI3RjE2NzVEQjQ0QzdBNTgyMQA="
QUOTED_ID = "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI0QTdCNTg5RjY1MEMyRjlGMjQA"
PHOTO_ID = "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQkE0RDM5QzE2RkI0MjI4QTdDOQA="
PHOTO_CAPTION = "this is the damaged box (order 4417)"
EDITED_CAPTION = "Corrected: this is the damaged box (order 4471)"
EDIT_AT = datetime.fromtimestamp(1786107000, UTC)

THREAD = """
query Thread($phone: String, $id: ID) {
  thread(phone: $phone, id: $id) {
    id phone userId unreadCount
    messages(first: 100) {
      edges {
        node {
          id type body direction source status providerMessageId sentAt providerPayload
          replyToProviderId forwarded editedAt originalBody
          referral {
            sourceUrl sourceType sourceId headline body mediaType imageUrl videoUrl
            thumbnailUrl ctwaClid
          }
          replyTo { id body providerMessageId direction }
        }
      }
    }
  }
}
"""

BADGE = "query { unreadCount }"


@pytest.fixture
async def inbox(client: GraphQLClient) -> GraphQLClient:
    await connect_channel(client)
    return client


async def deliver(http: httpx.AsyncClient, payload: dict[str, Any]) -> dict[str, int]:
    response = await post_delivery(http, payload)
    report: dict[str, int] = response.json()
    assert response.status_code == 200, report
    return report


async def thread(client: GraphQLClient, **by: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = (await client.execute(THREAD, by))["thread"]
    return found


async def messages_of(client: GraphQLClient, phone: str = CUSTOMER) -> list[dict[str, Any]]:
    found = await thread(client, phone=phone)
    assert found is not None, f"no thread for {phone}"
    return [edge["node"] for edge in found["messages"]["edges"]]


async def message_with(client: GraphQLClient, provider_id: str, phone: str = CUSTOMER) -> Any:
    (found,) = [
        m for m in await messages_of(client, phone) if m["providerMessageId"] == provider_id
    ]
    return found


async def badge(client: GraphQLClient) -> int:
    count: int = (await client.execute(BADGE))["unreadCount"]
    return count


async def assert_counters_exact(client: GraphQLClient, db: asyncpg.Connection) -> int:
    """Stored counters and what the API shows equal the unread rule; returns the total."""
    return sum((await assert_counters_equal_the_definition(client, db, 1)).values())


def photo(caption: str = PHOTO_CAPTION, provider_id: str = PHOTO_ID) -> dict[str, Any]:
    """The customer's photo that edit_coexistence.json edits."""
    return delivery(
        messages=[
            {
                "from": CUSTOMER_WA_ID,
                "id": provider_id,
                "timestamp": "1786106900",
                "type": "image",
                "image": {"caption": caption, "mime_type": "image/jpeg", "id": "2754859441498128"},
            }
        ]
    )


def edit(text: str, *, at: int, revision_id: str, original_id: str = PHOTO_ID) -> dict[str, Any]:
    """edit_coexistence.json with another text, time and ids."""
    payload = sample("edit_coexistence")
    message = payload["entry"][0]["changes"][0]["value"]["messages"][0]
    message.update(id=revision_id, timestamp=str(at))
    message["edit"]["original_message_id"] = original_id
    message["edit"]["message"]["image"]["caption"] = text
    return payload


def revoke(original_id: str, revision_id: str = "wamid.revoke-1") -> dict[str, Any]:
    payload = sample("revoke_coexistence")
    message = payload["entry"][0]["changes"][0]["value"]["messages"][0]
    message.update(id=revision_id)
    message["revoke"]["original_message_id"] = original_id
    return payload


def only_message(payload: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = payload["entry"][0]["changes"][0]["value"]["messages"][0]
    return message


def one_delivery(*payloads: dict[str, Any]) -> dict[str, Any]:
    """The messages of several single-change deliveries as one delivery, in this order."""
    return delivery(messages=[only_message(payload) for payload in payloads])


# --- replies, forwards, ads ------------------------------------------------------------------


async def test_reply_keeps_the_quoted_id_and_shows_the_quoted_message_once_it_is_stored(
    inbox: GraphQLClient, http: httpx.AsyncClient
) -> None:
    await deliver(http, sample("context_reply"))
    reply = await message_with(inbox, REPLY_ID)
    assert reply["replyToProviderId"] == QUOTED_ID
    assert reply["replyTo"] is None  # what the business sent is not stored yet
    assert reply["forwarded"] is False

    sent = await ingest(
        inbox,
        phone=CUSTOMER,
        direction="OUTBOUND",
        source="BOT",
        body="Can we deliver on Thursday?",
        providerMessageId=QUOTED_ID,
    )
    reply = await message_with(inbox, REPLY_ID)
    assert reply["replyTo"] == {
        "id": sent["message"]["id"],
        "body": "Can we deliver on Thursday?",
        "providerMessageId": QUOTED_ID,
        "direction": "OUTBOUND",
    }


async def test_replies_of_a_page_find_their_quoted_messages_in_one_statement(
    inbox: GraphQLClient, http: httpx.AsyncClient, count_statements: StatementCounter
) -> None:
    def reply(n: int) -> dict[str, Any]:
        message = text_message(f"wamid.reply-{n}", body=f"reply {n}", timestamp=1786105200 + n)
        return {**message, "context": {"from": "15550783881", "id": f"wamid.quoted-{n}"}}

    async def statements_for_page(replies: int) -> int:
        for n in range(replies):
            await ingest(
                inbox,
                phone=CUSTOMER,
                direction="OUTBOUND",
                source="BOT",
                body=f"question {n}",
                providerMessageId=f"wamid.quoted-{n}",
            )
        await deliver(http, delivery(messages=[reply(n) for n in range(replies)]))
        count_statements.statements.clear()
        found = await messages_of(inbox)
        quoted = [m["replyTo"]["body"] for m in found if m["replyTo"] is not None]
        assert quoted == [f"question {n}" for n in range(replies)]
        return count_statements.count

    few = await statements_for_page(2)
    many = await statements_for_page(12)
    assert few == many, count_statements.statements


async def test_forwarded_and_frequently_forwarded_messages_are_marked_forwarded(
    inbox: GraphQLClient, http: httpx.AsyncClient
) -> None:
    await deliver(http, sample("context_forwarded"))
    often = text_message("wamid.often", body="chain letter", timestamp=1786105600)
    plain = text_message("wamid.plain", body="my own words", timestamp=1786105700)
    await deliver(http, delivery(messages=[{**often, "context": {"frequently_forwarded": True}}]))
    await deliver(http, delivery(messages=[plain]))
    forwarded = {m["body"]: m["forwarded"] for m in await messages_of(inbox)}
    assert forwarded == {
        'Is this offer from you? "WIN a free phone, click here..."': True,
        "chain letter": True,
        "my own words": False,
    }


async def test_a_click_to_whatsapp_ad_is_kept_on_the_message_it_started(
    inbox: GraphQLClient, http: httpx.AsyncClient
) -> None:
    payload = sample("referral_ad")
    await deliver(http, payload)
    (message,) = await messages_of(inbox, "+16315551181")
    assert message["body"] == "Can I get more info about this?"
    assert message["referral"] == {
        "sourceUrl": "https://fb.me/3cr4Wqqkv",
        "sourceType": "ad",
        "sourceId": "120226305854810726",
        "headline": "Chat with us",
        "body": "Summer Succulents are here!",
        "mediaType": "image",
        "imageUrl": "https://scontent.xx.fbcdn.net/v/t45.1...",
        "videoUrl": None,
        "thumbnailUrl": None,
        "ctwaClid": only_message(payload)["referral"]["ctwa_clid"],
    }
    # Everything else WhatsApp said of the ad stays in the message's JSON.
    assert message["providerPayload"]["referral"]["welcome_message"] == {
        "text": "Hi there! Let us know how we can help!"
    }


async def test_a_product_enquiry_keeps_the_id_of_the_product_message_it_quotes(
    inbox: GraphQLClient, http: httpx.AsyncClient
) -> None:
    await deliver(http, sample("context_referred_product"))
    (message,) = await messages_of(inbox)
    assert message["body"] == "Is this still available?"
    assert message["replyToProviderId"] == "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGA9wcm9kdWN0X2lucXVpcnkA"
    assert message["replyTo"] is None
    assert message["referral"] is None
    assert message["providerPayload"]["context"]["referred_product"] == {
        "catalog_id": "194836987003835",
        "product_retailer_id": "di9ozbzfi4",
    }


@pytest.mark.parametrize(
    ("name", "change"),
    [
        ("context-not-an-object", {"context": "wamid.x"}),
        ("context-id-not-text", {"context": {"id": 7}}),
        ("context-id-too-long", {"context": {"id": "w" * 129}}),
        ("referral-not-an-object", {"referral": ["https://fb.me/x"]}),
    ],
)
async def test_unreadable_context_or_referral_is_a_rejected_part(
    inbox: GraphQLClient,
    http: httpx.AsyncClient,
    db: asyncpg.Connection,
    name: str,
    change: dict[str, Any],
) -> None:
    bad = {**text_message(f"wamid.{name}"), **change}
    report = await deliver(http, delivery(messages=[bad, text_message("wamid.good")]))
    assert (report["stored"], report["rejected"]) == (1, 1), report
    reason = await db.fetchval(
        "SELECT reason FROM whatsapp_webhook_rejection WHERE provider_message_id = $1",
        f"wamid.{name}",
    )
    assert "context" in reason or "referral" in reason


# --- what the business typed in the WhatsApp Business app -------------------------------------


async def test_a_business_app_echo_is_an_outbound_human_message_in_the_customers_thread(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await deliver(http, sample("context_reply"))
    payload = sample("smb_message_echoes")
    first = await deliver(http, payload)
    assert (first["stored"], first["ignored_fields"]) == (1, 0), first
    again = await deliver(http, payload)
    assert (again["stored"], again["duplicates"]) == (0, 1), again

    found = await thread(inbox, phone=CUSTOMER)
    assert found is not None
    assert found["unreadCount"] == 1  # the customer's reply only
    echo = [edge["node"] for edge in found["messages"]["edges"]][-1]
    assert echo["providerMessageId"] == "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBJFQ0hPMDAwMDAwMDAwMDAwMQA="
    assert (echo["direction"], echo["source"], echo["status"]) == ("OUTBOUND", "HUMAN", "SENT")
    assert (echo["type"], echo["body"]) == ("text", "Yes, we are open until 6pm today.")
    assert echo["sentAt"] == "2026-08-07T13:00:00+00:00"
    assert await assert_counters_exact(inbox, db) == 1


async def test_an_echo_to_a_customer_known_by_user_id_alone_lands_in_their_thread(
    inbox: GraphQLClient, http: httpx.AsyncClient
) -> None:
    await deliver(
        http, delivery(messages=[text_message("wamid.u1", sender=None, user_id=OLD_USER_ID)])
    )
    payload = sample("smb_message_echoes")
    del payload["entry"][0]["changes"][0]["value"]["message_echoes"][0]["to"]
    await deliver(http, payload)
    found = await inbox.execute(
        "{ threads { edges { node { userId messages { edges { node { direction } } } } } } }"
    )
    (node,) = [edge["node"] for edge in found["threads"]["edges"]]
    assert node["userId"] == OLD_USER_ID
    assert [m["node"]["direction"] for m in node["messages"]["edges"]] == ["INBOUND", "OUTBOUND"]


async def test_an_echo_without_its_customer_is_a_rejected_part(
    inbox: GraphQLClient, http: httpx.AsyncClient
) -> None:
    payload = sample("smb_message_echoes")
    echo = payload["entry"][0]["changes"][0]["value"]["message_echoes"][0]
    del echo["to"], echo["to_user_id"]
    report = await deliver(http, payload)
    assert (report["stored"], report["rejected"]) == (0, 1), report


async def test_the_business_revoking_what_it_sent_from_the_app_is_a_rejected_part(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    # Only customers' edits and revokes are applied; the business's own (the same shape in the
    # echoes change, not among the samples) is recorded, never stored as a message.
    await deliver(http, sample("smb_message_echoes"))
    payload = sample("smb_message_echoes")
    echo = payload["entry"][0]["changes"][0]["value"]["message_echoes"][0]
    sent_id = echo["id"]
    del echo["text"]
    echo.update(id="wamid.echo-revoke", type="revoke", revoke={"original_message_id": sent_id})
    report = await deliver(http, payload)
    assert (report["stored"], report["rejected"], report["revisions_applied"]) == (0, 1, 0)
    (message,) = await messages_of(inbox)
    assert (message["status"], message["body"]) == ("SENT", "Yes, we are open until 6pm today.")
    assert (
        await db.fetchval(
            "SELECT count(*) FROM whatsapp_webhook_rejection WHERE provider_message_id = $1",
            "wamid.echo-revoke",
        )
        == 1
    )


# --- customers' edits and revokes ----------------------------------------------------------


async def test_an_edit_replaces_the_text_and_keeps_the_first_one(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await deliver(http, photo())
    report = await deliver(http, sample("edit_coexistence"))
    assert (report["stored"], report["revisions_applied"]) == (0, 1), report
    (message,) = await messages_of(inbox)
    assert (message["type"], message["providerMessageId"]) == ("image", PHOTO_ID)
    assert message["body"] == EDITED_CAPTION
    assert message["originalBody"] == PHOTO_CAPTION
    assert message["editedAt"] == EDIT_AT.isoformat()
    assert await assert_counters_exact(inbox, db) == 1


async def test_edits_and_revokes_no_longer_count_as_new_unread_messages(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    # The measured bug: two messages, then an edit and a revoke, made unread go from 2 to 4.
    await deliver(http, sample("context_reply"))
    await deliver(http, photo())
    assert await badge(inbox) == 2
    await deliver(http, sample("edit_coexistence"))
    assert await badge(inbox) == 2
    await deliver(http, sample("revoke_coexistence"))
    assert await badge(inbox) == 1  # the revoked reply is no longer unread
    found = await messages_of(inbox)
    assert [(m["providerMessageId"], m["status"]) for m in found] == [
        (REPLY_ID, "DELETED"),
        (PHOTO_ID, "RECEIVED"),
    ]
    assert await assert_counters_exact(inbox, db) == 1


async def test_a_revoke_deletes_the_message_lowers_both_unread_counts_and_hides_its_text(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await deliver(http, sample("context_reply"))
    await deliver(http, delivery(messages=[text_message("wamid.other", sender="14155550100")]))
    assert await badge(inbox) == 2
    report = await deliver(http, sample("revoke_coexistence"))
    assert (report["stored"], report["revisions_applied"]) == (0, 1), report

    found = await thread(inbox, phone=CUSTOMER)
    assert found is not None
    assert found["unreadCount"] == 0
    assert await badge(inbox) == 1
    (revoked,) = [edge["node"] for edge in found["messages"]["edges"]]
    assert revoked["status"] == "DELETED"
    assert (revoked["body"], revoked["providerPayload"], revoked["originalBody"]) == (None,) * 3
    # Kept, not erased: the row still holds what was said, for the business's own records.
    assert (
        await db.fetchval(
            "SELECT body FROM whatsapp_message WHERE provider_message_id = $1", REPLY_ID
        )
        == "Yes, Thursday works for the delivery"
    )
    assert await assert_counters_exact(inbox, db) == 1


async def test_a_revoke_of_a_read_message_leaves_the_counts_alone(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await deliver(http, sample("context_reply"))
    await inbox.execute(
        "mutation R($phone: String) { markRead(phone: $phone) { totalUnread } }",
        {"phone": CUSTOMER},
    )
    await deliver(http, sample("revoke_coexistence"))
    assert (await message_with(inbox, REPLY_ID))["status"] == "DELETED"
    assert await assert_counters_exact(inbox, db) == 0


async def test_a_revoke_that_lowers_the_unread_count_is_announced_once(
    app: Starlette, inbox: GraphQLClient
) -> None:
    async with (
        serving(app) as url,
        GraphQLSocket.open(url) as socket,
        httpx.AsyncClient(base_url=url.replace("ws://", "http://").removesuffix("/graphql")) as web,
    ):
        await socket.subscribe("b", UNREAD_COUNT_CHANGED)
        await deliver(web, sample("context_reply"))
        stored = (await socket.next_payload())["data"]["unreadCountChanged"]
        assert (stored["unreadCount"], stored["totalUnread"]) == (1, 1)
        await deliver(web, sample("revoke_coexistence"))
        revoked = (await socket.next_payload())["data"]["unreadCountChanged"]
        assert revoked == {**stored, "unreadCount": 0, "totalUnread": 0}
        await deliver(web, sample("revoke_coexistence"))  # redelivered: nothing changes
        with pytest.raises(TimeoutError):
            await socket.receive(wait_s=0.5)


async def test_a_deleted_message_stays_deleted_when_an_edit_arrives_later(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await deliver(http, photo())
    await deliver(http, revoke(PHOTO_ID))
    report = await deliver(http, sample("edit_coexistence"))
    assert report["revisions_stale"] == 1, report
    row = await db.fetchrow(
        "SELECT status, body, edited_at FROM whatsapp_message WHERE provider_message_id = $1",
        PHOTO_ID,
    )
    assert dict(row) == {"status": "deleted", "body": PHOTO_CAPTION, "edited_at": None}
    assert (await message_with(inbox, PHOTO_ID))["body"] is None


async def test_redelivered_edits_and_revokes_change_nothing_more(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await deliver(http, photo())
    await deliver(http, sample("context_reply"))
    reports = [
        await deliver(http, one_delivery(sample("edit_coexistence"), sample("revoke_coexistence")))
        for _ in range(3)
    ]
    assert [(r["revisions_applied"], r["revisions_stale"]) for r in reports] == [
        (2, 0),
        (0, 2),
        (0, 2),
    ]
    photo_now = await message_with(inbox, PHOTO_ID)
    assert (photo_now["body"], photo_now["originalBody"]) == (EDITED_CAPTION, PHOTO_CAPTION)
    assert (await message_with(inbox, REPLY_ID))["status"] == "DELETED"
    assert await db.fetchval("SELECT count(*) FROM whatsapp_message") == 2
    assert await assert_counters_exact(inbox, db) == 1


async def test_of_several_edits_the_latest_wins_whatever_order_they_arrive_in(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    edits = [("second text", 1786107010), ("third text", 1786107020), ("fourth text", 1786107030)]
    for round_, texts in enumerate(itertools.permutations(edits)):
        original_id = f"wamid.photo-{round_}"
        order = [
            edit(text, at=at, revision_id=f"wamid.e{at}-{round_}", original_id=original_id)
            for text, at in texts
        ]
        # The first edit arrives before the photo, the others after it.
        await deliver(http, order[0])
        await deliver(http, photo(provider_id=original_id))
        for payload in order[1:]:
            await deliver(http, payload)
        edited = await message_with(inbox, original_id)
        assert edited["body"] == "fourth text", texts
        assert edited["originalBody"] == PHOTO_CAPTION
        assert edited["editedAt"] == datetime.fromtimestamp(1786107030, UTC).isoformat()
    assert await db.fetchval("SELECT count(*) FROM whatsapp_pending_revision") == 0


async def test_of_several_edits_kept_before_their_message_the_latest_is_applied(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    # "latest" and "latest too" are two edits within one second: the same one wins whichever
    # arrives last (time, then text), and neither loses to one that arrives after it.
    for text, at in (
        ("latest too", 1786107030),
        ("later", 1786107020),
        ("latest", 1786107030),
        ("early", 1786107010),
    ):
        report = await deliver(http, edit(text, at=at, revision_id=f"wamid.{text}"))
        assert report["revisions_pending"] == 1, report
    await deliver(http, photo())
    edited = await message_with(inbox, PHOTO_ID)
    assert (edited["body"], edited["originalBody"]) == ("latest too", PHOTO_CAPTION)
    assert await db.fetchval("SELECT count(*) FROM whatsapp_pending_revision") == 0


@pytest.mark.parametrize("photo_first", [True, False])
async def test_edits_within_one_second_end_the_same_in_either_order(
    inbox: GraphQLClient, http: httpx.AsyncClient, photo_first: bool
) -> None:
    # WhatsApp's timestamps are whole seconds: the later text (by sort order) wins a tie, so
    # every order of delivery ends alike, stored or kept pending.
    for round_, texts in enumerate((("alpha", "omega"), ("omega", "alpha"))):
        original_id = f"wamid.tie-photo-{round_}"
        if photo_first:
            await deliver(http, photo(provider_id=original_id))
        for text in texts:
            revision_id = f"wamid.{text}-{round_}"
            await deliver(
                http, edit(text, at=1786107030, revision_id=revision_id, original_id=original_id)
            )
        if not photo_first:
            await deliver(http, photo(provider_id=original_id))
        assert (await message_with(inbox, original_id))["body"] == "omega", texts


@pytest.mark.parametrize("kind", ["edit", "revoke"])
async def test_a_revision_before_its_message_is_applied_when_the_message_is_stored(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection, kind: str
) -> None:
    revision = sample("edit_coexistence") if kind == "edit" else revoke(PHOTO_ID)
    for _ in range(3):
        report = await deliver(http, revision)
        assert (report["stored"], report["revisions_pending"]) == (0, 1), report
    assert await db.fetchval("SELECT count(*) FROM whatsapp_pending_revision") == 1
    assert await thread(inbox, phone=CUSTOMER) is None  # a revision is no message of its own

    for _ in range(3):
        await deliver(http, photo())
    found = await thread(inbox, phone=CUSTOMER)
    assert found is not None
    (message,) = [edge["node"] for edge in found["messages"]["edges"]]
    if kind == "edit":
        assert (message["status"], message["body"]) == ("RECEIVED", EDITED_CAPTION)
        assert message["originalBody"] == PHOTO_CAPTION
        assert found["unreadCount"] == 1
    else:
        # Stored deleted: never counted unread, by the thread or by the business.
        assert (message["status"], message["body"]) == ("DELETED", None)
        assert found["unreadCount"] == 0
    assert await badge(inbox) == found["unreadCount"]
    assert await assert_counters_exact(inbox, db) == found["unreadCount"]
    assert await db.fetchval("SELECT count(*) FROM whatsapp_pending_revision") == 0


async def test_an_edit_and_a_revoke_before_their_message_leave_it_deleted(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await deliver(http, revoke(PHOTO_ID))
    await deliver(http, sample("edit_coexistence"))
    await ingest(inbox, phone=CUSTOMER, body="unread before", providerMessageId="wamid.before")
    await deliver(http, photo())
    message = await message_with(inbox, PHOTO_ID)
    assert (message["status"], message["body"]) == ("DELETED", None)
    assert await assert_counters_exact(inbox, db) == 1


@pytest.mark.parametrize("revision_first", [True, False])
@pytest.mark.parametrize("kind", ["edit", "revoke"])
async def test_a_revision_and_its_message_in_one_delivery_work_in_either_order(
    inbox: GraphQLClient,
    http: httpx.AsyncClient,
    db: asyncpg.Connection,
    kind: str,
    revision_first: bool,
) -> None:
    revision = sample("edit_coexistence") if kind == "edit" else revoke(PHOTO_ID)
    parts = (revision, photo()) if revision_first else (photo(), revision)
    report = await deliver(http, one_delivery(*parts))
    assert (report["stored"], report["revisions_applied"]) == (1, 1), report
    message = await message_with(inbox, PHOTO_ID)
    expected = ("RECEIVED", EDITED_CAPTION) if kind == "edit" else ("DELETED", None)
    assert (message["status"], message["body"]) == expected
    assert await assert_counters_exact(inbox, db) == (1 if kind == "edit" else 0)


async def test_revisions_racing_their_messages_end_applied_with_exact_counts(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    rounds = 16
    deliveries = []
    for n in range(rounds):
        original_id = f"wamid.race-{n}"
        deliveries += [photo(provider_id=original_id)] * 3
        deliveries += [revoke(original_id, f"wamid.race-revoke-{n}")] * 3
        if n % 2:  # half of them edited too, racing the revoke
            edited = edit(f"edited {n}", at=1786107000, revision_id=f"wamid.race-edit-{n}")
            only_message(edited)["edit"]["original_message_id"] = original_id
            deliveries += [edited] * 3
    reports = await asyncio.gather(*(deliver(http, payload) for payload in deliveries))
    assert sum(report["stored"] for report in reports) == rounds
    rows = await db.fetch(
        "SELECT provider_message_id, status FROM whatsapp_message ORDER BY provider_message_id"
    )
    assert [row["status"] for row in rows] == ["deleted"] * rounds
    assert await db.fetchval("SELECT count(*) FROM whatsapp_pending_revision") == 0
    assert await assert_counters_exact(inbox, db) == 0
    assert await badge(inbox) == 0


async def test_an_edit_only_the_business_app_shows_is_stored_as_an_unsupported_message(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    # Numbers outside coexistence get edits as `unsupported` without the new text or the id
    # of the message edited: nothing to revise, so it is kept like any unsupported message.
    await deliver(http, photo())
    report = await deliver(http, sample("edit_unsupported"))
    assert (report["stored"], report["revisions_applied"], report["rejected"]) == (1, 0, 0)
    photo_now, notice = await messages_of(inbox)
    assert (photo_now["body"], photo_now["editedAt"]) == (PHOTO_CAPTION, None)
    assert (notice["type"], notice["body"]) == ("unsupported", None)
    assert notice["providerPayload"]["unsupported"] == {"type": "edit"}
    assert notice["providerPayload"]["errors"][0]["code"] == 131051
    assert await assert_counters_exact(inbox, db) == 2


@pytest.mark.parametrize(
    ("name", "change"),
    [
        ("edit-not-an-object", {"edit": "new text"}),
        ("edit-without-original", {"edit": {"message": {"type": "text", "text": {"body": "x"}}}}),
        ("edit-without-message", {"edit": {"original_message_id": PHOTO_ID}}),
        (
            "edit-without-text",
            {
                "edit": {
                    "original_message_id": PHOTO_ID,
                    "message": {"type": "image", "image": {"id": "1"}},
                }
            },
        ),
        ("revoke-without-original", {"revoke": {}}),
        ("revoke-original-too-long", {"revoke": {"original_message_id": "w" * 129}}),
    ],
)
async def test_unreadable_revisions_are_rejected_parts(
    inbox: GraphQLClient,
    http: httpx.AsyncClient,
    db: asyncpg.Connection,
    name: str,
    change: dict[str, Any],
) -> None:
    await deliver(http, photo())
    kind = name.split("-")[0]
    bad = {**text_message(f"wamid.{name}"), "type": kind, **change}
    del bad["text"]
    report = await deliver(http, delivery(messages=[bad]))
    assert (report["rejected"], report["revisions_applied"], report["revisions_pending"]) == (
        1,
        0,
        0,
    )
    assert (
        await db.fetchval(
            "SELECT count(*) FROM whatsapp_webhook_rejection WHERE provider_message_id = $1",
            f"wamid.{name}",
        )
        == 1
    )
    assert (await message_with(inbox, PHOTO_ID))["status"] == "RECEIVED"


# --- number and user id changes -------------------------------------------------------------


def number_change(*, before_v12: bool = False) -> dict[str, Any]:
    payload = sample("system_user_changed_number")
    system = only_message(payload)["system"]
    if before_v12:  # webhooks before v12 named the change and the new number otherwise
        system.update(type="customer_changed_number", new_wa_id=system.pop("wa_id"))
    return payload


def before_the_change(provider_id: str = "wamid.old-1") -> dict[str, Any]:
    """A message from the old number, before system_user_changed_number.json."""
    return delivery(
        messages=[text_message(provider_id, body="from the old number", timestamp=1786100000)]
    )


def from_the_new_number(provider_id: str, timestamp: int) -> dict[str, Any]:
    return delivery(messages=[text_message(provider_id, sender="12195555358", timestamp=timestamp)])


async def test_after_a_number_change_the_conversation_goes_on_in_one_thread(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await deliver(http, before_the_change())
    report = await deliver(http, number_change())
    assert (report["stored"], report["rejected"]) == (1, 0), report
    await deliver(http, from_the_new_number("wamid.new-1", 1786110000))

    by_old = await thread(inbox, phone=CUSTOMER)
    by_new = await thread(inbox, phone=NEW_NUMBER)
    assert by_old is not None
    assert by_new == by_old
    assert by_old["phone"] == NEW_NUMBER
    found = [edge["node"] for edge in by_old["messages"]["edges"]]
    assert [m["providerMessageId"] for m in found] == [
        "wamid.old-1",
        only_message(number_change())["id"],
        "wamid.new-1",
    ]
    notice = found[1]
    assert notice["type"] == "system"
    assert notice["body"] == "User Sheena Nelson changed from 16505551234 to 12195555358"
    assert (notice["direction"], notice["source"]) == ("INBOUND", "CUSTOMER")
    # The notice is shown, never unread: the two messages around it are.
    assert by_old["unreadCount"] == 2
    assert await assert_counters_exact(inbox, db) == 2
    assert await db.fetchval("SELECT count(*) FROM whatsapp_conversation") == 1


async def test_a_number_change_merges_the_thread_the_new_number_already_had(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await deliver(http, before_the_change())
    await deliver(http, from_the_new_number("wamid.new-0", 1786000000))
    assert await db.fetchval("SELECT count(*) FROM whatsapp_conversation") == 2
    await deliver(http, number_change())

    by_old = await thread(inbox, phone=CUSTOMER)
    assert by_old is not None
    assert await thread(inbox, phone=NEW_NUMBER) == by_old
    found = [edge["node"] for edge in by_old["messages"]["edges"]]
    assert [m["providerMessageId"] for m in found] == [
        "wamid.new-0",
        "wamid.old-1",
        only_message(number_change())["id"],
    ]
    assert by_old["unreadCount"] == 2
    assert await badge(inbox) == 2
    assert await assert_counters_exact(inbox, db) == 2
    assert await db.fetchval("SELECT count(*) FROM whatsapp_conversation") == 1


@pytest.mark.parametrize("before_v12", [False, True])
async def test_a_number_change_is_read_in_the_spelling_of_every_webhook_version(
    inbox: GraphQLClient, http: httpx.AsyncClient, before_v12: bool
) -> None:
    await deliver(http, before_the_change())
    await deliver(http, number_change(before_v12=before_v12))
    by_new = await thread(inbox, phone=NEW_NUMBER)
    assert by_new is not None
    assert by_new == await thread(inbox, phone=CUSTOMER)
    assert [edge["node"]["type"] for edge in by_new["messages"]["edges"]] == ["text", "system"]


async def test_a_number_change_is_stored_once_however_often_it_is_delivered(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await deliver(http, before_the_change())
    reports = await asyncio.gather(*(deliver(http, number_change()) for _ in range(5)))
    assert sum(report["stored"] for report in reports) == 1
    assert await db.fetchval("SELECT count(*) FROM whatsapp_message") == 2
    assert await db.fetchval("SELECT count(*) FROM whatsapp_conversation") == 1
    assert await assert_counters_exact(inbox, db) == 1


async def test_a_number_change_without_the_new_number_is_a_rejected_part(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    payload = number_change()
    del only_message(payload)["system"]["wa_id"]
    report = await deliver(http, payload)
    assert (report["stored"], report["rejected"]) == (0, 1), report
    assert await db.fetchval("SELECT count(*) FROM whatsapp_conversation") == 0


async def test_after_a_user_id_change_the_new_user_id_leads_to_the_same_thread(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await deliver(http, delivery(messages=[text_message("wamid.u-1", user_id=OLD_USER_ID)]))
    # The sample names the customer only inside `system`: no `from`, no `from_user_id`.
    report = await deliver(http, sample("system_user_changed_user_id"))
    assert (report["stored"], report["rejected"]) == (1, 0), report
    await deliver(
        http,
        delivery(
            messages=[
                text_message("wamid.u-2", sender=None, user_id=NEW_USER_ID, timestamp=1786200000)
            ]
        ),
    )
    found = await thread(inbox, phone=CUSTOMER)
    assert found is not None
    assert [edge["node"]["type"] for edge in found["messages"]["edges"]] == [
        "text",
        "system",
        "text",
    ]
    notice = found["messages"]["edges"][1]["node"]
    assert notice["body"] == (
        "User Sheena Nelson changed from US.13491208655302741918 to US.20778135511460392657"
    )
    assert found["unreadCount"] == 2
    assert await assert_counters_exact(inbox, db) == 2
    assert await db.fetchval("SELECT count(*) FROM whatsapp_conversation") == 1


async def test_a_system_notice_of_another_kind_is_kept_in_the_senders_thread_never_unread(
    inbox: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    notice = {
        "from": CUSTOMER_WA_ID,
        "id": "wamid.notice",
        "timestamp": "1786104000",
        "type": "system",
        "system": {"body": "Messages are now end-to-end encrypted", "type": "something_new"},
    }
    report = await deliver(http, delivery(messages=[notice]))
    assert report["stored"] == 1, report
    (stored,) = await messages_of(inbox)
    assert (stored["type"], stored["body"]) == ("system", "Messages are now end-to-end encrypted")
    assert await assert_counters_exact(inbox, db) == 0


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("system-not-an-object", {"from": CUSTOMER_WA_ID, "system": "changed"}),
        ("user-id-change-without-user-id", {"system": {"type": "user_changed_user_id"}}),
        ("notice-without-sender", {"system": {"type": "something_new", "body": "hi"}}),
    ],
)
async def test_unreadable_system_messages_are_rejected_parts(
    inbox: GraphQLClient, http: httpx.AsyncClient, name: str, message: dict[str, Any]
) -> None:
    bad = {"id": f"wamid.{name}", "timestamp": "1786104000", "type": "system", **message}
    report = await deliver(http, delivery(messages=[bad]))
    assert (report["stored"], report["rejected"]) == (0, 1), report


async def test_the_inbox_list_shows_each_last_message_as_the_thread_shows_it(
    inbox: GraphQLClient, http: httpx.AsyncClient
) -> None:
    """The thread page reads last messages in its own statement (a row value per thread,
    db/inbox_reads.py): JSON, times and every field come back as the message page has them."""
    await deliver(http, sample("referral_ad"))
    await deliver(http, sample("context_reply"))
    fields = THREAD.split("node {", 1)[1].rsplit("}\n      }\n    }", 1)[0]
    listed = await inbox.execute(
        f"{{ threads(first: 10) {{ edges {{ node {{ phone lastMessage {{ {fields} }} }} }} }} }}"
    )
    assert len(listed["threads"]["edges"]) == 2
    for edge in listed["threads"]["edges"]:
        last = edge["node"]["lastMessage"]
        assert last["providerPayload"] is not None
        assert last == (await messages_of(inbox, edge["node"]["phone"]))[-1]
