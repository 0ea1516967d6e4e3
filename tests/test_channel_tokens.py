"""Channel access tokens (issue 16): write-only, stored encrypted with CHANNEL_SECRET_KEY, never
returned or logged; rotated; a server holding tokens does not start without the key."""

import asyncio
import dataclasses
import logging

import asyncpg
import pytest
from cryptography.fernet import Fernet

from domain.channel_tokens import TokenVault
from gql.app import ChannelSecretKeyMissing, create_app
from gql.settings import Settings, SettingsError
from tests.conftest import CHANNEL_SECRET_KEY, GraphQLClient

TOKEN = "EAAGm0PX4ZCpsBAKZBchannel-token-of-the-test-0123456789"
CONNECT = """
mutation($token: String) {
  connectWhatsAppChannel(phoneNumberId: "106540352242922", accessToken: $token) {
    phoneNumberId accessTokenSetAt
  }
}
"""
ROTATE = """
mutation($id: String!, $token: String!) {
  rotateWhatsAppToken(phoneNumberId: $id, accessToken: $token) { accessTokenSetAt }
}
"""


async def sealed_token(db: asyncpg.Connection) -> bytes:
    sealed: bytes = await db.fetchval("SELECT access_token_sealed FROM whatsapp_channel")
    return sealed


async def test_a_token_is_stored_sealed_never_returned_nor_logged(
    client: GraphQLClient, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    response = await client.post(CONNECT, {"token": TOKEN})
    assert TOKEN not in response.text
    channel = response.json()["data"]["connectWhatsAppChannel"]
    assert channel["accessTokenSetAt"] is not None
    sealed = await sealed_token(db)
    assert TOKEN.encode() not in sealed
    assert TokenVault((CHANNEL_SECRET_KEY,)).open(sealed) == TOKEN
    assert all(TOKEN not in record.getMessage() for record in caplog.records)
    listed = await client.post("{ whatsAppChannels { phoneNumberId accessTokenSetAt } }")
    assert TOKEN not in listed.text
    # Connecting again without a token keeps it.
    again = await client.execute(CONNECT, {"token": None})
    assert again["connectWhatsAppChannel"]["accessTokenSetAt"] == channel["accessTokenSetAt"]
    assert await sealed_token(db) == sealed


async def test_rotating_replaces_the_token_and_an_unknown_number_is_not_found(
    client: GraphQLClient, db: asyncpg.Connection
) -> None:
    await client.execute(CONNECT, {"token": TOKEN})
    rotated = await client.execute(ROTATE, {"id": "106540352242922", "token": TOKEN + "-new"})
    assert rotated["rotateWhatsAppToken"]["accessTokenSetAt"] is not None
    assert TokenVault((CHANNEL_SECRET_KEY,)).open(await sealed_token(db)) == TOKEN + "-new"
    [error] = await client.errors(ROTATE, {"id": "100000000000199", "token": TOKEN})
    assert error["extensions"]["code"] == "NOT_FOUND"
    [error] = await client.errors(ROTATE, {"id": "106540352242922", "token": "with space"})
    assert error["extensions"]["code"] == "BAD_USER_INPUT"


async def test_agents_may_not_set_tokens(client: GraphQLClient) -> None:
    from domain.access import Role

    [error] = await client.as_role(Role.AGENT).errors(CONNECT, {"token": TOKEN})
    assert error["extensions"]["code"] == "FORBIDDEN"


def test_a_new_key_seals_and_the_old_one_still_opens() -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    sealed_with_old = TokenVault((old,)).seal(TOKEN)
    rotating = TokenVault((new, old))
    assert rotating.open(sealed_with_old) == TOKEN
    assert TokenVault((new,)).open(rotating.seal(TOKEN)) == TOKEN
    with pytest.raises(ValueError, match="no CHANNEL_SECRET_KEY"):
        TokenVault((new,)).open(sealed_with_old)


def test_a_key_that_is_not_a_fernet_key_is_a_configuration_error() -> None:
    with pytest.raises(SettingsError, match="CHANNEL_SECRET_KEY: key 2"):
        Settings.from_environment(
            {"CHANNEL_SECRET_KEY": f"{Fernet.generate_key().decode()},not-a-key"}
        )


async def test_without_a_key_tokens_are_refused_and_a_server_holding_some_does_not_start(
    settings: Settings, client: GraphQLClient
) -> None:
    await client.execute(CONNECT, {"token": TOKEN})
    keyless = dataclasses.replace(settings, channel_secret_keys=())
    app = create_app(keyless)
    with pytest.raises(ChannelSecretKeyMissing):
        async with app.router.lifespan_context(app):
            pass
    await asyncio.sleep(0)


async def test_a_keyless_server_refuses_a_token_and_stores_nothing(
    settings: Settings, db: asyncpg.Connection
) -> None:
    import httpx

    from tests.conftest import token_for

    app = create_app(dataclasses.replace(settings, channel_secret_keys=()))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            response = await http.post(
                "/graphql",
                json={"query": CONNECT, "variables": {"token": TOKEN}},
                headers={"Authorization": f"Bearer {token_for()}"},
            )
    [error] = response.json()["errors"]
    assert error["extensions"]["code"] == "SECRET_KEY_NOT_CONFIGURED"
    assert await db.fetchval("SELECT count(*) FROM whatsapp_channel") == 0
