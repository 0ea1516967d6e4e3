"""How long `make migrate` takes to adopt a legacy database (issue 13): not part of `make test`.

    python -m bench.adoption --messages 1000000     (the README's figure)
    python -m bench.adoption --smoke                (a few thousand messages, for the suite)

Writes the legacy tables as the seed left them into a scratch database with COPY: customers
with duplicate conversations under differently spelled phone keys, redelivered webhooks stored
twice, read and never-read conversations, missing sources. Then times `upgrade_to_head` on it
(adoption and every later migration, one transaction) and prints the figure.
"""

import argparse
import asyncio
import json
import random
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg

from bench.databases import asyncpg_dsn, database_server, scratch_database
from db.migrations import upgrade_to_head

LEGACY_SCHEMA = """
CREATE TABLE whatsapp_conversation (
    id serial PRIMARY KEY, business_id int NOT NULL, canonical_key text NOT NULL,
    phone_e164 text, lead_id text, status text NOT NULL DEFAULT 'open',
    started_at timestamp NOT NULL, last_message_at timestamp, last_read_at timestamp
);
CREATE TABLE whatsapp_message (
    id serial PRIMARY KEY, business_id int NOT NULL,
    conversation_id int NOT NULL REFERENCES whatsapp_conversation (id),
    direction text NOT NULL, source varchar(16), status text NOT NULL, body text,
    provider_message_id varchar(128), created_at timestamp NOT NULL
);
"""
MESSAGES_PER_CONVERSATION = 20
EPOCH = datetime(2025, 1, 1)


def spelling(national: str, choice: int) -> str:
    area, exchange, line = national[:3], national[3:6], national[6:]
    return [
        f"+1{national}",
        f"1{national}",
        f"+1 {area}-{exchange}-{line}",
        f"({area}) {national[3:]}",
    ][choice % 4]


def conversations(count: int, choices: random.Random) -> Iterator[tuple[object, ...]]:
    """(id, business, key, phone, lead, status, started, last message, last read); every
    fifth customer has a second conversation under another spelling of its phone."""
    conversation_id = 0
    customer = 0
    while conversation_id < count:
        national = f"{200 + customer // 10_000_000 % 800}{customer % 10_000_000:07d}"
        business_id = 1 + customer % 10
        for copy in range(2 if customer % 5 == 0 else 1):
            if conversation_id >= count:
                break
            conversation_id += 1
            phone = spelling(national, customer + copy)
            started = EPOCH + timedelta(minutes=choices.randint(0, 500_000))
            read = choices.random() < 0.6
            yield (
                conversation_id,
                business_id,
                f"phone:{business_id}:{phone}",
                phone,
                None,
                "open",
                started,
                started + timedelta(hours=choices.randint(1, 500)),
                started + timedelta(hours=choices.randint(0, 400)) if read else None,
            )
        customer += 1


def messages(
    count: int, conversation_business: list[int], choices: random.Random
) -> Iterator[tuple[object, ...]]:
    """(id, business, conversation, direction, source, status, body, provider id, created);
    2% are a second copy of the message before them (a redelivered webhook)."""
    previous: tuple[object, ...] | None = None
    for message_id in range(1, count + 1):
        if previous is not None and choices.random() < 0.02:
            copy = list(previous)
            copy[0] = message_id
            copy[8] = previous[8] + timedelta(seconds=30)  # type: ignore[operator]
            previous = None
            yield tuple(copy)
            continue
        conversation_id = 1 + (message_id - 1) // MESSAGES_PER_CONVERSATION % len(
            conversation_business
        )
        business_id = conversation_business[conversation_id - 1]
        inbound = choices.random() < 0.6
        source = None if choices.random() < 0.3 else ("customer" if inbound else "bot")
        previous = (
            message_id,
            business_id,
            conversation_id,
            "in" if inbound else "out",
            source,
            "received" if inbound else "delivered",
            f"message {message_id}",
            f"wamid.{message_id}",
            EPOCH + timedelta(minutes=choices.randint(0, 520_000)),
        )
        yield previous


async def load_legacy(url: str, message_count: int, seed: int) -> None:
    choices = random.Random(seed)
    conversation_count = max(1, message_count // MESSAGES_PER_CONVERSATION)
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await connection.execute(LEGACY_SCHEMA)
        rows = list(conversations(conversation_count, choices))
        await connection.copy_records_to_table("whatsapp_conversation", records=rows)
        business_of = [int(row[1]) for row in rows]  # type: ignore[call-overload]
        await connection.copy_records_to_table(
            "whatsapp_message", records=messages(message_count, business_of, choices)
        )
        for table in ("whatsapp_conversation", "whatsapp_message"):
            await connection.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table}"
            )
    finally:
        await connection.close()


async def run(message_count: int, seed: int) -> dict[str, object]:
    with (
        tempfile.TemporaryDirectory(prefix="wa-inbox-adoption-") as scratch,
        database_server(Path(scratch)) as (server, where),
    ):
        async with scratch_database(server, "wa_inbox_adoption") as url:
            started = time.perf_counter()
            await load_legacy(url, message_count, seed)
            loaded = time.perf_counter() - started
            started = time.perf_counter()
            await asyncio.to_thread(upgrade_to_head, url)
            adopted = time.perf_counter() - started
            connection = await asyncpg.connect(asyncpg_dsn(url))
            try:
                kept = await connection.fetchval("SELECT count(*) FROM whatsapp_message")
                threads = await connection.fetchval("SELECT count(*) FROM whatsapp_conversation")
            finally:
                await connection.close()
    return {
        "legacy_messages": message_count,
        "messages_after": kept,
        "threads_after": threads,
        "load_seconds": round(loaded, 1),
        "adoption_seconds": round(adopted, 1),
        "server": where,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--smoke", action="store_true", help="4,000 messages")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    result = asyncio.run(run(4_000 if args.smoke else args.messages, args.seed))
    print(
        f"adopted {result['legacy_messages']:,} legacy messages "
        f"({result['messages_after']:,} after removing copies, {result['threads_after']:,} "
        f"threads) in {result['adoption_seconds']} s (COPY load {result['load_seconds']} s; "
        f"{result['server']})"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
