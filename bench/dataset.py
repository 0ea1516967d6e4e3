"""Reproducible benchmark data: one busy business plus noise from others, loaded with COPY.

    sizes: tiny (smoke runs), small (1,000 threads, 20,000 messages),
           large (20,000 threads, 1,000,000 messages), each plus 10% noise from 9 other
           businesses.

The same seed gives the same rows. Threads get a realistic mix: about a third read up to
their end, the rest with a read point somewhere inside; messages alternate customer and bot
turns, 2% historical, 1% deleted. Unread state is written as the application keeps it
(per-thread `message_seq` / `read_seq`, unread counters per thread and per business shard),
so the server sees exactly what ingest would build.
"""

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

BUSINESS_ID = 1
NOISE_BUSINESSES = tuple(range(2, 11))
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Size:
    name: str
    threads: int
    messages: int
    noise_fraction: float = 0.1


SIZES = {
    "tiny": Size("tiny", threads=20, messages=400),
    "small": Size("small", threads=1_000, messages=20_000),
    "large": Size("large", threads=20_000, messages=1_000_000),
}


@dataclass(frozen=True)
class LoadedDataset:
    size: Size
    business_id: int
    rows_by_business: dict[int, int]
    long_thread_id: int | None = None


_CONVERSATION_COLUMNS = (
    "id",
    "business_id",
    "canonical_key",
    "phone_e164",
    "status",
    "started_at",
    "last_message_at",
    "last_read_at",
    "message_seq",
    "read_seq",
)
_MESSAGE_COLUMNS = (
    "id",
    "business_id",
    "conversation_id",
    "seq",
    "provider_message_id",
    "direction",
    "source",
    "status",
    "body",
    "sent_at",
    "created_at",
    "historical",
    "message_type",
)


# The counters the application keeps as it writes, computed once for rows loaded by COPY
# (the same statements as migration 0004's backfill).
REBUILD_UNREAD_COUNTERS = """
UPDATE whatsapp_conversation c
SET unread_count = counted.unread
FROM (
    SELECT m.conversation_id, count(*) AS unread
    FROM whatsapp_message m
    JOIN whatsapp_conversation c2 ON c2.id = m.conversation_id
    WHERE m.direction = 'in' AND NOT m.historical AND m.status <> 'deleted'
      AND m.message_type <> 'system' AND m.seq > c2.read_seq
    GROUP BY m.conversation_id
) counted
WHERE counted.conversation_id = c.id;
DELETE FROM whatsapp_business_unread;
INSERT INTO whatsapp_business_unread (business_id, shard, unread)
SELECT business_id, (id % 16)::smallint, sum(unread_count)
FROM whatsapp_conversation
GROUP BY business_id, (id % 16);
"""


class _Ids:
    def __init__(self) -> None:
        self.conversation = 0
        self.message = 0


def _split(total: int, parts: int, rng: random.Random) -> list[int]:
    """`total` spread over `parts` with a long tail (a few busy threads, many quiet ones)."""
    weights = [rng.paretovariate(1.5) for _ in range(parts)]
    scale = total / sum(weights)
    counts = [max(1, int(weight * scale)) for weight in weights]
    counts[0] += total - sum(counts)
    if counts[0] < 1:
        # The rounding overshot: take the excess from the busiest threads.
        excess = 1 - counts[0]
        counts[0] = 1
        for index in sorted(range(1, parts), key=counts.__getitem__, reverse=True):
            take = min(excess, counts[index] - 1)
            counts[index] -= take
            excess -= take
            if not excess:
                break
    return counts


def _business_rows(
    business_id: int,
    threads: int,
    messages: int,
    rng: random.Random,
    ids: _Ids,
    long_thread_messages: int = 0,
) -> tuple[list[tuple[Any, ...]], Iterator[tuple[Any, ...]], int | None]:
    counts = _split(messages - long_thread_messages, threads, rng)
    if long_thread_messages:
        counts[0] = long_thread_messages
    conversations = []
    plans = []
    long_thread_id = None
    for index, count in enumerate(counts):
        ids.conversation += 1
        conversation_id = ids.conversation
        if index == 0 and long_thread_messages:
            long_thread_id = conversation_id
        started = EPOCH + timedelta(minutes=rng.randrange(0, 60 * 24 * 300))
        step = timedelta(seconds=rng.randrange(30, 3600))
        last = started + step * (count - 1)
        read_seq = count if rng.random() < 0.33 else rng.randrange(0, count + 1)
        phone = f"+1555{business_id:02d}{index:07d}"
        conversations.append(
            (
                conversation_id,
                business_id,
                f"phone:{business_id}:{phone}",
                phone,
                "open",
                started,
                last,
                started + step * max(read_seq - 1, 0) if read_seq else None,
                count,
                read_seq,
            )
        )
        plans.append((conversation_id, count, started, step))

    def message_rows() -> Iterator[tuple[Any, ...]]:
        for conversation_id, count, started, step in plans:
            for seq in range(1, count + 1):
                ids.message += 1
                inbound = seq % 2 == 1
                sent_at = started + step * (seq - 1)
                roll = rng.random()
                yield (
                    ids.message,
                    business_id,
                    conversation_id,
                    seq,
                    f"wamid.bench.{business_id}.{ids.message}",
                    "in" if inbound else "out",
                    "customer" if inbound else "bot",
                    ("deleted" if roll < 0.01 else "received")
                    if inbound
                    else ("read" if roll < 0.5 else "delivered"),
                    f"message {seq} of thread {conversation_id}",
                    sent_at,
                    sent_at,
                    0.01 <= roll < 0.03,
                    "text",
                )

    return conversations, message_rows(), long_thread_id


async def load(
    connection: asyncpg.Connection,
    size: Size,
    *,
    seed: int = 7,
    long_thread_messages: int = 0,
) -> LoadedDataset:
    """Fill an empty, migrated database with `size` (COPY, a batch per business)."""
    rng = random.Random(seed)
    ids = _Ids()
    rows_by_business: dict[int, int] = {}
    long_thread_id = None
    plan = [(BUSINESS_ID, size.threads, size.messages, long_thread_messages)]
    noise_threads = max(1, int(size.threads * size.noise_fraction) // len(NOISE_BUSINESSES))
    noise_messages = max(
        noise_threads, int(size.messages * size.noise_fraction) // len(NOISE_BUSINESSES)
    )
    plan += [(business, noise_threads, noise_messages, 0) for business in NOISE_BUSINESSES]
    for business_id, threads, messages, long_messages in plan:
        conversations, message_rows, long_id = _business_rows(
            business_id, threads, messages, rng, ids, long_messages
        )
        long_thread_id = long_thread_id or long_id
        await connection.copy_records_to_table(
            "whatsapp_conversation", records=conversations, columns=_CONVERSATION_COLUMNS
        )
        batch: list[tuple[Any, ...]] = []
        for row in message_rows:
            batch.append(row)
            if len(batch) == 50_000:
                await connection.copy_records_to_table(
                    "whatsapp_message", records=batch, columns=_MESSAGE_COLUMNS
                )
                batch.clear()
        if batch:
            await connection.copy_records_to_table(
                "whatsapp_message", records=batch, columns=_MESSAGE_COLUMNS
            )
        rows_by_business[business_id] = messages
    # Rows were given explicit ids: move the identity sequences past them.
    await connection.execute(
        "SELECT setval(pg_get_serial_sequence('whatsapp_conversation', 'id'), $1)",
        ids.conversation,
    )
    await connection.execute(
        "SELECT setval(pg_get_serial_sequence('whatsapp_message', 'id'), $1)", ids.message
    )
    await connection.execute(REBUILD_UNREAD_COUNTERS)
    # Every table, the counters' too: autovacuum may be off (it is on the test machine), and
    # without statistics PostgreSQL once chose a plan 500x slower here.
    await connection.execute("ANALYZE")
    return LoadedDataset(size, BUSINESS_ID, rows_by_business, long_thread_id)
