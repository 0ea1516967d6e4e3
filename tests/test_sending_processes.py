"""The send path across real server processes (`python -m gql serve`) on one database: a
server killed while the Cloud API holds its request leaves the message visibly failed, never
posted twice, once a server runs again; two servers send every message exactly once."""

import asyncio
import os
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import (
    AUTH_SECRET,
    CHANNEL_SECRET_KEY,
    WHATSAPP_APP_SECRET,
    GraphQLClient,
)
from tests.fake_cloud_api import FakeCloudApi, hold, slow
from tests.test_sending import ACCESS_TOKEN, MESSAGE, SEND, connect_with_token, customer_wrote
from tests.test_server_process import server_process

LEASE_S = 4


@pytest.fixture
def cloud_api() -> Iterator[FakeCloudApi]:
    with FakeCloudApi() as fake:
        yield fake


def sender_environment(
    database_url: str, tmp_path: Path, cloud_api: FakeCloudApi
) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "AUTH_SECRET": AUTH_SECRET,
        "WHATSAPP_APP_SECRET": WHATSAPP_APP_SECRET,
        "CHANNEL_SECRET_KEY": CHANNEL_SECRET_KEY,
        "WA_INBOX_DATA_DIR": str(tmp_path / "data"),
        "DATABASE_POOL_SIZE": "5",
        "WHATSAPP_API_BASE_URL": cloud_api.base_url,
        "SEND_REQUEST_TIMEOUT_SECONDS": "2",
        "SEND_LEASE_SECONDS": str(LEASE_S),
        "SEND_POLL_INTERVAL_MS": "100",
        "SEND_RETRY_BASE_MS": "50",
    }


async def status_of(client: GraphQLClient, message_id: str) -> dict[str, Any]:
    found: dict[str, Any] = (await client.execute(MESSAGE, {"id": message_id}))["message"]
    return found


async def until_status(
    client: GraphQLClient, message_id: str, wanted: str, wait_s: float
) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        found = await status_of(client, message_id)
        if found["status"] == wanted:
            return found
        assert asyncio.get_running_loop().time() < deadline, found
        await asyncio.sleep(0.1)


async def test_a_server_killed_mid_request_leaves_the_message_failed_and_never_resent(
    database_url: str, tmp_path: Path, cloud_api: FakeCloudApi
) -> None:
    cloud_api.answer_next(hold())
    env = sender_environment(database_url, tmp_path, cloud_api)
    with server_process(env, tmp_path / "first.log") as (base_url, process):
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
            client = GraphQLClient(http)
            await connect_with_token(client)
            thread_id = (await customer_wrote(client))["thread"]["id"]
            sent = (await client.execute(SEND, {"thread": thread_id, "body": "in flight"}))[
                "sendMessage"
            ]
            await asyncio.to_thread(cloud_api.wait_for_requests, 1, 10.0)
            # The request is out, Meta's answer is not back: the process dies (SIGKILL).
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    with server_process(env, tmp_path / "second.log") as (base_url, _):
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
            client = GraphQLClient(http)
            failed = await until_status(client, sent["id"], "FAILED", wait_s=LEASE_S + 10)
            assert failed["deliveryError"]["outcomeUnknown"] is True
            assert failed["providerMessageId"] is None
            # Whatever WhatsApp finally does with the held request, nothing is posted again.
            cloud_api.release_held()
            await asyncio.sleep(1.0)
            assert (await status_of(client, sent["id"]))["status"] == "FAILED"
    assert len(cloud_api.requests) == 1
    assert ACCESS_TOKEN not in (tmp_path / "first.log").read_text()
    assert ACCESS_TOKEN not in (tmp_path / "second.log").read_text()


async def test_two_server_processes_on_one_database_send_every_message_exactly_once(
    database_url: str, tmp_path: Path, cloud_api: FakeCloudApi
) -> None:
    # Answers take a while, so both senders hold claims at the same time.
    cloud_api.default = slow(0.05)
    env = sender_environment(database_url, tmp_path, cloud_api)
    with (
        server_process(env, tmp_path / "a.log") as (url_a, _),
        server_process(env, tmp_path / "b.log") as (url_b, _),
    ):
        async with (
            httpx.AsyncClient(base_url=url_a, timeout=30) as http_a,
            httpx.AsyncClient(base_url=url_b, timeout=30) as http_b,
        ):
            a, b = GraphQLClient(http_a), GraphQLClient(http_b)
            await connect_with_token(a)
            threads = [
                (await customer_wrote(a, phone=f"+1415555{index:04d}"))["thread"]["id"]
                for index in range(6)
            ]

            async def reply(client: GraphQLClient, thread_id: str, number: int) -> str:
                data = await client.execute(SEND, {"thread": thread_id, "body": f"reply {number}"})
                message_id: str = data["sendMessage"]["id"]
                return message_id

            sent = await asyncio.gather(
                *(
                    reply(a if number % 2 else b, threads[number % len(threads)], number)
                    for number in range(40)
                )
            )
            for message_id in sent:
                await until_status(a, message_id, "SENT", wait_s=30)
    posted = Counter(request.json["biz_opaque_callback_data"] for request in cloud_api.requests)
    assert posted == Counter({f"wa-inbox:{message_id}": 1 for message_id in sent})
    # Both processes sent some: the claims really were contended.
    senders = {
        log: (tmp_path / log).read_text().count("accepted by WhatsApp")
        for log in ("a.log", "b.log")
    }
    assert all(senders.values()), senders
