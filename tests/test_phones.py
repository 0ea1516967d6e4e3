"""Phone normalization to E.164, and input rules that must reject a message before storing it."""

import json
from typing import Any

import asyncpg
import phonenumbers
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from phonenumbers import PhoneNumber, PhoneNumberFormat, PhoneNumberType

from domain.errors import BadInput
from domain.phones import normalize_phone
from tests.conftest import INGEST, GraphQLClient, ingest

# --- normalize_phone ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "region"),
    [
        ("+972 50-765-4321", "US"),
        ("+972 50-765-4321", "IL"),
        ("050-7654321", "IL"),
        ("972507654321", "US"),
        ("972507654321", "IL"),
        ("+972507654321", "US"),
        ("  +972 (50) 765 4321  ", "US"),
    ],
)
def test_spellings_of_one_israeli_number_give_one_e164(raw: str, region: str) -> None:
    assert normalize_phone(raw, region) == "+972507654321"


@pytest.mark.parametrize(
    "raw", ["+1 415-555-2671", "14155552671", "(415) 555-2671", "415.555.2671", "+14155552671"]
)
def test_spellings_of_one_us_number_give_one_e164(raw: str) -> None:
    assert normalize_phone(raw, "US") == "+14155552671"


def test_a_possible_but_not_valid_number_is_accepted() -> None:
    # WhatsApp delivers numbers phonenumbers' metadata does not list as allocated yet.
    number = phonenumbers.parse("+972501234567")
    assert not phonenumbers.is_valid_number(number), "premise: metadata calls it invalid"
    assert normalize_phone("+972501234567", "US") == "+972501234567"


@pytest.mark.parametrize(
    "raw",
    [
        "hello",
        "",
        "   ",
        "+",
        "123",
        "+123",
        "1" * 30,
        "+" + "9" * 30,
        "+1 415 555 2671 ext. 5",
        "+14155552671\x00",
        "+1" + "4" * 80,
    ],
    ids=repr,
)
def test_garbage_is_not_a_phone_number(raw: str) -> None:
    with pytest.raises(BadInput):
        normalize_phone(raw, "US")


@pytest.mark.parametrize("raw", ["555-2671", "5552671"])
def test_a_local_number_without_area_code_is_not_a_phone_number(raw: str) -> None:
    # "+15552671" is no one's E.164 number: a key built from it never meets the customer's
    # thread under "+1 415 555 2671".
    with pytest.raises(BadInput):
        normalize_phone(raw, "US")


# Every region with an example mobile number (phonenumbers has none for TA).
REGIONS = sorted(
    region
    for region in phonenumbers.SUPPORTED_REGIONS
    if phonenumbers.example_number_for_type(region, PhoneNumberType.MOBILE) is not None
)


@st.composite
def mobile_numbers(draw: st.DrawFn) -> tuple[str, PhoneNumber]:
    """A valid mobile number of some region: its example with the last digits redrawn."""
    region = draw(st.sampled_from(REGIONS))
    example = phonenumbers.example_number_for_type(region, PhoneNumberType.MOBILE)
    national = str(example.national_number)
    redrawn = draw(st.integers(min_value=0, max_value=min(3, len(national) - 1)))
    tail = draw(st.text(alphabet="0123456789", min_size=redrawn, max_size=redrawn))
    number = PhoneNumber()
    number.merge_from(example)
    number.national_number = int(national[: len(national) - redrawn] + tail)
    assume(phonenumbers.is_valid_number_for_region(number, region))
    return region, number


def e164(number: PhoneNumber) -> str:
    return phonenumbers.format_number(number, PhoneNumberFormat.E164)


@settings(max_examples=400, deadline=None)
@given(drawn=mobile_numbers())
def test_e164_international_and_national_spellings_normalize_alike(
    drawn: tuple[str, PhoneNumber],
) -> None:
    region, number = drawn
    expected = e164(number)
    assert normalize_phone(expected, "US") == expected
    international = phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL)
    assert normalize_phone(international, "US") == expected
    national = phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL)
    assert normalize_phone(national, region) == expected


def is_also_a_valid_us_number(digits: str) -> bool:
    """Digits without "+" that are a real US/NANP number too: truly ambiguous with region US."""
    return phonenumbers.is_valid_number(phonenumbers.parse(digits, "US"))


@settings(max_examples=400, deadline=None)
@given(drawn=mobile_numbers())
def test_international_digits_without_plus_normalize_alike(
    drawn: tuple[str, PhoneNumber],
) -> None:
    """WhatsApp's wa_id form ("4534412345") must land on the customer's one E.164.

    The only exception is digits that are ALSO a valid US number (BZ "5016221234" is
    +1 501-622-1234 as well): there the default region wins, as documented.
    """
    _, number = drawn
    expected = e164(number)
    digits = expected.removeprefix("+")
    assume(not is_also_a_valid_us_number(digits))
    assert normalize_phone(digits, "US") == expected


@pytest.mark.parametrize(
    ("region", "digits"),
    [("DK", "4534412345"), ("NO", "4740612345"), ("SG", "6581234567"), ("TK", "6907290")],
)
def test_wa_id_that_is_no_valid_us_number_is_read_internationally(region: str, digits: str) -> None:
    # Ten (or seven) digits are a *possible* US length, but no US number has area code 453,
    # 474 or 658, while each is a valid mobile of `region`.
    assert not is_also_a_valid_us_number(digits)
    assert phonenumbers.is_valid_number_for_region(phonenumbers.parse("+" + digits), region)
    assert normalize_phone(digits, "US") == "+" + digits


def test_digits_that_are_also_a_valid_us_number_read_in_the_default_region() -> None:
    # Belize's +501 622 1234 and the US's +1 501-622-1234 share the digits: region US wins.
    assert is_also_a_valid_us_number("5016221234")
    assert normalize_phone("5016221234", "US") == "+15016221234"
    assert normalize_phone("+5016221234", "US") == "+5016221234"


# --- over GraphQL: bad input stores nothing -------------------------------------------------

STATE = """
query { unreadCount threads(first: 100) { edges { node { id } } } }
"""


async def rejected_code(client: GraphQLClient, **fields: Any) -> str:
    message = {"phone": "+14155552671", "direction": "INBOUND", "source": "CUSTOMER", **fields}
    errors = await client.errors(INGEST, {"input": message})
    code: str = errors[0]["extensions"]["code"]
    return code


async def assert_nothing_stored(client: GraphQLClient, db: asyncpg.Connection) -> None:
    state = await client.execute(STATE)
    assert state["unreadCount"] == 0
    assert state["threads"]["edges"] == []
    assert await db.fetchval("SELECT count(*) FROM whatsapp_conversation") == 0
    assert await db.fetchval("SELECT count(*) FROM whatsapp_message") == 0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+972 50-765-4321", "+972507654321"),
        ("972507654321", "+972507654321"),
        ("+1 (415) 555-2671", "+14155552671"),
        ("415 555 2671", "+14155552671"),
    ],
)
async def test_ingest_stores_the_e164_phone(client: GraphQLClient, raw: str, expected: str) -> None:
    result = await ingest(client, phone=raw, body="hi")
    assert result["thread"]["phone"] == expected
    assert result["thread"]["canonicalKey"] == f"phone:1:{expected}"


@pytest.mark.parametrize("phone", ["123", "hello", "", "+", "1" * 30, "+1 415 555 2671 x12"])
async def test_ingest_with_an_impossible_phone_is_bad_input_and_stores_nothing(
    client: GraphQLClient, db: asyncpg.Connection, phone: str
) -> None:
    assert await rejected_code(client, phone=phone, body="hi") == "BAD_USER_INPUT"
    await assert_nothing_stored(client, db)


@pytest.mark.parametrize(
    ("source", "direction"),
    [
        ("CUSTOMER", "OUTBOUND"),
        ("BOT", "INBOUND"),
        ("AUTOMATION", "INBOUND"),
        ("HUMAN", "INBOUND"),
    ],
)
async def test_source_must_fit_direction(
    client: GraphQLClient, db: asyncpg.Connection, source: str, direction: str
) -> None:
    code = await rejected_code(client, source=source, direction=direction, body="hi")
    assert code == "BAD_USER_INPUT"
    await assert_nothing_stored(client, db)


@pytest.mark.parametrize(
    "fields",
    [
        {"providerMessageId": "w" * 129},
        {"providerMessageId": "   "},
        {"body": "hello\u0000world"},
        {"sentAt": "2026-01-01T10:00:00"},
        {"sentAt": "yesterday"},
    ],
    ids=["long-provider-id", "blank-provider-id", "nul-in-body", "naive-sent-at", "bad-sent-at"],
)
async def test_bad_message_fields_are_bad_input_and_store_nothing(
    client: GraphQLClient, db: asyncpg.Connection, fields: dict[str, str]
) -> None:
    assert await rejected_code(client, **{"body": "hi", **fields}) == "BAD_USER_INPUT"
    await assert_nothing_stored(client, db)


async def test_the_longest_allowed_provider_message_id_is_stored(client: GraphQLClient) -> None:
    result = await ingest(client, phone="+14155552671", providerMessageId="w" * 128)
    assert result["message"]["providerMessageId"] == "w" * 128


@pytest.mark.parametrize("field", ["body", "leadId", "providerMessageId"])
async def test_a_lone_surrogate_is_bad_input_and_stores_nothing(
    client: GraphQLClient, db: asyncpg.Connection, field: str
) -> None:
    message = {"phone": "+14155552671", "direction": "INBOUND", "source": "CUSTOMER"}
    # JSON lets a client send a lone surrogate as an escape; it cannot be stored as UTF-8.
    body = json.dumps({"query": INGEST, "variables": {"input": {**message, field: "a \ud800"}}})
    response = await client.http.post(
        "/graphql",
        content=body.encode(),
        headers={**client.headers, "Content-Type": "application/json"},
    )
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert await db.fetchval("SELECT count(*) FROM whatsapp_message") == 0
