"""Reads run in a read-only transaction of their own (db/unit_of_work.py open_read_only).

The transaction starts with its row-level security setting in one round trip and ends with a
ROLLBACK; the pool checks liveness for free at checkout instead of SQLAlchemy's pre-ping. What
must hold: reads write nothing, a business's setting never reaches the next unit of work on the
same connection, and connections the server closed are replaced without failing a request.
"""

import asyncio
from dataclasses import replace
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from starlette.applications import Starlette

from db.engine import EngineOptions, build_engine, build_sessionmaker
from db.unit_of_work import open_read_only, unit_of_work
from gql import app as app_module
from gql.app import create_app
from gql.settings import Settings
from tests.conftest import GraphQLClient, ingest, token_for

APP_BACKENDS = (
    "FROM pg_stat_activity WHERE application_name = 'wa-inbox' AND datname = current_database()"
)
THREADS = "{ threads(first: 5) { edges { node { id unreadCount lastMessage { body } } } } }"


async def test_a_read_transaction_refuses_writes(database_url: str) -> None:
    engine = build_engine(database_url)
    sessions = build_sessionmaker(engine)
    try:
        unit = await open_read_only(sessions, 1)
        try:
            with pytest.raises(DBAPIError, match="read-only transaction"):
                await unit.session.execute(
                    text("UPDATE whatsapp_business_unread SET unread = unread + 1")
                )
        finally:
            await unit.close()
    finally:
        await engine.dispose()


async def test_the_business_setting_ends_with_its_read(database_url: str) -> None:
    """One pooled connection, used in turn by two businesses and by an unscoped unit of work:
    each sees its own setting only, and no transaction is left open on the connection."""
    engine = build_engine(database_url, EngineOptions(pool_size=1, max_overflow=0))
    sessions = build_sessionmaker(engine)
    setting = text("SELECT current_setting('wa_inbox.business_id', true)")
    try:
        for business_id in (1, 2):
            unit = await open_read_only(sessions, business_id)
            try:
                assert (await unit.session.execute(setting)).scalar_one() == str(business_id)
            finally:
                await unit.close()
        async with unit_of_work(sessions, business_id=None) as session:
            assert (await session.execute(setting)).scalar_one() in (None, "")
            assert (
                await session.execute(text("SELECT txid_current_if_assigned()"))
            ).scalar_one() is None
        async with engine.connect() as connection:
            raw = await connection.get_raw_connection()
            assert not raw.driver_connection.is_in_transaction()
    finally:
        await engine.dispose()


async def test_reads_and_writes_go_on_after_the_server_closed_every_pooled_connection(
    client: GraphQLClient, db: asyncpg.Connection, app: Starlette
) -> None:
    for n in range(3):
        await ingest(client, phone=f"+1415555{n:04d}", body=f"before {n}")
    # Several requests at once leave several connections in the pool.
    await asyncio.gather(*(client.execute(THREADS) for _ in range(4)))
    killed = await db.fetchval(
        f"SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) {APP_BACKENDS}"
    )
    assert killed >= 1

    async def gone() -> bool:
        return bool(await db.fetchval(f"SELECT count(*) = 0 {APP_BACKENDS}"))

    for _ in range(100):
        if await gone():
            break
        await asyncio.sleep(0.05)
    # Every request succeeds at its first attempt, the legacy REST reads included: the dead
    # connections are replaced.
    listed = await client.http.get(
        "/api/crm/threads", headers={"Authorization": f"Bearer {token_for(1)}"}
    )
    assert listed.status_code == 200, listed.text
    assert len(listed.json()["threads"]) == 3
    answers = await asyncio.gather(*(client.execute(THREADS) for _ in range(4)))
    assert all(len(answer["threads"]["edges"]) == 3 for answer in answers)
    stored = await ingest(client, phone="+14155550001", body="after")
    assert stored["message"]["body"] == "after"


async def test_a_read_that_waits_too_long_for_a_connection_fails_its_field_not_the_request(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool's wait is a timeout of the resolver's own task: when it expires, that field is
    an INTERNAL_SERVER_ERROR and the request, its neighbours and the pool go on."""

    def small_pool(url: str, options: EngineOptions | None = None) -> Any:
        options = options or EngineOptions()
        return build_engine(url, replace(options, pool_size=1, pool_timeout_s=0.3))

    monkeypatch.setattr(app_module, "build_engine", small_pool)
    app = create_app(replace(settings, database_pool_size=1))
    async with app.router.lifespan_context(app):
        client = GraphQLClient(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test"),
            business_id=1,
        )
        held = await app.state.engine.connect()  # the pool's only connection, busy elsewhere
        try:
            errors = await client.errors("{ unreadCount }")
        finally:
            await held.close()
        assert [error["extensions"]["code"] for error in errors] == ["INTERNAL_SERVER_ERROR"]
        assert (await client.execute("{ unreadCount }"))["unreadCount"] == 0
