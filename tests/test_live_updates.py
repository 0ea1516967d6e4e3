"""Live updates over websockets: newMessage and the unread badge, on both protocols."""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from gql.__main__ import websocket_server_options
from gql.app import create_app
from gql.auth import issue_token
from gql.fanout import FanOutLimits, Outlet
from gql.settings import Settings
from tests.conftest import INGEST, GraphQLClient, admin_execute, ingest, token_for
from tests.live import (
    LEGACY_WS,
    NEW_MESSAGE,
    TRANSPORT_WS,
    UNREAD_COUNT_CHANGED,
    GraphQLSocket,
    serving,
)


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
async def test_subscriber_receives_new_messages_and_badge_updates(
    app: Starlette, client: GraphQLClient, protocol: str
) -> None:
    async with serving(app) as url, GraphQLSocket.open(url, protocol) as socket:
        await socket.subscribe("messages", NEW_MESSAGE)
        await socket.subscribe("badge", UNREAD_COUNT_CHANGED)
        stored = await ingest(client, phone="+14155550199", body="hello live")

        received = {}
        for _ in range(2):
            message = await socket.receive()
            received[message["id"]] = message["payload"]["data"]
        new_message = received["messages"]["newMessage"]
        assert new_message["id"] == stored["message"]["id"]
        assert new_message["body"] == "hello live"
        assert new_message["thread"]["phone"] == "+14155550199"
        assert new_message["thread"]["unreadCount"] == 1
        assert received["badge"]["unreadCountChanged"] == {
            "threadId": stored["thread"]["id"],
            "unreadCount": 1,
            "totalUnread": 1,
        }


async def nothing_registered(app: Starlette) -> bool:
    """Whether the hub lets go of every connection within 5 s (disconnects are noticed async)."""
    for _ in range(100):
        if app.state.hub.registered() == (0, 0, 0):
            return True
        await asyncio.sleep(0.05)
    return False


# --- who may subscribe ---------------------------------------------------------------------


async def closed_code(socket: GraphQLSocket) -> int:
    with pytest.raises(ConnectionClosed) as closed:
        await socket.receive()
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


WRONG_SECRET_TOKEN = issue_token("another-secret-" * 3, user_id="x", business_id=1)


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
@pytest.mark.parametrize(
    "payload",
    [
        None,
        {},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": f"Bearer {WRONG_SECRET_TOKEN}"},
        {"Authorization": token_for(1)},  # no Bearer scheme
    ],
    ids=["no-payload", "no-token", "garbage", "wrong-secret", "no-scheme"],
)
async def test_connection_without_a_valid_token_is_closed_with_4403(
    app: Starlette, protocol: str, payload: dict[str, Any] | None
) -> None:
    async with serving(app) as url, GraphQLSocket.open(url, protocol, business_id=None) as socket:
        await socket.send({"type": "connection_init", "payload": payload})
        assert await closed_code(socket) == 4403
    assert app.state.hub.registered() == (0, 0, 0)


@pytest.mark.parametrize("header", ["Authorization", "authorization", "AUTHORIZATION"])
async def test_connection_init_accepts_any_header_name_case(app: Starlette, header: str) -> None:
    async with serving(app) as url, GraphQLSocket.open(url, business_id=None) as socket:
        ack = await socket.init({header: f"Bearer {token_for(1)}"})
        assert ack["type"] == "connection_ack"


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
async def test_no_operation_runs_before_connection_init_is_acknowledged(
    app: Starlette, client: GraphQLClient, protocol: str
) -> None:
    async with serving(app) as url, GraphQLSocket.open(url, protocol, business_id=None) as socket:
        await socket.subscribe("early", UNREAD_COUNT_CHANGED)
        assert await closed_code(socket) == 4401
    await ingest(client, phone="+14155550150", body="nobody listens")
    assert app.state.hub.registered() == (0, 0, 0)


async def test_subscriber_only_receives_events_of_its_own_business(
    app: Starlette, client: GraphQLClient
) -> None:
    async with (
        serving(app) as url,
        GraphQLSocket.open(url, business_id=2) as other,
        GraphQLSocket.open(url, business_id=1) as mine,
    ):
        await other.subscribe("m", NEW_MESSAGE)
        await other.subscribe("b", UNREAD_COUNT_CHANGED)
        await mine.subscribe("m", NEW_MESSAGE)
        await ingest(client, phone="+14155550151", body="for business 1 only")
        assert (await mine.next_payload())["data"]["newMessage"]["body"] == "for business 1 only"
        with pytest.raises(TimeoutError):
            await other.receive(wait_s=0.5)


# --- what is published ---------------------------------------------------------------------


async def test_mark_read_sends_zero_for_the_thread_and_the_new_total(
    app: Starlette, client: GraphQLClient
) -> None:
    first = await ingest(client, phone="+14155550152", body="one")
    await ingest(client, phone="+14155550153", body="two")
    async with serving(app) as url, GraphQLSocket.open(url) as socket:
        await socket.subscribe("badge", UNREAD_COUNT_CHANGED)
        await client.execute(
            "mutation($id: ID!) { markRead(threadId: $id) { totalUnread } }",
            {"id": first["thread"]["id"]},
        )
        event = (await socket.next_payload())["data"]["unreadCountChanged"]
        assert event == {"threadId": first["thread"]["id"], "unreadCount": 0, "totalUnread": 1}


async def test_duplicates_and_rolled_back_writes_publish_nothing(
    app: Starlette, client: GraphQLClient, database_url: str
) -> None:
    await ingest(client, phone="+14155550154", body="original", providerMessageId="wamid.pub")
    await admin_execute(
        database_url,
        "ALTER TABLE whatsapp_message ADD CONSTRAINT no_poison CHECK (body <> 'poison')",
    )
    async with serving(app) as url, GraphQLSocket.open(url) as socket:
        await socket.subscribe("m", NEW_MESSAGE)
        await socket.subscribe("b", UNREAD_COUNT_CHANGED)
        again = await ingest(
            client, phone="+14155550154", body="original", providerMessageId="wamid.pub"
        )
        assert again["duplicate"] is True
        failed = await client.post(
            INGEST,
            {
                "input": {
                    "phone": "+14155550154",
                    "direction": "INBOUND",
                    "source": "CUSTOMER",
                    "body": "poison",
                }
            },
        )
        assert failed.json()["errors"][0]["extensions"]["code"] == "INTERNAL_SERVER_ERROR"
        with pytest.raises(TimeoutError):
            await socket.receive(wait_s=0.5)
        # The socket is alive and the next real message is delivered.
        await ingest(client, phone="+14155550154", body="real")
        received = {(await socket.receive())["id"] for _ in range(2)}
        assert received == {"m", "b"}


async def test_outbound_and_historical_messages_reach_new_message_but_not_the_badge(
    app: Starlette, client: GraphQLClient
) -> None:
    async with serving(app) as url, GraphQLSocket.open(url) as socket:
        await socket.subscribe("m", NEW_MESSAGE)
        await socket.subscribe("b", UNREAD_COUNT_CHANGED)
        await ingest(
            client, phone="+14155550155", body="bot says", direction="OUTBOUND", source="BOT"
        )
        await ingest(client, phone="+14155550155", body="old import", historical=True)
        bodies = [(await socket.next_payload())["data"]["newMessage"]["body"] for _ in range(2)]
        assert bodies == ["bot says", "old import"]
        with pytest.raises(TimeoutError):
            await socket.receive(wait_s=0.5)


async def test_new_message_with_thread_id_receives_only_that_thread(
    app: Starlette, client: GraphQLClient
) -> None:
    wanted = await ingest(client, phone="+14155550156", body="first")
    async with serving(app) as url, GraphQLSocket.open(url) as socket:
        await socket.subscribe("one", NEW_MESSAGE, {"threadId": wanted["thread"]["id"]})
        await ingest(client, phone="+14155550157", body="elsewhere")
        await ingest(client, phone="+14155550156", body="here")
        payload = await socket.next_payload()
        assert payload["data"]["newMessage"]["body"] == "here"
        with pytest.raises(TimeoutError):
            await socket.receive(wait_s=0.3)


async def test_bad_subscriptions_get_an_error_message_with_a_code(app: Starlette) -> None:
    async with serving(app) as url, GraphQLSocket.open(url) as socket:
        await socket.subscribe("bad", "subscription { noSuchField }")
        error = await socket.receive()
        assert error["type"] == "error"
        assert error["payload"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
        await socket.subscribe("bad-id", NEW_MESSAGE, {"threadId": "abc"})
        error = await socket.receive()
        assert error["type"] == "error"
        assert error["payload"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert app.state.hub.registered() == (0, 0, 0)


async def test_queries_and_mutations_over_the_socket_run_and_publish(app: Starlette) -> None:
    async with serving(app) as url, GraphQLSocket.open(url) as socket:
        await socket.subscribe("m", NEW_MESSAGE)
        await socket.subscribe(
            "write",
            'mutation { ingestMessage(input: {phone: "+14155550158", direction: INBOUND, '
            'source: CUSTOMER, body: "over the socket"}) { duplicate } }',
        )
        seen: dict[str, list[str]] = {}
        for _ in range(3):
            message = await socket.receive()
            seen.setdefault(message["id"], []).append(message["type"])
        assert seen == {"write": ["next", "complete"], "m": ["next"]}


# --- resources -----------------------------------------------------------------------------


async def test_thousand_subscribe_and_disconnect_cycles_leave_nothing_registered(
    app: Starlette,
) -> None:
    async with serving(app) as url:
        for cycle in range(1000):
            async with GraphQLSocket.open(url) as socket:
                await socket.subscribe("b", UNREAD_COUNT_CHANGED)
                await socket.subscribe("m", NEW_MESSAGE)
                if cycle % 2:
                    # Drop the TCP connection without a close handshake.
                    socket.connection.transport.abort()
    assert await nothing_registered(app)


async def test_simultaneous_first_subscribers_all_receive_every_later_event(
    app: Starlette, client: GraphQLClient
) -> None:
    async with serving(app) as url, contextlib.AsyncExitStack() as stack:
        sockets = await asyncio.gather(
            *(stack.enter_async_context(GraphQLSocket.open(url)) for _ in range(60))
        )
        await asyncio.gather(*(s.subscribe("b", UNREAD_COUNT_CHANGED) for s in sockets))
        for n in range(1, 4):
            await ingest(client, phone="+14155550159", body=f"message {n}")
            totals = await asyncio.gather(*(s.next_payload() for s in sockets))
            assert {t["data"]["unreadCountChanged"]["totalUnread"] for t in totals} == {n}
        assert app.state.hub.registered() == (1, 60, 60)


# --- subscribers that do not read ----------------------------------------------------------


@contextlib.asynccontextmanager
async def app_with_limits(settings: Settings, limits: FanOutLimits) -> AsyncIterator[Starlette]:
    application = create_app(settings)
    application.state.hub.limits = limits
    async with application.router.lifespan_context(application):
        yield application


@contextlib.asynccontextmanager
async def stalled_socket(url: str) -> AsyncIterator[GraphQLSocket]:
    """A subscriber whose client stops reading: TCP backpressure reaches the server."""
    async with connect(
        url,
        subprotocols=["graphql-transport-ws"],
        max_queue=1,
        max_size=2**22,  # type: ignore[list-item]
    ) as connection:
        socket = GraphQLSocket(connection, TRANSPORT_WS)
        await socket.init({"Authorization": f"Bearer {token_for(1)}"})
        yield socket


async def test_new_message_subscriber_that_falls_behind_is_told_to_resync(
    settings: Settings,
) -> None:
    limits = FanOutLimits(outbox_frames=4)
    async with (
        app_with_limits(settings, limits) as app,
        serving(app) as url,
        stalled_socket(url) as socket,
    ):
        await socket.subscribe("m", NEW_MESSAGE)
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        async with http:
            client = GraphQLClient(http)
            big = "x" * 60_000
            for n in range(120):
                await ingest(client, phone="+14155550160", body=f"{n} {big}")
                outlets = list(app.state.hub._outlets)
                assert all(o.backlog <= limits.outbox_frames + 2 for o in outlets)
                if app.state.metrics.live_subscribers_lagged:
                    break
        assert app.state.metrics.live_subscribers_lagged == 1
        assert app.state.hub.registered()[1] == 0
        # Reading again, the client finds what was sent, then the resync error.
        while True:
            message = await socket.receive(wait_s=10)
            if message["type"] != "next":
                break
        assert message["type"] == "error"
        assert message["payload"][0]["extensions"]["code"] == "RESYNC_REQUIRED"


class GatedWebSocket:
    """Stands in for a client whose socket is not writable until the gate opens."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.sent: list[str] = []

    async def send_text(self, text: str) -> None:
        await self.gate.wait()
        self.sent.append(text)


async def test_badge_frames_coalesce_per_thread_while_the_socket_is_not_writable() -> None:
    websocket = GatedWebSocket()
    outlet = Outlet(websocket, TRANSPORT_WS, FanOutLimits(coalesced_threads=2))  # type: ignore[arg-type]
    outlet.push_latest(("b", 1), "thread 1 v0")
    await asyncio.sleep(0)  # the writer takes v0 and blocks on the socket
    for version in range(1, 1001):
        for thread in (1, 2, 3):
            outlet.push_latest(("b", thread), f"thread {thread} v{version}")
    # Bounded: at most `coalesced_threads` entries wait, the oldest thread making room.
    assert len(outlet._coalesced) == 2
    websocket.gate.set()
    for _ in range(10):
        await asyncio.sleep(0)
    assert websocket.sent == ["thread 1 v0", "thread 2 v1000", "thread 3 v1000"]
    await outlet.close()


async def test_badge_subscriber_ends_with_the_final_totals_after_a_burst(
    app: Starlette, client: GraphQLClient
) -> None:
    async with serving(app) as url, stalled_socket(url) as socket:
        await socket.subscribe("b", UNREAD_COUNT_CHANGED)
        phones = ["+14155550161", "+14155550162", "+14155550163"]
        await asyncio.gather(
            *(ingest(client, phone=phones[n % 3], body=f"burst {n}") for n in range(150))
        )
        last_total = 0
        while True:
            try:
                message = await socket.receive(wait_s=1)
            except TimeoutError:
                break
            last_total = message["payload"]["data"]["unreadCountChanged"]["totalUnread"]
        assert last_total == 150


async def test_server_sends_keepalive_pings(settings: Settings) -> None:
    async with (
        app_with_limits(settings, FanOutLimits(keepalive_s=0.1)) as app,
        serving(app) as url,
    ):
        for protocol, ping in ((TRANSPORT_WS, "ping"), (LEGACY_WS, "ka")):
            async with GraphQLSocket.open(url, protocol) as socket:
                raw = await asyncio.wait_for(socket.connection.recv(), 2)
                assert json.loads(raw)["type"] == ping


class RecordingWebSocket:
    def __init__(self, first_sent: asyncio.Event) -> None:
        self.first_sent = first_sent
        self.sent: list[str] = []

    async def send_text(self, text: str) -> None:
        self.sent.append(text)
        self.first_sent.set()


async def test_keepalive_pings_to_many_sockets_let_requests_run_between_slices(
    settings: Settings,
) -> None:
    async with app_with_limits(settings, FanOutLimits(keepalive_s=0.05)) as app:
        hub = app.state.hub
        first_sent = asyncio.Event()
        sockets = [RecordingWebSocket(first_sent) for _ in range(1000)]
        outlets = [hub.open_outlet(socket, TRANSPORT_WS) for socket in sockets]
        try:
            await asyncio.wait_for(first_sent.wait(), 5)
            # This task got the loop back while the round of pings was under way.
            pinged = sum(1 for socket in sockets if socket.sent)
            assert 0 < pinged < len(sockets)
        finally:
            for outlet in outlets:
                await hub.close_outlet(outlet)


async def test_websocket_messages_are_bounded_in_size(app: Starlette, settings: Settings) -> None:
    options = websocket_server_options(settings)
    async with (
        serving(app, ws_max_size=options["ws_max_size"]) as url,
        GraphQLSocket.open(url) as socket,
    ):
        await socket.subscribe(
            "huge", "subscription { unreadCountChanged { threadId } }" + " " * 70_000
        )
        assert await closed_code(socket) == 1009
    assert options["ws_per_message_deflate"] is False


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
async def test_an_operation_id_reused_right_after_complete_is_served_and_released(
    app: Starlette, client: GraphQLClient, protocol: str
) -> None:
    async with serving(app) as url:
        async with GraphQLSocket.open(url, protocol) as socket:
            for _ in range(20):
                await socket.subscribe("same", UNREAD_COUNT_CHANGED)
                await socket.complete("same")
            await socket.subscribe("same", UNREAD_COUNT_CHANGED)
            await ingest(client, phone="+14155550164", body="after reuse")
            while (message := await socket.receive())["type"] == "complete":
                continue
            assert message["payload"]["data"]["unreadCountChanged"]["totalUnread"] == 1
            assert app.state.hub.registered()[1] == 1
        assert await nothing_registered(app)


async def test_a_client_that_never_reads_is_closed_before_its_outbox_grows(
    settings: Settings,
) -> None:
    # The lag rule is set out of reach: only the hard bound on every frame can stop growth.
    limits = FanOutLimits(outbox_frames=100_000, outbox_hard_limit=50)
    async with (
        app_with_limits(settings, limits) as app,
        serving(app) as url,
        stalled_socket(url) as socket,
    ):
        await socket.subscribe("m", NEW_MESSAGE)
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        async with http:
            client = GraphQLClient(http)
            for n in range(300):
                await ingest(client, phone="+14155550165", body=f"{n} " + "z" * 60_000)
                # Pings from the client queue pongs on the same stalled socket.
                with contextlib.suppress(ConnectionClosed):
                    await socket.send({"type": "ping"})
                outlets = list(app.state.hub._outlets)
                assert all(o.backlog <= 50 for o in outlets)
                if all(o.closed for o in outlets):
                    break
        assert all(o.closed for o in app.state.hub._outlets)


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
@pytest.mark.parametrize(
    "message",
    [
        [1],
        {},
        {"type": "subscribe", "id": {}, "payload": {"query": "{ unreadCount }"}},
        {"type": "start", "id": "1", "payload": "x"},
        {"type": "subscribe", "id": "1", "payload": {"query": 123}},
        {"type": "start", "id": "1", "payload": {"query": "{ a }", "variables": "threadId"}},
        {"type": "stop"},
    ],
    ids=["array", "no-type", "id-object", "payload-string", "query-number", "vars-string", "no-id"],
)
async def test_malformed_socket_messages_close_the_socket_with_4400(
    app: Starlette, protocol: str, message: Any
) -> None:
    async with serving(app) as url, GraphQLSocket.open(url, protocol) as socket:
        await socket.connection.send(json.dumps(message))
        assert await closed_code(socket) == 4400
    assert app.state.hub.registered() == (0, 0, 0)


async def test_a_message_nested_too_deeply_is_refused_not_crashed_on(app: Starlette) -> None:
    async with serving(app) as url, GraphQLSocket.open(url) as socket:
        await socket.connection.send("[" * 100_000)
        assert await closed_code(socket) == 4400
