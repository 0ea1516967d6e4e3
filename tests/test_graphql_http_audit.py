"""The GraphQL-over-HTTP spec's own audit: graphql-http's `serverAudits` (the npm package,
pinned in tests/graphql_http_audit/package-lock.json) run by Node.js against a real server.

Every audit must pass: each MUST, each SHOULD and each MAY. `make test` installs the package
(`npm ci`) when npm is there; without Node.js or the installed package the test skips and says
how to get them (on CI, where a skip fails the run, both are there).
"""

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette

from tests.conftest import PROJECT_ROOT, token_for
from tests.live import serving

AUDIT_DIR = PROJECT_ROOT / "tests" / "graphql_http_audit"
AUDIT_SCRIPT = AUDIT_DIR / "audit.mjs"
INSTALLED_PACKAGE = AUDIT_DIR / "node_modules" / "graphql-http" / "package.json"
MINIMUM_NODE_MAJOR = 20
# serverAudits of graphql-http 1.23.1: a new version that adds or drops audits changes these.
EXPECTED_COUNTS = {"MUST": 13, "SHOULD": 23, "MAY": 25}
AUDIT_TIMEOUT_S = 120


def node_or_skip() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip(
            f"the GraphQL-over-HTTP audit needs Node.js {MINIMUM_NODE_MAJOR}+ (`node` is not on "
            "PATH): install it, then `make test` installs the audit's npm packages"
        )
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    if int(version.removeprefix("v").split(".")[0] or 0) < MINIMUM_NODE_MAJOR:
        pytest.skip(
            f"the GraphQL-over-HTTP audit needs Node.js {MINIMUM_NODE_MAJOR}+, and `node` is "
            f"{version or 'unknown'}: install a newer one"
        )
    if not INSTALLED_PACKAGE.exists():
        pytest.skip(
            f"the GraphQL-over-HTTP audit's npm packages are not installed in {AUDIT_DIR}: "
            "`make test` installs them (or `npm ci --prefix tests/graphql_http_audit`)"
        )
    return node


async def run_audit(node: str, url: str) -> list[dict[str, Any]]:
    """One result per audit, as tests/graphql_http_audit/audit.mjs prints them."""
    process = await asyncio.create_subprocess_exec(
        node,
        str(AUDIT_SCRIPT),
        url,
        cwd=AUDIT_DIR,
        env={"PATH": str(Path(node).parent), "GRAPHQL_HTTP_AUDIT_TOKEN": token_for()},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    # The server answering the audit runs on this event loop: wait without blocking it.
    stdout, stderr = await asyncio.wait_for(process.communicate(), AUDIT_TIMEOUT_S)
    assert process.returncode == 0, stderr.decode()
    return [json.loads(line) for line in stdout.decode().splitlines() if line.strip()]


def level(result: dict[str, Any]) -> str:
    return str(result["name"]).split(" ", 1)[0]


async def test_every_graphql_over_http_audit_passes_must_should_and_may(app: Starlette) -> None:
    node = node_or_skip()
    async with serving(app) as websocket_url:
        results = await run_audit(node, "http" + websocket_url.removeprefix("ws"))

    counts = {name: sum(level(r) == name for r in results) for name in EXPECTED_COUNTS}
    assert counts == EXPECTED_COUNTS, counts
    failed = [result for result in results if result["status"] != "ok"]
    assert not failed, "audits failed:\n" + "\n".join(
        f"{r['id']} {r['name']}: {r['reason']} (answered {json.dumps(r['response'])})"
        for r in failed
    )
