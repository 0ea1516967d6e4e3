"""Phone numbers in E.164, the one spelling a customer's number has in canonical keys."""

import phonenumbers

from domain.errors import BadInput

_MAX_INPUT_LENGTH = 64


def normalize_phone(raw: str, default_region: str) -> str:
    """Return `raw` as E.164 ("+972507654321"), or raise BadInput.

    A number without "+" is read in `default_region` first ("050-7654321" in IL) and, if that
    is not a possible number, as international digits without the "+" (WhatsApp's `wa_id`
    form, "972507654321"). Only impossible lengths are rejected: `is_valid_number` lags real
    allocations (it refuses "+972501234567", a shape WhatsApp delivers), and dropping a
    customer's message is worse than storing an unusual number.
    """
    text = raw.strip()
    if not text or len(text) > _MAX_INPUT_LENGTH or "\x00" in text:
        raise BadInput(f"phone {raw!r} is not a phone number")
    for candidate, region in _readings(text, default_region):
        try:
            number = phonenumbers.parse(candidate, region)
        except phonenumbers.NumberParseException:
            continue
        if number.extension:
            raise BadInput(f"phone {raw!r} has an extension; send the number alone")
        if phonenumbers.is_possible_number(number):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    raise BadInput(f"phone {raw!r} is not a possible phone number")


def _readings(text: str, default_region: str) -> list[tuple[str, str | None]]:
    if text.startswith("+"):
        return [(text, None)]
    readings: list[tuple[str, str | None]] = [(text, default_region)]
    digits = "".join(ch for ch in text if ch.isdigit())
    if digits and not digits.startswith("0"):
        readings.append(("+" + digits, None))
    return readings
