"""Who is asking: HS256 bearer tokens carrying the user (`sub`), `business_id` and `role`.

Validation is strict: HS256 only (`none` and every other algorithm refused), `exp` required
(30 s of clock-skew leeway), `sub` a non-empty string, `business_id` a positive integer, and
`role`, when present, one of agent, service, admin (absent: agent, the least privilege).
"""

import functools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from domain.access import DEFAULT_ROLE, Role
from domain.errors import Unauthenticated

log = logging.getLogger("wa_inbox.auth")

ALGORITHM = "HS256"
CLOCK_SKEW_LEEWAY_S = 30
MAX_SUBJECT_LENGTH = 256


@dataclass(frozen=True, slots=True)  # one per open websocket: no __dict__ (issue 15)
class Principal:
    user_id: str
    business_id: int
    role: Role = DEFAULT_ROLE


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise Unauthenticated("missing Authorization: Bearer <token>", "missing_token")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated(
            "the Authorization header must be `Bearer <token>`", "malformed_header"
        )
    return token.strip()


def authenticate(authorization: str | None, secret: str) -> Principal:
    """The principal of a valid token; Unauthenticated, saying which check failed, otherwise."""
    token = bearer_token(authorization)
    principal, expires_at = _verified(token, secret)
    if time.time() > expires_at + CLOCK_SKEW_LEEWAY_S:
        _decode(token, secret)  # raises: expired since it was verified
    return principal


@functools.lru_cache(maxsize=4096)
def _verified(token: str, secret: str) -> tuple[Principal, float]:
    """A token's principal and expiry, verified once: a front end sends the same token with
    every request, and checking its HMAC and claims again costs more than a badge read.

    Only what passed every check is kept (a refusal is an exception, never cached), and a
    token valid once stays valid until it expires (`nbf` and `iat` only move into the past),
    so `authenticate` checks the expiry on every use.
    """
    claims = _decode(token, secret)
    # As PyJWT compares it: whole seconds.
    return principal_from_claims(claims), float(int(claims["exp"]))


def _decode(token: str, secret: str) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            options={"require": ["sub", "business_id", "exp"]},
            leeway=CLOCK_SKEW_LEEWAY_S,
        )
    except jwt.PyJWTError as refused:
        raise _refusal(refused) from None
    return claims


def _refusal(error: jwt.PyJWTError) -> Unauthenticated:
    """What is wrong with a token, in words a developer can act on (never the token)."""
    # Subclasses before their bases: ExpiredSignatureError is an InvalidTokenError too.
    if isinstance(error, jwt.ExpiredSignatureError):
        return Unauthenticated("the token has expired: get a new one", "expired")
    if isinstance(error, jwt.ImmatureSignatureError):
        return Unauthenticated(
            "the token is not valid yet (iat or nbf in the future)", "not_yet_valid"
        )
    if isinstance(error, jwt.MissingRequiredClaimError):
        return Unauthenticated(
            f"the token has no {error.claim!r} claim (sub, business_id and exp are required)",
            "missing_claim",
        )
    if isinstance(error, jwt.InvalidAlgorithmError):
        return Unauthenticated(f"the token must be signed with {ALGORITHM}", "wrong_algorithm")
    if isinstance(error, jwt.InvalidSignatureError):
        return Unauthenticated(
            "the token's signature does not match this server's AUTH_SECRET", "wrong_signature"
        )
    if isinstance(error, jwt.DecodeError):
        return Unauthenticated("the token is not a JWT (three base64url parts)", "malformed_token")
    return Unauthenticated(f"the token is invalid: {type(error).__name__}", "invalid_token")


def refused_request_challenge(refused: Unauthenticated, request_id: str) -> str:
    """Log why a request's token was refused ([WA-AUTH]); its 401's WWW-Authenticate header.

    RFC 6750: `error="invalid_token"` only once a token was sent at all.
    """
    log.info(
        "[WA-AUTH] request_id=%s refused: %s (%s)", request_id, refused.reason, refused.message
    )
    if refused.reason in ("missing_token", "malformed_header"):
        return 'Bearer realm="wa-inbox"'
    return 'Bearer realm="wa-inbox", error="invalid_token"'


def principal_from_claims(claims: Mapping[str, object]) -> Principal:
    business_id = claims.get("business_id")
    user_id = claims.get("sub")
    # bool is an int in Python; a token saying business_id=true names no business.
    if not isinstance(business_id, int) or isinstance(business_id, bool) or business_id <= 0:
        raise Unauthenticated("the token's business_id must be a positive integer", "invalid_claim")
    if not isinstance(user_id, str) or not user_id or len(user_id) > MAX_SUBJECT_LENGTH:
        raise Unauthenticated("the token's sub must be a non-empty string", "invalid_claim")
    return Principal(user_id=user_id, business_id=business_id, role=_role(claims))


def _role(claims: Mapping[str, object]) -> Role:
    if "role" not in claims:
        return DEFAULT_ROLE
    raw = claims["role"]
    if isinstance(raw, str):
        for role in Role:
            if role.value == raw:
                return role
    raise Unauthenticated("the token's role must be agent, service or admin", "invalid_claim")


def issue_token(
    secret: str,
    *,
    user_id: str,
    business_id: int,
    role: Role | None = None,
    lifetime_s: int = 30 * 24 * 3600,
) -> str:
    """A signed token for development and tests (no `role` claim when `role` is None)."""
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": user_id,
        "business_id": business_id,
        "iat": now,
        "exp": now + lifetime_s,
    }
    if role is not None:
        claims["role"] = role.value
    return jwt.encode(claims, secret, algorithm=ALGORITHM)
