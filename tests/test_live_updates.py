"""Live updates over websockets: newMessage and the unread badge, on both protocols."""

import pytest
from starlette.applications import Starlette

from tests.conftest import GraphQLClient, ingest
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
