"""Canonical keys: the one name each conversation has, so a customer's thread never splits."""

from domain.errors import BadInput
from domain.storable_text import is_storable

MAX_LEAD_ID_LENGTH = 128


def canonical_key(business_id: int, *, lead_id: str | None, phone_e164: str | None) -> str:
    """`lead:{business_id}:{lead_id}` when a lead is known, else `phone:{business_id}:{phone}`."""
    if lead_id is not None:
        return f"lead:{business_id}:{lead_id}"
    if phone_e164 is not None:
        return f"phone:{business_id}:{phone_e164}"
    raise BadInput("a conversation needs a phone or a lead id")


def user_key(business_id: int, wa_user_id: str) -> str:
    """`user:{business_id}:{user_id}`: a customer WhatsApp names only by business-scoped user id."""
    return f"user:{business_id}:{wa_user_id}"


def normalize_lead_id(raw: str | None) -> str | None:
    """The lead id as keys store it (trimmed), None when absent; BadInput when unusable."""
    if raw is None:
        return None
    lead_id = raw.strip()
    if not lead_id:
        return None
    if (
        len(lead_id) > MAX_LEAD_ID_LENGTH
        or not is_storable(lead_id)
        or any(ch.isspace() for ch in lead_id)
    ):
        raise BadInput(f"leadId must be at most {MAX_LEAD_ID_LENGTH} characters, without spaces")
    return lead_id
