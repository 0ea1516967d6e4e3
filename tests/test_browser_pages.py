"""The pages a browser opens, over HTTP (issue 17): GraphiQL and the inbox load nothing from
another origin, every file they name is served with its type and cache policy, and the
development token is offered only by a server that signs with a generated development secret.
The same pages in a real browser: tests/test_inbox_browser.py.
"""

import re
from collections.abc import AsyncIterator

import httpx
import jwt
import pytest
from starlette.applications import Starlette

from gql import graphiql
from gql.app import create_app
from gql.browser import INBOX_DIR, VENDOR_DIR
from gql.graphiql import vendored_assets
from gql.settings import Settings
from tests.conftest import AUTH_SECRET

CONTENT_TYPES = {".js": "javascript", ".css": "text/css", ".html": "text/html"}


def referenced_files(html: str) -> list[str]:
    """Every src= and href= of a page that is not a data: URL or a fragment."""
    return [
        url
        for url in re.findall(r'(?:src|href)\s*=\s*"([^"]+)"', html)
        if not url.startswith(("data:", "#"))
    ]


async def assert_served(http: httpx.AsyncClient, url: str, cache_control: str) -> None:
    response = await http.get(url)
    assert response.status_code == 200, url
    suffix = "." + url.rsplit(".", 1)[-1]
    assert CONTENT_TYPES[suffix] in response.headers["content-type"], url
    assert response.headers["cache-control"] == cache_control, url


async def test_graphiql_loads_every_file_from_this_server(http: httpx.AsyncClient) -> None:
    page = await http.get("/graphql", headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert "graphiql" in page.text.lower()
    files = referenced_files(page.text)
    assert len(files) == 7, files  # React, ReactDOM, js-cookie, GraphiQL and explorer, CSS
    assert files == vendored_assets(page.text)
    assert not re.search(r'(?:src|href)\s*=\s*"(?:https?:)?//', page.text)
    for url in files:
        await assert_served(http, url, "public, max-age=31536000, immutable")


async def test_the_servers_address_serves_the_inbox_page(http: httpx.AsyncClient) -> None:
    page = await http.get("/", follow_redirects=False)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "<title>Inbox</title>" in page.text
    # Its own files only: a CSP that refuses any other origin, and no inline script.
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert not re.search(r"<script>", page.text)
    files = referenced_files(page.text)
    assert "/static/vendor/graphql-ws@6.4.2/umd/graphql-ws.min.js" in files
    assert not [url for url in files if not url.startswith("/")]
    for url in files:
        cache = "public, max-age=31536000, immutable" if "/vendor/" in url else "no-cache"
        await assert_served(http, url, cache)
    # The module inbox.js imports.
    await assert_served(http, "/static/inbox/api.js", "no-cache")


def test_every_vendored_package_carries_its_licence_and_manifest_line() -> None:
    manifest = (VENDOR_DIR / "MANIFEST.md").read_text()
    packages = {path.parent for path in VENDOR_DIR.rglob("*.js")}
    roots = {next(p for p in [d, *d.parents] if "@" in p.name.lstrip("@")) for d in packages}
    assert len(roots) == 6, roots
    for root in roots:
        assert any(root.glob("LICENSE*")), f"{root} has no licence file"
    for path in VENDOR_DIR.rglob("*.js"):
        assert f"`{path.relative_to(VENDOR_DIR)}`" in manifest, path


def test_the_inbox_scripts_name_no_other_origin() -> None:
    for path in INBOX_DIR.iterdir():
        assert "https://" not in path.read_text(), path
        assert "http://" not in path.read_text(), path


async def test_a_server_with_auth_secret_offers_no_development_token(
    http: httpx.AsyncClient,
) -> None:
    response = await http.get("/inbox/development-token")
    assert response.status_code == 404
    assert "token" not in response.json()


# How a browser on this machine names the server (`make run` prints this address).
LOCAL_ORIGIN = "http://127.0.0.1:8000"


@pytest.fixture
async def development_app(database_url: str) -> AsyncIterator[Starlette]:
    """A server as `make run` starts it without AUTH_SECRET."""
    settings = Settings(database_url=database_url, auth_secret=AUTH_SECRET, development_secret=True)
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


async def test_a_development_server_offers_an_agent_token_to_this_machine_only(
    development_app: Starlette,
) -> None:
    local = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=development_app), base_url=LOCAL_ORIGIN
    )
    async with local:
        response = await local.get("/inbox/development-token")
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        token = response.json()["token"]
        claims = jwt.decode(token, AUTH_SECRET, algorithms=["HS256"])
        assert claims["business_id"] == 1
        assert claims["role"] == "agent"
        signed_in = await local.post(
            "/graphql",
            json={"query": "{ unreadCount }"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert signed_in.json() == {"data": {"unreadCount": 0}}
    remote = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=development_app, client=("192.0.2.7", 51000)),
        base_url=LOCAL_ORIGIN,
    )
    async with remote:
        assert (await remote.get("/inbox/development-token")).status_code == 404


@pytest.mark.parametrize(
    "headers",
    [
        # A page of another site that pointed its name at 127.0.0.1 (DNS rebinding).
        {"Host": "evil.example:8000"},
        {"Host": "inbox.example.com"},
        # Passed on by a proxy on this machine.
        {"X-Forwarded-For": "203.0.113.9"},
        {"Forwarded": "for=203.0.113.9"},
        {"X-Real-IP": "203.0.113.9"},
        # Fetched by another site's page.
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ],
)
async def test_the_development_token_is_refused_to_what_only_looks_local(
    development_app: Starlette, headers: dict[str, str]
) -> None:
    transport = httpx.ASGITransport(app=development_app)
    async with httpx.AsyncClient(transport=transport, base_url=LOCAL_ORIGIN) as local:
        response = await local.get("/inbox/development-token", headers=headers)
    assert response.status_code == 404
    assert "token" not in response.json()


@pytest.mark.parametrize("origin", ["http://localhost:8000", "http://[::1]:8000"])
async def test_the_development_token_is_given_by_every_name_of_this_machine(
    development_app: Starlette, origin: str
) -> None:
    transport = httpx.ASGITransport(app=development_app)
    async with httpx.AsyncClient(transport=transport, base_url=origin) as local:
        response = await local.get(
            "/inbox/development-token", headers={"Sec-Fetch-Site": "same-origin"}
        )
    assert response.status_code == 200


async def test_a_server_that_generated_its_secret_offers_a_token_it_accepts(
    database_url: str,
) -> None:
    application = create_app(Settings(database_url=database_url, auth_secret=None))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url=LOCAL_ORIGIN) as local:
            token = (await local.get("/inbox/development-token")).json()["token"]
            signed_in = await local.post(
                "/graphql",
                json={"query": "{ unreadCount }"},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert signed_in.json() == {"data": {"unreadCount": 0}}


def test_a_graphiql_file_not_vendored_stays_on_unpkg_and_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A strawberry upgrade that moves GraphiQL's pins degrades GraphiQL, not the server."""
    page = (
        '<script src="https://unpkg.com/react@18.2.0/umd/react.production.min.js"></script>'
        '<script src="https://unpkg.com/graphiql@9.9.9/graphiql.min.js"></script>'
    )
    monkeypatch.setattr(graphiql, "get_graphql_ide_html", lambda graphql_ide: page)
    html = graphiql.offline_graphiql_html()
    assert vendored_assets(html) == ["/static/vendor/react@18.2.0/umd/react.production.min.js"]
    assert '"https://unpkg.com/graphiql@9.9.9/graphiql.min.js"' in html
    assert "graphiql@9.9.9/graphiql.min.js" in caplog.text
    assert "fetch.sh" in caplog.text
