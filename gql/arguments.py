"""Arguments as the domain wants them: omitted values as None, IDs as row ids."""

from typing import TypeVar

from strawberry.types.unset import UnsetType

from domain.errors import BadInput

T = TypeVar("T")

_MAX_ROW_ID = 2**63 - 1


def given(value: T | UnsetType | None) -> T | None:
    """The argument's value, or None when it was omitted or null."""
    return None if isinstance(value, UnsetType) else value


def parse_row_id(value: str, argument: str) -> int:
    """The integer behind an ID (thread and message ids are row ids); BadInput otherwise."""
    text = str(value)
    if not text.isascii() or not text.isdigit():
        raise BadInput(f"`{argument}` must be a numeric id, got {text[:40]!r}")
    if len(text) > 19 or int(text) > _MAX_ROW_ID:
        raise BadInput(f"`{argument}` {text[:40]} is out of range: ids are at most {_MAX_ROW_ID}")
    return int(text)


def parse_optional_row_id(value: str | UnsetType | None, argument: str) -> int | None:
    present = given(value)
    return parse_row_id(present, argument) if present is not None else None
