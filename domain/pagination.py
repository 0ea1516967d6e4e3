"""Relay-style pages: opaque cursors, page-size limits and the has-next/previous flags."""

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

from domain.errors import BadInput

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20
_MAX_ROW_ID = 2**63 - 1  # ids are bigint

T = TypeVar("T")

Position = tuple[datetime, int]


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    cursors: list[str]
    has_next_page: bool
    has_previous_page: bool


def encode_cursor(kind: str, position: Position) -> str:
    at, row_id = position
    raw = f"{kind}|{at.isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str | None, argument: str) -> Position | None:
    """The position a cursor of `kind` names; BadInput for anything we did not hand out."""
    if cursor is None:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        cursor_kind, at, row_id = base64.urlsafe_b64decode(padded).decode().split("|")
        if cursor_kind != kind:
            raise ValueError(cursor_kind)
        moment, position_id = datetime.fromisoformat(at), int(row_id)
        if moment.tzinfo is None or not 0 <= position_id <= _MAX_ROW_ID:
            raise ValueError(row_id)
        # A time that cannot be stored as UTC (year 1 at +14:00) would fail in the database.
        moment.astimezone(UTC)
    except (ValueError, OverflowError, UnicodeDecodeError, binascii.Error):
        raise BadInput(f"`{argument}` is not a cursor from this list") from None
    return moment, position_id


def check_page_size(value: int | None, argument: str) -> int | None:
    if value is None:
        return None
    if value < 0:
        raise BadInput(f"`{argument}` must not be negative")
    if value > MAX_PAGE_SIZE:
        raise BadInput(f"`{argument}` must be at most {MAX_PAGE_SIZE}")
    return value
