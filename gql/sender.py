"""The sender: a background task of every server process that posts the outbox to the Cloud API.

Each round it fails the sends whose process died mid-request (their lease ran out), claims due
rows (committed as `sending` under this process's lease before anything is posted, so no other
process takes them), posts them a few at a time, and records each answer in its business's
unit of work. Events (SENT, FAILED) are published after those commits. `sendMessage` wakes it
at once; otherwise it looks every poll interval, which is how rows queued by other processes
and retries that came due are found.
"""

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from db.unit_of_work import Sessions
from domain.channel_tokens import TokenVault
from domain.events import InboxEvent, MessageStatusChanged
from domain.metrics import InboxMetrics
from domain.send_attempts import (
    NO_CHANNEL_TITLE,
    NO_TOKEN_TITLE,
    UNREADABLE_TOKEN_TITLE,
    Accepted,
    AttemptResult,
    ClaimedSend,
    OutcomeUnknown,
    SendPolicy,
    claim_sends,
    fail_abandoned_sends,
    record_attempt,
    record_unsendable,
)
from gql.cloud_api import CloudApi

log = logging.getLogger("wa_inbox.sender")


@dataclass(frozen=True)
class SenderOptions:
    policy: SendPolicy
    # Longer than one request can take (its timeout) plus recording the answer: a lease that
    # runs out while its process still waits would let the row be failed as abandoned.
    lease_s: float
    poll_interval_s: float = 1.0
    batch: int = 20
    concurrency: int = 8
    # How long a stopping server lets posts in flight finish before cancelling them.
    stop_grace_s: float = 5.0


class Sender:
    def __init__(
        self,
        sessions: Sessions,
        cloud_api: Callable[[], CloudApi],
        vault: TokenVault | None,
        options: SenderOptions,
        publish: Callable[[InboxEvent | None], None],
        metrics: InboxMetrics,
    ) -> None:
        self.sessions = sessions
        self._new_cloud_api = cloud_api
        self._cloud_api: CloudApi | None = None
        self.vault = vault
        self.options = options
        self.publish = publish
        self.metrics = metrics
        self.worker = f"sender-{uuid.uuid4().hex[:12]}"
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(options.concurrency)

    def wake(self) -> None:
        """A send was committed: look now rather than at the next poll."""
        self._wake.set()

    async def start(self) -> None:
        # Built here, in the serving event loop, and closed by stop.
        self._cloud_api = self._new_cloud_api()
        self._task = asyncio.create_task(self._loop(), name="sender")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._in_flight:
            # Posts that are out get their answer recorded if it comes soon; one cancelled
            # here is left leased and ends as outcome unknown, never posted twice.
            _, late = await asyncio.wait(self._in_flight, timeout=self.options.stop_grace_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._cloud_api is not None:
            await self._cloud_api.aclose()
            self._cloud_api = None

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.run_round()
            except asyncio.CancelledError:
                raise
            except Exception:
                # The database may be away for a while: the next round tries again.
                log.exception("[WA-SEND] a sender round failed; retrying next round")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.options.poll_interval_s)

    async def run_round(self) -> int:
        """One round: abandoned sends failed, due ones claimed and started; how many started."""
        for event in await fail_abandoned_sends(self.sessions):
            self.metrics.sends_outcome_unknown += 1
            self.metrics.sends_failed += 1
            self.publish(event)
        free = self.options.concurrency - len(self._in_flight)
        if free <= 0:
            return 0
        claimed = await claim_sends(
            self.sessions,
            self.worker,
            lease_seconds=self.options.lease_s,
            batch=min(free, self.options.batch),
        )
        for send in claimed:
            task = asyncio.create_task(self._attempt(send), name=f"send-{send.message_id}")
            self._in_flight.add(task)
            task.add_done_callback(self._finished)
        return len(claimed)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("[WA-SEND] a send failed unexpectedly", exc_info=task.exception())
        # A slot came free: claim more now if rows are waiting.
        self._wake.set()

    async def _attempt(self, send: ClaimedSend) -> None:
        async with self._slots:
            token = self._token_of(send)
            if isinstance(token, _Unsendable):
                self.metrics.sends_failed += 1
                self.publish(
                    await record_unsendable(self.sessions, send, token.title, worker=self.worker)
                )
                return
            assert self._cloud_api is not None  # started
            result = await self._cloud_api.post_message(send.phone_number_id, token, send.request)
            event = await record_attempt(
                self.sessions, send, result, worker=self.worker, policy=self.options.policy
            )
            self.publish(event)
            self._count(result, event)

    def _count(self, result: AttemptResult, event: MessageStatusChanged | None) -> None:
        if isinstance(result, Accepted):
            self.metrics.sends_accepted += 1
            return
        if isinstance(result, OutcomeUnknown):
            self.metrics.sends_outcome_unknown += 1
        if event is not None and event.status == "failed":
            self.metrics.sends_failed += 1
        elif event is None:
            self.metrics.sends_retried += 1

    def _token_of(self, send: ClaimedSend) -> "str | _Unsendable":
        if not send.channel_connected:
            return _Unsendable(NO_CHANNEL_TITLE)
        if send.access_token_sealed is None:
            return _Unsendable(NO_TOKEN_TITLE)
        if self.vault is None:
            return _Unsendable(UNREADABLE_TOKEN_TITLE)
        try:
            return self.vault.open(send.access_token_sealed)
        except ValueError:
            log.error(
                "[WA-SEND] the token of phone_number_id=%s opens with no CHANNEL_SECRET_KEY of "
                "this server: message_id=%s FAILED",
                send.phone_number_id,
                send.message_id,
            )
            return _Unsendable(UNREADABLE_TOKEN_TITLE)


@dataclass(frozen=True)
class _Unsendable:
    title: str
