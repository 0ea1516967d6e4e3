"""One customer, one thread: canonical keys and the unified, ordered thread."""

from tests.conftest import GraphQLClient, ingest

THREAD_MESSAGES = """
query Thread($id: ID!) {
  thread(id: $id) {
    messages(first: 50) { edges { node { body source direction } } }
  }
}
"""


async def test_phone_spellings_of_one_customer_share_one_thread(client: GraphQLClient) -> None:
    spellings = ["+972 50-765-4321", "972507654321", "+972507654321"]
    threads = {
        (await ingest(client, phone=phone, body=phone))["thread"]["id"] for phone in spellings
    }
    assert len(threads) == 1


async def test_phone_thread_key_is_business_scoped_e164(client: GraphQLClient) -> None:
    result = await ingest(client, phone="+972 50-765-4321", body="hi")
    assert result["thread"]["canonicalKey"] == "phone:1:+972507654321"
    assert result["thread"]["phone"] == "+972507654321"


async def test_lead_id_decides_the_key_when_known(client: GraphQLClient) -> None:
    result = await ingest(client, phone="+14155552671", leadId="L-77", body="hi")
    assert result["thread"]["canonicalKey"] == "lead:1:L-77"
    assert result["thread"]["leadId"] == "L-77"


async def test_every_source_lands_in_one_thread_in_chronological_order(
    client: GraphQLClient,
) -> None:
    phone = "+14155552671"
    sent = [
        ("CUSTOMER", "INBOUND", "2026-01-01T10:00:00Z", "hello"),
        ("HUMAN", "OUTBOUND", "2026-01-01T10:03:00Z", "agent reply"),
        ("BOT", "OUTBOUND", "2026-01-01T10:01:00Z", "bot reply"),
        ("AUTOMATION", "OUTBOUND", "2026-01-01T10:02:00Z", "automation"),
    ]
    thread_ids = set()
    for source, direction, at, body in sent:
        result = await ingest(
            client, phone=phone, source=source, direction=direction, sentAt=at, body=body
        )
        thread_ids.add(result["thread"]["id"])
    assert len(thread_ids) == 1
    data = await client.execute(THREAD_MESSAGES, {"id": thread_ids.pop()})
    bodies = [edge["node"]["body"] for edge in data["thread"]["messages"]["edges"]]
    assert bodies == ["hello", "bot reply", "automation", "agent reply"]
