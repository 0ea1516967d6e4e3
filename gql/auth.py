"""Who is asking: HS256 bearer tokens carrying the user (`sub`) and the `business_id`."""

import time
from collections.abc import Mapping
from dataclasses import dataclass

import jwt

from domain.errors import Unauthenticated

ALGORITHM = "HS256"


@dataclass(frozen=True)
class Principal:
    user_id: str
    business_id: int


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise Unauthenticated("missing Authorization: Bearer <token>")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the Authorization header must be `Bearer <token>`")
    return token.strip()


def authenticate(authorization: str | None, secret: str) -> Principal:
    """The principal of a valid token; Unauthenticated for anything else."""
    token = bearer_token(authorization)
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            options={"require": ["sub", "business_id"]},
            leeway=30,
        )
    except jwt.PyJWTError:
        raise Unauthenticated("invalid or expired token") from None
    return principal_from_claims(claims)


def principal_from_claims(claims: Mapping[str, object]) -> Principal:
    business_id = claims.get("business_id")
    user_id = claims.get("sub")
    # bool is an int in Python; a token saying business_id=true names no business.
    if not isinstance(business_id, int) or isinstance(business_id, bool) or business_id <= 0:
        raise Unauthenticated("the token's business_id must be a positive integer")
    if not isinstance(user_id, str) or not user_id:
        raise Unauthenticated("the token's sub must be a non-empty string")
    return Principal(user_id=user_id, business_id=business_id)


def issue_token(
    secret: str, *, user_id: str, business_id: int, lifetime_s: int = 30 * 24 * 3600
) -> str:
    """A signed token for development and tests."""
    now = int(time.time())
    claims = {"sub": user_id, "business_id": business_id, "iat": now, "exp": now + lifetime_s}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)
