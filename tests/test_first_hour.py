"""The first hour with wa-inbox (issue 12), in process: errors that say what went wrong.

A refused token says why (expired, wrong signature, not a JWT, a missing claim) over HTTP and in
the websocket close reason, and the server logs the reason, never the token. A weak AUTH_SECRET
is refused at start-up. An id out of range says so. `/` is the inbox page, `/graphql` GraphiQL.
The serving code imports nothing that only the development extras install.
"""

import ast
import logging
import re
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from starlette.applications import Starlette
from websockets.exceptions import ConnectionClosed

from gql.log_redaction import RedactSecrets
from gql.settings import Settings, SettingsError
from tests.conftest import AUTH_SECRET, PROJECT_ROOT, GraphQLClient, token_for
from tests.live import LEGACY_WS, TRANSPORT_WS, GraphQLSocket, serving

NOW = int(time.time())
VALID_CLAIMS = {"sub": "agent-1", "business_id": 1, "exp": NOW + 3600}


def signed(
    claims: dict[str, Any], secret: str | None = AUTH_SECRET, algorithm: str = "HS256"
) -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


# (reason, token, words the message must carry)
REFUSED_TOKENS = [
    ("expired", signed({**VALID_CLAIMS, "exp": NOW - 3600}), "expired"),
    (
        "wrong_signature",
        signed(VALID_CLAIMS, "another-secret-of-enough-length-1234"),
        "AUTH_SECRET",
    ),
    ("malformed_token", "not-a-jwt", "not a JWT"),
    ("missing_claim", signed({"sub": "agent-1", "exp": NOW + 3600}), "'business_id'"),
    # `alg: none`, the classic forgery.
    ("wrong_algorithm", signed(VALID_CLAIMS, None, "none"), "HS256"),
    ("not_yet_valid", signed({**VALID_CLAIMS, "nbf": NOW + 3600}), "not valid yet"),
    ("invalid_claim", signed({**VALID_CLAIMS, "business_id": "one"}), "business_id"),
]


@pytest.mark.parametrize(
    ("reason", "token", "words"), REFUSED_TOKENS, ids=[case[0] for case in REFUSED_TOKENS]
)
async def test_a_refused_token_says_why_over_http_and_the_log_says_it_without_the_token(
    http: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
    reason: str,
    token: str,
    words: str,
) -> None:
    caplog.set_level(logging.INFO, logger="wa_inbox")
    response = await http.post(
        "/graphql", json={"query": "{ unreadCount }"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 401
    [error] = response.json()["errors"]
    assert error["extensions"] == {"code": "UNAUTHENTICATED", "reason": reason}
    assert words in error["message"]
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    logged = [r.getMessage() for r in caplog.records if "[WA-AUTH]" in r.getMessage()]
    assert len(logged) == 1, logged
    assert reason in logged[0]
    assert token not in caplog.text


async def test_every_refusal_reason_is_distinct(http: httpx.AsyncClient) -> None:
    messages = set()
    for _, token, _ in REFUSED_TOKENS:
        response = await http.post(
            "/graphql",
            json={"query": "{ unreadCount }"},
            headers={"Authorization": f"Bearer {token}"},
        )
        messages.add(response.json()["errors"][0]["message"])
    assert len(messages) == len(REFUSED_TOKENS)


async def test_a_missing_token_says_so_without_claiming_a_bad_one(http: httpx.AsyncClient) -> None:
    response = await http.post("/graphql", json={"query": "{ unreadCount }"})
    assert response.status_code == 401
    assert response.json()["errors"][0]["extensions"]["reason"] == "missing_token"
    assert "error=" not in response.headers["www-authenticate"]


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
@pytest.mark.parametrize(
    ("reason", "token", "words"), REFUSED_TOKENS[:4], ids=[case[0] for case in REFUSED_TOKENS[:4]]
)
async def test_a_refused_websocket_is_closed_4403_with_the_reason(
    app: Starlette, protocol: str, reason: str, token: str, words: str
) -> None:
    async with serving(app) as url, GraphQLSocket.open(url, protocol, business_id=None) as socket:
        await socket.send(
            {"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"}}
        )
        with pytest.raises(ConnectionClosed) as closed:
            await socket.receive()
    received = closed.value.rcvd
    assert received is not None
    assert received.code == 4403
    assert received.reason.startswith(f"{reason}: ")
    assert words in received.reason
    assert len(received.reason.encode()) <= 123


async def test_a_valid_websocket_token_is_still_acknowledged(app: Starlette) -> None:
    async with serving(app) as url, GraphQLSocket.open(url, business_id=None) as socket:
        ack = await socket.init({"Authorization": f"Bearer {token_for(1)}"})
    assert ack["type"] == "connection_ack"


@pytest.mark.parametrize("secret", ["abc", "x" * 31, "é" * 15])
def test_an_auth_secret_shorter_than_32_bytes_is_refused(secret: str) -> None:
    with pytest.raises(SettingsError, match=r"AUTH_SECRET is \d+ bytes: use at least 32"):
        Settings.from_environment({"AUTH_SECRET": secret})


def test_an_auth_secret_of_32_bytes_is_accepted() -> None:
    assert Settings.from_environment({"AUTH_SECRET": "x" * 32}).auth_secret == "x" * 32


@pytest.mark.parametrize("value", ["99999999999999999999999", "9223372036854775808"])
async def test_an_id_out_of_range_says_it_is_out_of_range(
    client: GraphQLClient, value: str
) -> None:
    errors = await client.errors("query($id: ID) { thread(id: $id) { id } }", {"id": value})
    assert errors[0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert "out of range" in errors[0]["message"]
    assert "9223372036854775807" in errors[0]["message"]


async def test_an_id_that_is_not_a_number_still_says_so(client: GraphQLClient) -> None:
    errors = await client.errors('{ thread(id: "12a") { id } }')
    assert "must be a numeric id" in errors[0]["message"]


async def test_the_servers_address_serves_the_inbox_and_graphql_serves_graphiql(
    http: httpx.AsyncClient,
) -> None:
    inbox = await http.get("/", follow_redirects=False)
    assert inbox.status_code == 200
    assert "<title>Inbox</title>" in inbox.text
    ide = await http.get("/graphql", headers={"Accept": "text/html"})
    assert "graphiql" in ide.text.lower()


def access_log_record(target: str, status: int) -> logging.LogRecord:
    """A request line as uvicorn's access log records it."""
    return logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1", "GET", target, "1.1", status),
        None,
    )


def test_the_graphiql_link_s_headers_never_reach_the_access_log() -> None:
    record = access_log_record(
        "/graphql?headers=%7B%22Authorization%22%3A%22Bearer%20abc%22%7D", 200
    )
    RedactSecrets().filter(record)
    assert "abc" not in record.getMessage()
    assert "headers=[redacted]" in record.getMessage()


def test_a_graphql_get_s_variables_never_reach_the_access_log() -> None:
    """A mutation sent by GET is refused, but uvicorn logs its URL first: its variables may
    hold a channel's access token (issue 16)."""
    record = access_log_record(
        "/graphql?query=mutation%20%7Bx%7D&variables=%7B%22accessToken%22%3A%22EAAGsecret%22%7D",
        405,
    )
    RedactSecrets().filter(record)
    assert "EAAGsecret" not in record.getMessage()
    assert "variables=[redacted]" in record.getMessage()
    assert "query=mutation" in record.getMessage()


# --- what `make run` installs ------------------------------------------------------------------


def _top_level_imports(root: Path) -> set[str]:
    found = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


def _requirement_names(requirements: list[str] | None, extras: set[str]) -> set[str]:
    """Names of the requirements that apply to this interpreter with `extras` asked for."""
    names = set()
    for line in requirements or []:
        spec, _, marker = line.partition(";")
        wanted = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
        if wanted and wanted.group(1) not in extras:
            continue
        if "python_version" in marker or "sys_platform" in marker or "platform_" in marker:
            # Environment markers other than extras: keep them, the closure may be larger.
            pass
        names.add(re.split(r"[\s<>=!~\[(;]", spec.strip(), maxsplit=1)[0].lower())
    return names


def _serving_distributions() -> set[str]:
    """The distributions `pip install .` brings: the project's dependencies, transitively."""
    import tomllib

    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    pending = []
    for line in project["dependencies"]:
        name = re.split(r"[\s<>=!~\[;]", line.strip(), maxsplit=1)[0].lower()
        extras = set(re.findall(r"\[([^\]]+)\]", line)[0].split(",")) if "[" in line else set()
        pending.append((name, {extra.strip() for extra in extras}))
    closure: set[str] = set()
    while pending:
        name, extras = pending.pop()
        normalized = name.replace("_", "-")
        if normalized in closure:
            continue
        closure.add(normalized)
        try:
            requirements = metadata.requires(name)
        except metadata.PackageNotFoundError:
            continue
        pending.extend((dep, set()) for dep in _requirement_names(requirements, extras))
    return closure


def test_make_run_installs_the_project_without_its_development_extras() -> None:
    import subprocess

    def pip_lines(target: str) -> list[str]:
        planned = subprocess.run(
            ["make", "-n", "-B", target],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return [
            line
            for line in planned.splitlines()
            if "pip install" in line and "--upgrade" not in line
        ]

    assert pip_lines("run") == [".venv/bin/python -m pip install --quiet ."]
    assert '.venv/bin/python -m pip install --quiet ".[dev]"' in pip_lines("test")
    assert '.venv/bin/python -m pip install --quiet ".[dev]"' in pip_lines("bench")


def test_the_serving_code_imports_only_what_the_run_install_brings() -> None:
    serving = _serving_distributions()
    first_party = {"gql", "db", "domain", "alembic"} - {"alembic"}
    imported = set()
    for folder in ("gql", "db", "domain", "alembic"):
        imported |= _top_level_imports(PROJECT_ROOT / folder)
    third_party = imported - set(sys.stdlib_module_names) - first_party - {"__future__"}
    distributions = metadata.packages_distributions()
    missing = {}
    for module in sorted(third_party):
        owners = {owner.lower().replace("_", "-") for owner in distributions.get(module, [module])}
        if not owners & serving:
            missing[module] = sorted(owners)
    assert missing == {}, f"imported by the server, installed only by the dev extras: {missing}"
    # The check has teeth: the test suite's own tools are not in the serving install.
    assert "pytest" not in serving
    assert "hypothesis" not in serving
