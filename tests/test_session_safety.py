"""Mission 1 and 2: a failed statement fails only its own unit of work; concurrent first
messages and redeliveries settle in the database (one thread, one row per provider id), with
or without the unique constraints that ON CONFLICT relies on."""

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette

from gql.app import create_app
from gql.settings import Settings
from tests.conftest import GraphQLClient, admin_execute, asyncpg_dsn, ingest

DROP_CONVERSATION_KEY = (
    "ALTER TABLE whatsapp_conversation DROP CONSTRAINT uq_wa_conv_business_canonical"
)
DROP_PROVIDER_ID_KEY = "ALTER TABLE whatsapp_message DROP CONSTRAINT uq_wa_msg_business_provider_id"


async def fetch(database_url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        return await connection.fetch(query, *args)
    finally:
        await connection.close()


async def fetch_count(database_url: str, query: str, *args: Any) -> int:
    rows = await fetch(database_url, query, *args)
    return int(rows[0][0])


@pytest.fixture
async def single_connection_client(settings: Settings) -> AsyncIterator[GraphQLClient]:
    """A client on an app whose pool holds one connection: every request reuses it."""
    app = create_app(dataclasses.replace(settings, database_pool_size=1))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield GraphQLClient(http)


async def test_fifty_concurrent_first_messages_create_one_thread(
    client: GraphQLClient, database_url: str
) -> None:
    results = await asyncio.gather(
        *(
            ingest(client, phone="+14155550100", body=f"hello {n}", providerMessageId=f"wamid.{n}")
            for n in range(50)
        )
    )
    assert {result["thread"]["id"] for result in results} == {results[0]["thread"]["id"]}
    assert await fetch_count(database_url, "SELECT count(*) FROM whatsapp_conversation") == 1
    seqs = await fetch(database_url, "SELECT seq FROM whatsapp_message ORDER BY seq")
    assert [row["seq"] for row in seqs] == list(range(1, 51))


async def test_fifty_concurrent_deliveries_of_one_provider_id_store_one_row(
    client: GraphQLClient, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wa_inbox")
    results = await asyncio.gather(
        *(
            ingest(client, phone="+14155550101", body="once", providerMessageId="wamid.same")
            for _ in range(50)
        )
    )
    assert sorted(result["duplicate"] for result in results) == [False] + [True] * 49
    assert {result["message"]["id"] for result in results} == {results[0]["message"]["id"]}
    assert await fetch_count(database_url, "SELECT count(*) FROM whatsapp_message") == 1
    assert sum("[WA-DEDUPE]" in record.getMessage() for record in caplog.records) == 49


async def test_duplicate_returns_stored_message_and_changes_nothing(
    client: GraphQLClient, database_url: str
) -> None:
    first = await ingest(
        client,
        phone="+14155550102",
        body="original",
        providerMessageId="wamid.dup",
        sentAt="2026-01-01T10:00:00Z",
    )
    before = await fetch(database_url, "SELECT * FROM whatsapp_conversation")
    again = await ingest(
        client,
        phone="+14155550102",
        body="changed body",
        providerMessageId="wamid.dup",
        sentAt="2026-06-01T10:00:00Z",
    )
    assert again["duplicate"] is True
    assert again["message"] == first["message"]
    assert await fetch(database_url, "SELECT * FROM whatsapp_conversation") == before
    assert again["thread"]["unreadCount"] == 1


async def test_provider_ids_are_unique_per_business_not_globally(
    client: GraphQLClient, database_url: str
) -> None:
    mine = await ingest(client, phone="+14155550103", providerMessageId="wamid.shared")
    theirs = await ingest(
        client.as_business(2), phone="+14155550103", providerMessageId="wamid.shared"
    )
    assert mine["duplicate"] is False
    assert theirs["duplicate"] is False
    assert mine["thread"]["id"] != theirs["thread"]["id"]
    assert theirs["thread"]["canonicalKey"] == "phone:2:+14155550103"


async def test_failed_statement_fails_only_its_unit_and_the_next_request_succeeds(
    single_connection_client: GraphQLClient, database_url: str
) -> None:
    client = single_connection_client
    # The message insert fails after the conversation upsert ran in the same transaction.
    await admin_execute(
        database_url,
        "ALTER TABLE whatsapp_message ADD CONSTRAINT no_poison CHECK (body <> 'poison')",
    )
    response = await client.post(
        "mutation($input: IngestMessageInput!) { ingestMessage(input: $input) { duplicate } }",
        {
            "input": {
                "phone": "+14155550104",
                "direction": "INBOUND",
                "source": "CUSTOMER",
                "body": "poison",
            }
        },
    )
    body = response.json()
    assert body["data"] is None
    [error] = body["errors"]
    assert error["extensions"]["code"] == "INTERNAL_SERVER_ERROR"
    assert error["extensions"]["requestId"]
    assert error["message"] == "Internal server error"
    assert "no_poison" not in response.text
    assert "INSERT" not in response.text
    # Nothing partial: the conversation created by the failed unit was rolled back with it.
    assert await fetch_count(database_url, "SELECT count(*) FROM whatsapp_conversation") == 0

    for n in range(3):
        result = await ingest(client, phone="+14155550104", body=f"fine {n}")
        assert result["duplicate"] is False
    assert (await client.execute("{ unreadCount }"))["unreadCount"] == 3


async def test_missing_conversation_constraint_falls_back_and_is_logged_and_counted(
    app: Starlette, client: GraphQLClient, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wa_inbox")
    await admin_execute(database_url, DROP_CONVERSATION_KEY)

    first = await ingest(client, phone="+14155550105", body="one")
    # The thread exists now: later messages touch it by id and need no conflict target.
    second = await ingest(client, phone="+1 415 555 0105", body="two")
    third = await ingest(client, phone="+14155550106", body="another customer")

    assert first["thread"]["id"] == second["thread"]["id"] != third["thread"]["id"]
    assert second["thread"]["unreadCount"] == 2
    session_errors = [
        record
        for record in caplog.records
        if record.levelno == logging.ERROR and "[WA-SESSION]" in record.getMessage()
    ]
    assert len(session_errors) == 2
    assert all("conversation upsert" in record.getMessage() for record in session_errors)
    assert app.state.metrics.serialized_fallbacks == 2
    assert app.state.metrics.conversation_upsert_failures == 2


async def test_concurrent_first_messages_without_the_constraint_make_one_thread_each(
    client: GraphQLClient, database_url: str
) -> None:
    await admin_execute(database_url, DROP_CONVERSATION_KEY)
    phones = ["+14155550110", "+14155550111", "+14155550112"]
    results = await asyncio.gather(
        *(
            ingest(client, phone=phone, body=f"{phone} {n}", providerMessageId=f"{phone}-{n}")
            for n in range(15)
            for phone in phones
        )
    )
    assert len({result["thread"]["id"] for result in results}) == 3
    rows = await fetch(
        database_url,
        "SELECT canonical_key, count(*) AS n FROM whatsapp_conversation GROUP BY canonical_key",
    )
    assert sorted(row["n"] for row in rows) == [1, 1, 1]
    assert await fetch_count(database_url, "SELECT count(*) FROM whatsapp_message") == 45


async def test_concurrent_redeliveries_without_the_provider_id_constraint_store_one_row(
    client: GraphQLClient, database_url: str
) -> None:
    await admin_execute(database_url, DROP_PROVIDER_ID_KEY)
    results = await asyncio.gather(
        *(
            ingest(client, phone="+14155550120", body="once", providerMessageId="wamid.lonely")
            for _ in range(30)
        )
    )
    assert sorted(result["duplicate"] for result in results) == [False] + [True] * 29
    assert await fetch_count(database_url, "SELECT count(*) FROM whatsapp_message") == 1


async def test_start_up_names_a_missing_constraint_and_readyz_reports_degraded(
    settings: Settings, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wa_inbox")
    await admin_execute(database_url, DROP_CONVERSATION_KEY)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        startup_errors = [
            record.getMessage()
            for record in caplog.records
            if record.levelno == logging.ERROR and "[WA-SESSION]" in record.getMessage()
        ]
        assert any("uq_wa_conv_business_canonical" in line for line in startup_errors)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            ready = await http.get("/readyz")
            assert ready.status_code == 200
            body = ready.json()
            assert body["status"] == "degraded"
            assert body["checks"]["database"]["missing_constraints"] == {
                "uq_wa_conv_business_canonical": "missing"
            }
            # Writes keep working all the same.
            result = await ingest(GraphQLClient(http), phone="+14155550130", body="still works")
            assert result["duplicate"] is False


async def test_readyz_is_ok_with_every_constraint_in_place(http: httpx.AsyncClient) -> None:
    ready = await http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ok",
        "checks": {
            "database": {"status": "ok"},
            "pubsub": {"status": "ok", "backend": "memory"},
        },
    }
    assert (await http.get("/healthz")).status_code == 200


async def test_readyz_answers_503_while_the_database_is_unreachable(settings: Settings) -> None:
    unreachable = dataclasses.replace(
        settings, database_url="postgresql://postgres@127.0.0.1:1/nowhere"
    )
    app = create_app(unreachable)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            ready = await http.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["database"]["status"] == "unreachable"
            assert (await http.get("/healthz")).status_code == 200


async def test_concurrent_multi_mutation_requests_never_wait_on_each_other_for_connections(
    settings: Settings,
) -> None:
    app = create_app(dataclasses.replace(settings, database_pool_size=2))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            client = GraphQLClient(http)
            first = await ingest(client, phone="+14155550140", body="x")
            thread_id = first["thread"]["id"]
            document = (
                "mutation($id: ID!) { a: markRead(threadId: $id) { thread { unreadCount } } "
                "b: markRead(threadId: $id) { thread { unreadCount } } }"
            )
            async with asyncio.timeout(5):
                results = await asyncio.gather(
                    *(client.execute(document, {"id": thread_id}) for _ in range(6))
                )
    assert all(r["b"]["thread"]["unreadCount"] == 0 for r in results)
