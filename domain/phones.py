"""Phone numbers in E.164, the one spelling a customer's number has in canonical keys."""

import functools

import phonenumbers

from domain.errors import BadInput
from domain.storable_text import is_storable

_MAX_INPUT_LENGTH = 64
_MAX_E164_LENGTH = 16  # "+" and at most 15 digits (ITU-T E.164)


def normalize_phone(raw: str, default_region: str) -> str:
    """Return `raw` as E.164 ("+972507654321"), or raise BadInput.

    A number without "+" may be national ("050-7654321" in IL) or international digits without
    the "+" (WhatsApp's `wa_id` form, "972507654321"). Of the readings that are complete
    numbers (possible, and not only dialable locally), a valid one wins, the default region's
    first; failing that, the first possible one. Only impossible numbers are rejected:
    `is_valid_number` lags real allocations (it refuses "+972501234567", a shape WhatsApp
    delivers), and dropping a customer's message is worse than storing an unusual number.

    Remembered per trimmed spelling of at most 64 characters (a refusal is an exception,
    never remembered): the same customers write all day, and parsing a number costs more than
    storing the message.
    """
    text = raw.strip()
    if not text or len(text) > _MAX_INPUT_LENGTH or not is_storable(text):
        raise BadInput(f"phone {raw!r} is not a phone number")
    return _normalized(text, default_region)


@functools.lru_cache(maxsize=16_384)
def _normalized(text: str, default_region: str) -> str:
    possible: list[phonenumbers.PhoneNumber] = []
    for candidate, region in _readings(text, default_region):
        try:
            number = phonenumbers.parse(candidate, region)
        except phonenumbers.NumberParseException:
            continue
        if number.extension:
            raise BadInput(f"phone {text!r} has an extension; send the number alone")
        reason = phonenumbers.is_possible_number_with_reason(number)
        if reason == phonenumbers.ValidationResult.IS_POSSIBLE:
            possible.append(number)
    if not possible:
        raise BadInput(f"phone {text!r} is not a possible phone number")
    chosen = next((n for n in possible if phonenumbers.is_valid_number(n)), possible[0])
    e164 = _with_brazilian_ninth_digit(
        phonenumbers.format_number(chosen, phonenumbers.PhoneNumberFormat.E164)
    )
    if len(e164) > _MAX_E164_LENGTH or not _reads_back_as_itself(e164):
        raise BadInput(f"phone {text!r} is not a possible phone number")
    return e164


def _reads_back_as_itself(e164: str) -> bool:
    """Whether the E.164 form parses to itself: a key must name the same number next time.

    phonenumbers drops a national prefix after the country code on each parse, so a few
    impossible inputs ("+4900000") would otherwise shrink every time they are normalized.
    """
    try:
        again = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.format_number(again, phonenumbers.PhoneNumberFormat.E164) == e164


def _with_brazilian_ninth_digit(e164: str) -> str:
    """Brazilian mobiles in their one current spelling: a 9 before the 8-digit subscriber number.

    Brazil put a 9 in front of every mobile number (2012-2016), yet WhatsApp still delivers many
    `wa_id`s in the old 8-digit form ("551187654321" for "+5511987654321"). Old mobile numbers
    began with 6-9 and landlines begin with 2-5, so the old form is unambiguous.
    """
    if len(e164) == 13 and e164.startswith("+55") and e164[5] in "6789":
        return f"{e164[:5]}9{e164[5:]}"
    return e164


def _readings(text: str, default_region: str) -> list[tuple[str, str | None]]:
    if text.startswith("+"):
        return [(text, None)]
    readings: list[tuple[str, str | None]] = [(text, default_region)]
    digits = "".join(ch for ch in text if ch.isdigit())
    if digits and not digits.startswith("0"):
        readings.append(("+" + digits, None))
    return readings
