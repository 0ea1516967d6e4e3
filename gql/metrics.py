"""/metrics: the domain's counters, latencies and gauges, through prometheus_client.

With several workers (gql/workers.py) each process writes its values to files in
PROMETHEUS_MULTIPROC_DIR and any worker answering /metrics adds up all of them, so the
answer is the whole server's. Counters and histograms sum every worker that ever ran;
gauges show each live worker with its `pid` label.
"""

import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any

from graphql import OperationDefinitionNode, OperationType
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from domain.metrics import InboxMetrics

# Operation names come from clients: past this many distinct ones, a name is counted as
# "other", so a client inventing names cannot grow /metrics (and every scrape) without end.
MAX_OPERATION_NAMES = 200
MAX_OPERATION_NAME_LENGTH = 100
ANONYMOUS = "anonymous"
OTHER = "other"
INGEST_MUTATION = "ingestMessage"
# Where the GraphQL endpoint notes the operations it ran, for the request's timing.
OPERATIONS_KEY = "wa_inbox.graphql_operations"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ExportedCounters(InboxMetrics):
    """The domain's counters, each change also counted by a prometheus_client Counter.

    The domain keeps writing `metrics.messages_stored += 1` on plain integers (this
    process's values, which tests read); every increase is added to the Counter of the same
    name, which multiprocess mode shares with the other workers.
    """

    _counters: dict[str, Counter]

    def __init__(self, registry: CollectorRegistry) -> None:
        counters = {
            field.name: Counter(
                f"wa_inbox_{field.name}",
                f"wa-inbox: {field.name.replace('_', ' ')}",
                registry=registry,
            )
            for field in fields(InboxMetrics)
        }
        object.__setattr__(self, "_counters", counters)
        super().__init__()

    def __setattr__(self, name: str, value: Any) -> None:
        counter = self._counters.get(name)
        if counter is not None:
            # Counters only grow: a decrease raises here, as prometheus_client refuses it.
            counter.inc(value - getattr(self, name))
        super().__setattr__(name, value)


class OperationLabels:
    """The `operation` label of a GraphQL request: its name, within a bounded set."""

    def __init__(self, limit: int = MAX_OPERATION_NAMES) -> None:
        self.limit = limit
        self._seen: set[str] = set()

    def of(self, operations: list[OperationDefinitionNode]) -> str:
        if not operations or operations[-1].name is None:
            return ANONYMOUS  # unnamed, or refused before an operation was known
        # A batch (MAX_BATCH_OPERATIONS > 1) is labelled by its last operation.
        name = operations[-1].name.value
        if name in self._seen:
            return name
        if len(self._seen) >= self.limit or len(name) > MAX_OPERATION_NAME_LENGTH:
            return OTHER
        self._seen.add(name)
        return name


def note_operation(request: Request, operation: OperationDefinitionNode) -> None:
    """Remember that `request` ran `operation` (a batch runs several), for its timing."""
    request.scope.setdefault(OPERATIONS_KEY, []).append(operation)


def _ingests(operations: list[OperationDefinitionNode]) -> bool:
    return any(
        operation.operation is OperationType.MUTATION
        and any(
            getattr(getattr(selection, "name", None), "value", None) == INGEST_MUTATION
            for selection in operation.selection_set.selections
        )
        for operation in operations
    )


class LiveMetrics:
    """What the fan-out (gql/fanout.py) reports: open websockets and delivery lag."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.websockets_open = Gauge(
            "wa_inbox_websockets_open",
            "wa-inbox: websocket connections open, per worker",
            registry=registry,
            multiprocess_mode="liveall",
        )
        self.delivery_lag = Histogram(
            "wa_inbox_live_delivery_lag_seconds",
            "wa-inbox: from a live event's commit until it is written to the last "
            "subscriber's websocket of an audience",
            ["subscription"],
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )

    def delivered(self, subscription: str, committed_at: float | None) -> None:
        if committed_at is not None:
            # Wall clock: the commit may have happened in another worker.
            lag = max(0.0, time.time() - committed_at)
            self.delivery_lag.labels(subscription).observe(lag)


class ServerMetrics:
    """All the metrics of one application, and the /metrics endpoint that renders them."""

    def __init__(self, multiproc_dir: Path | None = None) -> None:
        self.multiproc_dir = multiproc_dir
        self.registry = CollectorRegistry(auto_describe=False)
        self.counters = ExportedCounters(self.registry)
        self.live = LiveMetrics(self.registry)
        self.operation_labels = OperationLabels()
        self.request_latency = Histogram(
            "wa_inbox_graphql_request_duration_seconds",
            "wa-inbox: GraphQL HTTP requests, from arrival to the response sent, by operation",
            ["operation"],
            registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )
        self.ingest_latency = Histogram(
            "wa_inbox_ingest_duration_seconds",
            "wa-inbox: ingestMessage requests (entry=graphql) and webhook deliveries "
            "(entry=webhook), from arrival to the answer",
            ["entry"],
            registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )
        self.pool_checked_out = Gauge(
            "wa_inbox_database_pool_checked_out",
            "wa-inbox: database connections checked out of the pool, per worker",
            registry=self.registry,
            multiprocess_mode="liveall",
        )
        self.pool_size = Gauge(
            "wa_inbox_database_pool_size",
            "wa-inbox: DATABASE_POOL_SIZE, the pool of each worker",
            registry=self.registry,
            multiprocess_mode="liveall",
        )

    def watch_pool(self, engine: AsyncEngine, pool_size: int) -> None:
        """Keep the pool gauges current as connections are checked out and in."""
        self.pool_size.set(pool_size)
        pool = engine.sync_engine.pool
        gauge = self.pool_checked_out

        # Set from the pool's own count rather than counted up and down: a checkout the
        # engine refuses (a closed connection, db/engine.py) is checked in without having
        # been reported checked out. At checkin the connection is not yet back in the pool.
        @event.listens_for(engine.sync_engine, "checkout")
        def checked_out(*_: Any) -> None:
            gauge.set(pool.checkedout())  # type: ignore[attr-defined]

        @event.listens_for(engine.sync_engine, "checkin")
        def checked_in(*_: Any) -> None:
            gauge.set(max(0, pool.checkedout() - 1))  # type: ignore[attr-defined]

    def timed_graphql(self, endpoint: ASGIApp) -> "TimedGraphQL":
        """The GraphQL endpoint, each request timed by its operation (and as an ingest)."""
        return TimedGraphQL(endpoint, self)

    def timed_webhook(
        self, receive: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """A webhook delivery endpoint, timed as an ingest."""

        async def timed(request: Request) -> Response:
            started = time.perf_counter()
            try:
                return await receive(request)
            finally:
                self.ingest_latency.labels("webhook").observe(time.perf_counter() - started)

        return timed

    def exposition(self) -> str:
        """The Prometheus text format of every metric, of every worker in multiprocess mode."""
        if self.multiproc_dir is None:
            return render(self.registry.collect())
        merged = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(merged, path=str(self.multiproc_dir))  # type: ignore[no-untyped-call]
        return render(merged.collect())

    async def endpoint(self, request: Request) -> Response:
        return PlainTextResponse(self.exposition(), media_type="text/plain; version=0.0.4")


class TimedGraphQL:
    """An ASGI app (not a function, which Starlette's Route would treat as a request
    handler) timing the GraphQL endpoint it wraps."""

    def __init__(self, endpoint: ASGIApp, metrics: ServerMetrics) -> None:
        self.endpoint = endpoint
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        try:
            await self.endpoint(scope, receive, send)
        finally:
            elapsed = time.perf_counter() - started
            operations = scope.get(OPERATIONS_KEY, [])
            metrics = self.metrics
            operation = metrics.operation_labels.of(operations)
            metrics.request_latency.labels(operation).observe(elapsed)
            if _ingests(operations):
                metrics.ingest_latency.labels("graphql").observe(elapsed)


def render(families: Iterable[Metric]) -> str:
    """Text format 0.0.4 as prometheus_client writes it, with whole numbers written whole.

    Before prometheus_client, /metrics wrote `wa_inbox_messages_stored_total 3`; operators'
    checks and our tests match that, and `3` is as valid a sample value as `3.0`. The
    `_created` series are left out: they change on every restart and nobody graphs them.
    """
    lines = []
    for family in sorted(families, key=lambda metric: metric.name):
        name = f"{family.name}_total" if family.type == "counter" else family.name
        help_text = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {family.type}")
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            labels = ",".join(
                f'{key}="{_escaped(value)}"' for key, value in sorted(sample.labels.items())
            )
            series = f"{sample.name}{{{labels}}}" if labels else sample.name
            lines.append(f"{series} {_number(sample.value)}")
    return "\n".join(lines) + "\n"


def _escaped(label_value: str) -> str:
    return label_value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))
