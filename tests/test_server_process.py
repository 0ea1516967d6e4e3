"""`make run` as a newcomer meets it: `python -m gql serve` migrates and serves, on a given
DATABASE_URL or on an embedded PostgreSQL, and prints a development token when no AUTH_SECRET
is set."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.conftest import PROJECT_ROOT

START_TIMEOUT_S = 90


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def running_server(env_overrides: dict[str, str], log_path: Path) -> Iterator[str]:
    """Start `python -m gql serve` and yield its base URL once /healthz answers."""
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "AUTH_SECRET", "WA_INBOX_DATA_DIR"}
    }
    env.update({"HOST": "127.0.0.1", "PORT": str(port), **env_overrides})
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gql", "serve"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base_url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                assert process.poll() is None, log_path.read_text()
                try:
                    if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.2)
            yield base_url
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def development_token(log_path: Path) -> str:
    match = re.search(r"Bearer (\S+)", log_path.read_text())
    assert match, log_path.read_text()
    return match.group(1)


def ingest_read_and_mark(base_url: str, token: str) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    ingest = httpx.post(
        f"{base_url}/graphql",
        headers=headers,
        json={
            "query": 'mutation { ingestMessage(input: {phone: "+14155552671", direction: INBOUND,'
            ' source: CUSTOMER, body: "hello"}) { thread { id unreadCount } } }'
        },
    )
    assert ingest.status_code == 200, ingest.text
    thread = ingest.json()["data"]["ingestMessage"]["thread"]
    assert thread["unreadCount"] == 1
    listed = httpx.get(
        f"{base_url}/graphql",
        headers=headers,
        params={"query": "{ unreadCount threads { edges { node { id lastMessage { body } } } } }"},
    )
    assert listed.json()["data"]["unreadCount"] == 1
    assert listed.json()["data"]["threads"]["edges"][0]["node"]["lastMessage"]["body"] == "hello"
    marked = httpx.post(
        f"{base_url}/graphql",
        headers=headers,
        json={"query": f'mutation {{ markRead(threadId: "{thread["id"]}") {{ totalUnread }} }}'},
    )
    assert marked.json()["data"]["markRead"]["totalUnread"] == 0


def test_serve_migrates_a_given_database_and_prints_a_development_token(
    database_url: str, tmp_path: Path
) -> None:
    # The plain postgresql:// form operators paste from their provider is accepted too.
    plain_url = database_url.replace("postgresql+asyncpg://", "postgresql://")
    log_path = tmp_path / "server.log"
    with running_server({"DATABASE_URL": plain_url}, log_path) as base_url:
        assert httpx.get(f"{base_url}/readyz").json()["status"] == "ok"
        assert "development secret" in log_path.read_text()
        ingest_read_and_mark(base_url, development_token(log_path))
        ide = httpx.get(f"{base_url}/graphql", headers={"Accept": "text/html"})
        assert ide.status_code == 200
        assert "graphiql" in ide.text.lower()


def test_serve_without_database_url_runs_on_an_embedded_postgresql(tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    data_dir = tmp_path / "pgdata"
    overrides = {"WA_INBOX_DATA_DIR": str(data_dir), "AUTH_SECRET": "x" * 40}
    with running_server(overrides, log_path) as base_url:
        assert httpx.get(f"{base_url}/readyz").json()["status"] == "ok"
        token = subprocess.run(
            [sys.executable, "-m", "gql", "token", "--business-id", "7", "--role", "admin"],
            cwd=PROJECT_ROOT,
            env={**os.environ, "AUTH_SECRET": "x" * 40},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        ingest_read_and_mark(base_url, token)
    assert (data_dir / "PG_VERSION").exists()
