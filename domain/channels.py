"""WhatsApp channels: the Cloud API phone numbers through which a business receives messages."""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from db import statements
from db.unit_of_work import Sessions, run_unit_of_work
from domain.channel_tokens import SecretKeyMissing, TokenVault, check_access_token
from domain.errors import BadInput, Conflict, NotFound

MAX_PHONE_NUMBER_ID_LENGTH = 64
MAX_DISPLAY_PHONE_NUMBER_LENGTH = 32


@dataclass(frozen=True)
class Channel:
    id: int
    business_id: int
    phone_number_id: str
    display_phone_number: str | None
    connected_at: datetime
    # When a Cloud API token was stored, null without one (set with the sealed token, always;
    # the token itself never leaves the domain).
    access_token_set_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> "Channel":
        return cls(
            id=row["id"],
            business_id=row["business_id"],
            phone_number_id=row["phone_number_id"],
            display_phone_number=row["display_phone_number"],
            connected_at=row["connected_at"],
            access_token_set_at=row["access_token_set_at"],
        )


def check_phone_number_id(raw: str) -> str:
    """A Cloud API phone number id: the digits Meta assigns to a business's number."""
    phone_number_id = raw.strip()
    if (
        not phone_number_id
        or len(phone_number_id) > MAX_PHONE_NUMBER_ID_LENGTH
        or not phone_number_id.isascii()
        or not phone_number_id.isdigit()
    ):
        raise BadInput(
            f"phoneNumberId must be the Cloud API's numeric id (at most "
            f"{MAX_PHONE_NUMBER_ID_LENGTH} digits)"
        )
    return phone_number_id


def _check_display_phone_number(raw: str | None) -> str | None:
    if raw is None or not raw.strip():
        return None
    display = raw.strip()
    if len(display) > MAX_DISPLAY_PHONE_NUMBER_LENGTH or not all(
        ch.isascii() and (ch.isdigit() or ch in "+-() ") for ch in display
    ):
        raise BadInput(
            f"displayPhoneNumber must be a phone number of at most "
            f"{MAX_DISPLAY_PHONE_NUMBER_LENGTH} characters"
        )
    return display


async def connect_channel(
    sessions: Sessions,
    business_id: int,
    phone_number_id: str,
    display_phone_number: str | None,
    *,
    access_token: str | None = None,
    vault: TokenVault | None = None,
) -> Channel:
    """Route the webhooks of `phone_number_id` to the business; connecting twice is harmless.
    `access_token` (the Cloud API token to send with) is stored sealed by `vault`."""
    number_id = check_phone_number_id(phone_number_id)
    display = _check_display_phone_number(display_phone_number)
    sealed = None if access_token is None else _sealed(access_token, vault)

    async def work(session: AsyncSession) -> Channel:
        row = await statements.connect_channel(session, business_id, number_id, display, sealed)
        if row is None:
            raise Conflict(
                "this WhatsApp number is connected to another account; disconnect it there first"
            )
        return Channel.from_row(row)

    return await run_unit_of_work(sessions, work, business_id=business_id)


async def rotate_token(
    sessions: Sessions,
    business_id: int,
    phone_number_id: str,
    access_token: str,
    vault: TokenVault | None,
) -> Channel:
    """Replace the channel's Cloud API token (sealed again with the first key)."""
    number_id = check_phone_number_id(phone_number_id)
    sealed = _sealed(access_token, vault)

    async def work(session: AsyncSession) -> Channel:
        row = await statements.replace_channel_token(session, business_id, number_id, sealed)
        if row is None:
            raise NotFound(f"no WhatsApp channel {number_id} is connected")
        return Channel.from_row(row)

    return await run_unit_of_work(sessions, work, business_id=business_id)


def _sealed(access_token: str, vault: TokenVault | None) -> bytes:
    token = check_access_token(access_token)
    if vault is None:
        raise SecretKeyMissing(
            "the server has no CHANNEL_SECRET_KEY to store access tokens with: set it "
            "(`python -m gql channel-key` makes one) and restart"
        )
    return vault.seal(token)


async def disconnect_channel(sessions: Sessions, business_id: int, phone_number_id: str) -> Channel:
    """Stop routing the number's webhooks to the business (stored messages stay)."""
    number_id = check_phone_number_id(phone_number_id)

    async def work(session: AsyncSession) -> Channel:
        row = await statements.disconnect_channel(session, business_id, number_id)
        if row is None:
            raise NotFound(f"no WhatsApp channel {number_id} is connected")
        return Channel.from_row(row)

    return await run_unit_of_work(sessions, work, business_id=business_id)


async def list_channels(session: AsyncSession, business_id: int) -> list[Channel]:
    return [
        Channel.from_row(row) for row in await statements.business_channels(session, business_id)
    ]
