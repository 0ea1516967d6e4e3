"""Channel access tokens, sealed at rest (issue 16): a Cloud API token is a credential to send
as the business, so the database holds it only encrypted, with a key it never sees.

CHANNEL_SECRET_KEY holds one or more Fernet keys, comma-separated: the first seals, every one
opens, so a key is rotated by putting the new one first and keeping the old one until
`rotateWhatsAppToken` (or a fresh connect) has sealed each token again.
"""

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from domain.errors import BadInput, DomainError

MAX_ACCESS_TOKEN_LENGTH = 2_048


class SecretKeyMissing(DomainError):
    """A token was given, or is needed, and the server has no CHANNEL_SECRET_KEY."""

    code = "SECRET_KEY_NOT_CONFIGURED"


class TokenVault:
    def __init__(self, keys: tuple[str, ...]) -> None:
        if not keys:
            raise ValueError("a vault needs at least one key")
        self._fernet = MultiFernet([Fernet(key) for key in keys])

    def seal(self, token: str) -> bytes:
        return self._fernet.encrypt(token.encode())

    def open(self, sealed: bytes) -> str:
        """The token; ValueError when no key of this server sealed it."""
        try:
            return self._fernet.decrypt(bytes(sealed)).decode()
        except InvalidToken:
            raise ValueError("no CHANNEL_SECRET_KEY of this server opens this token") from None


def check_access_token(raw: str) -> str:
    """A Cloud API access token as Meta issues them: printable ASCII, no spaces."""
    token = raw.strip()
    if (
        not token
        or len(token) > MAX_ACCESS_TOKEN_LENGTH
        or not token.isascii()
        or not token.isprintable()
        or " " in token
    ):
        raise BadInput(
            f"accessToken must be the Cloud API token as Meta shows it (at most "
            f"{MAX_ACCESS_TOKEN_LENGTH} printable characters, no spaces)"
        )
    return token


def valid_key(raw: str) -> bool:
    try:
        Fernet(raw)
    except (ValueError, TypeError):
        return False
    return True
