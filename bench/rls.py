"""What row-level security costs on the hot reads, measured side by side in one run.

    .venv/bin/python -m bench.rls --size small --repeat 300
    .venv/bin/python -m bench.rls --smoke            # tiny data, a few requests, no figures

Two applications serve the same database at the same time, in this process (requests go
through httpx's ASGI transport, so the figures are the server's own work, the client's
overhead being the same for both): one as configured for production (its connections act as
`wa_inbox_app`, so every statement is filtered by the tenant policies) and one whose
connections keep the migrating superuser's identity, which PostgreSQL exempts from row-level
security. Requests alternate between the two, so both see the same cache and machine state.

Measured: the unread badge (`{ unreadCount }`) and the thread list
(`threads(first: 50)` with unread counts and last messages). Reported: median and p99 in ms
for each, and the ratio RLS / no RLS. Results also go to bench-results/rls.json.

The database: BENCH_DATABASE_URL as given (an empty database; it is migrated and filled here),
else a scratch database on TEST_DATABASE_URL's server (dropped afterwards), else an embedded
PostgreSQL in a temporary directory.
"""

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.databases import asyncpg_dsn, database_server, scratch_database
from bench.dataset import SIZES, load
from db.migrations import upgrade_to_head
from domain.access import Role
from gql.app import create_app
from gql.auth import issue_token
from gql.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = PROJECT_ROOT / "bench-results" / "rls.json"
SECRET = "bench-secret-long-enough-for-hs256-signing"

UNREAD_BADGE = "{ unreadCount }"
THREAD_LIST = """
{ threads(first: 50) { edges { node {
    id phone status lastMessageAt unreadCount lastMessage { body sentAt }
} } } }
"""


@contextlib.asynccontextmanager
async def run_database() -> AsyncIterator[str]:
    """An empty database for this run, removed afterwards (unless BENCH_DATABASE_URL)."""
    given = os.environ.get("BENCH_DATABASE_URL")
    if given:
        yield given
        return
    with (
        tempfile.TemporaryDirectory(prefix="wa-inbox-bench-") as scratch,
        database_server(Path(scratch)) as (server, _),
    ):
        async with scratch_database(server, "wa_inbox_bench") as url:
            yield url


def _ms_summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {"median_ms": statistics.median(ordered) * 1000, "p99_ms": p99 * 1000}


async def _timed(client: httpx.AsyncClient, query: str) -> float:
    started = time.perf_counter()
    response = await client.post("/graphql", json={"query": query})
    elapsed = time.perf_counter() - started
    body = response.json()
    if response.status_code != 200 or "errors" in body:
        raise RuntimeError(f"benchmark request failed: {response.status_code} {body}")
    return elapsed


async def measure(size_name: str, repeat: int) -> dict[str, Any]:
    size = SIZES[size_name]
    async with run_database() as url:
        await asyncio.to_thread(upgrade_to_head, url)
        connection = await asyncpg.connect(asyncpg_dsn(url))
        try:
            loaded_at = time.perf_counter()
            dataset = await load(connection, size)
            load_s = time.perf_counter() - loaded_at
        finally:
            await connection.close()
        settings = Settings(database_url=url, auth_secret=SECRET, database_pool_size=4)
        token = issue_token(
            SECRET, user_id="bench", business_id=dataset.business_id, role=Role.AGENT
        )
        headers = {"Authorization": f"Bearer {token}"}
        apps = {
            "rls": create_app(settings),
            "no_rls": create_app(dataclasses.replace(settings, database_app_role=None)),
        }
        samples: dict[str, dict[str, list[float]]] = {
            name: {"unread_badge": [], "thread_list": []} for name in apps
        }
        async with contextlib.AsyncExitStack() as stack:
            clients = {}
            for name, app in apps.items():
                await stack.enter_async_context(app.router.lifespan_context(app))
                clients[name] = await stack.enter_async_context(
                    httpx.AsyncClient(
                        transport=httpx.ASGITransport(app=app),
                        base_url="http://bench",
                        headers=headers,
                    )
                )
            for _ in range(max(5, repeat // 10)):  # warm-up: plans, pools, caches
                for client in clients.values():
                    await _timed(client, UNREAD_BADGE)
                    await _timed(client, THREAD_LIST)
            for _ in range(repeat):
                for name, client in clients.items():
                    samples[name]["unread_badge"].append(await _timed(client, UNREAD_BADGE))
                    samples[name]["thread_list"].append(await _timed(client, THREAD_LIST))
    results: dict[str, Any] = {
        "size": size_name,
        "messages": size.messages,
        "threads": size.threads,
        "repeat": repeat,
        "load_seconds": round(load_s, 2),
        "measurements": {},
    }
    for query in ("unread_badge", "thread_list"):
        rls = _ms_summary(samples["rls"][query])
        plain = _ms_summary(samples["no_rls"][query])
        results["measurements"][query] = {
            "rls": rls,
            "no_rls": plain,
            "median_ratio": rls["median_ms"] / plain["median_ms"],
        }
    return results


def print_table(results: dict[str, Any]) -> None:
    print(
        f"\nRow-level security cost, size {results['size']} ({results['threads']:,} threads, "
        f"{results['messages']:,} messages + noise), {results['repeat']} requests each"
    )
    print(f"{'query':<14}{'RLS median/p99 ms':>22}{'no RLS median/p99 ms':>24}{'ratio':>8}")
    for query, figures in results["measurements"].items():
        rls, plain = figures["rls"], figures["no_rls"]
        print(
            f"{query:<14}{rls['median_ms']:>12.2f} / {rls['p99_ms']:<7.2f}"
            f"{plain['median_ms']:>14.2f} / {plain['p99_ms']:<7.2f}"
            f"{figures['median_ratio']:>8.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rls", description=__doc__)
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--repeat", type=int, default=300)
    parser.add_argument("--smoke", action="store_true", help="tiny data, 5 requests")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    size, repeat = ("tiny", 5) if args.smoke else (args.size, args.repeat)
    results = asyncio.run(measure(size, repeat))
    print_table(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
