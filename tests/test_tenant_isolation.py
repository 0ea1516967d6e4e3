"""Tenant isolation (issue 6): business 2 learns nothing of business 1.

- Every field of Query, Mutation and Subscription, read from the schema itself (a new field is
  walked without anyone listing it), is run as business 2 with business 1's ids, phones, lead
  ids, provider message ids and WhatsApp numbers. Each answer must equal the answer to the same
  operation with values nobody has, and the answer given while business 1 does not exist at all
  (same data, errors, nulls, counts, and the same SQL statements: no other code path). Nothing of
  business 1 may appear in it, and business 1's rows must stay exactly as they were.
- Row-level security keeps a unit of work to its business even when a statement forgets the
  business filter; the app acts as a role the policies apply to.
- Roles bound what a token may do; a refused call stores nothing.
- Tokens and secrets never reach the logs, even at DEBUG.
"""

import asyncio
import base64
import binascii
import dataclasses
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
import strawberry
from graphql import (
    GraphQLField,
    GraphQLInputType,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLSchema,
    get_named_type,
    is_enum_type,
    is_input_object_type,
    is_leaf_type,
    is_list_type,
    is_non_null_type,
    is_object_type,
)
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from starlette.applications import Starlette
from websockets.exceptions import ConnectionClosed

from db import statements
from db.engine import build_sessionmaker
from db.errors import INSUFFICIENT_PRIVILEGE, sqlstate_of
from db.unit_of_work import unit_of_work
from domain import read_state, threads
from domain.access import Role
from gql.app import create_app
from gql.auth import issue_token
from gql.settings import Settings
from gql.whatsapp_webhook import signature_of
from tests.conftest import (
    AUTH_SECRET,
    INGEST,
    WHATSAPP_APP_SECRET,
    WHATSAPP_VERIFY_TOKEN,
    GraphQLClient,
    StatementCounter,
    ingest,
    token_for,
)
from tests.live import NEW_MESSAGE, GraphQLSocket, serving
from tests.webhooks import (
    CONNECT,
    SAMPLE_PHONE_NUMBER_ID,
    SECOND_PHONE_NUMBER_ID,
    WEBHOOK,
    connect_channel,
    delivery,
    post_delivery,
    status,
    text_message,
)

# Parents first: rows are restored in this order and deleted in the reverse one.
TENANT_TABLES = (
    "whatsapp_conversation",
    "whatsapp_message",
    "whatsapp_conversation_alias",
    "whatsapp_channel",
    "whatsapp_pending_status",
    "whatsapp_webhook_rejection",
    "whatsapp_business_unread",
    "whatsapp_thread_merge",
    "whatsapp_pending_revision",
    "whatsapp_outbox",
)
APP_ROLE = "wa_inbox_app"

# --- two businesses --------------------------------------------------------------------------


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The seeded reply's first attempt finds no Cloud API (tests/conftest.py); the next is
    minutes away, so its outbox row stays for the walks below."""
    return dataclasses.replace(settings, send_retry_base_ms=600_000)


MARKER = "SECRET-B1"  # in every text business 1 stores, so a leak of any of them is found
B1_NUMBER = SAMPLE_PHONE_NUMBER_ID
B1_DISPLAY_NUMBER = "15550100001"
B1_PHONE = "+14155550101"
B1_LEAD_PHONE = "+14155550102"
B1_WEBHOOK_SENDER = "16505551234"
B1_LEAD = f"{MARKER}-LEAD-7"
B1_USER_ID = f"US.{MARKER}-USER"
B2_NUMBER = SECOND_PHONE_NUMBER_ID
B2_PHONE = "+14155550201"
B2_LEAD_PHONE = "+14155550202"

# Business 1's rows get ids no other row has, so that one of them appearing anywhere in business
# 2's answers, even inside an opaque cursor, is found by a plain substring search.
B1_FIRST_IDS = {
    "whatsapp_conversation": 7_100_000_001,
    "whatsapp_message": 7_200_000_001,
    "whatsapp_channel": 7_300_000_001,
    "whatsapp_webhook_rejection": 7_400_000_001,
    "whatsapp_outbox": 7_500_000_001,
}
LATER_FIRST_ID = 1_000

B1_MERGED_PHONE = "+14155550109"
B1_LIVE_MERGED_PHONE = "+14155550110"
B1_LIVE_LEAD_PHONE = "+14155550111"
B1_LIVE_LEAD = f"{MARKER}-LIVE-LEAD"

TenantRows = dict[str, list[dict[str, Any]]]


@dataclass(frozen=True)
class TwoBusinesses:
    one: TenantRows
    two: TenantRows


async def restart_ids(db: asyncpg.Connection, first_ids: dict[str, int]) -> None:
    for table, first_id in first_ids.items():
        await db.execute(f"ALTER TABLE {table} ALTER COLUMN id RESTART WITH {first_id}")


async def seed_business_one(client: GraphQLClient, http: httpx.AsyncClient) -> None:
    """Threads by phone, by lead and from a webhook; statuses, a pending status, a pending
    edit, a rejection."""
    await connect_channel(client, B1_NUMBER, B1_DISPLAY_NUMBER)
    await ingest(
        client, phone=B1_PHONE, body=f"{MARKER}-inbound", providerMessageId=f"wamid.{MARKER}-IN"
    )
    # A reply waiting in the outbox (the module's settings keep it there).
    await client.execute(
        "mutation($number: String!) { rotateWhatsAppToken(phoneNumberId: $number, "
        'accessToken: "EAAG-SECRET-B1-TOKEN") { id } }',
        {"number": B1_NUMBER},
    )
    phone_thread = await client.execute(
        "query($phone: String!) { thread(phone: $phone) { id } }", {"phone": B1_PHONE}
    )
    await client.execute(
        "mutation($thread: ID!, $body: String!) { sendMessage(threadId: $thread, body: $body) "
        "{ id } }",
        {"thread": phone_thread["thread"]["id"], "body": f"{MARKER}-reply"},
    )
    await ingest(
        client,
        phone=B1_PHONE,
        direction="OUTBOUND",
        source="HUMAN",
        body=f"{MARKER}-outbound",
        providerMessageId=f"wamid.{MARKER}-OUT",
    )
    await ingest(
        client,
        phone=B1_LEAD_PHONE,
        leadId=B1_LEAD,
        body=f"{MARKER}-lead",
        providerMessageId=f"wamid.{MARKER}-LEAD",
    )
    await ingest(
        client,
        phone=B1_LEAD_PHONE,
        leadId=B1_LEAD,
        direction="OUTBOUND",
        source="BOT",
        body=f"{MARKER}-bot",
    )
    # A customer first known by another phone turns out to be the lead: the threads merge.
    await ingest(client, phone=B1_MERGED_PHONE, body=f"{MARKER}-before-merge")
    await ingest(client, phone=B1_MERGED_PHONE, leadId=B1_LEAD, body=f"{MARKER}-merged")
    image = {
        "id": f"wamid.{MARKER}-IMAGE",
        "from": B1_WEBHOOK_SENDER,
        "timestamp": "1764000050",
        "type": "image",
        "image": {"id": f"{MARKER}-MEDIA", "caption": f"{MARKER}-caption"},
    }
    response = await post_delivery(
        http,
        delivery(
            contacts=[
                {
                    "profile": {"name": f"{MARKER}-Contact"},
                    "wa_id": B1_WEBHOOK_SENDER,
                    "user_id": B1_USER_ID,
                }
            ],
            messages=[
                text_message(
                    f"wamid.{MARKER}-WEBHOOK",
                    sender=B1_WEBHOOK_SENDER,
                    user_id=B1_USER_ID,
                    body=f"{MARKER}-webhook",
                ),
                image,
                text_message(f"wamid.{MARKER}-REJECTED", body="   "),
                # An edit of a message not stored yet: kept until that message arrives.
                {
                    "id": f"wamid.{MARKER}-EDIT",
                    "from": B1_WEBHOOK_SENDER,
                    "timestamp": "1764000060",
                    "type": "edit",
                    "edit": {
                        "original_message_id": f"wamid.{MARKER}-NOT-YET",
                        "message": {"type": "text", "text": {"body": f"{MARKER}-edited"}},
                    },
                },
            ],
            statuses=[
                status(
                    f"wamid.{MARKER}-OUT",
                    "failed",
                    errors=[{"code": 131047, "title": f"{MARKER}-error"}],
                ),
                status(f"wamid.{MARKER}-PENDING", "delivered"),
            ],
            phone_number_id=B1_NUMBER,
        ),
    )
    report = response.json()
    assert response.status_code == 200, report
    assert (report["stored"], report["rejected"]) == (2, 1), report
    assert (report["statuses_applied"], report["statuses_pending"]) == (1, 1), report
    assert report["revisions_pending"] == 1, report


async def seed_two_businesses(
    client: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> TwoBusinesses:
    await restart_ids(db, B1_FIRST_IDS)
    await seed_business_one(client, http)
    await restart_ids(db, dict.fromkeys(B1_FIRST_IDS, LATER_FIRST_ID))
    second = client.as_business(2)
    await connect_channel(second, B2_NUMBER)
    await ingest(second, phone=B2_PHONE, body="business two's own", providerMessageId="wamid.b2")
    one, two = await tenant_rows(db, 1), await tenant_rows(db, 2)
    assert all(one.values()), f"business 1 needs a row in every tenant table: {one}"
    return TwoBusinesses(one, two)


async def tenant_rows(db: asyncpg.Connection, business_id: int) -> TenantRows:
    """Every row of the business, read as the superuser (row-level security does not apply)."""
    return {
        table: [
            dict(row)
            for row in await db.fetch(
                f"SELECT * FROM {table} WHERE business_id = $1 ORDER BY 1, 2, 3", business_id
            )
        ]
        for table in TENANT_TABLES
    }


async def restore(db: asyncpg.Connection, *businesses: TenantRows) -> None:
    """Every tenant table holding exactly the rows given (ids included), whatever ran since."""
    async with db.transaction():
        for table in reversed(TENANT_TABLES):
            await db.execute(f"DELETE FROM {table}")
        for table in TENANT_TABLES:
            records = [tuple(row.values()) for rows in businesses for row in rows[table]]
            if records:
                columns = list(next(row for rows in businesses for row in rows[table]))
                await db.copy_records_to_table(table, records=records, columns=columns)


# --- the schema walk -------------------------------------------------------------------------

# What each argument (or input field) names that a business owns: filled with business 1's
# values, and with values nobody has for the comparison.
ROLE_OF_ARGUMENT = {
    "threadId": "thread_id",
    "messageId": "message_id",
    "leadId": "lead_id",
    "phone": "phone",
    "phoneNumberId": "phone_number_id",
    "providerMessageId": "provider_message_id",
    "replyTo": "message_id",
}
# An argument called `id` names a row of the type the field returns.
ROLE_OF_ID_RETURNING = {
    "Thread": "thread_id",
    "Message": "message_id",
    "WhatsAppChannel": "channel_id",
}
NOBODYS = {
    "thread_id": "999999999",
    "message_id": "999999999",
    "channel_id": "999999999",
    "lead_id": "lead-nobody-has",
    "phone": "+12125550199",
    "provider_message_id": "wamid.nobody-has",
    "phone_number_id": "100000000000199",
}
# Arguments that name nothing of a business: left to their defaults (None), or given a value.
NEUTRAL_ARGUMENTS: dict[str, Any] = {
    "first": None,
    "after": None,
    "last": None,
    "before": None,
    "unreadOnly": None,
    "displayPhoneNumber": None,
    # A write-only credential (tests/test_channel_tokens.py).
    "accessToken": "EAAGprobe-token-from-business-2",
    "sentAt": None,
    "historical": None,
    "body": "probe from business 2",
    "source": None,
    "name": "probe_template",
    "language": "en",
    "components": None,
}
# Arguments of nested fields (the selection), e.g. `messages(first: 5)`.
NESTED_ARGUMENTS: dict[str, Any] = {"first": 5, "after": None, "last": None, "before": None}
# Answers that may differ, with the one they must be instead, and why.
EXPECTED_DIFFERENCES = {
    # The schema promises it: a number routes the webhooks of one business only, so taking
    # another business's number must be refused, and that refusal is the only answer possible.
    ("Mutation.connectWhatsAppChannel", ("phoneNumberId",)): "CONFLICT",
}
CURSOR_FIELDS = {"cursor", "startCursor", "endCursor"}
_OMIT = object()


@dataclass(frozen=True)
class Slot:
    """An argument, or a field of an input argument, that names something a business owns."""

    path: tuple[str, ...]
    role: str


@dataclass(frozen=True)
class Probe:
    """One root field, as an operation with every argument a variable."""

    owner: str  # "Query.thread"
    root: GraphQLObjectType
    document: str
    slots: tuple[Slot, ...]
    bases: tuple[dict[str, Any], ...]  # neutral variables, one per combination of enum values


@dataclass(frozen=True)
class Variant:
    probe: Probe
    slots: tuple[Slot, ...]  # the slots given business 1's values
    theirs: dict[str, Any]
    nobodys: dict[str, Any]
    sent_theirs: tuple[str, ...]
    sent_nobodys: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.probe.owner} {json.dumps(self.theirs, sort_keys=True)}"


class UnknownArgument(AssertionError):
    """The walk met an argument it cannot fill: say what it names before the walk can pass."""


def probes(schema: GraphQLSchema, operations: Iterable[str]) -> list[Probe]:
    roots = {
        "query": schema.query_type,
        "mutation": schema.mutation_type,
        "subscription": schema.subscription_type,
    }
    found = []
    for operation in operations:
        root = roots[operation]
        assert root is not None, f"the schema has no {operation} type"
        for name, root_field in root.fields.items():
            found.append(probe_of(operation, root, name, root_field))
    return found


def probe_of(operation: str, root: GraphQLObjectType, name: str, field: GraphQLField) -> Probe:
    owner = f"{root.name}.{name}"
    slots: list[Slot] = []
    enums: list[tuple[tuple[str, ...], list[str]]] = []
    base: dict[str, Any] = {}
    for argument_name, argument in field.args.items():
        value = neutral_value(owner, (argument_name,), argument.type, field, slots, enums)
        if value is not _OMIT:
            base[argument_name] = value
    combinations = max((len(values) for _, values in enums), default=1)
    bases = []
    for index in range(combinations):
        # Every enum value at least once, without multiplying the walk by every combination.
        bases.append(
            with_values(base, {path: values[index % len(values)] for path, values in enums})
        )
    declarations = ", ".join(f"${a}: {argument.type}" for a, argument in field.args.items())
    arguments = ", ".join(f"{a}: ${a}" for a in field.args)
    document = (
        f"{operation} Probe{f'({declarations})' if declarations else ''} "
        f"{{ {name}{f'({arguments})' if arguments else ''} "
        f"{selection_of(field.type, (get_named_type(field.type).name,))} }}"
    )
    return Probe(owner, root, document, tuple(slots), tuple(bases))


def neutral_value(
    owner: str,
    path: tuple[str, ...],
    type_: GraphQLInputType,
    field: GraphQLField,
    slots: list[Slot],
    enums: list[tuple[tuple[str, ...], list[str]]],
) -> Any:
    """The argument's value when it names nothing of business 1 (_OMIT: left out)."""
    required = is_non_null_type(type_)
    inner = type_.of_type if is_non_null_type(type_) else type_
    named = get_named_type(type_)
    where = f"{owner}({'.'.join(path)}: {type_})"
    if is_list_type(inner):
        raise UnknownArgument(f"the tenant walk cannot fill list arguments yet: {where}")
    if is_input_object_type(named):
        value = {}
        for name, input_field in named.fields.items():
            filled = neutral_value(owner, (*path, name), input_field.type, field, slots, enums)
            if filled is not _OMIT:
                value[name] = filled
        return value
    if is_enum_type(named):
        enums.append((path, list(named.values)))
        return _OMIT  # set per combination
    role = role_of(path[-1], field, where)
    if role is not None:
        slots.append(Slot(path, role))
        return NOBODYS[role] if required else _OMIT
    if path[-1] not in NEUTRAL_ARGUMENTS:
        raise UnknownArgument(
            f"the tenant walk does not know {where}: add it to ROLE_OF_ARGUMENT if it names "
            "something a business owns, else to NEUTRAL_ARGUMENTS"
        )
    neutral = NEUTRAL_ARGUMENTS[path[-1]]
    if neutral is None:
        if required:
            raise UnknownArgument(f"{where} is required: give it a value in NEUTRAL_ARGUMENTS")
        return _OMIT
    return neutral


def role_of(name: str, field: GraphQLField, where: str) -> str | None:
    if name != "id":
        return ROLE_OF_ARGUMENT.get(name)
    returned = get_named_type(field.type).name
    if returned not in ROLE_OF_ID_RETURNING:
        raise UnknownArgument(
            f"which rows does {where} name? add {returned} to ROLE_OF_ID_RETURNING"
        )
    return ROLE_OF_ID_RETURNING[returned]


def selection_of(type_: GraphQLOutputType, path: tuple[str, ...]) -> str:
    """Every scalar of the type, and of the object types below it that are not on `path`."""
    named = get_named_type(type_)
    if is_leaf_type(named):
        return ""
    if not is_object_type(named):
        raise UnknownArgument(f"the tenant walk selects object types only, not {named}")
    selected = []
    for name, child in named.fields.items():
        child_type = get_named_type(child.type)
        arguments = nested_arguments(f"{named}.{name}", child)
        if is_leaf_type(child_type):
            selected.append(f"{name}{arguments}")
        elif child_type.name not in path:  # each type once per path keeps the tree finite
            selected.append(
                f"{name}{arguments} {selection_of(child.type, (*path, child_type.name))}"
            )
    return "{ " + " ".join(selected) + " }"


def nested_arguments(owner: str, field: GraphQLField) -> str:
    given = []
    for name, argument in field.args.items():
        if name not in NESTED_ARGUMENTS:
            raise UnknownArgument(f"the tenant walk does not know {owner}({name}): {argument.type}")
        value = NESTED_ARGUMENTS[name]
        if value is None and is_non_null_type(argument.type):
            raise UnknownArgument(f"{owner}({name}) is required: give it a NESTED_ARGUMENTS value")
        if value is not None:
            given.append(f"{name}: {json.dumps(value)}")
    return f"({', '.join(given)})" if given else ""


def with_values(variables: dict[str, Any], values: dict[tuple[str, ...], Any]) -> dict[str, Any]:
    copied: dict[str, Any] = json.loads(json.dumps(variables))
    for path, value in values.items():
        target = copied
        for name in path[:-1]:
            target = target.setdefault(name, {})
        target[path[-1]] = value
    return copied


def variants(probe: Probe, theirs: dict[str, list[str]]) -> list[Variant]:
    """The probe with no value of business 1, with each of them in turn, and with all at once."""
    for slot in probe.slots:
        assert theirs[slot.role], f"business 1 is seeded with no {slot.role} for {probe.owner}"
    choices: list[dict[Slot, str]] = [{}]
    choices += [{slot: value} for slot in probe.slots for value in theirs[slot.role]]
    if len(probe.slots) > 1:
        choices.append({slot: theirs[slot.role][0] for slot in probe.slots})
    found: dict[str, Variant] = {}
    for base in probe.bases:
        for choice in choices:
            variables = with_values(base, {slot.path: value for slot, value in choice.items()})
            found.setdefault(
                json.dumps(variables, sort_keys=True),
                Variant(
                    probe=probe,
                    slots=tuple(choice),
                    theirs=variables,
                    nobodys=with_values(base, {slot.path: NOBODYS[slot.role] for slot in choice}),
                    sent_theirs=tuple(choice.values()),
                    sent_nobodys=tuple(NOBODYS[slot.role] for slot in choice),
                ),
            )
    return list(found.values())


def values_by_role(rows: TenantRows) -> dict[str, list[str]]:
    conversations = rows["whatsapp_conversation"]
    provider_ids = {
        row["provider_message_id"]
        for table in ("whatsapp_message", "whatsapp_pending_status", "whatsapp_webhook_rejection")
        for row in rows[table]
        if row["provider_message_id"]
    }
    provider_ids |= {
        row[column]
        for row in rows["whatsapp_pending_revision"]
        for column in ("original_provider_message_id", "revision_provider_message_id")
    }
    return {
        "thread_id": [str(row["id"]) for row in conversations],
        "message_id": [str(row["id"]) for row in rows["whatsapp_message"]],
        "channel_id": [str(row["id"]) for row in rows["whatsapp_channel"]],
        "phone": sorted({row["phone_e164"] for row in conversations if row["phone_e164"]}),
        "lead_id": sorted({row["lead_id"] for row in conversations if row["lead_id"]}),
        "provider_message_id": sorted(provider_ids),
        "phone_number_id": [row["phone_number_id"] for row in rows["whatsapp_channel"]],
    }


def secrets_of(rows: TenantRows) -> set[str]:
    """What business 2 must never see: the marker, business 1's ids, phones and numbers."""
    found = {MARKER}
    for table_rows in rows.values():
        found |= {str(row["id"]) for row in table_rows if "id" in row}
    for row in rows["whatsapp_conversation"]:
        if row["phone_e164"]:
            found |= {row["phone_e164"], row["phone_e164"].lstrip("+")}
    for row in rows["whatsapp_channel"]:
        found |= {row["phone_number_id"], row["display_phone_number"]}
    return found - {None}


# --- comparing answers -----------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any
    statements: list[str]


def substituted(text: str, sent: Iterable[str]) -> str:
    """`text` with the values the caller sent replaced: an echo of its own input leaks nothing."""
    for value in sorted(sent, key=len, reverse=True):
        text = text.replace(value, "<sent>")
    return text


def leaks(body: Any, sent: Iterable[str], secrets: set[str]) -> set[str]:
    """The secrets found in `body`, cursors and other base64 tokens decoded too."""
    found = substituted(json.dumps(body, ensure_ascii=False), sent)
    haystacks = [found]
    for token in re.findall(r"[A-Za-z0-9_\-]{12,}", found):
        try:
            haystacks.append(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode())
        except (binascii.Error, UnicodeDecodeError, ValueError):
            continue
    return {secret for secret in secrets if any(secret in haystack for haystack in haystacks)}


def comparable(body: Any, sent: Iterable[str], root: GraphQLObjectType) -> Any:
    """`body` without what legitimately differs between two runs: the values sent, and the ids,
    times and cursors of the rows each run created."""
    body = json.loads(substituted(json.dumps(body, ensure_ascii=False), sent))
    data = body.get("data")
    return {
        "data": None if data is None else _shape(data, root),
        "errors": [
            {
                "message": error.get("message"),
                "path": error.get("path"),
                "code": (error.get("extensions") or {}).get("code"),
            }
            for error in body.get("errors", [])
        ],
    }


def _shape(value: Any, type_: Any) -> Any:
    if value is None:
        return None
    if is_non_null_type(type_):
        return _shape(value, type_.of_type)
    if is_list_type(type_):
        return [_shape(item, type_.of_type) for item in value]
    if not is_object_type(type_):
        return value
    shaped = {}
    for name, item in value.items():
        child = type_.fields[name]
        scalar = get_named_type(child.type).name
        if item is not None and (scalar in ("ID", "DateTime") or name in CURSOR_FIELDS):
            shaped[name] = f"<{scalar}>"
        else:
            shaped[name] = _shape(item, child.type)
    return shaped


def odd_errors(body: Any) -> list[Any]:
    """Errors that show the probe itself is broken (never reached a resolver) or crashed."""
    return [
        error
        for error in body.get("errors", [])
        if "path" not in error
        or (error.get("extensions") or {}).get("code") == "INTERNAL_SERVER_ERROR"
    ]


# --- the walk over HTTP: every query and mutation --------------------------------------------


def brief(body: Any) -> str:
    shown = json.dumps(body, ensure_ascii=False)
    return shown if len(shown) <= 400 else f"{shown[:400]}..."


def judged(
    variant: Variant, present: Answer, without_one: Answer, nobody: Answer, secrets: set[str]
) -> list[str]:
    """What is wrong with business 2's answers to one variant (nothing, when it learns nothing)."""
    problems = []
    runs = [
        ("with business 1's values", present, variant.sent_theirs),
        ("while business 1 does not exist", without_one, variant.sent_theirs),
    ]
    if variant.slots:
        runs.append(("with values nobody has", nobody, variant.sent_nobodys))
    for name, answer, sent in runs:
        if found := leaks(answer.body, sent, secrets):
            problems.append(f"{name}: leaks {sorted(found)}: {brief(answer.body)}")
        if odd := odd_errors(answer.body):
            problems.append(f"{name}: {odd}\n  {variant.probe.document}")

    root = variant.probe.root
    expected = (nobody.status, comparable(nobody.body, variant.sent_nobodys, root))
    key = (variant.probe.owner, variant.slots[0].path if len(variant.slots) == 1 else ())
    if key in EXPECTED_DIFFERENCES:
        codes = [error["code"] for error in comparable(present.body, (), root)["errors"]]
        if present.body.get("data") is not None or codes != [EXPECTED_DIFFERENCES[key]]:
            problems.append(f"expected {EXPECTED_DIFFERENCES[key]}, got {brief(present.body)}")
    elif (present.status, comparable(present.body, variant.sent_theirs, root)) != expected:
        problems.append(
            f"answers {brief(present.body)}\n  where values nobody has get {brief(nobody.body)}"
        )
    elif present.statements != nobody.statements:
        problems.append("runs other SQL statements than for values nobody has")
    if (without_one.status, comparable(without_one.body, variant.sent_theirs, root)) != expected:
        problems.append(
            f"answers {brief(present.body)}\n  but {brief(without_one.body)} while business 1 "
            "does not exist"
        )
    elif without_one.statements != nobody.statements:
        problems.append("runs other SQL statements while business 1 does not exist")
    return [f"{variant.label}: {problem}" for problem in problems]


async def test_business_one_values_act_as_values_nobody_has_in_every_query_and_mutation(
    app: Starlette,
    client: GraphQLClient,
    http: httpx.AsyncClient,
    db: asyncpg.Connection,
    count_statements: StatementCounter,
) -> None:
    world = await seed_two_businesses(client, http, db)
    schema: GraphQLSchema = app.state.hub.schema._schema
    theirs, secrets = values_by_role(world.one), secrets_of(world.one)
    intruder = client.as_business(2)
    absent: TenantRows = {table: [] for table in TENANT_TABLES}
    failures: list[str] = []

    async def run(variant: Variant, variables: dict[str, Any], one: TenantRows) -> Answer:
        """One operation as business 2, from the seeded state (or without business 1)."""
        await restore(db, one, world.two)
        count_statements.statements.clear()
        response = await intruder.post(variant.probe.document, variables)
        answer = Answer(response.status_code, response.json(), list(count_statements.statements))
        if one is world.one and await tenant_rows(db, 1) != world.one:
            failures.append(f"{variant.label}: changed business 1's rows")
        return answer

    walk = [v for probe in probes(schema, ("query", "mutation")) for v in variants(probe, theirs)]
    for variant in walk:
        without_one = await run(variant, variant.theirs, absent)
        nobody = await run(variant, variant.nobodys, world.one)
        present = await run(variant, variant.theirs, world.one)
        failures += judged(variant, present, without_one, nobody, secrets)

    assert not failures, f"{len(failures)} problems in {len(walk)} probes:\n" + "\n".join(failures)
    probed = {(v.probe.owner, v.slots[0].path) for v in walk if len(v.slots) == 1}
    assert EXPECTED_DIFFERENCES.keys() <= probed, "an expected difference names no probe"
    assert await tenant_rows(db, 1) == world.one


def test_the_walk_refuses_an_argument_it_does_not_know() -> None:
    """A new argument must be classified before the walk passes, not silently left out."""

    @strawberry.type
    class Query:
        @strawberry.field
        def thread_by_key(self, canonical_key: str) -> str:
            return canonical_key

    schema = strawberry.Schema(query=Query)._schema
    with pytest.raises(UnknownArgument, match="canonicalKey"):
        probes(schema, ("query",))


# --- the walk over websockets: every subscription --------------------------------------------


async def frames_by_operation(
    socket: GraphQLSocket, *, wait_s: float, until: set[str] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Frames received per operation id, until every id of `until` has one or `wait_s` is over."""
    received: dict[str, list[dict[str, Any]]] = {}
    deadline = asyncio.get_running_loop().time() + wait_s
    while until is None or not until <= received.keys():
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            break
        try:
            message = await socket.receive(wait_s=left)
        except TimeoutError:
            break
        received.setdefault(message.get("id", "-"), []).append(message)
    return received


async def until_members(app: Starlette, members: int) -> None:
    for _ in range(200):
        if app.state.hub.registered()[1] == members:
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"subscriptions registered: {app.state.hub.registered()}, want {members}")


async def touch_every_thread(
    client: GraphQLClient, http: httpx.AsyncClient, rows: TenantRows
) -> None:
    """New inbound messages in each of business 1's threads, a merge, a delivery tick, then
    each thread marked read."""
    for row in rows["whatsapp_conversation"]:
        extra = {"leadId": row["lead_id"]} if row["lead_id"] else {}
        await ingest(client, phone=row["phone_e164"], body=f"{MARKER}-live", **extra)
    # A phone thread and a lead thread that turn out to be one customer: merged.
    await ingest(client, phone=B1_LIVE_MERGED_PHONE, body=f"{MARKER}-live-phone")
    await ingest(client, phone=B1_LIVE_LEAD_PHONE, leadId=B1_LIVE_LEAD, body=f"{MARKER}-live-lead")
    await ingest(client, phone=B1_LIVE_MERGED_PHONE, leadId=B1_LIVE_LEAD, body=f"{MARKER}-live")
    live = text_message(f"wamid.{MARKER}-LIVE", sender=B1_WEBHOOK_SENDER, body=f"{MARKER}-hook")
    # A delivery tick (messageStatusChanged) in every thread: a reply, then its status.
    ticks = []
    for row in rows["whatsapp_conversation"]:
        tick_id = f"wamid.{MARKER}-TICK-{row['id']}"
        extra = {"leadId": row["lead_id"]} if row["lead_id"] else {}
        await ingest(
            client,
            phone=row["phone_e164"],
            direction="OUTBOUND",
            source="HUMAN",
            body=f"{MARKER}-reply",
            providerMessageId=tick_id,
            **extra,
        )
        ticks.append(status(tick_id, "delivered"))
    hook = delivery(messages=[live], statuses=ticks, phone_number_id=B1_NUMBER)
    assert (await post_delivery(http, hook)).status_code == 200
    for row in rows["whatsapp_conversation"]:
        await client.execute(
            "mutation($id: ID!) { markRead(threadId: $id) { totalUnread } }", {"id": str(row["id"])}
        )


async def test_business_two_subscribed_with_business_one_values_receives_nothing(
    app: Starlette, client: GraphQLClient, http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """Subscribed with business 1's thread ids (and to everything of its own), business 2
    receives nothing while business 1's threads get messages and are read: exactly what it
    receives subscribed with ids nobody has."""
    world = await seed_two_businesses(client, http, db)
    schema: GraphQLSchema = app.state.hub.schema._schema
    theirs, secrets = values_by_role(world.one), secrets_of(world.one)
    walk = [v for probe in probes(schema, ("subscription",)) for v in variants(probe, theirs)]

    async with (
        serving(app) as url,
        GraphQLSocket.open(url, business_id=2) as intruder,
        GraphQLSocket.open(url, business_id=1) as owner,
    ):
        for index, variant in enumerate(walk):
            document = variant.probe.document
            await intruder.subscribe(f"theirs-{index}", document, variant.theirs)
            if variant.slots:
                await intruder.subscribe(f"nobodys-{index}", document, variant.nobodys)
            # The same subscription as business 1: proof that the events below reach it.
            await owner.subscribe(f"control-{index}", document, variant.theirs)
        await until_members(app, 2 * len(walk) + sum(1 for v in walk if v.slots))

        await touch_every_thread(client, http, world.one)
        controls = {f"control-{index}" for index in range(len(walk))}
        control = await frames_by_operation(owner, wait_s=10, until=controls)
        assert control.keys() == controls, f"no event for {controls - control.keys()}"
        for frames in control.values():
            assert frames[0]["type"] == "next", frames
            assert "errors" not in frames[0]["payload"], frames
        intruded = await frames_by_operation(intruder, wait_s=1.0)
        assert intruded == {}, f"business 2 received business 1's events: {intruded}"

        # Business 2's own events still arrive (a merge of its own included), and carry
        # nothing of business 1.
        second = client.as_business(2)
        await ingest(second, phone=B2_PHONE, body="business two again")
        await ingest(second, phone=B2_LEAD_PHONE, leadId="b2-lead", body="business two's lead")
        await ingest(second, phone=B2_PHONE, leadId="b2-lead", body="business two, one customer")
        await ingest(
            second,
            phone=B2_PHONE,
            direction="OUTBOUND",
            source="HUMAN",
            body="business two's reply",
            providerMessageId="wamid.b2-reply",
        )
        tick = delivery(statuses=[status("wamid.b2-reply", "read")], phone_number_id=B2_NUMBER)
        assert (await post_delivery(http, tick)).status_code == 200
        unfiltered = {f"theirs-{i}" for i, v in enumerate(walk) if not v.slots}
        own = await frames_by_operation(intruder, wait_s=5, until=unfiltered)
        assert own.keys() == unfiltered, own
        for frames in own.values():
            assert {frame["type"] for frame in frames} == {"next"}, frames
            assert not leaks(frames, (), secrets), frames


# --- row-level security ----------------------------------------------------------------------


def tenant_row_inserts(business_id: int, conversation_id: int, tag: str) -> dict[str, str]:
    """One INSERT per tenant table (the conversation's RETURNING its id)."""
    b = business_id
    return {
        "whatsapp_conversation": (
            "INSERT INTO whatsapp_conversation (business_id, canonical_key, started_at, "
            f"last_message_at) VALUES ({b}, 'rls:{b}:{tag}', now(), now()) RETURNING id"
        ),
        "whatsapp_message": (
            "INSERT INTO whatsapp_message (business_id, conversation_id, seq, direction, source, "
            f"status, body, sent_at, created_at) VALUES ({b}, {conversation_id}, 1, 'in', "
            f"'customer', 'received', 'rls {tag}', now(), now())"
        ),
        "whatsapp_conversation_alias": (
            "INSERT INTO whatsapp_conversation_alias (business_id, alias_key, conversation_id) "
            f"VALUES ({b}, 'user:{b}:{tag}', {conversation_id})"
        ),
        "whatsapp_channel": (
            "INSERT INTO whatsapp_channel (business_id, phone_number_id, display_phone_number) "
            f"VALUES ({b}, 'rls-{b}-{tag}', '1555000000{b}')"
        ),
        "whatsapp_pending_status": (
            "INSERT INTO whatsapp_pending_status (business_id, provider_message_id, status, "
            f"status_at) VALUES ({b}, 'wamid.rls-{tag}', 'delivered', now())"
        ),
        "whatsapp_webhook_rejection": (
            "INSERT INTO whatsapp_webhook_rejection (business_id, phone_number_id, reason) "
            f"VALUES ({b}, 'rls-{b}-{tag}', 'rls {tag}')"
        ),
        "whatsapp_business_unread": (
            "INSERT INTO whatsapp_business_unread (business_id, shard, unread) "
            f"VALUES ({b}, {conversation_id} % 16, 1) ON CONFLICT DO NOTHING"
        ),
        "whatsapp_thread_merge": (
            "INSERT INTO whatsapp_thread_merge (merged_conversation_id, business_id, "
            f"into_conversation_id, reason) VALUES ({conversation_id + 1_000_000 + len(tag)}, "
            f"{b}, {conversation_id}, 'rls {tag}')"
        ),
        "whatsapp_pending_revision": (
            "INSERT INTO whatsapp_pending_revision (business_id, original_provider_message_id, "
            f"kind, revision_provider_message_id, revised_at) VALUES ({b}, 'wamid.rls-{tag}', "
            f"'revoke', 'wamid.rls-revoke-{tag}', now())"
        ),
        # A reply waiting to be sent: the latest message the writer can see (the one just
        # inserted above).
        "whatsapp_outbox": (
            "INSERT INTO whatsapp_outbox (business_id, message_id, phone_number_id, request, "
            f"deadline_at) VALUES ({b}, (SELECT max(id) FROM whatsapp_message), 'rls-{b}-{tag}', "
            "'{}'::jsonb, now())"
        ),
    }


async def seed_every_tenant_table(db: asyncpg.Connection) -> dict[int, int]:
    """A row of businesses 1 and 2 in every tenant table; their conversation ids."""
    conversations = {}
    for business_id in (1, 2):
        first = tenant_row_inserts(business_id, 0, "seed")["whatsapp_conversation"]
        conversations[business_id] = await db.fetchval(first)
        inserts = tenant_row_inserts(business_id, conversations[business_id], "seed")
        for table, sql in inserts.items():
            if table != "whatsapp_conversation":
                await db.execute(sql)
    return conversations


async def test_the_app_acts_as_a_role_that_row_level_security_applies_to(app: Starlette) -> None:
    async with app.state.engine.connect() as connection:
        who = (
            await connection.execute(
                text(
                    "SELECT current_user, session_user, rolsuper, rolbypassrls FROM pg_roles "
                    "WHERE rolname = current_user"
                )
            )
        ).one()
        owned = await connection.scalar(
            text("SELECT count(*) FROM pg_class WHERE relowner = to_regrole(current_user)")
        )
        active = {
            table: await connection.scalar(text("SELECT row_security_active(:t)"), {"t": table})
            for table in TENANT_TABLES
        }
    current_user, session_user, superuser, bypasses_rls = who
    assert current_user == APP_ROLE
    assert session_user != APP_ROLE  # the login switched to it (the `role` setting)
    assert (superuser, bypasses_rls, owned) == (False, False, 0)
    assert active == dict.fromkeys(TENANT_TABLES, True)


async def test_tenant_tables_are_owned_by_the_migrating_role_and_all_carry_the_policy(
    db: asyncpg.Connection,
) -> None:
    with_business = {
        row["table_name"]
        for row in await db.fetch(
            "SELECT table_name FROM information_schema.columns "
            "WHERE column_name = 'business_id' AND table_schema = current_schema()"
        )
    }
    assert with_business == set(TENANT_TABLES)
    migrator = await db.fetchval("SELECT current_user")
    tables = await db.fetch(
        "SELECT c.relname, pg_get_userbyid(c.relowner) AS owner, c.relrowsecurity, "
        "p.polname, pg_get_expr(p.polqual, p.polrelid) AS qual, "
        "pg_get_expr(p.polwithcheck, p.polrelid) AS with_check "
        "FROM pg_class c LEFT JOIN pg_policy p ON p.polrelid = c.oid "
        "WHERE c.relname = ANY($1::text[])",
        list(TENANT_TABLES),
    )
    assert sorted(row["relname"] for row in tables) == sorted(TENANT_TABLES)  # one policy each
    for row in tables:
        assert row["owner"] == migrator != APP_ROLE, dict(row)
        assert row["relrowsecurity"], dict(row)
        assert row["polname"] == "business_isolation", dict(row)
        for expression in (row["qual"], row["with_check"]):
            assert expression == "(business_id = wa_inbox_current_business())", dict(row)


async def test_a_statement_without_a_business_filter_sees_only_its_unit_business(
    app: Starlette, db: asyncpg.Connection
) -> None:
    await seed_every_tenant_table(db)
    b1_message_id = await db.fetchval("SELECT id FROM whatsapp_message WHERE business_id = 1")
    sessions = build_sessionmaker(app.state.engine)
    for business_id in (2, 1, None):
        async with unit_of_work(sessions, business_id=business_id) as session:
            seen = {
                table: (await session.execute(text(f"SELECT business_id FROM {table}")))
                .scalars()
                .all()
                for table in TENANT_TABLES
            }
        expected = [] if business_id is None else [business_id]
        assert seen == dict.fromkeys(TENANT_TABLES, expected), business_id

    # A resolver bug that passes business 1's id inside business 2's unit of work finds nothing.
    async with unit_of_work(sessions, business_id=2) as session:
        assert await threads.find_message(session, 1, b1_message_id) is None
        assert await statements.business_channels(session, 1) == []
        assert await read_state.total_unread(session, 1) == 0


async def test_rows_of_another_business_can_be_neither_written_nor_changed(
    app: Starlette, db: asyncpg.Connection
) -> None:
    conversations = await seed_every_tenant_table(db)
    before = {1: await tenant_rows(db, 1), 2: await tenant_rows(db, 2)}
    sessions = build_sessionmaker(app.state.engine)

    async def refusal(sql: str) -> str | None:
        try:
            async with unit_of_work(sessions, business_id=2) as session:
                await session.execute(text(sql))
        except DBAPIError as error:
            return sqlstate_of(error)
        return None

    inserted = {
        table: await refusal(sql)
        for table, sql in tenant_row_inserts(1, conversations[1], "intruder").items()
    }
    moved = {table: await refusal(f"UPDATE {table} SET business_id = 1") for table in TENANT_TABLES}
    assert inserted == dict.fromkeys(TENANT_TABLES, INSUFFICIENT_PRIVILEGE)
    assert moved == dict.fromkeys(TENANT_TABLES, INSUFFICIENT_PRIVILEGE)

    async with unit_of_work(sessions, business_id=2) as session:
        changed = {}
        for table in TENANT_TABLES:
            updated = await session.execute(
                text(f"UPDATE {table} SET business_id = business_id WHERE business_id = 1")
            )
            deleted = await session.execute(text(f"DELETE FROM {table} WHERE business_id = 1"))
            changed[table] = (updated.rowcount, deleted.rowcount)  # type: ignore[attr-defined]
    assert changed == dict.fromkeys(TENANT_TABLES, (0, 0))
    assert {1: await tenant_rows(db, 1), 2: await tenant_rows(db, 2)} == before


async def test_the_business_setting_ends_with_its_transaction_on_a_pooled_connection(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await seed_every_tenant_table(db)
    one_connection = create_app(dataclasses.replace(settings, database_pool_size=1))
    async with one_connection.router.lifespan_context(one_connection):
        sessions = build_sessionmaker(one_connection.state.engine)
        backends = set()
        async with unit_of_work(sessions, business_id=1) as session:
            backends.add(await session.scalar(text("SELECT pg_backend_pid()")))
            assert await session.scalar(text("SELECT count(*) FROM whatsapp_message")) == 1

        async def fail_after_naming_the_business() -> None:
            async with unit_of_work(sessions, business_id=1) as session:
                backends.add(await session.scalar(text("SELECT pg_backend_pid()")))
                raise LookupError("a unit of work that fails after naming its business")

        with pytest.raises(LookupError):
            await fail_after_naming_the_business()
        transport = httpx.ASGITransport(app=one_connection)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            seen = await GraphQLClient(http, business_id=1).execute("{ unreadCount }")
            assert seen == {"unreadCount": 1}

        async with unit_of_work(sessions, business_id=None) as session:
            backends.add(await session.scalar(text("SELECT pg_backend_pid()")))
            setting = await session.scalar(
                text("SELECT current_setting('wa_inbox.business_id', true)")
            )
            visible = {
                table: await session.scalar(text(f"SELECT count(*) FROM {table}"))
                for table in TENANT_TABLES
            }
    assert len(backends) == 1  # one pooled connection served every unit
    assert setting in ("", None)
    assert visible == dict.fromkeys(TENANT_TABLES, 0)


async def test_channel_owners_answers_only_the_number_and_its_business(
    app: Starlette, db: asyncpg.Connection
) -> None:
    await seed_every_tenant_table(db)
    sessions = build_sessionmaker(app.state.engine)
    async with unit_of_work(sessions, business_id=None) as session:
        result = await session.execute(
            text("SELECT * FROM wa_inbox_channel_owners(:ids)"),
            {"ids": ["rls-1-seed", "rls-2-seed", "100000000000199"]},
        )
        columns, rows = list(result.keys()), set(result.all())
    assert columns == ["phone_number_id", "business_id"]
    assert rows == {("rls-1-seed", 1), ("rls-2-seed", 2)}
    definition = await db.fetchrow(
        "SELECT pg_get_function_result(oid) AS result, prosecdef, "
        "has_function_privilege('public', oid, 'EXECUTE') AS public_may_call "
        "FROM pg_proc WHERE proname = 'wa_inbox_channel_owners'"
    )
    assert dict(definition) == {
        "result": "TABLE(phone_number_id text, business_id bigint)",
        "prosecdef": True,
        "public_may_call": False,
    }


# --- roles -----------------------------------------------------------------------------------

EVERY_ROLE = [Role.AGENT, Role.SERVICE, Role.ADMIN, None]
ROLE_IDS = ["agent", "service", "admin", "no-role"]
DISCONNECT = "mutation($id: String!) { disconnectWhatsAppChannel(phoneNumberId: $id) { id } }"


def ingest_case(direction: str, source: str) -> dict[str, Any]:
    message = {"phone": "+14155550301", "direction": direction, "source": source, "body": "hi"}
    return {"input": message}


SERVICE_AND_ADMIN: set[Role | None] = {Role.SERVICE, Role.ADMIN}
# (operation, document, its variables given the seeded thread and message ids, who may run it)
ROLE_CASES: list[tuple[str, str, Callable[[dict[str, str]], Any], set[Role | None]]] = [
    ("threads", "{ threads { edges { node { id } } } }", lambda ids: None, set(EVERY_ROLE)),
    (
        "thread",
        "query($id: ID!) { thread(id: $id) { id } }",
        lambda ids: {"id": ids["thread"]},
        set(EVERY_ROLE),
    ),
    (
        "message",
        "query($id: ID!) { message(id: $id) { id } }",
        lambda ids: {"id": ids["message"]},
        set(EVERY_ROLE),
    ),
    ("unreadCount", "{ unreadCount }", lambda ids: None, set(EVERY_ROLE)),
    (
        "markRead",
        "mutation($id: ID!) { markRead(threadId: $id) { totalUnread } }",
        lambda ids: {"id": ids["thread"]},
        {Role.AGENT, Role.ADMIN, None},  # no role is the agent's
    ),
    ("ingest HUMAN", INGEST, lambda ids: ingest_case("OUTBOUND", "HUMAN"), set(EVERY_ROLE)),
    ("ingest CUSTOMER", INGEST, lambda ids: ingest_case("INBOUND", "CUSTOMER"), SERVICE_AND_ADMIN),
    ("ingest BOT", INGEST, lambda ids: ingest_case("OUTBOUND", "BOT"), SERVICE_AND_ADMIN),
    (
        "ingest AUTOMATION",
        INGEST,
        lambda ids: ingest_case("OUTBOUND", "AUTOMATION"),
        SERVICE_AND_ADMIN,
    ),
    ("whatsAppChannels", "{ whatsAppChannels { id } }", lambda ids: None, {Role.ADMIN}),
    ("connect", CONNECT, lambda ids: {"id": B2_NUMBER, "display": None}, {Role.ADMIN}),
    ("disconnect", DISCONNECT, lambda ids: {"id": B1_NUMBER}, {Role.ADMIN}),  # after connect
]


@pytest.mark.parametrize("role", EVERY_ROLE, ids=ROLE_IDS)
async def test_each_role_may_do_exactly_what_its_rules_allow(
    client: GraphQLClient, db: asyncpg.Connection, role: Role | None
) -> None:
    stored = await ingest(client, phone="+14155550300", body="seeded by an admin")
    await connect_channel(client, B1_NUMBER)
    ids = {"thread": stored["thread"]["id"], "message": stored["message"]["id"]}
    caller = client.as_role(role)

    outcomes, expected = {}, {}
    for operation, document, variables, allowed in ROLE_CASES:
        before = await tenant_rows(db, 1)
        body = (await caller.post(document, variables(ids))).json()
        codes = [error["extensions"]["code"] for error in body.get("errors", [])]
        if not codes:
            outcomes[operation] = "allowed"
        elif codes == ["FORBIDDEN"] and body["data"] is None:
            unchanged = await tenant_rows(db, 1) == before
            outcomes[operation] = "FORBIDDEN" if unchanged else "FORBIDDEN, but stored"
        else:
            outcomes[operation] = f"{codes}: {body}"
        expected[operation] = "allowed" if role in allowed else "FORBIDDEN"
    assert outcomes == expected


async def test_every_role_may_subscribe(app: Starlette, client: GraphQLClient) -> None:
    async with serving(app) as url, AsyncExitStack() as stack:
        sockets = []
        for role in EVERY_ROLE:
            socket = await stack.enter_async_context(GraphQLSocket.open(url, business_id=None))
            await socket.init({"Authorization": f"Bearer {token_for(1, role=role)}"})
            await socket.subscribe("m", NEW_MESSAGE)
            sockets.append(socket)
        await until_members(app, len(EVERY_ROLE))
        await ingest(client, phone="+14155550302", body="for every role")
        for socket in sockets:
            payload = await socket.next_payload()
            assert payload["data"]["newMessage"]["body"] == "for every role", payload


# --- secrets and logs ------------------------------------------------------------------------

# Loggers of the test's own clients, which log what the test sends: not the server's logs.
CLIENT_LOGGERS = ("websockets.client", "httpx", "httpcore")


@contextmanager
def every_logger_at_debug(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """DEBUG for every logger that exists now, non-propagating ones (uvicorn's) captured too."""
    caplog.set_level(logging.DEBUG)
    attached = []
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger):
            caplog.set_level(logging.DEBUG, logger=name)
            if not logger.propagate:
                logger.addHandler(caplog.handler)
                attached.append(logger)
    try:
        yield
    finally:
        for logger in attached:
            logger.removeHandler(caplog.handler)


def logged_text(record: logging.LogRecord) -> str:
    """What any handler could write of the record: the message, its arguments, the traceback."""
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return "\n".join([formatter.format(record), repr(record.msg), repr(record.args)])


async def offer_token_on_a_socket(url: str, token: str, operation: dict[str, Any]) -> None:
    """connection_init with `token`; once accepted, one operation that fails unexpectedly."""
    async with GraphQLSocket.open(url, business_id=None) as socket:
        await socket.send(
            {"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"}}
        )
        try:
            if (await socket.receive())["type"] == "connection_ack":
                await socket.subscribe("poison", INGEST, operation)
                await frames_by_operation(socket, wait_s=5, until={"poison"})
        except ConnectionClosed:
            pass  # refused with 4403


async def test_tokens_and_secrets_never_reach_the_logs(
    app: Starlette, client: GraphQLClient, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    tokens = {
        "an admin token": token_for(1),
        "a token without a role": token_for(1, role=None),
        "a token of another secret": issue_token(
            "another-secret-that-is-long-enough-for-hs256", user_id="x", business_id=1
        ),
        "an expired token": issue_token(AUTH_SECRET, user_id="x", business_id=1, lifetime_s=-3600),
        "a token that is no JWT": "not-a-token-but-offered-as-one",
    }
    await connect_channel(client, B1_NUMBER)
    # An unexpected error, logged with its traceback: a constraint the code does not know of.
    await db.execute(
        "ALTER TABLE whatsapp_message ADD CONSTRAINT no_poison CHECK (body <> 'poison')"
    )
    poison = ingest_case("INBOUND", "CUSTOMER")
    poison["input"]["body"] = "poison"
    hooks = {
        body: json.dumps(
            delivery(messages=[text_message(f"wamid.{body}", body=body)], phone_number_id=B1_NUMBER)
        ).encode()
        for body in ("hello", "poison")
    }
    signatures = {
        "a valid X-Hub-Signature-256": (
            hooks["hello"],
            signature_of(hooks["hello"], WHATSAPP_APP_SECRET),
        ),
        "a wrong X-Hub-Signature-256": (
            hooks["hello"],
            signature_of(hooks["hello"], "wrong-secret"),
        ),
        "the X-Hub-Signature-256 of a failing delivery": (
            hooks["poison"],
            signature_of(hooks["poison"], WHATSAPP_APP_SECRET),
        ),
    }
    verify_tokens = {
        "WHATSAPP_VERIFY_TOKEN": WHATSAPP_VERIFY_TOKEN,
        "a wrong verify token": "a-wrong-verify-token",
    }

    async with serving(app) as url:
        with every_logger_at_debug(caplog):
            base_url = url.replace("ws://", "http://").removesuffix("/graphql")
            async with httpx.AsyncClient(base_url=base_url) as server:
                for token in tokens.values():
                    await server.post(
                        "/graphql",
                        json={"query": INGEST, "variables": poison},
                        headers={"Authorization": f"Bearer {token}"},
                    )
                    await offer_token_on_a_socket(url, token, poison)
                for body, signature in signatures.values():
                    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": signature}
                    await server.post(WEBHOOK, content=body, headers=headers)
                for verify_token in verify_tokens.values():
                    handshake = {
                        "hub.mode": "subscribe",
                        "hub.verify_token": verify_token,
                        "hub.challenge": "42",
                    }
                    await server.get(WEBHOOK, params=handshake)

    secrets = {
        **{label: token for label, token in tokens.items()},
        **{
            f"the signature of {label}": t.rsplit(".", 1)[-1]
            for label, t in tokens.items()
            if "." in t
        },
        "AUTH_SECRET": AUTH_SECRET,
        "WHATSAPP_APP_SECRET": WHATSAPP_APP_SECRET,
        **{label: signature for label, (_, signature) in signatures.items()},
        **verify_tokens,
    }
    records = [r for r in caplog.records if not r.name.startswith(CLIENT_LOGGERS)]
    # Each path above logged (a test that captured nothing would prove nothing).
    logged = {(r.name, r.levelname) for r in records}
    assert {("wa_inbox.errors", "ERROR"), ("wa_inbox.webhooks", "ERROR")} <= logged, logged
    assert ("wa_inbox.webhooks", "WARNING") in logged, logged
    exposed = sorted(
        {
            f"{record.name} at {record.levelname}: {label}"
            for record in records
            for label, secret in secrets.items()
            if secret in logged_text(record)
        }
    )
    assert not exposed, "\n".join(exposed)
