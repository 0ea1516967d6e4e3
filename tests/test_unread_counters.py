"""Unread counters always equal the unread rule (issue 7).

Migration 0004 keeps each thread's `whatsapp_conversation.unread_count` and each business's
total in shard rows of `whatsapp_business_unread` (shard = thread id % 16), changed in the
transaction that changes what is unread. The tests compare the counters, and what the API
shows from them, with the defining SQL of tests/test_unread.py: after every step of random
interleavings (ingest of every kind, markRead, deletions, thread status changes, thread
merges through webhooks, a second business alongside), after many concurrent writers and
readers, and after the migration's backfill of existing history.
"""

import asyncio
import contextlib
import itertools
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import httpx
import hypothesis
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from hypothesis import HealthCheck
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from db.migrations import PROJECT_ROOT
from db.tables import UNREAD_SHARDS
from gql.app import create_app
from gql.settings import Settings
from tests.conftest import GraphQLClient, asyncpg_dsn, ingest
from tests.test_unread import (
    MARK_READ,
    UNREAD_BY_THREAD_SQL,
    all_threads,
    badge,
    error_code,
    mark_read,
    national_spelling,
)
from tests.webhooks import connect_channel, delivery, post_delivery, text_message

T = TypeVar("T")

DELETE_MESSAGE = """
mutation Delete($id: ID!) { deleteMessage(id: $id) { id threadId status } }
"""

SET_THREAD_STATUS = """
mutation SetStatus($threadId: ID!, $status: ThreadStatus!) {
  setThreadStatus(threadId: $threadId, status: $status) { id status unreadCount }
}
"""

STORED_THREAD_COUNTERS_SQL = """
SELECT id, unread_count FROM whatsapp_conversation WHERE business_id = $1
"""

STORED_SHARDS_SQL = """
SELECT shard, unread FROM whatsapp_business_unread WHERE business_id = $1
"""

# Everything a test stores, so each example of the state machine starts from nothing
# (channels stay connected).
STORED_HISTORY_TABLES = (
    "whatsapp_message, whatsapp_conversation_alias, whatsapp_conversation, "
    "whatsapp_business_unread, whatsapp_pending_status, whatsapp_webhook_rejection, "
    "whatsapp_thread_merge, whatsapp_pending_revision, whatsapp_outbox"
)

OUTBOUND_SOURCES = ["BOT", "AUTOMATION", "HUMAN"]


async def assert_counters_equal_the_definition(
    client: GraphQLClient, db: asyncpg.Connection, business_id: int
) -> dict[str, int]:
    """The business's stored counters and what the API shows, against the defining SQL.

    Returns the unread count of each thread by GraphQL id.
    """
    defined = {
        str(row["id"]): row["unread"] for row in await db.fetch(UNREAD_BY_THREAD_SQL, business_id)
    }
    stored = {
        str(row["id"]): row["unread_count"]
        for row in await db.fetch(STORED_THREAD_COUNTERS_SQL, business_id)
    }
    assert stored == defined, f"business {business_id}: thread counters differ from the rule"
    total = sum(defined.values())
    shards = {row["shard"]: row["unread"] for row in await db.fetch(STORED_SHARDS_SQL, business_id)}
    assert min(shards.values(), default=0) >= 0, shards
    assert sum(shards.values()) == total, f"business {business_id}: shard rows {shards}"
    # Shard by shard too: a shard counted low goes negative (its CHECK then fails a later
    # write) even while the total is right.
    expected_shards = Counter[int]()
    for thread_id, unread in defined.items():
        expected_shards[int(thread_id) % UNREAD_SHARDS] += unread
    assert {shard: unread for shard, unread in shards.items() if unread} == {
        shard: unread for shard, unread in expected_shards.items() if unread
    }, f"business {business_id}: shard rows {shards} differ from the rule"

    scoped = client.as_business(business_id)
    shown = {node["id"]: node["unreadCount"] for node in await all_threads(scoped)}
    assert shown == defined, f"business {business_id}: threads' unreadCount differ from the rule"
    assert await badge(scoped) == total
    listed_unread = {node["id"] for node in await all_threads(scoped, unread_only=True)}
    assert listed_unread == {thread_id for thread_id, unread in defined.items() if unread > 0}
    return defined


async def defined_unread_of_thread(db: asyncpg.Connection, business_id: int, thread_id: str) -> int:
    defined: dict[str, int] = {
        str(row["id"]): row["unread"] for row in await db.fetch(UNREAD_BY_THREAD_SQL, business_id)
    }
    return defined[thread_id]


async def defined_total_unread(db: asyncpg.Connection, business_id: int) -> int:
    return sum(row["unread"] for row in await db.fetch(UNREAD_BY_THREAD_SQL, business_id))


@contextlib.asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[GraphQLClient]:
    """An app of this test's own (its lifespan included), and a client of business 1."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        # Nothing here sends, and the machines TRUNCATE between examples: its
        # AccessExclusiveLocks and a sender's poll (the outbox, then messages) deadlock.
        await app.state.sender.stop()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield GraphQLClient(http, business_id=1)


# --- the rule after every step of random interleavings -------------------------------------

# Business 1's customers. The first two also write from WhatsApp usernames (business-scoped
# user ids, two each, as after a re-registration): a `user:` thread until a message names both,
# which merges it into the phone thread.
CUSTOMERS = ["+14155550101", "+14155550102", "+14155550103"]
USERNAMES = [(phone, f"US.{phone[-4:]}.{n}") for phone in CUSTOMERS[:2] for n in (1, 2)]
OTHER_BUSINESS_CUSTOMERS = ["+14155550201", "+14155550202"]
# Few provider ids, shared by every rule and both businesses, so redeliveries happen often.
POOLED_PROVIDER_IDS = [f"wamid.pooled.{n}" for n in range(6)]
provider_ids = st.none() | st.sampled_from(POOLED_PROVIDER_IDS)


@dataclass
class World:
    """What every example of the state machine shares: one app, one client, one connection."""

    runner: asyncio.Runner
    client: GraphQLClient
    db: asyncpg.Connection
    closing: contextlib.AsyncExitStack

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coroutine)


@dataclass(frozen=True)
class StoredMessage:
    business_id: int
    message_id: str


class MachineInAWorld(RuleBasedStateMachine):
    """A state machine of the shared World, each example starting from an empty history."""

    def __init__(self, world: World) -> None:
        super().__init__()
        self.world = world
        self.client = world.client
        self.db = world.db
        world.run(self.db.execute(f"TRUNCATE {STORED_HISTORY_TABLES} RESTART IDENTITY"))
        self.steps = itertools.count()


class UnreadCountersMachine(MachineInAWorld):
    """Random interleavings through the API; the counters are compared after every step."""

    messages = Bundle("messages")

    def __init__(self, world: World) -> None:
        super().__init__(world)
        # Every thread id of business 1 seen, also those merged away since (then NOT_FOUND).
        self.thread_ids: list[str] = []
        # Message id of each provider id stored, per business.
        self.provider_ids: dict[int, dict[str, str]] = {1: {}, 2: {}}

    # -- ingest, through GraphQL --

    def ingest(self, business_id: int, **fields: Any) -> StoredMessage:
        provider_id = fields.get("providerMessageId")
        stored_before = self.provider_ids[business_id].get(provider_id) if provider_id else None
        outcome = self.world.run(
            ingest(self.client.as_business(business_id), body=f"step {next(self.steps)}", **fields)
        )
        message_id = outcome["message"]["id"]
        if stored_before is not None:
            assert outcome["duplicate"] is True
            assert message_id == stored_before
        else:
            assert outcome["duplicate"] is False
            if provider_id is not None:
                self.provider_ids[business_id][provider_id] = message_id
        thread_id = outcome["thread"]["id"]
        if business_id == 1:
            self.saw_thread(thread_id)
        # The thread in the response carries the counter the ingest committed.
        defined = self.world.run(defined_unread_of_thread(self.db, business_id, thread_id))
        assert outcome["thread"]["unreadCount"] == defined, outcome
        return StoredMessage(business_id, message_id)

    @rule(target=messages, phone=st.sampled_from(CUSTOMERS), provider_id=provider_ids)
    def ingest_inbound(self, phone: str, provider_id: str | None) -> StoredMessage:
        return self.ingest(1, phone=phone, providerMessageId=provider_id)

    @rule(
        target=messages,
        phone=st.sampled_from(CUSTOMERS),
        source=st.sampled_from(OUTBOUND_SOURCES),
        provider_id=provider_ids,
    )
    def ingest_outbound(self, phone: str, source: str, provider_id: str | None) -> StoredMessage:
        return self.ingest(
            1, phone=phone, direction="OUTBOUND", source=source, providerMessageId=provider_id
        )

    @rule(target=messages, phone=st.sampled_from(CUSTOMERS), provider_id=provider_ids)
    def ingest_historical(self, phone: str, provider_id: str | None) -> StoredMessage:
        return self.ingest(
            1,
            phone=phone,
            historical=True,
            sentAt="2024-06-01T12:00:00Z",
            providerMessageId=provider_id,
        )

    @rule(
        target=messages,
        phone=st.sampled_from(CUSTOMERS),
        minutes_before_the_read=st.integers(min_value=1, max_value=600),
        provider_id=provider_ids,
    )
    def ingest_late(
        self, phone: str, minutes_before_the_read: int, provider_id: str | None
    ) -> StoredMessage:
        """A webhook that arrives after markRead, with a provider timestamp before it."""
        last_read_at: datetime | None = self.world.run(
            self.db.fetchval(
                "SELECT max(last_read_at) FROM whatsapp_conversation "
                "WHERE business_id = 1 AND phone_e164 = $1",
                phone,
            )
        )
        sent_at = (last_read_at or datetime.now(UTC)) - timedelta(minutes=minutes_before_the_read)
        return self.ingest(
            1, phone=phone, sentAt=sent_at.isoformat(), providerMessageId=provider_id
        )

    # -- ingest, through the WhatsApp webhook: merges a username thread into the phone thread --

    def deliver(self, message: dict[str, Any]) -> StoredMessage:
        provider_id = message["id"]
        redelivered = provider_id in self.provider_ids[1]
        response = self.world.run(post_delivery(self.client.http, delivery(messages=[message])))
        assert response.status_code == 200, response.text
        report = response.json()
        assert report["rejected"] == 0, report
        assert (report["stored"], report["duplicates"]) == ((0, 1) if redelivered else (1, 0))
        message_id = str(
            self.world.run(
                self.db.fetchval(
                    "SELECT id FROM whatsapp_message "
                    "WHERE business_id = 1 AND provider_message_id = $1",
                    provider_id,
                )
            )
        )
        self.provider_ids[1][provider_id] = message_id
        return StoredMessage(1, message_id)

    def fresh_webhook_provider_id(self) -> str:
        return f"wamid.webhook.{next(self.steps)}"

    @initialize(
        target=messages,
        counts=st.lists(
            st.integers(min_value=1, max_value=3), min_size=len(USERNAMES), max_size=len(USERNAMES)
        ),
    )
    def usernames_write_first(self, counts: list[int]) -> MultipleResults[StoredMessage]:
        """Username threads from the start, so that later steps read, delete in and merge them."""
        stored = [
            self.deliver(
                text_message(
                    self.fresh_webhook_provider_id(),
                    sender=None,
                    user_id=user_id,
                    timestamp=int(datetime.now(UTC).timestamp()),
                )
            )
            for (_, user_id), count in zip(USERNAMES, counts, strict=True)
            for _ in range(count)
        ]
        return multiple(*stored)

    @rule(target=messages, customer=st.sampled_from(USERNAMES), provider_id=provider_ids)
    def deliver_from_username_only(
        self, customer: tuple[str, str], provider_id: str | None
    ) -> StoredMessage:
        _, user_id = customer
        return self.deliver(
            text_message(
                provider_id or self.fresh_webhook_provider_id(),
                sender=None,
                user_id=user_id,
                timestamp=int(datetime.now(UTC).timestamp()),
            )
        )

    @rule(target=messages, customer=st.sampled_from(USERNAMES))
    def deliver_from_phone_and_username(self, customer: tuple[str, str]) -> StoredMessage:
        # Always a new provider id: a redelivery would be skipped before any merge.
        phone, user_id = customer
        return self.deliver(
            text_message(
                self.fresh_webhook_provider_id(),
                sender=phone.removeprefix("+"),
                user_id=user_id,
                timestamp=int(datetime.now(UTC).timestamp()),
            )
        )

    # -- markRead --

    def thread_exists(self, business_id: int, thread_id: str) -> bool:
        return self.current_thread_id(business_id, thread_id) is not None

    def current_thread_id(self, business_id: int, thread_id: str) -> str | None:
        """The thread an id leads to: itself, or the thread it was merged into (old links)."""
        found = self.world.run(
            self.db.fetchval(
                "SELECT coalesce("
                "  (SELECT id FROM whatsapp_conversation WHERE id = $1 AND business_id = $2),"
                "  (SELECT into_conversation_id FROM whatsapp_thread_merge"
                "   WHERE merged_conversation_id = $1 AND business_id = $2))",
                int(thread_id),
                business_id,
            )
        )
        return None if found is None else str(found)

    def mark_read(self, business_id: int, expected_thread_id: str | None, **arguments: str) -> None:
        scoped = self.client.as_business(business_id)
        if expected_thread_id is None:
            code = self.world.run(error_code(scoped, MARK_READ, arguments))
            assert code == "NOT_FOUND", arguments
            return
        result = self.world.run(mark_read(scoped, **arguments))
        assert result["thread"]["id"] == expected_thread_id
        assert result["thread"]["unreadCount"] == 0
        defined_total = self.world.run(defined_total_unread(self.db, business_id))
        assert result["totalUnread"] == defined_total, result

    @precondition(lambda self: self.thread_ids)
    @rule(data=st.data())
    def mark_read_by_thread_id(self, data: st.DataObject) -> None:
        thread_id = data.draw(st.sampled_from(self.thread_ids), label="thread_id")
        self.mark_read(1, self.current_thread_id(1, thread_id), threadId=thread_id)

    @rule(phone=st.sampled_from(CUSTOMERS), spelled_nationally=st.booleans())
    def mark_read_by_phone(self, phone: str, spelled_nationally: bool) -> None:
        thread_id = self.world.run(
            self.db.fetchval(
                "SELECT id FROM whatsapp_conversation WHERE business_id = 1 AND phone_e164 = $1",
                phone,
            )
        )
        spelling = national_spelling(phone) if spelled_nationally else phone
        self.mark_read(1, None if thread_id is None else str(thread_id), phone=spelling)

    @precondition(lambda self: self.thread_ids)
    @rule(data=st.data())
    def mark_read_of_a_thread_of_the_other_business(self, data: st.DataObject) -> None:
        thread_id = data.draw(st.sampled_from(self.thread_ids), label="thread_id")
        self.mark_read(2, None, threadId=thread_id)

    # -- deleting messages, closing and reopening threads --

    @rule(message=messages, by_owner=st.sampled_from([True, True, True, False]))
    def delete_message(self, message: StoredMessage, by_owner: bool) -> None:
        """Any stored message: inbound or not, read or not, deleted already or not."""
        business_id = message.business_id if by_owner else 3 - message.business_id
        scoped = self.client.as_business(business_id)
        variables = {"id": message.message_id}
        if not by_owner:
            code = self.world.run(error_code(scoped, DELETE_MESSAGE, variables))
            assert code == "NOT_FOUND", variables
            return
        deleted = self.world.run(scoped.execute(DELETE_MESSAGE, variables))["deleteMessage"]
        assert deleted["id"] == message.message_id
        assert deleted["status"] == "DELETED"

    @precondition(lambda self: self.thread_ids)
    @rule(data=st.data(), status=st.sampled_from(["CLOSED", "OPEN"]))
    def set_thread_status(self, data: st.DataObject, status: str) -> None:
        thread_id = data.draw(st.sampled_from(self.thread_ids), label="thread_id")
        variables = {"threadId": thread_id, "status": status}
        if not self.thread_exists(1, thread_id):
            code = self.world.run(error_code(self.client, SET_THREAD_STATUS, variables))
            assert code == "NOT_FOUND", variables
            return
        thread = self.world.run(self.client.execute(SET_THREAD_STATUS, variables))
        assert thread["setThreadStatus"]["status"] == status
        assert thread["setThreadStatus"]["id"] == self.current_thread_id(1, thread_id)
        defined = self.world.run(
            defined_unread_of_thread(self.db, 1, thread["setThreadStatus"]["id"])
        )
        assert thread["setThreadStatus"]["unreadCount"] == defined, thread

    # -- a second business alongside --

    @rule(
        target=messages,
        phone=st.sampled_from(OTHER_BUSINESS_CUSTOMERS),
        inbound=st.booleans(),
        provider_id=provider_ids,
    )
    def ingest_for_the_other_business(
        self, phone: str, inbound: bool, provider_id: str | None
    ) -> StoredMessage:
        direction = {} if inbound else {"direction": "OUTBOUND", "source": "BOT"}
        return self.ingest(2, phone=phone, providerMessageId=provider_id, **direction)

    @rule(phone=st.sampled_from(OTHER_BUSINESS_CUSTOMERS))
    def mark_read_for_the_other_business(self, phone: str) -> None:
        thread_id = self.world.run(
            self.db.fetchval(
                "SELECT id FROM whatsapp_conversation WHERE business_id = 2 AND phone_e164 = $1",
                phone,
            )
        )
        self.mark_read(2, None if thread_id is None else str(thread_id), phone=phone)

    # -- the rule --

    def saw_thread(self, thread_id: str) -> None:
        if thread_id not in self.thread_ids:
            self.thread_ids.append(thread_id)

    @invariant()
    def counters_equal_the_definition(self) -> None:
        for business_id in (1, 2):
            defined = self.world.run(
                assert_counters_equal_the_definition(self.client, self.db, business_id)
            )
            if business_id == 1:
                for thread_id in sorted(defined, key=int):
                    self.saw_thread(thread_id)


async def open_world(runner: asyncio.Runner, settings: Settings) -> World:
    assert settings.database_url is not None
    world_exits = contextlib.AsyncExitStack()
    client = await world_exits.enter_async_context(running_app(settings))
    db = await asyncpg.connect(asyncpg_dsn(settings.database_url))
    world_exits.push_async_callback(db.close)
    await connect_channel(client)
    return World(runner, client, db, world_exits)


def run_machine_in_a_world(
    settings: Settings, machine: Callable[[World], RuleBasedStateMachine], *, max_examples: int
) -> None:
    """Runs a state machine on an event loop of its own (its rules are synchronous),
    bounded and derandomized, every example in one World."""
    with asyncio.Runner() as runner:
        world = runner.run(open_world(runner, settings))
        try:
            run_state_machine_as_test(
                lambda: machine(world),
                settings=hypothesis.settings(
                    max_examples=max_examples,
                    stateful_step_count=30,
                    deadline=None,
                    derandomize=True,
                    database=None,
                    suppress_health_check=[HealthCheck.too_slow],
                ),
            )
        finally:
            runner.run(world.closing.aclose())


async def test_unread_counters_equal_the_rule_after_every_step_of_random_interleavings(
    settings: Settings,
) -> None:
    # In a thread, so the machine's own event loop never meets the session's loop.
    await asyncio.to_thread(
        run_machine_in_a_world, settings, UnreadCountersMachine, max_examples=25
    )


# --- many writers and readers at once ------------------------------------------------------


async def test_many_concurrent_writers_and_readers_leave_counters_equal_to_the_rule(
    client: GraphQLClient, db: asyncpg.Connection
) -> None:
    """Every request must succeed: no NOT_FOUND is expected either, since each phone's thread
    exists before the storm and survives the merges, and deleted messages stay stored."""
    await connect_channel(client)
    phones = [f"+1415555{300 + n:04d}" for n in range(10)]
    thread_ids: dict[str, str] = {}
    message_ids: list[str] = []
    # Messages of username threads, which merges move while deleters pick them.
    username_message_ids: list[str] = []
    db_in_use = asyncio.Lock()  # one connection, many tasks
    # A thread per phone before the storm, so markRead by phone always finds one.
    for phone in phones:
        opening = await ingest(client, phone=phone, body="opening")
        thread_ids[phone] = opening["thread"]["id"]
        message_ids.append(opening["message"]["id"])
    counts_seen: list[int] = []
    # Markers read only while writers write, so the storm ends with something unread to
    # compare (writers that store in one statement finish well before 45 marks otherwise).
    writing = [12]

    async def writer(n: int) -> None:
        choices = random.Random(n)
        for i in range(20):
            kind = choices.choice(["inbound", "inbound", "redelivered", "outbound", "historical"])
            fields: dict[str, Any] = {"phone": choices.choice(phones), "body": f"{n}.{i}"}
            if kind == "inbound":
                fields["providerMessageId"] = f"wamid.writer.{n}.{i}"
                if choices.random() < 0.3:  # late: sent before any read point of this test
                    fields["sentAt"] = "2020-01-01T00:00:00Z"
            elif kind == "redelivered":
                # One pool for every writer: concurrent deliveries of one provider id race.
                fields["providerMessageId"] = f"wamid.shared.{choices.randrange(12)}"
            elif kind == "outbound":
                fields.update(direction="OUTBOUND", source=choices.choice(OUTBOUND_SOURCES))
            else:
                fields.update(historical=True, sentAt="2024-06-01T12:00:00Z")
            outcome = await ingest(client, **fields)
            message_ids.append(outcome["message"]["id"])
            counts_seen.append(outcome["thread"]["unreadCount"])
        writing[0] -= 1

    async def marker(n: int) -> None:
        choices = random.Random(100 + n)
        for _ in range(15):
            if not writing[0]:
                break
            phone = choices.choice(phones)
            if choices.random() < 0.5:
                result = await mark_read(client, threadId=thread_ids[phone])
            else:
                result = await mark_read(client, phone=national_spelling(phone))
            assert result["thread"]["id"] == thread_ids[phone]
            assert result["thread"]["unreadCount"] == 0
            counts_seen.append(result["totalUnread"])

    async def deleter(n: int) -> None:
        choices = random.Random(200 + n)
        for _ in range(15):
            pick_from = username_message_ids if choices.random() < 0.4 else message_ids
            message_id = choices.choice(pick_from or message_ids)
            deleted = await client.execute(DELETE_MESSAGE, {"id": message_id})
            assert deleted["deleteMessage"]["status"] == "DELETED"

    async def status_toggler() -> None:
        choices = random.Random(300)
        for i in range(20):
            status = ["CLOSED", "OPEN"][i % 2]
            variables = {"threadId": thread_ids[choices.choice(phones)], "status": status}
            changed = (await client.execute(SET_THREAD_STATUS, variables))["setThreadStatus"]
            assert changed["status"] == status
            counts_seen.append(changed["unreadCount"])

    async def username_customer(n: int) -> None:
        """Writes from a username first, then names the phone too: a merge amid the storm."""
        user_id = f"US.8{n:03d}"
        for i in range(3):
            provider_id = f"wamid.user.{n}.{i}"
            message = text_message(provider_id, sender=None, user_id=user_id)
            response = await post_delivery(client.http, delivery(messages=[message]))
            assert response.status_code == 200, response.text
            assert response.json()["stored"] == 1
            async with db_in_use:
                stored_id = await db.fetchval(
                    "SELECT id FROM whatsapp_message WHERE provider_message_id = $1", provider_id
                )
            username_message_ids.append(str(stored_id))
        both = text_message(f"wamid.both.{n}", sender=phones[n].removeprefix("+"), user_id=user_id)
        response = await post_delivery(client.http, delivery(messages=[both]))
        assert response.status_code == 200, response.text
        assert response.json()["stored"] == 1

    async def reader() -> None:
        for _ in range(20):
            counts_seen.append(await badge(client))
            counts_seen.extend(node["unreadCount"] for node in await all_threads(client))

    async with asyncio.TaskGroup() as group:
        for n in range(12):
            group.create_task(writer(n))
        for n in range(3):
            group.create_task(marker(n))
        for n in range(2):
            group.create_task(deleter(n))
        group.create_task(status_toggler())
        for n in range(3):
            group.create_task(username_customer(n))
        for _ in range(3):
            group.create_task(reader())

    assert min(counts_seen) >= 0
    defined = await assert_counters_equal_the_definition(client, db, 1)
    # The username threads were merged into their phone threads.
    assert set(defined) == set(thread_ids.values())
    assert sum(defined.values()) > 0  # the storm left something unread to compare


async def wait_for_lock_waiters(db: asyncpg.Connection, count: int) -> None:
    """Until `count` sessions of this database wait on a lock."""
    for _ in range(500):
        waiting = await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        if waiting >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{count} sessions never waited on a lock")


async def test_deleting_a_message_while_its_username_thread_is_merged_deletes_it(
    client: GraphQLClient, db: asyncpg.Connection, database_url: str
) -> None:
    """A delete finds the message's thread, then locks it: a merge that commits in between
    has moved the message and removed that thread. The delete must follow the message (it
    failed as an internal error, NoResultFound, before it did)."""
    await connect_channel(client)
    phone, user_id = "+14155550401", "US.9401"
    await ingest(client, phone=phone, body="from the phone")
    from_username = text_message("wamid.race.username", sender=None, user_id=user_id)
    response = await post_delivery(client.http, delivery(messages=[from_username]))
    assert response.json()["stored"] == 1
    message_id, username_thread_id = await db.fetchrow(
        "SELECT id, conversation_id FROM whatsapp_message WHERE provider_message_id = $1",
        "wamid.race.username",
    )

    # Hold the username thread's row, so the merge and then the delete queue behind it in
    # that order: the merge commits first, while the delete waits to lock the same row.
    holder = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        holding = holder.transaction()
        await holding.start()
        await holder.execute(
            "SELECT 1 FROM whatsapp_conversation WHERE id = $1 FOR UPDATE", username_thread_id
        )
        from_both = text_message("wamid.race.both", sender=phone.removeprefix("+"), user_id=user_id)
        merging = asyncio.create_task(post_delivery(client.http, delivery(messages=[from_both])))
        await wait_for_lock_waiters(db, 1)
        deleting = asyncio.create_task(client.post(DELETE_MESSAGE, {"id": str(message_id)}))
        await wait_for_lock_waiters(db, 2)
        await holding.rollback()
        merged, deleted = await merging, await deleting
    finally:
        await holder.close()

    assert merged.status_code == 200, merged.text
    assert merged.json()["stored"] == 1
    body = deleted.json()
    assert "errors" not in body, body["errors"]
    assert body["data"]["deleteMessage"]["status"] == "DELETED"
    phone_thread_id = await db.fetchval(
        "SELECT conversation_id FROM whatsapp_message WHERE id = $1", message_id
    )
    assert phone_thread_id != username_thread_id
    assert str(phone_thread_id) == body["data"]["deleteMessage"]["threadId"]
    defined = await assert_counters_equal_the_definition(client, db, 1)
    assert defined == {str(phone_thread_id): 2}


# --- the migration's backfill ----------------------------------------------------------------


def alembic_config(database_url: str) -> Config:
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(PROJECT_ROOT / "alembic"))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logging"] = False
    return config


async def store_history_before_counters(db: asyncpg.Connection, business_id: int) -> None:
    """Threads as revision 0003 stored them: read and unread, deleted, historical, late."""
    choices = random.Random(business_id)
    start = datetime(2025, 3, 1, tzinfo=UTC)
    for n in range(20):
        message_count = 0 if n == 0 else choices.randint(1, 8)
        read_seq = choices.randint(0, message_count)
        conversation_id = await db.fetchval(
            """
            INSERT INTO whatsapp_conversation (business_id, canonical_key, phone_e164, status,
                started_at, last_message_at, last_read_at, message_seq, read_seq)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
            RETURNING id
            """,
            business_id,
            f"phone:{business_id}:+1415555{n:04d}",
            f"+1415555{n:04d}",
            choices.choice(["open", "closed"]),
            start,
            start + timedelta(hours=message_count),
            start + timedelta(hours=read_seq) if read_seq else None,
            message_count,
            read_seq,
        )
        for seq in range(1, message_count + 1):
            inbound = choices.random() < 0.7
            await db.execute(
                """
                INSERT INTO whatsapp_message (business_id, conversation_id, seq, direction,
                    source, status, body, sent_at, created_at, historical)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                """,
                business_id,
                conversation_id,
                seq,
                "in" if inbound else "out",
                "customer" if inbound else choices.choice(["bot", "automation", "human"]),
                choices.choice(["received", "received", "deleted"])
                if inbound
                else choices.choice(["sent", "delivered", "read", "deleted"]),
                f"{business_id}.{n}.{seq}",
                # Some sent long before the read point though stored after it (late webhooks).
                start + timedelta(hours=choices.randint(-48, seq)),
                start + timedelta(hours=seq),
                choices.random() < 0.2,
            )


async def test_migration_backfills_counters_equal_to_the_rule_from_existing_history(
    settings: Settings, db: asyncpg.Connection
) -> None:
    assert settings.database_url is not None
    config = alembic_config(settings.database_url)
    # alembic's env.py runs its own event loop: from a thread, not from this test's loop.
    await asyncio.to_thread(command.downgrade, config, "0003")
    assert await db.fetchval("SELECT version_num FROM alembic_version") == "0003"
    for business_id in (1, 2):
        await store_history_before_counters(db, business_id)
    # A business whose whole history is read.
    await db.execute(
        """
        INSERT INTO whatsapp_conversation (business_id, canonical_key, phone_e164, started_at,
            last_message_at, last_read_at, message_seq, read_seq)
        VALUES (3, 'phone:3:+14155550001', '+14155550001', now(), now(), now(), 1, 1)
        """
    )
    await db.execute(
        """
        INSERT INTO whatsapp_message (business_id, conversation_id, seq, direction, source,
            status, sent_at, created_at)
        SELECT 3, id, 1, 'in', 'customer', 'received', now(), now()
        FROM whatsapp_conversation WHERE business_id = 3
        """
    )

    await asyncio.to_thread(command.upgrade, config, "head")

    head = ScriptDirectory.from_config(config).get_current_head()
    assert await db.fetchval("SELECT version_num FROM alembic_version") == head
    async with running_app(settings) as client:
        totals = [
            sum((await assert_counters_equal_the_definition(client, db, business_id)).values())
            for business_id in (1, 2, 3)
        ]
        assert totals[0] > 0
        assert totals[1] > 0
        assert totals[2] == 0
        # The backfilled counters go on from there: a new message counts, markRead clears.
        thread = (await ingest(client.as_business(3), phone="+14155550001", body="new"))["thread"]
        assert thread["unreadCount"] == 1
        await mark_read(client.as_business(3), threadId=thread["id"])
        await assert_counters_equal_the_definition(client, db, 3)
