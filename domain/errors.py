"""Errors the domain raises on purpose, each with the code clients see in `extensions.code`."""

from typing import Any


class DomainError(Exception):
    code = "INTERNAL_SERVER_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def extensions(self) -> dict[str, Any]:
        """What clients see in `extensions` besides `code`: details they can act on."""
        return {}


class BadInput(DomainError):
    """The caller sent something that can never succeed as sent; nothing was stored."""

    code = "BAD_USER_INPUT"


class NotFound(DomainError):
    """Nothing of the caller's business matches (another business's rows included)."""

    code = "NOT_FOUND"


class Conflict(DomainError):
    """The request contradicts what is stored (something already belongs elsewhere)."""

    code = "CONFLICT"


class Unauthenticated(DomainError):
    """No usable credentials; `reason` says which of the token's checks failed."""

    code = "UNAUTHENTICATED"

    def __init__(self, message: str, reason: str = "missing_token") -> None:
        super().__init__(message)
        self.reason = reason


class Forbidden(DomainError):
    code = "FORBIDDEN"
