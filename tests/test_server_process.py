"""`make run` as a newcomer meets it: `python -m gql serve` migrates and serves, on a given
DATABASE_URL or on an embedded PostgreSQL (its output in a log file of its own). Without
AUTH_SECRET it signs with a development secret kept in the data directory, so tokens survive a
restart and `make token` signs alike; the development token goes to the terminal, never into
stdout or stderr. A taken port and a weak secret are said plainly, and `make reset` starts over.
"""

import contextlib
import json
import os
import pty
import re
import select
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.conftest import PROJECT_ROOT

START_TIMEOUT_S = 90
# `make run` as it starts by default, and with worker processes (gql/workers.py): the parent
# migrates and shows the token once, every worker signs and serves alike.
WORKERS = pytest.mark.parametrize("workers", ["1", "2"], ids=["one-process", "two-workers"])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until_healthy(base_url: str, running: Callable[[], bool], log_path: Path) -> None:
    """Until /healthz answers; the server's output in the failure when it stops or is late."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        assert running(), log_path.read_text()
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.2)


@contextmanager
def server_process(
    env_overrides: dict[str, str], log_path: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start `python -m gql serve`; yield its base URL once /healthz answers, and its process.

    The server is stopped with SIGINT, as Ctrl-C stops `make run`; one that does not stop is
    killed with its whole process group, worker processes included.
    """
    port = free_port()
    env = server_environment({"HOST": "127.0.0.1", "PORT": str(port), **env_overrides})
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gql", "serve"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            # No controlling terminal, as under a service manager or `make run 2>server.log`
            # in CI (and never the terminal of whoever runs the tests).
            start_new_session=True,
        )
        base_url = f"http://127.0.0.1:{port}"
        try:
            wait_until_healthy(base_url, lambda: process.poll() is None, log_path)
            yield base_url, process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@contextmanager
def running_server(env_overrides: dict[str, str], log_path: Path) -> Iterator[str]:
    """Start `python -m gql serve` and yield its base URL once /healthz answers."""
    with server_process(env_overrides, log_path) as (base_url, _):
        yield base_url


def server_environment(overrides: dict[str, str]) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "AUTH_SECRET", "WA_INBOX_DATA_DIR"}
    }
    return {**env, **overrides}


def make_token(overrides: dict[str, str], *arguments: str) -> str:
    """`python -m gql token` as `make token` runs it, with the server's environment."""
    printed = subprocess.run(
        [sys.executable, "-m", "gql", "token", "--business-id", "1", "--role", "admin", *arguments],
        cwd=PROJECT_ROOT,
        env=server_environment(overrides),
        capture_output=True,
        text=True,
        check=True,
    )
    return printed.stdout.strip()


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


@WORKERS
def test_development_tokens_survive_a_restart_and_never_reach_stdout_or_stderr(
    database_url: str, tmp_path: Path, workers: str
) -> None:
    # The plain postgresql:// form operators paste from their provider is accepted too.
    plain_url = database_url.replace("postgresql+asyncpg://", "postgresql://")
    data_dir = tmp_path / "data"
    overrides = {
        "DATABASE_URL": plain_url,
        "WA_INBOX_DATA_DIR": str(data_dir),
        "WORKERS": workers,
    }
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    with running_server(overrides, first_log) as base_url:
        assert httpx.get(f"{base_url}/readyz").json()["status"] == "ok"
        token = make_token(overrides)
        ingest_read_and_mark(base_url, token)
        ide = httpx.get(f"{base_url}/graphql", headers={"Accept": "text/html"})
        assert ide.status_code == 200
        assert "graphiql" in ide.text.lower()
    secret_file = data_dir / "development-secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    with running_server(overrides, second_log) as base_url:
        # The token `make token` printed before the restart still works after it.
        ingest_read_and_mark(base_url, token)
    for log in (first_log, second_log):
        text = log.read_text()
        assert "Bearer" not in text
        assert secret_file.read_text().strip() not in text
        assert text.count("no terminal to show the development token on") == 1
        assert "make token" in text


def test_with_an_auth_secret_no_development_secret_is_kept(
    database_url: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    overrides = {
        "DATABASE_URL": database_url,
        "WA_INBOX_DATA_DIR": str(data_dir),
        "AUTH_SECRET": "y" * 40,
    }
    with running_server(overrides, tmp_path / "server.log") as base_url:
        ingest_read_and_mark(base_url, make_token(overrides))
    assert not (data_dir / "development-secret").exists()
    assert "development" not in (tmp_path / "server.log").read_text()


def read_until(descriptor: int, pattern: str, timeout_s: float, *, expect: bool = True) -> str:
    """What the terminal shows until `pattern` appears (or the time is up, which fails the
    test unless `expect` is False)."""
    seen = b""
    deadline = time.monotonic() + timeout_s
    while re.search(pattern, seen.decode(errors="replace")) is None:
        left = deadline - time.monotonic()
        if left <= 0 and not expect:
            break
        assert left > 0, seen.decode(errors="replace")
        ready, _, _ = select.select([descriptor], [], [], left)
        if ready:
            try:
                chunk = os.read(descriptor, 65536)
            except OSError:  # the terminal closed: the child exited
                break
            if not chunk:
                break
            seen += chunk
    return seen.decode(errors="replace")


@WORKERS
def test_on_a_terminal_the_token_and_a_graphiql_link_go_to_the_terminal_only(
    database_url: str, tmp_path: Path, workers: str
) -> None:
    port = free_port()
    log_path = tmp_path / "server.log"
    env = server_environment(
        {
            "DATABASE_URL": database_url,
            "WA_INBOX_DATA_DIR": str(tmp_path / "data"),
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "WORKERS": workers,
        }
    )
    child, terminal = pty.fork()
    if child == 0:  # the server: its controlling terminal is the pty, its output a file
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.chdir(PROJECT_ROOT)
        os.execve(sys.executable, [sys.executable, "-m", "gql", "serve"], env)
    try:
        shown = read_until(terminal, r"GraphiQL with it in its headers:\s+(\S+)", START_TIMEOUT_S)
        token = re.search(r"Bearer (\S+)", shown)
        link = re.search(r"GraphiQL with it in its headers:\s+(\S+)", shown)
        assert token, shown
        assert link, shown
        headers = json.loads(parse_qs(urlsplit(link.group(1)).query)["headers"][0])
        assert headers == {"Authorization": f"Bearer {token.group(1)}"}
        base_url = f"http://127.0.0.1:{port}"
        wait_until_healthy(base_url, lambda: os.waitpid(child, os.WNOHANG) == (0, 0), log_path)
        ingest_read_and_mark(base_url, token.group(1))
        # The inbox page's sign-in form is offered an agent token signed alike (gql/browser.py).
        offered = httpx.get(f"{base_url}/inbox/development-token").json()["token"]
        counted = httpx.get(
            f"{base_url}/graphql",
            headers={"Authorization": f"Bearer {offered}"},
            params={"query": "{ unreadCount }"},
        )
        assert counted.json() == {"data": {"unreadCount": 0}}
        assert "Bearer" not in log_path.read_text()
        assert offered not in log_path.read_text()
        # Shown once, by the process that was started, not again by each worker.
        shown += read_until(terminal, r"(?!)", timeout_s=1, expect=False)
        assert shown.count("Bearer ") == 1, shown
    finally:
        os.kill(child, signal.SIGINT)
        deadline = time.monotonic() + 20
        while os.waitpid(child, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(child, signal.SIGKILL)
                os.waitpid(child, 0)
                break
            time.sleep(0.1)
        os.close(terminal)


def serve_and_fail(overrides: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gql", "serve"],
        cwd=PROJECT_ROOT,
        env=server_environment(overrides),
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,
    )


def test_a_taken_port_is_said_plainly_before_anything_starts(
    database_url: str, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        failed = serve_and_fail(
            {
                "DATABASE_URL": database_url,
                "AUTH_SECRET": "y" * 40,
                "HOST": "127.0.0.1",
                "PORT": str(port),
                "WA_INBOX_DATA_DIR": str(tmp_path / "data"),
            }
        )
    assert failed.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in failed.stderr
    assert "PORT=" in failed.stderr
    assert "serving GraphQL" not in failed.stderr + failed.stdout
    assert "Traceback" not in failed.stderr


def test_a_weak_auth_secret_stops_the_server_with_a_clear_error(database_url: str) -> None:
    failed = serve_and_fail({"DATABASE_URL": database_url, "AUTH_SECRET": "abc"})
    assert failed.returncode == 2
    assert "AUTH_SECRET is 3 bytes: use at least 32" in failed.stderr
    assert "Traceback" not in failed.stderr


def make(*arguments: str, answer: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", *arguments],
        cwd=PROJECT_ROOT,
        input=answer,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_make_reset_asks_before_deleting_the_embedded_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "pgdata"
    data_dir.mkdir()
    (data_dir / "development-secret").write_text("kept\n")

    declined = make("reset", f"DATA_DIR={data_dir}", answer="n\n")
    assert declined.returncode != 0
    assert "Delete" in declined.stdout
    assert data_dir.exists()

    confirmed = make("reset", f"DATA_DIR={data_dir}", answer="yes\n")
    assert confirmed.returncode == 0, confirmed.stdout + confirmed.stderr
    assert not data_dir.exists()

    data_dir.mkdir()
    forced = make("reset", f"DATA_DIR={data_dir}", "FORCE=1")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert not data_dir.exists()
    assert "nothing to reset" in make("reset", f"DATA_DIR={data_dir}", "FORCE=1").stdout


@WORKERS
def test_serve_without_database_url_runs_on_an_embedded_postgresql(
    tmp_path: Path, workers: str
) -> None:
    log_path = tmp_path / "server.log"
    data_dir = tmp_path / "pgdata"
    overrides = {"WA_INBOX_DATA_DIR": str(data_dir), "AUTH_SECRET": "x" * 40, "WORKERS": workers}
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
    assert (data_dir / "postgres" / "PG_VERSION").exists()
    # The embedded server's own output (pg_ctl, initdb) went to its log, not the terminal.
    shown = log_path.read_text()
    embedded_log = data_dir / "embedded-postgres.log"
    assert f"its log: {embedded_log}" in shown
    assert "pg_ctl" in embedded_log.read_text()
    assert "pg_ctl" not in shown
    assert "XDG_RUNTIME_DIR" not in shown
