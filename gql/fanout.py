"""Live updates: committed events fanned out to websocket subscribers, across instances.

Design (each choice answers a failure of a plain Strawberry + broadcaster server):
- Events are published after commit by the unit of work's entry point, queued without
  blocking the request that caused them; one hub task delivers them.
- Subscribers with the same operation, variables and business form an audience: an event is
  executed and serialized once per audience, and the same text is sent to every member.
- Local subscribers are served straight from the publishing process; the pub/sub backend
  only carries events to the other instances, on one channel, so there are no per-channel
  subscribe races and nothing to unregister when a client leaves.
- Every connection has a bounded outbox. Unread-badge events coalesce per thread (latest
  wins); a `newMessage` subscriber that falls too far behind is told to resync and ended.
- The backend listener survives failures: it logs, reconnects with backoff, reports
  degraded on /readyz meanwhile, and afterwards sends every badge subscriber its current
  counts, so no badge stays stale because of events lost during the outage.
"""

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from graphql import GraphQLError, OperationType, get_operation_ast
from graphql.execution import Executor
from graphql.execution.values import get_argument_values
from starlette.websockets import WebSocket

from db.unit_of_work import Sessions, run_unit_of_work
from domain import customer_identities, read_state, threads
from domain.errors import DomainError
from domain.events import (
    InboxEvent,
    MessageStatusChanged,
    MessageStored,
    ThreadMerged,
    ThreadRead,
)
from domain.metrics import InboxMetrics
from gql.arguments import parse_row_id
from gql.auth import Principal
from gql.context import Context, ContextFactory
from gql.errors import shape_error
from gql.execution_plan import OperationPlan
from gql.http import checked_document, response_json
from gql.metrics import LiveMetrics
from gql.operations import Operations
from gql.pubsub import backend_for

log = logging.getLogger("wa_inbox.live")

CHANNEL = "wa_inbox_events"
NEW_MESSAGE = "newMessage"
UNREAD_COUNT_CHANGED = "unreadCountChanged"
THREAD_MERGED = "threadMerged"
MESSAGE_STATUS_CHANGED = "messageStatusChanged"

YIELD_EVERY_MEMBERS = 25

TRANSPORT_WS = "graphql-transport-ws"
LEGACY_WS = "graphql-ws"


@dataclass(frozen=True)
class FanOutLimits:
    outbox_frames: int = 256  # frames a connection may have waiting before newMessage lags
    outbox_hard_limit: int = 1024  # frames of any kind: beyond, the client is not reading
    coalesced_threads: int = 1000  # distinct threads a badge subscriber may have waiting
    pending_events: int = 10_000  # published events waiting for the hub task
    keepalive_s: float = 15.0
    resync_thread_limit: int = 100


class _Continuation:
    """Finishes a coroutine that was started by hand and suspended at its first await."""

    __slots__ = ("_coroutine", "_yielded")

    def __init__(self, coroutine: Coroutine[Any, Any, None], yielded: Any) -> None:
        self._coroutine = coroutine
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, None]:
        value = self._yielded
        while True:
            try:
                received = yield value
            except BaseException as error:
                try:
                    value = self._coroutine.throw(error)
                except StopIteration:
                    return
            else:
                try:
                    value = self._coroutine.send(received)
                except StopIteration:
                    return


def _send_eagerly(coroutine: Coroutine[Any, Any, None]) -> _Continuation | None:
    """Run a send until it completes (None) or has to wait for the socket (its rest).

    A writable websocket takes a frame without suspending, so most deliveries are written
    inline by the fan-out loop: no task, no future, nothing for the garbage collector to
    track per delivery. Only a socket that is not writable gets a task to finish the write.
    """
    try:
        yielded = coroutine.send(None)
    except StopIteration:
        return None
    return _Continuation(coroutine, yielded)


class Outlet:
    """One websocket connection's outbox: frames are written in order, eagerly when possible."""

    __slots__ = (
        "_closing_task",
        "_coalesced",
        "_drain_task",
        "_frames",
        "closed",
        "limits",
        "protocol",
        "websocket",
    )

    def __init__(self, websocket: WebSocket, protocol: str, limits: FanOutLimits) -> None:
        self.websocket = websocket
        self.protocol = protocol
        self.limits = limits
        self.closed = False
        self._frames: deque[str] | None = None
        self._coalesced: dict[tuple[str, int], str] = {}
        self._drain_task: asyncio.Task[None] | None = None
        self._closing_task: asyncio.Task[None] | None = None

    @property
    def backlog(self) -> int:
        return len(self._frames) if self._frames is not None else 0

    def push(self, frame: str) -> None:
        if self.closed:
            return
        frames = self._frames
        if frames is None:
            if self._drain_task is None and not self._coalesced:
                self._write(frame)
                return
            # Only a socket that cannot take a frame now gets a queue (~0.7 KB, issue 15).
            frames = self._frames = deque()
        elif len(frames) >= self.limits.outbox_hard_limit:
            self._give_up()
            return
        frames.append(frame)
        self._flush()

    def _give_up(self) -> None:
        """A client that sends but never reads would grow the outbox forever: close it."""
        log.warning("[WA-LIVE] closing a websocket whose client stopped reading")
        self._gone(OverflowError("outbox full"))
        self._closing_task = asyncio.create_task(
            self.websocket.close(code=1008, reason="client is not reading")
        )

    def push_latest(self, key: tuple[str, int], frame: str) -> None:
        """Queue `frame`, replacing a not yet sent frame of the same key (latest wins)."""
        if self.closed:
            return
        coalesced = self._coalesced
        if key not in coalesced and len(coalesced) >= self.limits.coalesced_threads:
            del coalesced[next(iter(coalesced))]
        coalesced[key] = frame
        self._flush()

    def _waiting(self) -> bool:
        return bool(self._frames or self._coalesced)

    def _next_frame(self) -> str:
        frames = self._frames
        if frames:
            frame = frames.popleft()
            if not frames:
                self._frames = None
            return frame
        key = next(iter(self._coalesced))
        return self._coalesced.pop(key)

    def _write(self, frame: str) -> bool:
        """Write `frame` now, or hand its rest to the drain task; False once the socket is gone."""
        try:
            rest = _send_eagerly(self.websocket.send_text(frame))
        except Exception as failure:
            self._gone(failure)
            return False
        if rest is not None:
            self._drain_task = asyncio.create_task(self._drain(rest))
            return False
        return True

    def _flush(self) -> None:
        if self._drain_task is not None or self.closed:
            return  # the drain task writes what is queued, in order
        while self._waiting():
            if not self._write(self._next_frame()):
                return

    async def _drain(self, rest: _Continuation) -> None:
        try:
            await rest
            while self._waiting():
                await self.websocket.send_text(self._next_frame())
        except Exception as failure:
            self._gone(failure)
        finally:
            self._drain_task = None

    def _gone(self, failure: Exception) -> None:
        # The client is gone; its handler unregisters it when the socket reports the close.
        log.debug("websocket write failed: %s", type(failure).__name__)
        self.closed = True
        self._frames = None
        self._coalesced.clear()

    async def close(self) -> None:
        self.closed = True
        self._frames = None
        self._coalesced.clear()
        task = self._drain_task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _frame(protocol: str, kind: str, operation_id: str, payload: str | None = None) -> str:
    if protocol == LEGACY_WS and kind == "next":
        kind = "data"
    head = f'{{"id":{json.dumps(operation_id)},"type":"{kind}"'
    return head + "}" if payload is None else f'{head},"payload":{payload}}}'


def _errors_payload(protocol: str, errors: list[dict[str, Any]]) -> str:
    # graphql-transport-ws sends a list of errors; the legacy protocol one error object.
    return json.dumps(errors if protocol == TRANSPORT_WS else errors[0], separators=(",", ":"))


class Member:
    """One subscription operation of one connection.

    No task waits on it: `released` tells the connection's handler when the hub ended it
    (a task and an event per subscription cost ~2 KB per subscriber, issue 15).
    """

    __slots__ = ("audience", "operation_id", "outlet", "prefix", "released")

    def __init__(
        self, outlet: Outlet, operation_id: str, released: Callable[[], None] | None
    ) -> None:
        self.outlet = outlet
        self.operation_id = operation_id
        kind = "data" if outlet.protocol == LEGACY_WS else "next"
        self.prefix = f'{{"id":{json.dumps(operation_id)},"type":"{kind}","payload":'
        self.released = released
        self.audience: Audience | None = None

    def end(self, errors: list[dict[str, Any]] | None = None) -> None:
        """Send the final messages of this operation and release its handler."""
        protocol = self.outlet.protocol
        if errors:
            self.outlet.push(
                _frame(protocol, "error", self.operation_id, _errors_payload(protocol, errors))
            )
        if errors is None or protocol == LEGACY_WS:
            self.outlet.push(_frame(protocol, "complete", self.operation_id))
        released, self.released = self.released, None
        if released is not None:
            released()


@dataclass(eq=False)
class Audience:
    """Subscribers of one business sharing one operation and variables: executed once."""

    key: tuple[Any, ...]
    business_id: int
    field_name: str
    thread_filter: int | None
    executor: Executor[Any]
    # The compiled plan of the audience's operation (None: graphql-core runs each event).
    plan: OperationPlan | None
    context: Context
    members: dict[int, Member] = field(default_factory=dict)
    merges_followed: bool = False  # thread_filter looked up through merges already


@dataclass(frozen=True)
class LoadedMessage:
    message: Any
    thread: Any


class FanOutHub:
    """Per-process registry of subscribers and the tasks that feed them."""

    def __init__(
        self,
        *,
        schema: Any,
        sessions: Sessions,
        broadcast_url: str,
        default_region: str,
        metrics: InboxMetrics,
        limits: FanOutLimits | None = None,
        operations: Operations | None = None,
        live_metrics: LiveMetrics | None = None,
    ) -> None:
        self.schema = schema
        self.live_metrics = live_metrics
        self.operations = operations or Operations(schema, metrics)
        self.sessions = sessions
        self.metrics = metrics
        self.contexts = ContextFactory(sessions, default_region, metrics, self.publish)
        self.limits = limits or FanOutLimits()
        self.broadcast_url = broadcast_url
        self.instance_id = uuid.uuid4().hex
        self._backend = backend_for(broadcast_url)
        self._audiences: dict[int, dict[tuple[Any, ...], Audience]] = {}
        self._outlets: set[Outlet] = set()
        # (origin, event or outage start, wall-clock time of the event's commit)
        self._pending: asyncio.Queue[tuple[str, Any, float | None]] = asyncio.Queue(
            self.limits.pending_events
        )
        self._outgoing: asyncio.Queue[tuple[InboxEvent, float | None]] = asyncio.Queue(
            self.limits.pending_events
        )
        self._delivering_committed_at: float | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._outage_since: datetime | None = None
        self.pubsub_connected = self._backend is None

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._deliver_loop(), name="fanout-deliver"))
        self._tasks.append(asyncio.create_task(self._keepalive_loop(), name="fanout-keepalive"))
        if self._backend is not None:
            self._tasks.append(asyncio.create_task(self._listen_loop(), name="fanout-listen"))
            self._tasks.append(asyncio.create_task(self._forward_loop(), name="fanout-forward"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._backend is not None:
            await self._disconnect_backend()

    @property
    def pubsub_state(self) -> dict[str, str]:
        backend = "memory" if self._backend is None else self.broadcast_url.split(":", 1)[0]
        return {"status": "ok" if self.pubsub_connected else "degraded", "backend": backend}

    def registered(self) -> tuple[int, int, int]:
        """(audiences, members, connections) registered now: for tests and /metrics."""
        audiences = [a for per_business in self._audiences.values() for a in per_business.values()]
        return len(audiences), sum(len(a.members) for a in audiences), len(self._outlets)

    # --- connections and subscriptions ---------------------------------------------------

    def open_outlet(self, websocket: WebSocket, protocol: str) -> Outlet:
        outlet = Outlet(websocket, protocol, self.limits)
        self._outlets.add(outlet)
        if self.live_metrics is not None:
            self.live_metrics.websockets_open.inc()
        return outlet

    async def close_outlet(self, outlet: Outlet) -> None:
        if outlet in self._outlets and self.live_metrics is not None:
            self.live_metrics.websockets_open.dec()
        self._outlets.discard(outlet)
        await outlet.close()

    async def subscribe(
        self,
        outlet: Outlet,
        principal: Principal,
        operation_id: str,
        query: str,
        variables: dict[str, Any] | None,
        operation_name: str | None,
        released: Callable[[], None] | None = None,
    ) -> Member | None:
        """Register one subscription; None when it was refused (its error is sent).

        It lasts until `leave` (complete, disconnect) or until the hub ends it (lag), which
        calls `released`.
        """
        member = Member(outlet, operation_id, released)
        try:
            audience = self._audience_for(principal, query, variables, operation_name)
        except GraphQLError as error:
            member.end([dict(shape_error(error, operation_id).formatted)])
            return None
        except DomainError as error:
            member.end([{"message": error.message, "extensions": {"code": error.code}}])
            return None
        try:
            await self._follow_merges(audience)
        except BaseException:
            self._drop_if_empty(audience)
            raise
        audience.members[id(member)] = member
        member.audience = audience
        return member

    async def serve(
        self,
        outlet: Outlet,
        principal: Principal,
        operation_id: str,
        query: str,
        variables: dict[str, Any] | None,
        operation_name: str | None,
    ) -> None:
        """Serve one subscription until it ends (lag) or is cancelled (complete, disconnect)."""
        ended = asyncio.Event()
        member = await self.subscribe(
            outlet, principal, operation_id, query, variables, operation_name, ended.set
        )
        if member is None:
            return
        try:
            await ended.wait()
        finally:
            self.leave(member)

    async def _follow_merges(self, audience: Audience) -> None:
        """A `newMessage(threadId:)` of a thread merged away before it subscribed (an old link)
        follows the thread it was merged into, as one subscribed before the merge does."""
        if audience.thread_filter is None or audience.merges_followed:
            return
        audience.merges_followed = True
        asked = audience.thread_filter
        current = await run_unit_of_work(
            self.sessions,
            lambda session: customer_identities.current_thread_id(
                session, audience.business_id, asked
            ),
            business_id=audience.business_id,
        )
        if audience.thread_filter == asked:  # unless a merge event moved it meanwhile
            audience.thread_filter = current

    def leave(self, member: Member) -> None:
        """Unregister a subscription (complete, disconnect); nothing is sent."""
        audience = member.audience
        if audience is None:
            return
        member.audience = None
        audience.members.pop(id(member), None)
        self._drop_if_empty(audience)

    def _drop_if_empty(self, audience: Audience) -> None:
        if not audience.members:
            per_business = self._audiences.get(audience.business_id, {})
            if per_business.get(audience.key) is audience:
                del per_business[audience.key]
            if not per_business:
                self._audiences.pop(audience.business_id, None)

    def _audience_for(
        self,
        principal: Principal,
        query: str,
        variables: dict[str, Any] | None,
        operation_name: str | None,
    ) -> Audience:
        key = (
            principal.business_id,
            query,
            operation_name,
            json.dumps(variables or {}, sort_keys=True, default=str),
        )
        per_business = self._audiences.get(principal.business_id, {})
        existing = per_business.get(key)
        if existing is not None:
            return existing
        graphql_schema = self.schema._schema
        document, errors = checked_document(self.schema, query)
        if errors:
            raise errors[0]
        assert document is not None
        operation = get_operation_ast(document, operation_name)
        if operation is None or operation.operation is not OperationType.SUBSCRIPTION:
            raise GraphQLError("send queries and mutations over HTTP; this is a subscription")
        context = self.contexts(principal, f"subscription-{principal.business_id}")
        executor = Executor.build(
            graphql_schema,
            document,
            context_value=context,
            raw_variable_values=variables,
            operation_name=operation_name,
        )
        if isinstance(executor, list):
            raise executor[0]
        [root_field] = operation.selection_set.selections
        field_name = root_field.name.value  # type: ignore[attr-defined]
        subscription_type = graphql_schema.subscription_type
        assert subscription_type is not None
        arguments = get_argument_values(
            subscription_type.fields[field_name],
            root_field,  # type: ignore[arg-type]
            executor.variable_values,
        )
        thread_id = arguments.get("threadId")
        audience = Audience(
            key=key,
            business_id=principal.business_id,
            field_name=field_name,
            thread_filter=parse_row_id(thread_id, "threadId") if thread_id is not None else None,
            executor=executor,
            plan=self.operations.plan_for(query, document, operation, executor.variable_values),
            context=context,
        )
        self._audiences.setdefault(principal.business_id, {})[key] = audience
        return audience

    # --- publishing ----------------------------------------------------------------------

    def publish(self, event: InboxEvent | None) -> None:
        """Queue a committed event for delivery; never blocks the request that caused it."""
        if event is None:
            return
        try:
            # Entry points publish once the unit of work committed: this is the commit's time.
            self._pending.put_nowait(("local", event, time.time()))
        except asyncio.QueueFull:
            self.metrics.live_events_dropped += 1
            log.error(
                "[WA-LIVE] event queue full: dropped %s for business_id=%s thread_id=%s",
                type(event).__name__,
                event.business_id,
                event.thread_id,
            )

    async def _deliver_loop(self) -> None:
        while True:
            origin, item, self._delivering_committed_at = await self._pending.get()
            try:
                if origin == "local":
                    # Forwarded first: a failed local delivery must not cost other instances.
                    self._queue_forward(item, self._delivering_committed_at)
                    await self._deliver(item)
                elif origin == "remote":
                    await self._deliver(item)
                else:
                    await self._resync(item)
            except Exception:
                # One event that cannot be delivered must not stop the ones after it.
                log.exception("[WA-LIVE] delivering %r failed", item)

    def _queue_forward(self, event: InboxEvent, committed_at: float | None) -> None:
        """Hand an event to the forwarder, so a slow backend never delays local delivery."""
        if self._backend is None:
            return
        try:
            self._outgoing.put_nowait((event, committed_at))
        except asyncio.QueueFull:
            self._forward_failed(event, "the outgoing queue is full")

    async def _forward_loop(self) -> None:
        assert self._backend is not None
        while True:
            event, committed_at = await self._outgoing.get()
            try:
                await self._backend.publish(
                    CHANNEL, _to_wire(self.instance_id, event, committed_at)
                )
            except Exception as failure:  # logged and counted; the listener reconnects
                self._forward_failed(event, type(failure).__name__)

    def _forward_failed(self, event: InboxEvent, reason: str) -> None:
        self.metrics.pubsub_publish_failures += 1
        log.warning(
            "[WA-LIVE] could not publish to %s (%s): other instances miss an event of "
            "business_id=%s thread_id=%s; their badges resync when pub/sub recovers",
            self.pubsub_state["backend"],
            reason,
            event.business_id,
            event.thread_id,
        )

    # --- delivery ------------------------------------------------------------------------

    async def _deliver(self, event: InboxEvent) -> None:
        audiences = self._audiences.get(event.business_id)
        if not audiences:
            return
        if isinstance(event, ThreadMerged):
            await self._deliver_merge(event, audiences)
            return
        if isinstance(event, MessageStatusChanged):
            # The status is the event's own: nothing to read.
            for audience in list(audiences.values()):
                if audience.field_name == MESSAGE_STATUS_CHANGED and audience.thread_filter in (
                    None,
                    event.thread_id,
                ):
                    await self._send(audience, event, None)
            return
        is_message = isinstance(event, MessageStored)
        readers = [
            a
            for a in audiences.values()
            if is_message
            and a.field_name == NEW_MESSAGE
            and a.thread_filter in (None, event.thread_id)
        ]
        changes_unread = not isinstance(event, MessageStored) or event.changes_unread
        badges = [
            a for a in audiences.values() if changes_unread and a.field_name == UNREAD_COUNT_CHANGED
        ]
        if not readers and not badges:
            return
        # One short unit of work per event and instance, whatever the audience; counts are
        # read after the commit, so the latest event delivered carries the latest state.
        loaded, counts = await run_unit_of_work(
            self.sessions,
            business_id=event.business_id,
            work=lambda session: self._read_for_delivery(
                session, event, message=bool(readers), counts=bool(badges)
            ),
        )
        if loaded is not None:
            for audience in readers:
                await self._send(audience, loaded.message, loaded.thread)
        if counts is not None:
            for audience in badges:
                await self._send(audience, counts, None)

    async def _deliver_merge(
        self, merge: ThreadMerged, audiences: dict[tuple[Any, ...], Audience]
    ) -> None:
        """Screens follow a merge: its subscribers are told, badges drop the merged-away
        thread to 0 and show the survivor's count, and a `newMessage(threadId:)` of the
        merged-away thread goes on with the survivor's messages."""
        for audience in audiences.values():
            if (
                audience.field_name in (NEW_MESSAGE, MESSAGE_STATUS_CHANGED)
                and audience.thread_filter == merge.from_thread_id
            ):
                audience.thread_filter = merge.into_thread_id
        watchers = [a for a in audiences.values() if a.field_name == THREAD_MERGED]
        badges = [a for a in audiences.values() if a.field_name == UNREAD_COUNT_CHANGED]
        for audience in watchers:
            await self._send(audience, merge, None)
        if not badges:
            return
        _, counts = await run_unit_of_work(
            self.sessions,
            business_id=merge.business_id,
            work=lambda session: self._read_for_delivery(
                session, merge, message=False, counts=True
            ),
        )
        assert counts is not None
        gone = UnreadCounts(merge.from_thread_id, 0, counts.total_unread)
        for audience in badges:
            await self._send(audience, gone, None)
            await self._send(audience, counts, None)

    @staticmethod
    async def _read_for_delivery(
        session: Any, event: InboxEvent, *, message: bool, counts: bool
    ) -> tuple[LoadedMessage | None, "UnreadCounts | None"]:
        business_id, thread_id = event.business_id, event.thread_id
        loaded = None
        if message and isinstance(event, MessageStored):
            stored = await threads.find_message(session, business_id, event.message_id)
            found = await threads.threads_by_ids(session, business_id, [thread_id])
            if stored is not None and thread_id in found:
                loaded = LoadedMessage(stored, found[thread_id])
        current = None
        if counts:
            unread = await read_state.unread_counts(session, business_id, [thread_id])
            total = await read_state.total_unread(session, business_id)
            current = UnreadCounts(thread_id, unread[thread_id], total)
        return loaded, current

    async def _send(self, audience: Audience, root: Any, thread: Any) -> None:
        payload = await self._render(audience, root, thread)
        coalesce = audience.field_name == UNREAD_COUNT_CHANGED
        for sent, member in enumerate(list(audience.members.values()), start=1):
            if sent % YIELD_EVERY_MEMBERS == 0:
                # Let requests and other connections run between slices of a large fan-out.
                await asyncio.sleep(0)
            if member.audience is None:
                continue  # it left while this fan-out was yielding
            frame = member.prefix + payload + "}"
            outlet = member.outlet
            if coalesce:
                outlet.push_latest((member.operation_id, root.thread_id), frame)
            elif outlet.backlog >= self.limits.outbox_frames:
                self._lagged(member)
            else:
                outlet.push(frame)
        if self.live_metrics is not None:
            self.live_metrics.delivered(audience.field_name, self._delivering_committed_at)

    def _lagged(self, member: Member) -> None:
        self.metrics.live_subscribers_lagged += 1
        self.leave(member)
        member.end(
            [
                {
                    "message": "this subscriber fell too far behind and missed messages: "
                    "refetch the thread and subscribe again",
                    "extensions": {"code": "RESYNC_REQUIRED"},
                }
            ]
        )

    async def _render(self, audience: Audience, root: Any, thread: Any) -> str:
        """The `payload` of a next message for `root`, executed once for the audience."""
        from gql.subscriptions import MessageStatusEvent, ThreadMergedEvent, UnreadCountEvent
        from gql.types import MessageType

        context = audience.context
        context.forget_loaded()
        if thread is not None:
            context.loaders.thread.prime(thread.id, thread)
        value: Any
        if audience.field_name == NEW_MESSAGE:
            value = MessageType.from_domain(root)
        elif audience.field_name == THREAD_MERGED:
            value = ThreadMergedEvent.from_domain(root)
        elif audience.field_name == MESSAGE_STATUS_CHANGED:
            value = MessageStatusEvent.from_domain(root)
        else:
            value = UnreadCountEvent.from_counts(root)
        try:
            result = await self.operations.run_event(
                audience.plan, audience.executor, value, context
            )
        finally:
            await context.reads.close()
        body: dict[str, Any] = {"data": result.data}
        if result.errors:
            body["errors"] = [error.formatted for error in result.errors]
        return response_json(body).decode()

    # --- keep-alive ----------------------------------------------------------------------

    async def _keepalive_loop(self) -> None:
        ping = {TRANSPORT_WS: '{"type":"ping"}', LEGACY_WS: '{"type":"ka"}'}
        while True:
            await asyncio.sleep(self.limits.keepalive_s)
            for sent, outlet in enumerate(list(self._outlets), start=1):
                if sent % YIELD_EVERY_MEMBERS == 0:
                    # 5,000 pings in one go held the loop for ~60 ms every keepalive_s: a
                    # request arriving then waited that long (issue 15).
                    await asyncio.sleep(0)
                outlet.push(ping[outlet.protocol])

    # --- the cross-instance listener -----------------------------------------------------

    async def _listen_loop(self) -> None:
        assert self._backend is not None
        delay = 0.1
        while True:
            try:
                await self._backend.connect()
                await self._backend.subscribe(CHANNEL)
                if not self.pubsub_connected:
                    log.info("[WA-LIVE] pub/sub %s connected", self.pubsub_state["backend"])
                self.pubsub_connected = True
                delay = 0.1
                if self._outage_since is not None:
                    self._pending.put_nowait(("resync", self._outage_since, None))
                    self._outage_since = None
                while True:
                    wire = await self._backend.next_published()
                    received = _from_wire(self.instance_id, wire.message)
                    if received is not None:
                        self._pending.put_nowait(("remote", *received))
            except asyncio.CancelledError:
                raise
            except Exception as failure:
                if self.pubsub_connected or self._outage_since is None:
                    log.error(
                        "[WA-LIVE] pub/sub %s unavailable (%s): reconnecting with backoff; "
                        "/readyz reports it degraded",
                        self.pubsub_state["backend"],
                        type(failure).__name__,
                    )
                # Events from other instances may be lost from here on: remember since when.
                if self._outage_since is None:
                    self._outage_since = datetime.now(UTC) - timedelta(seconds=5)
                self.pubsub_connected = False
                self.metrics.pubsub_reconnects += 1
                await self._disconnect_backend()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _disconnect_backend(self) -> None:
        assert self._backend is not None
        try:
            await self._backend.disconnect()
        except Exception as failure:  # the connection is being dropped anyway
            log.debug("pub/sub disconnect: %s", type(failure).__name__)

    async def _unread_snapshot(
        self, business_id: int, since: datetime
    ) -> read_state.UnreadSnapshot:
        async def snapshot(session: Any) -> read_state.UnreadSnapshot:
            return await read_state.unread_snapshot(
                session, business_id, changed_since=since, limit=self.limits.resync_thread_limit
            )

        return await run_unit_of_work(self.sessions, snapshot, business_id=business_id)

    async def _resync(self, since: datetime) -> None:
        """After an outage, send every badge subscriber the counts it may have missed."""
        for business_id, audiences in list(self._audiences.items()):
            badges = [a for a in audiences.values() if a.field_name == UNREAD_COUNT_CHANGED]
            if not badges:
                continue
            snapshot = await self._unread_snapshot(business_id, since)
            for thread_id, unread in snapshot.thread_unread.items():
                counts = UnreadCounts(thread_id, unread, snapshot.total_unread)
                for audience in badges:
                    await self._send(audience, counts, None)
        log.info("[WA-LIVE] resynced unread badges after the pub/sub outage since %s", since)


@dataclass(frozen=True)
class UnreadCounts:
    thread_id: int
    thread_unread: int
    total_unread: int


_WIRE_KINDS: dict[type, str] = {
    MessageStored: "message",
    ThreadRead: "read",
    ThreadMerged: "merged",
    MessageStatusChanged: "status",
}


def _to_wire(instance_id: str, event: InboxEvent, committed_at: float | None) -> str:
    kind = _WIRE_KINDS[type(event)]
    body = {"origin": instance_id, "kind": kind, "committed_at": committed_at, **event.__dict__}
    return json.dumps(body, separators=(",", ":"))


def _from_wire(instance_id: str, text: str) -> tuple[InboxEvent, float | None] | None:
    """The event another instance published, and when it was committed (None from an
    instance older than the stamp); None for our own events and for unreadable ones."""
    try:
        body = json.loads(text)
        if body.pop("origin") == instance_id:
            return None
        kind = body.pop("kind")
        committed_at = body.pop("committed_at", None)
        if kind == "message":
            return MessageStored(**body), committed_at
        if kind == "read":
            return ThreadRead(**body), committed_at
        if kind == "merged":
            return ThreadMerged(**body), committed_at
        if kind == "status":
            return MessageStatusChanged(**body), committed_at
    except (ValueError, TypeError, KeyError, AttributeError):
        pass
    log.warning("[WA-LIVE] ignored an unreadable pub/sub message")
    return None
