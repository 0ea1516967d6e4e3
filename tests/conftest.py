"""Test fixtures: a real PostgreSQL (TEST_DATABASE_URL, else embedded), a fresh migrated
database per test (cloned from a migrated template), the app, tokens and a GraphQL client."""

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from sqlalchemy import event
from starlette.applications import Starlette

from db.embedded import start_embedded_postgres, stop_embedded_postgres
from db.engine import to_async_url
from db.migrations import upgrade_to_head
from domain.access import Role
from gql.app import create_app
from gql.auth import issue_token
from gql.settings import Settings

AUTH_SECRET = "test-secret-that-is-long-enough-for-hs256-keys"
# A Fernet key for channel access tokens (domain/channel_tokens.py), this suite's only.
CHANNEL_SECRET_KEY = "wa-inbox-tests-channel-secret-key-000000000="
WHATSAPP_APP_SECRET = "test-whatsapp-app-secret"
WHATSAPP_VERIFY_TOKEN = "test-verify-token"


def with_database(url: str, database: str) -> str:
    """`url` pointing at another database on the same server."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, ""))


def asyncpg_dsn(url: str) -> str:
    return to_async_url(url).replace("postgresql+asyncpg://", "postgresql://", 1)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A server where tests may create databases: TEST_DATABASE_URL, else an embedded one.

    The embedded cluster lives outside pytest's temporary directories: pytest deletes all
    but its newest few, and another pytest session on the machine must not remove a cluster
    that is still serving this one.
    """
    configured = os.environ.get("TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    data_dir = Path(tempfile.mkdtemp(prefix="wa-inbox-test-")) / "pgdata"
    try:
        yield start_embedded_postgres(data_dir, database="postgres")
    finally:
        stop_embedded_postgres(data_dir)
        shutil.rmtree(data_dir.parent, ignore_errors=True)


async def admin_execute(postgres_url: str, *statements: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(postgres_url))
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def template_database(postgres_url: str) -> str:
    """A migrated database that per-test databases are cloned from."""
    name = f"wa_inbox_template_{os.getpid()}"
    asyncio.run(
        admin_execute(
            postgres_url,
            f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
            f'CREATE DATABASE "{name}"',
        )
    )
    upgrade_to_head(with_database(postgres_url, name))
    yield name
    asyncio.run(admin_execute(postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def database_url(postgres_url: str, template_database: str) -> AsyncIterator[str]:
    """A fresh, migrated database of this test's own."""
    name = f"wa_inbox_test_{uuid.uuid4().hex[:12]}"
    await admin_execute(postgres_url, f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    yield with_database(postgres_url, name)
    await admin_execute(postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection to the test's database, beside the app's own engine."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        yield connection
    finally:
        await connection.close()


UNREACHABLE_CLOUD_API = "http://127.0.0.1:9"


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        auth_secret=AUTH_SECRET,
        default_region="US",
        whatsapp_app_secret=WHATSAPP_APP_SECRET,
        whatsapp_verify_token=WHATSAPP_VERIFY_TOKEN,
        channel_secret_keys=(CHANNEL_SECRET_KEY,),
        # Nothing a test queues may reach Meta: a port nothing listens on, unless a test
        # points the sender at its fake Cloud API (tests/fake_cloud_api.py).
        whatsapp_api_base_url=UNREACHABLE_CLOUD_API,
    )


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Starlette]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


def token_for(
    business_id: int = 1, user_id: str = "agent-1", role: Role | None = Role.ADMIN
) -> str:
    """A valid token; admin unless told otherwise, so tests of other rules are not about roles."""
    return issue_token(AUTH_SECRET, user_id=user_id, business_id=business_id, role=role)


class GraphQLClient:
    """Posts GraphQL over HTTP to the app in-process, as one business."""

    def __init__(
        self, http: httpx.AsyncClient, business_id: int = 1, role: Role | None = Role.ADMIN
    ) -> None:
        self.http = http
        self.business_id = business_id
        self.role = role
        self.headers = {"Authorization": f"Bearer {token_for(business_id, role=role)}"}

    def as_business(self, business_id: int) -> "GraphQLClient":
        return GraphQLClient(self.http, business_id, self.role)

    def as_role(self, role: Role | None) -> "GraphQLClient":
        """The same business with a token of `role` (None: a token without a role claim)."""
        return GraphQLClient(self.http, self.business_id, role)

    async def post(
        self, query: str, variables: dict[str, Any] | None = None, **headers: str
    ) -> httpx.Response:
        return await self.http.post(
            "/graphql",
            json={"query": query, "variables": variables},
            headers={**self.headers, **headers},
        )

    async def execute(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """The response body of an operation expected to succeed without errors."""
        response = await self.post(query, variables)
        body: dict[str, Any] = response.json()
        assert response.status_code == 200, body
        assert "errors" not in body, body["errors"]
        return body["data"]

    async def errors(
        self, query: str, variables: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """The errors of an operation expected to fail."""
        response = await self.post(query, variables)
        body: dict[str, Any] = response.json()
        assert body.get("errors"), body
        return body["errors"]


@pytest.fixture
async def http(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@pytest.fixture
def client(http: httpx.AsyncClient) -> GraphQLClient:
    return GraphQLClient(http, business_id=1)


class StatementCounter:
    def __init__(self) -> None:
        self.statements: list[str] = []

    @property
    def count(self) -> int:
        return len(self.statements)


@pytest.fixture
def count_statements(app: Starlette) -> Iterator[StatementCounter]:
    """Records every SQL statement the app's engine sends while the test runs."""
    counter = StatementCounter()
    sync_engine = app.state.engine.sync_engine

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        counter.statements.append(statement)

    event.listen(sync_engine, "before_cursor_execute", record)
    yield counter
    event.remove(sync_engine, "before_cursor_execute", record)


INGEST = """
mutation Ingest($input: IngestMessageInput!) {
  ingestMessage(input: $input) {
    duplicate
    message { id threadId direction source status body providerMessageId sentAt createdAt }
    thread { id canonicalKey phone leadId status unreadCount }
  }
}
"""


async def ingest(client: GraphQLClient, **fields: Any) -> dict[str, Any]:
    """Ingest one message (inbound from a customer unless told otherwise)."""
    message = {"direction": "INBOUND", "source": "CUSTOMER", **fields}
    data = await client.execute(INGEST, {"input": message})
    return data["ingestMessage"]


PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """On CI every test must run: a test that skips (a missing tool, an unreachable service)
    fails there instead of passing silently. Laptops keep the skip and its message."""
    report = yield
    if os.environ.get("CI") == "true" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped on CI, where every test must run: {report.longrepr}"
    return report
