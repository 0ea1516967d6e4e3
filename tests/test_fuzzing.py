"""Property-based and fuzz tests (issue 6): any phone text, webhook deliveries of any JSON shape
and any bytes, and schemathesis's GraphQL fuzzing of a running server. A hostile input is
answered with a 4xx or stored; never a 5xx, never an internal name in the answer.

The hypothesis tests share one app and one database across their examples (function-scoped
fixtures), so every property holds whatever earlier examples stored: provider ids are made
unique per example. Examples are derandomized and bounded, so CI sees the same inputs each run.
"""

import asyncio
import copy
import itertools
import json
import math
import re
import time
import traceback
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import graphql
import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from starlette.applications import Starlette

from domain.errors import BadInput
from domain.phones import normalize_phone
from domain.storable_text import is_storable
from gql.whatsapp_webhook import signature_of
from tests.conftest import WHATSAPP_APP_SECRET, GraphQLClient, ingest, token_for
from tests.live import serving
from tests.webhooks import (
    SAMPLE_PHONE_NUMBER_ID,
    SAMPLES,
    WEBHOOK,
    connect_channel,
    delivery,
    post_delivery,
    sample,
    text_message,
)

SAMPLE_NAMES = sorted(path.stem for path in SAMPLES.glob("*.json"))
WHATSAPP_OBJECT = "whatsapp_business_account"

# Text of any code point: NUL and lone surrogates included (JSON carries them as escapes).
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=24)
HOSTILE_TEXT = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "hello\x00world",
        "\ud800",
        "a \udfff b",
        "\u202eevil",
        "\U0001d532\U0001d52b\U0001d526 \U0001f600",
        "\u0661\u0662\u0663\u0664",
        "'; DROP TABLE whatsapp_message; --",
        "w" * 129,
        "x" * 65_537,
    ]
)
TEXTS = st.one_of(ANY_TEXT, HOSTILE_TEXT)
NUMBERS = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**40), max_value=10**400),
    st.floats(allow_nan=False),  # infinities are sent as 1e999 (see json_bytes)
)


class RawJSON(str):
    """JSON text sent verbatim: what Python cannot build, such as nesting deeper than its stack."""


RAW_JSON = st.sampled_from(
    [
        RawJSON("[" * 50 + "]" * 50),
        RawJSON('{"a":' * 400 + "null" + "}" * 400),
        RawJSON("[" * 100_000 + "]" * 100_000),
        RawJSON("9" * 5_000),  # more digits than Python's int parser accepts
        RawJSON("-0.0e-999"),
    ]
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXTS)
JSON_VALUES = st.recursive(
    st.one_of(SCALARS, RAW_JSON),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(TEXTS, children, max_size=4)
    ),
    max_leaves=12,
)


def json_text(value: Any) -> str:
    """`value` as JSON text: strings ASCII-escaped (so lone surrogates travel as \\ud800),
    infinities as 1e999 (valid JSON that Python reads back as infinity)."""
    if isinstance(value, RawJSON):
        return str(value)
    if isinstance(value, float) and math.isinf(value):
        return "1e999" if value > 0 else "-1e999"
    if isinstance(value, list):
        return "[" + ",".join(json_text(item) for item in value) + "]"
    if isinstance(value, dict):
        pairs = (f"{json.dumps(key)}:{json_text(item)}" for key, item in value.items())
        return "{" + ",".join(pairs) + "}"
    return json.dumps(value)


def json_bytes(value: Any) -> bytes:
    return json_text(value).encode()


def read_json(body: bytes) -> tuple[bool, Any]:
    """(True, the value) when `body` is JSON as the webhook reads it, else (False, None)."""
    try:
        return True, json.loads(body)
    except (ValueError, RecursionError):
        return False, None


PART_LISTS = ("messages", "statuses", "contacts")
ECHOES_FIELD = "smb_message_echoes"  # what the business typed in the WhatsApp Business app
ECHOES = "message_echoes"
REVISION_TYPES = ("edit", "revoke")  # revise an earlier message, never stored as one


def messages_changes(payload: Any) -> list[dict[str, Any]] | None:
    """The `value` of each "messages" or "smb_message_echoes" change, or None when `payload`
    is no delivery frame.

    The frame as domain/webhook_payloads.py documents it: an object with "object":
    "whatsapp_business_account" and an "entry" list of objects with a "changes" list of
    objects, each with a "field" string and a "value" object; a "messages" change names a
    non-blank metadata.phone_number_id and its messages, statuses and contacts are lists; a
    "smb_message_echoes" change names it too, and its message_echoes are a list.
    """
    if not isinstance(payload, dict) or payload.get("object") != WHATSAPP_OBJECT:
        return None
    entries = payload.get("entry")
    if not isinstance(entries, list):
        return None
    values = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("changes"), list):
            return None
        for change in entry["changes"]:
            if not isinstance(change, dict):
                return None
            field, value = change.get("field"), change.get("value")
            if not isinstance(field, str) or not isinstance(value, dict):
                return None
            if field not in ("messages", ECHOES_FIELD):
                continue
            metadata = value.get("metadata")
            number = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
            if not isinstance(number, str) or not number.strip():
                return None
            lists = PART_LISTS if field == "messages" else (ECHOES,)
            if not all(isinstance(value.get(key, []), list) for key in lists):
                return None
            # An echoes change carries its parts under message_echoes only.
            if field == ECHOES_FIELD:
                value = {"metadata": metadata, ECHOES: value.get(ECHOES, [])}
            values.append(value)
    return values


def nesting_depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(nesting_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(nesting_depth, value), default=0)
    return 0


def acceptable_statuses(body: bytes) -> set[int]:
    """What the webhook may answer a correctly signed `body`: 200 only for a delivery frame."""
    readable, payload = read_json(body)
    values = messages_changes(payload) if readable else None
    if values is None:
        return {400}
    numbers = [value["metadata"]["phone_number_id"] for value in values]
    if not all(is_storable(number) for number in numbers) or nesting_depth(payload) > 200:
        # A number id no business can own, or JSON close to the parser's depth limit: refusing
        # the delivery whole is as fair as acknowledging it.
        return {200, 400}
    return {200}


def addressed_to(values: list[dict[str, Any]], phone_number_id: str) -> list[dict[str, Any]]:
    """The changes of `values` for `phone_number_id`, as the webhook trims the id."""
    return [
        value
        for value in values
        if value["metadata"]["phone_number_id"].strip()[:64] == phone_number_id
    ]


LEAK_MARKERS = (
    "Traceback",
    "sqlalchemy",
    "asyncpg",
    "psycopg",
    'File "',
    "SELECT ",
    "INSERT ",
    "whatsapp_message",
    "whatsapp_conversation",
)


def leaked_markers(answer: str, sent: str = "") -> list[str]:
    """Markers of internals in `answer` that are not echoes of what was `sent`."""
    return [marker for marker in LEAK_MARKERS if marker in answer and marker not in sent]


def described(response: httpx.Response, body: bytes) -> str:
    shown = body[:4000].decode("utf-8", "backslashreplace")
    return f"answer {response.status_code}: {response.text[:500]}\nto the signed body:\n{shown}"


async def deliver(http: httpx.AsyncClient, body: bytes) -> httpx.Response:
    """POST `body` signed; the answer is JSON, names nothing internal, and is one the body's
    shape allows (never a 5xx)."""
    response = await post_delivery(http, body)
    context = described(response, body)
    assert response.status_code < 500, context
    assert response.headers["content-type"].startswith("application/json"), context
    response.json()
    assert not leaked_markers(response.text), context
    assert response.status_code in acceptable_statuses(body), context
    return response


@pytest.fixture
async def asgi_http(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app that gets a crash as the 500 a real client would, not as a raise."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


async def connected(client: GraphQLClient, db: asyncpg.Connection) -> None:
    """The sample number connected to business 1 (once: examples share the database)."""
    if not await db.fetchval("SELECT count(*) FROM whatsapp_channel"):
        await connect_channel(client)


FUZZ_SETTINGS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)


# --- normalize_phone on any text (tests/test_phones.py covers real numbers) ------------------

PHONE_LIKE_TEXT = st.one_of(
    st.from_regex(r"[+]?[0-9 ().\-]{0,24}", fullmatch=True),
    st.from_regex(r"\+?(55|1|972|44|49|91|81|62)[0-9]{6,17}", fullmatch=True),
    st.text(
        alphabet="+0123456789\u0660\u0661\u0662\u0663\u0664\uff10\uff11\uff12 #*x;,", max_size=30
    ),
    ANY_TEXT,
)
REGION_CODES = st.sampled_from(["US", "IL", "BR", "GB", "IN", "DE", "AR", "MX", "ZZ"])


def normalized_or_none(raw: str, region: str) -> str | None:
    """normalize_phone's answer, None for BadInput; any other exception fails the test."""
    try:
        return normalize_phone(raw, region)
    except BadInput:
        return None


@settings(FUZZ_SETTINGS, max_examples=1000)
@given(raw=PHONE_LIKE_TEXT, region=REGION_CODES)
def test_normalize_phone_of_any_text_is_e164_or_bad_input(raw: str, region: str) -> None:
    normalized = normalized_or_none(raw, region)
    # E.164: a country code and at most 15 digits in all (and phone_e164 is varchar(16)).
    assert normalized is None or re.fullmatch(r"\+[1-9][0-9]{1,14}", normalized), (raw, normalized)


@settings(FUZZ_SETTINGS, max_examples=1000)
@given(raw=PHONE_LIKE_TEXT, region=REGION_CODES)
def test_normalize_phone_is_idempotent_on_its_output(raw: str, region: str) -> None:
    normalized = normalized_or_none(raw, region)
    if normalized is not None:
        assert normalized_or_none(normalized, region) == normalized, (raw, region)
        assert normalized_or_none(normalized, "US") == normalized, (raw, region)


# --- webhook deliveries of any JSON shape ---------------------------------------------------


PHONE_NUMBER_IDS = st.one_of(
    st.just(SAMPLE_PHONE_NUMBER_ID), st.just(f" {SAMPLE_PHONE_NUMBER_ID} "), TEXTS, JSON_VALUES
)
CHANGE_VALUES = st.fixed_dictionaries(
    {"metadata": st.fixed_dictionaries({"phone_number_id": PHONE_NUMBER_IDS})},
    optional={key: st.one_of(st.lists(JSON_VALUES, max_size=3), JSON_VALUES) for key in PART_LISTS},
)
ANY_DELIVERY_SHAPE = st.one_of(
    JSON_VALUES,
    st.fixed_dictionaries(
        {"object": st.one_of(st.just(WHATSAPP_OBJECT), JSON_VALUES), "entry": JSON_VALUES}
    ),
    st.fixed_dictionaries(
        {
            "object": st.just(WHATSAPP_OBJECT),
            "entry": st.lists(
                st.fixed_dictionaries(
                    {
                        "changes": st.lists(
                            st.fixed_dictionaries(
                                {
                                    "field": st.one_of(st.just("messages"), JSON_VALUES),
                                    "value": st.one_of(CHANGE_VALUES, JSON_VALUES),
                                }
                            ),
                            max_size=2,
                        )
                    }
                ),
                max_size=2,
            ),
        }
    ),
)


@settings(FUZZ_SETTINGS, max_examples=300)
@given(payload=ANY_DELIVERY_SHAPE)
async def test_any_signed_json_is_stored_or_refused_as_no_delivery_never_a_server_error(
    client: GraphQLClient, asgi_http: httpx.AsyncClient, db: asyncpg.Connection, payload: Any
) -> None:
    await connected(client, db)
    await deliver(asgi_http, json_bytes(payload))


FRESH_ID = "<a fresh provider message id>"

PROVIDER_IDS = st.one_of(
    st.just(FRESH_ID),
    st.just(FRESH_ID),
    st.sampled_from(["", "  ", "w" * 129, "wamid.\x00", "wamid.\ud800", " padded "]),
    JSON_VALUES,
)
SENDERS = st.one_of(
    st.just("16505551234"),
    st.sampled_from(["972541112233", "+44 7700 900123", "0", "+", "1" * 30, "hello", "\ud800"]),
    st.from_regex(r"\+?[0-9 ()\-]{0,20}", fullmatch=True),
    JSON_VALUES,
)
USER_IDS = st.one_of(st.just("US.13491208655302741918"), st.just("u" * 129), TEXTS, JSON_VALUES)
TIMESTAMPS = st.one_of(
    st.integers(min_value=1_230_768_000, max_value=4_102_444_800).map(str),
    st.integers(min_value=1_230_768_000, max_value=4_102_444_800),
    st.sampled_from(
        [
            "-1",
            "0",
            "1764000000.5",
            "99999999999999",
            "\uff11\uff17\uff16\uff14" + "\uff10" * 6,
            " 1764000000",
        ]
    ),
    st.integers(),
    JSON_VALUES,
)
BODIES = st.one_of(st.just("hello"), TEXTS, JSON_VALUES)
MEDIA_TYPES = ("image", "video", "audio", "document", "sticker")
MESSAGE_TYPES = ("text", *MEDIA_TYPES, "location", "contacts", "interactive", "button")
MESSAGE_TYPES += ("reaction", "unsupported", "order", "system", *REVISION_TYPES)


def contents(message_type: Any) -> st.SearchStrategy[Any]:
    """The content object of a message of `message_type`, with hostile values."""
    if message_type == "text":
        return st.fixed_dictionaries({"body": BODIES})
    if message_type in MEDIA_TYPES:
        media_ids = st.one_of(st.just("1013859600285441"), st.just("m" * 129), TEXTS)
        return st.fixed_dictionaries(
            {"id": media_ids}, optional={"caption": BODIES, "mime_type": TEXTS}
        )
    if message_type == "location":
        return st.fixed_dictionaries(
            {"latitude": NUMBERS, "longitude": NUMBERS},
            optional={"name": BODIES, "address": BODIES},
        )
    if message_type == "contacts":
        card = st.fixed_dictionaries({"name": st.fixed_dictionaries({"formatted_name": BODIES})})
        return st.lists(st.one_of(card, JSON_VALUES), max_size=3)
    if message_type == "interactive":
        reply = st.fixed_dictionaries({"id": TEXTS, "title": BODIES})
        return st.one_of(
            st.fixed_dictionaries({"type": st.just("button_reply"), "button_reply": reply}),
            st.fixed_dictionaries({"type": st.just("list_reply"), "list_reply": reply}),
        )
    if message_type == "button":
        return st.fixed_dictionaries({"text": BODIES, "payload": TEXTS})
    if message_type == "reaction":
        return st.fixed_dictionaries({"message_id": TEXTS, "emoji": BODIES})
    if message_type == "system":
        return st.fixed_dictionaries(
            {
                "type": st.one_of(
                    st.sampled_from(
                        ["user_changed_number", "customer_changed_number", "user_changed_user_id"]
                    ),
                    TEXTS,
                    JSON_VALUES,
                )
            },
            optional={
                "body": BODIES,
                "wa_id": SENDERS,
                "new_wa_id": SENDERS,
                "user_id": USER_IDS,
                "previous_user_id": USER_IDS,
            },
        )
    if message_type in REVISION_TYPES:
        edited = st.fixed_dictionaries(
            {"type": st.just("text"), "text": st.fixed_dictionaries({"body": BODIES})}
        )
        return st.fixed_dictionaries(
            {"original_message_id": st.one_of(st.just(FRESH_ID), PROVIDER_IDS)},
            optional={"message": st.one_of(edited, JSON_VALUES)} if message_type == "edit" else {},
        )
    return JSON_VALUES


@st.composite
def fuzzed_messages(draw: st.DrawFn) -> dict[str, Any]:
    message_type = draw(st.one_of(st.sampled_from(MESSAGE_TYPES), TEXTS, JSON_VALUES))
    message: dict[str, Any] = {
        "id": draw(PROVIDER_IDS),
        "from": draw(SENDERS),
        "timestamp": draw(TIMESTAMPS),
        "type": message_type,
    }
    if draw(st.booleans()):
        message["from_user_id"] = draw(USER_IDS)
    if isinstance(message_type, str):
        message[message_type] = draw(contents(message_type))
    for key in draw(st.sets(st.sampled_from(sorted(message)), max_size=2)):
        del message[key]
    message.update(draw(st.dictionaries(TEXTS, JSON_VALUES, max_size=2)))
    return message


STATUSES = st.fixed_dictionaries(
    {
        "id": PROVIDER_IDS,
        "status": st.one_of(
            st.sampled_from(["sent", "delivered", "read", "failed", "deleted", "SENT"]), TEXTS
        ),
        "timestamp": TIMESTAMPS,
        "recipient_id": SENDERS,
    },
    optional={
        "errors": st.one_of(
            st.lists(st.fixed_dictionaries({"code": NUMBERS, "title": BODIES}), max_size=2),
            JSON_VALUES,
        )
    },
)
CONTACTS = st.fixed_dictionaries(
    {"profile": st.fixed_dictionaries({"name": BODIES}), "wa_id": SENDERS},
    optional={"user_id": USER_IDS},
)


def with_fresh_provider_ids(payload: dict[str, Any]) -> dict[str, Any]:
    """The sample with every message and status id replaced by FRESH_ID."""
    for entry in payload["entry"]:
        for change in entry["changes"]:
            for key in ("messages", "statuses", ECHOES):
                for part in change["value"].get(key, []):
                    part["id"] = FRESH_ID
    return payload


BASE_DELIVERIES = st.one_of(
    st.sampled_from(SAMPLE_NAMES).map(sample).map(with_fresh_provider_ids),
    st.builds(
        delivery,
        phone_number_id=st.one_of(*[st.just(SAMPLE_PHONE_NUMBER_ID)] * 3, PHONE_NUMBER_IDS),
        messages=st.lists(fuzzed_messages(), max_size=3),
        statuses=st.one_of(st.none(), st.lists(STATUSES, max_size=2)),
        contacts=st.one_of(st.none(), st.lists(st.one_of(CONTACTS, JSON_VALUES), max_size=2)),
    ),
)


def paths_in(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path of `value` and of everything inside it."""
    found = [prefix]
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return found
    for key, item in items:
        found.extend(paths_in(item, (*prefix, key)))
    return found


@st.composite
def mutated(draw: st.DrawFn, value: Any) -> Any:
    """`value` with one part replaced by any JSON, removed, wrapped, or given an extra key."""
    value = copy.deepcopy(value)
    path = draw(st.sampled_from(paths_in(value)))
    action = draw(st.sampled_from(["replace", "remove", "wrap", "extra_key"]))
    if not path:
        return draw(JSON_VALUES) if action in ("replace", "remove") else [value]
    parent = value
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    if action == "replace":
        parent[key] = draw(JSON_VALUES)
    elif action == "remove":
        del parent[key]
    elif action == "wrap":
        parent[key] = [parent[key]]
    elif isinstance(parent[key], dict):
        parent[key][draw(TEXTS)] = draw(JSON_VALUES)
    else:
        parent[key] = {draw(TEXTS): parent[key]}
    return value


@st.composite
def fuzzed_deliveries(draw: st.DrawFn) -> Any:
    payload = draw(BASE_DELIVERIES)
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        payload = draw(mutated(payload))
    return payload


provider_id_numbers = itertools.count()


def with_unique_provider_ids(value: Any) -> Any:
    """Every FRESH_ID in `value` replaced by an id no earlier example used."""
    if isinstance(value, str) and value == FRESH_ID:
        return f"wamid.fuzz.{next(provider_id_numbers)}"
    if isinstance(value, list):
        return [with_unique_provider_ids(item) for item in value]
    if isinstance(value, dict):
        return {key: with_unique_provider_ids(item) for key, item in value.items()}
    return value


async def table_counts(db: asyncpg.Connection) -> Counter[str]:
    return Counter(
        messages=await db.fetchval("SELECT count(*) FROM whatsapp_message"),
        rejections=await db.fetchval("SELECT count(*) FROM whatsapp_webhook_rejection"),
    )


def parts_of(values: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
    """The messages (echoes included) and statuses of `values`."""
    messages = [
        message
        for value in values
        for key in ("messages", ECHOES)
        for message in value.get(key, [])
    ]
    statuses = [status for value in values for status in value.get("statuses", [])]
    return messages, statuses


def accounted_parts(report: dict[str, int]) -> int:
    keys = ("stored", "duplicates", "rejected")
    keys += ("statuses_applied", "statuses_pending", "statuses_stale")
    keys += ("revisions_applied", "revisions_pending", "revisions_stale")
    return sum(report[key] for key in keys)


async def assert_each_message_stored_once_or_rejected(
    db: asyncpg.Connection, messages: list[Any], context: str
) -> None:
    """Every message with a readable id is in whatsapp_message once, or recorded as rejected;
    an edit or revoke is never stored as a message (the report accounts for it)."""
    readable = [
        message
        for message in messages
        if isinstance(message, dict)
        and isinstance(message.get("id"), str)
        and is_storable(message["id"])
        and message["id"].strip()
    ]
    revisions = [message["id"] for message in readable if is_revision(message)]
    ids = [message["id"] for message in readable if not is_revision(message)]
    spellings = sorted({spelling for pid in ids for spelling in (pid, pid.strip(), pid[:128])})
    stored = Counter(
        row["provider_message_id"]
        for row in await db.fetch(
            "SELECT provider_message_id FROM whatsapp_message "
            "WHERE business_id = 1 AND provider_message_id = ANY($1::text[])",
            spellings,
        )
    )
    rejected = {
        row["provider_message_id"]
        for row in await db.fetch(
            "SELECT provider_message_id FROM whatsapp_webhook_rejection "
            "WHERE business_id = 1 AND provider_message_id = ANY($1::text[])",
            spellings,
        )
    }
    for pid in ids:
        recorded = {pid, pid.strip(), pid[:128]} & rejected
        assert stored[pid.strip()] == 1 or recorded, (
            f"{pid!r} neither stored nor rejected\n{context}"
        )
    revision_spellings = sorted({spelling for pid in revisions for spelling in (pid, pid.strip())})
    assert not await db.fetchval(
        "SELECT count(*) FROM whatsapp_message WHERE provider_message_id = ANY($1::text[])",
        revision_spellings,
    ), f"an edit or revoke was stored as a message\n{context}"


def is_revision(message: dict[str, Any]) -> bool:
    kind = message.get("type")
    return isinstance(kind, str) and is_storable(kind) and kind.strip() in REVISION_TYPES


async def assert_stored_once_or_rejected(
    client: GraphQLClient, asgi_http: httpx.AsyncClient, db: asyncpg.Connection, payload: Any
) -> None:
    """Deliver `payload` twice: every message addressed to the connected number is stored
    once or recorded as rejected, every part is accounted for, the redelivery stores nothing."""
    await connected(client, db)
    body = json_bytes(with_unique_provider_ids(payload))
    before = await table_counts(db)
    response = await deliver(asgi_http, body)
    after = await table_counts(db)
    context = described(response, body)
    if response.status_code != 200:
        assert after == before, f"a refused delivery stored something\n{context}"
        return

    report = response.json()
    values = addressed_to(messages_changes(json.loads(body)) or [], SAMPLE_PHONE_NUMBER_ID)
    messages, statuses = parts_of(values)
    parts = len(messages) + len(statuses)
    assert accounted_parts(report) == parts, f"{parts} parts, not all accounted for\n{context}"
    assert after["messages"] - before["messages"] == report["stored"], context
    assert after["rejections"] - before["rejections"] == report["rejected"], context
    await assert_each_message_stored_once_or_rejected(db, messages, context)

    redelivered = await deliver(asgi_http, body)
    again = described(redelivered, body)
    assert redelivered.status_code == 200, again
    assert redelivered.json()["stored"] == 0, again
    assert accounted_parts(redelivered.json()) == parts, again
    assert (await table_counts(db))["messages"] == after["messages"], again


@settings(FUZZ_SETTINGS, max_examples=400)
@given(drawn=fuzzed_deliveries())
async def test_fuzzed_delivery_stores_each_message_once_or_records_its_rejection(
    client: GraphQLClient, asgi_http: httpx.AsyncClient, db: asyncpg.Connection, drawn: Any
) -> None:
    await assert_stored_once_or_rejected(client, asgi_http, db, drawn)


# Hostile shapes tried on every run, whatever the generator draws.
HOSTILE_DELIVERIES = {
    "good-and-bad-sender": delivery(
        messages=[text_message(FRESH_ID), text_message(FRESH_ID, sender="nobody")]
    ),
    "only-a-message-without-id": delivery(messages=[{"type": "text", "text": {"body": "hi"}}]),
    "nul-in-text-body": delivery(messages=[text_message(FRESH_ID, body="hello\x00world")]),
    "negative-timestamp": delivery(messages=[text_message(FRESH_ID, timestamp=-1)]),
    "number-beyond-float-range": delivery(
        messages=[{**text_message(FRESH_ID), "amount": float("inf")}]
    ),
    "contact-wa-id-not-a-string": delivery(
        messages=[text_message(FRESH_ID)], contacts=[{"wa_id": 16505551234}]
    ),
    "sender-longer-than-e164": delivery(
        messages=[text_message(FRESH_ID, sender="4914875034941071")]
    ),
    "nul-in-phone-number-id": delivery(
        messages=[text_message(FRESH_ID)], phone_number_id=f"{SAMPLE_PHONE_NUMBER_ID}\x00"
    ),
}


@pytest.mark.parametrize("name", list(HOSTILE_DELIVERIES))
async def test_hostile_delivery_stores_each_message_once_or_records_its_rejection(
    client: GraphQLClient, asgi_http: httpx.AsyncClient, db: asyncpg.Connection, name: str
) -> None:
    await assert_stored_once_or_rejected(client, asgi_http, db, HOSTILE_DELIVERIES[name])


# --- raw bytes ------------------------------------------------------------------------------


@st.composite
def mangled_sample_bytes(draw: st.DrawFn) -> bytes:
    """A sample delivery with a few bytes inserted, removed or overwritten (UTF-8 or not)."""
    data = bytearray(json.dumps(sample(draw(st.sampled_from(SAMPLE_NAMES)))).encode())
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        at = draw(st.integers(min_value=0, max_value=len(data)))
        edit = draw(st.sampled_from(["insert", "remove", "overwrite", "truncate"]))
        noise = draw(
            st.one_of(
                st.binary(min_size=1, max_size=4),
                st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00"]),
            )
        )
        if edit == "insert":
            data[at:at] = noise
        elif edit == "remove":
            del data[at : at + len(noise)]
        elif edit == "overwrite":
            data[at : at + len(noise)] = noise
        else:
            del data[at:]
    return bytes(data)


ANY_BYTES = st.one_of(
    st.binary(max_size=300),
    mangled_sample_bytes(),
    st.sampled_from([b"", b"\xff\xfe\x00", b"\xef\xbb\xbf{}", b"NaN", b'{"object": NaN}']),
)


@settings(FUZZ_SETTINGS, max_examples=150)
@given(body=ANY_BYTES)
async def test_signed_bytes_that_are_no_delivery_are_a_bad_request_never_a_server_error(
    client: GraphQLClient, asgi_http: httpx.AsyncClient, db: asyncpg.Connection, body: bytes
) -> None:
    await connected(client, db)
    await deliver(asgi_http, body)


@settings(FUZZ_SETTINGS, max_examples=200)
@given(body=ANY_BYTES, signature=st.one_of(st.none(), st.just("of other bytes"), TEXTS))
async def test_bytes_unsigned_or_signed_wrongly_are_unauthorized_and_store_nothing(
    client: GraphQLClient,
    asgi_http: httpx.AsyncClient,
    db: asyncpg.Connection,
    body: bytes,
    signature: str | None,
) -> None:
    await connected(client, db)
    headers = {"Content-Type": "application/json"}
    if signature == "of other bytes":
        headers["X-Hub-Signature-256"] = signature_of(body + b" ", WHATSAPP_APP_SECRET)
    elif signature is not None:
        # httpx sends header values as ASCII; what cannot travel is left out.
        headers["X-Hub-Signature-256"] = signature.encode("ascii", "ignore").decode().strip()
    response = await asgi_http.post(WEBHOOK, content=body, headers=headers)
    context = described(response, body) + f"\nsignature: {headers.get('X-Hub-Signature-256')!r}"
    assert response.status_code == 401, context
    assert "error" in response.json(), context
    assert await db.fetchval("SELECT count(*) FROM whatsapp_webhook_rejection") == 0
    assert await db.fetchval("SELECT count(*) FROM whatsapp_message") == 0


# --- schemathesis: generated GraphQL against a running server ---------------------------------

# Reads nest deeper than writes, so queries get more examples than mutations.
EXAMPLES_PER_QUERY = 120
EXAMPLES_PER_MUTATION = 50
GRAPHQL_FUZZ_BUDGET_S = 40.0
SEEDED_PHONES = ["+14155552671", "972507654321", "+44 7700 900123", "+1 650-555-1234"]
SEEDED_LEAD_ID = "lead-42"
# Values at the edges of the input rules, which random text and integers seldom hit: a number
# longer than E.164's 15 digits that phonenumbers still calls possible, an extension, a local
# number without area code, fullwidth digits; page sizes around the limits.
EDGE_PHONES = ["+49 1487 5034 941071", "+1 415 555 2671 ext. 5", "555-2671", "\uff14\uff11\uff15"]
EDGE_PAGE_SIZES = [-1, 101, 0, 2**31 - 1]


def sent_text(query: str) -> str:
    """The document as sent and the decoded value of each of its strings: what the server may
    echo back without leaking anything."""
    try:
        document = graphql.parse(query)
    except graphql.GraphQLError:
        return query
    values: list[str] = []

    class StringValues(graphql.language.Visitor):
        def enter_string_value(self, node: graphql.StringValueNode, *_: Any) -> None:
            values.append(node.value)

    graphql.language.visit(document, StringValues())
    return "\n".join([query, *values])


class GraphQLAnswers:
    """Checks each answer of the fuzzed server. Remembers the markers ever sent, since data may
    show what an earlier generated mutation stored; counts the reads that met a stored row."""

    def __init__(self) -> None:
        self.markers_sent: set[str] = set()
        self.rows_read = 0

    def check(self, query: str, response: requests.Response) -> None:
        sent = sent_text(query)
        self.markers_sent.update(marker for marker in LEAK_MARKERS if marker in sent)
        context = f"query:\n{query}\nanswer {response.status_code}:\n{response.text[:3000]}"
        assert response.status_code < 500, context
        body = response.json()
        assert isinstance(body, dict), context
        for error in body.get("errors") or []:
            code = (error.get("extensions") or {}).get("code")
            assert isinstance(code, str), f"an error without extensions.code\n{context}"
            assert code, f"an error with an empty extensions.code\n{context}"
            # A masked crash is a 5xx in GraphQL's clothing.
            assert code != "INTERNAL_SERVER_ERROR", context
            assert not leaked_markers(json.dumps(error, ensure_ascii=False), sent), context
        data = body.get("data") or {}
        leaked = set(leaked_markers(json.dumps(data, ensure_ascii=False))) - self.markers_sent
        assert not leaked, context
        self.rows_read += sum(isinstance(data.get(field), dict) for field in ("thread", "message"))


def fuzzing_config(thread_ids: list[int], message_ids: list[int]) -> schemathesis.Config:
    """Generated arguments that take a seeded row or an edge value half of the time, so reads
    meet real data and rules meet their limits."""
    dictionaries = {
        "thread-ids": [str(thread_id) for thread_id in thread_ids],
        "message-ids": [str(message_id) for message_id in message_ids],
        "lead-ids": [SEEDED_LEAD_ID],
        "phone-number-ids": [SAMPLE_PHONE_NUMBER_ID],
        "seeded-phones": SEEDED_PHONES,
        "edge-phones": EDGE_PHONES,
        "page-sizes": [1, 20, 100],
        "edge-page-sizes": EDGE_PAGE_SIZES,
    }
    arguments = {
        "Query.thread.id": "thread-ids",
        "*.*.threadId": "thread-ids",
        "Query.message.id": "message-ids",
        "*.*.leadId": "lead-ids",
        "Mutation.ingestMessage.input.leadId": "lead-ids",
        "*.*.phoneNumberId": "phone-number-ids",
        "Query.thread.phone": "seeded-phones",
        "Mutation.markRead.phone": "seeded-phones",
        "Mutation.ingestMessage.input.phone": "edge-phones",
        "Query.threads.first": "page-sizes",
        "Thread.messages.first": "edge-page-sizes",
        "Thread.messages.last": "edge-page-sizes",
    }
    return schemathesis.Config.from_dict(
        {
            "dictionaries": {name: {"values": values} for name, values in dictionaries.items()},
            "parameters": {
                argument: {"dictionary": name, "probability": 0.5}
                for argument, name in arguments.items()
            },
        }
    )


def fuzz_graphql(
    endpoint: str, headers: dict[str, str], config: schemathesis.Config
) -> GraphQLAnswers:
    """Every query and mutation of the live schema, positive and negative cases, until each has
    had its examples or the time budget is spent."""
    schema = schemathesis.graphql.from_url(endpoint, config=config, headers=headers, timeout=10)
    answers = GraphQLAnswers()
    deadline = time.monotonic() + GRAPHQL_FUZZ_BUDGET_S
    failures: list[str] = []
    labels: list[str] = []
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            labels.append(operation.label)
            cases = st.one_of(
                operation.as_strategy(GenerationMode.POSITIVE),
                operation.as_strategy(GenerationMode.NEGATIVE),
            )

            is_query = operation.label.startswith("Query.")
            examples = EXAMPLES_PER_QUERY if is_query else EXAMPLES_PER_MUTATION

            @settings(FUZZ_SETTINGS, max_examples=examples)
            @given(case=cases)
            def answers_are_clean(case: Any) -> None:
                if time.monotonic() > deadline:
                    return
                response = case.call(session=session, headers=headers, timeout=10)
                answers.check(case.body, response)

            # Every operation gets its turn: one failing operation must not hide another.
            try:
                answers_are_clean()
            except Exception as failure:
                shown = "".join(traceback.format_exception_only(failure))
                failures.append(f"--- {operation.label} ---\n{shown}")
    assert any(label.startswith("Mutation.") for label in labels), labels
    assert any(label.startswith("Query.") for label in labels), labels
    if failures:
        pytest.fail("\n".join(failures), pytrace=False)
    return answers


async def seed_threads(client: GraphQLClient, http: httpx.AsyncClient) -> None:
    """A few threads and messages (ingested, replied to, delivered by webhook)."""
    for number, phone in enumerate(SEEDED_PHONES[:3]):
        await ingest(
            client, phone=phone, body=f"hello {number}", providerMessageId=f"seed.{number}"
        )
        await ingest(
            client,
            phone=phone,
            body="we are on it",
            direction="OUTBOUND",
            source="HUMAN",
            providerMessageId=f"seed.reply.{number}",
        )
    await ingest(client, phone=SEEDED_PHONES[0], leadId=SEEDED_LEAD_ID, body="about the lead")
    await connect_channel(client)
    for name in ("text_message", "image_with_caption", "location", "statuses_sent_delivered_read"):
        assert (await post_delivery(http, sample(name))).status_code == 200


async def test_generated_queries_and_mutations_get_no_server_error_and_no_internals(
    app: Starlette, client: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await seed_threads(client, http)
    thread_ids = [row["id"] for row in await db.fetch("SELECT id FROM whatsapp_conversation")]
    message_ids = [row["id"] for row in await db.fetch("SELECT id FROM whatsapp_message")]
    config = fuzzing_config(thread_ids, message_ids)
    headers = {"Authorization": f"Bearer {token_for(1)}"}
    async with serving(app) as websocket_url:
        endpoint = "http" + websocket_url.removeprefix("ws")
        # requests blocks: it runs in a thread while this loop serves it.
        answers = await asyncio.to_thread(fuzz_graphql, endpoint, headers, config)
    assert answers.rows_read > 0, "no generated read met a seeded row"


# The smallest shape of what the fuzzing above meets: one field fails while a sibling reads.
FIELD_ERROR_BESIDE_A_READ = """
query ($id: ID!) {
  message(id: $id) { thread { unreadCount messages(first: -1) { edges { cursor } } } }
}
"""


async def test_a_field_error_beside_a_read_is_answered_with_its_code_not_a_server_error(
    client: GraphQLClient, asgi_http: httpx.AsyncClient
) -> None:
    stored = await ingest(client, phone=SEEDED_PHONES[0], body="hello")
    variables = {"id": stored["message"]["id"]}
    for _ in range(20):  # the sibling's read races the end of the request: try it often
        response = await asgi_http.post(
            "/graphql",
            json={"query": FIELD_ERROR_BESIDE_A_READ, "variables": variables},
            headers=client.headers,
        )
        assert response.status_code == 200, response.text
        (error,) = response.json()["errors"]
        assert error["extensions"]["code"] == "BAD_USER_INPUT", error
        assert error["path"] == ["message", "thread", "messages"], error
