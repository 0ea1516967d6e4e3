"""Group commit: concurrent ingests of one business share one statement.

Each `ingestMessage` or webhook delivery alone is a statement and a commit of its own, and a
commit waits for the WAL to reach the disk. While a business has two statements in flight, the
requests that arrive for it wait in its queue; when one returns, the next statement takes all
of them at once (db/message_ingest.py stores a list in order, each message once), each
request's messages kept together and in their order. A request that arrives while fewer are in
flight goes at once: no request waits for a timer.

Each request still answers only after its own messages are committed, with their own
outcomes. A statement that PostgreSQL refuses stores nothing; when it carried several requests,
each request's remaining messages are then stored in a statement of their own, so a message
that breaks a constraint fails its own request only, never its neighbours'. A statement whose
connection died while it ran may have committed: it is never stored again, and every request
in it fails (their clients retry, and a retry with a provider id finds it stored).
"""

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from db.errors import sqlstate_of
from db.unit_of_work import Sessions
from domain.errors import BadInput, DomainError
from domain.messages import (
    MAX_MESSAGES_PER_STATEMENT,
    CheckedMessage,
    IncomingMessage,
    IngestOutcome,
    check_message,
    store_checked_messages,
)
from domain.metrics import InboxMetrics

log = logging.getLogger("wa_inbox.messages")


def _retrieve(answer: asyncio.Future[IngestOutcome | BadInput]) -> None:
    if not answer.cancelled():
        answer.exception()


@dataclass
class _Waiting:
    message: CheckedMessage
    answer: asyncio.Future[IngestOutcome | BadInput]


@dataclass
class _BusinessQueue:
    # Groups of messages, each stored in one statement and in its order (a webhook
    # delivery's messages are one group: never split between two statements in flight).
    waiting: list[list[_Waiting]] = field(default_factory=list)
    in_flight: int = 0


class GroupCommit:
    """One per process: the queues of every business whose ingests are in flight."""

    def __init__(
        self,
        sessions: Sessions,
        metrics: InboxMetrics,
        *,
        max_in_flight: int = 2,
        max_messages: int = MAX_MESSAGES_PER_STATEMENT,
    ) -> None:
        self._sessions = sessions
        self._metrics = metrics
        # Statements of one business at once: one fills while the other commits.
        self._max_in_flight = max_in_flight
        self._max_messages = max_messages
        self._queues: dict[int, _BusinessQueue] = {}
        self._flushes: set[asyncio.Task[None]] = set()

    async def ingest(
        self, business_id: int, incoming: IncomingMessage, *, default_region: str
    ) -> IngestOutcome:
        """`ingest_message`, sharing its statement with the business's concurrent ingests."""
        [outcome] = await self.store(
            business_id, [check_message(business_id, incoming, default_region=default_region)]
        )
        if isinstance(outcome, BadInput):
            raise outcome
        return outcome

    async def store(
        self,
        business_id: int,
        messages: Sequence[CheckedMessage],
        on_outcome: Callable[[CheckedMessage, IngestOutcome | BadInput], None] | None = None,
    ) -> list[IngestOutcome | BadInput]:
        """`store_checked_messages`, with whatever else the business is storing now: the
        messages in their order, each outcome once it is committed. `on_outcome` hears of
        every message stored before a failure is raised."""
        if not messages:
            return []
        queue = self._queues.setdefault(business_id, _BusinessQueue())
        loop = asyncio.get_running_loop()
        group = [_Waiting(message, loop.create_future()) for message in messages]
        for waiting in group:
            # Retrieved even when its request went away meanwhile (never "never retrieved").
            waiting.answer.add_done_callback(_retrieve)
        queue.waiting.append(group)
        if queue.in_flight < self._max_in_flight:
            self._flush(business_id, queue)
        outcomes: list[IngestOutcome | BadInput] = []
        failure: BaseException | None = None
        for waiting in group:
            try:
                outcome = await asyncio.shield(waiting.answer)
            except Exception as failed:
                failure = failure or failed
                continue
            outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(waiting.message, outcome)
        if failure is not None:
            raise failure
        return outcomes

    def _flush(self, business_id: int, queue: _BusinessQueue) -> None:
        batch = [queue.waiting.pop(0)]
        size = len(batch[0])
        while queue.waiting and size + len(queue.waiting[0]) <= self._max_messages:
            size += len(queue.waiting[0])
            batch.append(queue.waiting.pop(0))
        queue.in_flight += 1
        task = asyncio.create_task(self._store_batch(business_id, queue, batch))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _store_batch(
        self, business_id: int, queue: _BusinessQueue, batch: list[list[_Waiting]]
    ) -> None:
        everyone = [waiting for group in batch for waiting in group]
        try:
            failure = await self._store_answering(business_id, everyone)
            if failure is not None and len(batch) > 1 and _rolled_back(failure):
                # Another request's message may be what failed: each group on its own now.
                log.warning(
                    "[WA-SESSION] a statement of %d requests' messages for business_id=%s "
                    "failed (%s): storing each request's on its own",
                    len(batch),
                    business_id,
                    type(failure).__name__,
                )
                for group in batch:
                    unanswered = [waiting for waiting in group if not waiting.answer.done()]
                    if unanswered:
                        _fail(unanswered, await self._store_answering(business_id, unanswered))
            else:
                # One request's own failure, or an outcome nobody knows (the connection died
                # while the statement ran: it may have committed, and storing again could
                # store twice): every request still waiting hears of it.
                _fail(everyone, failure)
        except BaseException:  # cancelled at shutdown: no request waits forever
            for waiting in everyone:
                if not waiting.answer.done():
                    waiting.answer.cancel()
            raise
        finally:
            queue.in_flight -= 1
            if queue.waiting:
                self._flush(business_id, queue)
            elif not queue.in_flight:
                del self._queues[business_id]

    async def _store_answering(self, business_id: int, waiting: list[_Waiting]) -> Exception | None:
        """Store `waiting`, answering each as it is committed; the failure that stopped it."""
        waiting_for = {id(each.message): each for each in waiting}

        def answered(message: CheckedMessage, outcome: IngestOutcome | BadInput) -> None:
            waiting_for[id(message)].answer.set_result(outcome)

        try:
            await store_checked_messages(
                self._sessions,
                business_id,
                [each.message for each in waiting],
                metrics=self._metrics,
                on_outcome=answered,
            )
        except Exception as failure:
            return failure
        return None


def _rolled_back(failure: Exception) -> bool:
    """Whether `failure` proves its statement stored nothing: PostgreSQL refused it (a
    statement in autocommit that fails is rolled back whole), or a domain rule did."""
    if isinstance(failure, DomainError):
        return True
    sqlstate = sqlstate_of(failure)
    # Class 08 is the connection's own failure (asyncpg reports a lost one so), not a refusal.
    return sqlstate is not None and not sqlstate.startswith("08")


def _fail(group: list[_Waiting], failure: Exception | None) -> None:
    """Answer with `failure` whoever in `group` is still waiting (nobody: no failure)."""
    if failure is None:
        return
    for waiting in group:
        if not waiting.answer.done():
            waiting.answer.set_exception(failure)
