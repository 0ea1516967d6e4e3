"""The application factory: `create_app(settings)` builds everything; nothing runs at import."""

import dataclasses
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from db import statements
from db.engine import EngineOptions, build_engine, build_sessionmaker
from db.unit_of_work import Sessions, run_unit_of_work
from domain.channel_tokens import TokenVault
from domain.events import InboxEvent
from domain.group_commit import GroupCommit
from domain.metrics import InboxMetrics
from domain.send_attempts import SendPolicy
from gql.browser import DevelopmentToken, StaticFilesWithCaching, inbox_page
from gql.cloud_api import CloudApi
from gql.context import Sending
from gql.fanout import FanOutHub
from gql.health import HealthEndpoints, check_database
from gql.http import GraphQLEndpoint, checked_document
from gql.legacy_rest import AnyMethod, LegacyRestEndpoints
from gql.log_redaction import install_log_redaction
from gql.metrics import ServerMetrics
from gql.operations import Operations
from gql.origins import WebSocketOriginGuard
from gql.persisted_documents import PersistedDocuments
from gql.schema import build_schema
from gql.sender import Sender, SenderOptions
from gql.settings import Settings
from gql.websocket import InboxWebSocketView
from gql.whatsapp_webhook import WhatsAppWebhook

log = logging.getLogger("wa_inbox.app")

# Claims, abandoned-lease checks and recording answers: a couple of statements at a time.
SENDER_POOL_SIZE = 2

LIVE_PATH = "/graphql"


class InboxApp(Starlette):
    """Starlette, but websockets at /graphql go straight to the live endpoint.

    A websocket holds every ASGI layer it passes through for its whole life: Starlette's error
    and exception middleware, CORS (HTTP only) and the router cost ~3.5 KB of suspended frames
    per subscriber (issue 15) and add a wrapper to every frame sent, for nothing a websocket
    uses.
    """

    def __init__(self, *, live: ASGIApp, **options: Any) -> None:
        super().__init__(**options)
        self.live = live

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and _route_path(scope) == LIVE_PATH:
            scope["app"] = self
            await self.live(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    return path[len(root_path) :] if root_path and path.startswith(root_path) else path


class ChannelSecretKeyMissing(RuntimeError):
    """Channel tokens are stored and CHANNEL_SECRET_KEY is not set: nothing could send."""


async def _require_key_for_stored_tokens(sessions: Sessions) -> None:
    stored = await run_unit_of_work(sessions, statements.sealed_channel_tokens, business_id=None)
    if stored:
        log.error(
            "CHANNEL_SECRET_KEY is not set, and %d channel access tokens are stored encrypted "
            "with it: set it to the key they were stored with (several, comma-separated, "
            "while rotating) and start again",
            stored,
        )
        raise ChannelSecretKeyMissing(f"{stored} channel tokens need CHANNEL_SECRET_KEY")


def _sender(
    settings: Settings,
    sessions: Sessions,
    vault: TokenVault | None,
    publish: Callable[[InboxEvent | None], None],
    metrics: InboxMetrics,
) -> Sender:
    policy = SendPolicy(
        max_attempts=settings.send_max_attempts,
        deadline=timedelta(seconds=settings.send_deadline_s),
        retry_base_s=settings.send_retry_base_ms / 1000,
    )
    return Sender(
        sessions,
        lambda: CloudApi(
            settings.whatsapp_api_base_url,
            settings.whatsapp_api_version,
            timeout_s=settings.send_request_timeout_s,
        ),
        vault,
        SenderOptions(
            policy=policy,
            lease_s=settings.send_lease_s,
            poll_interval_s=settings.send_poll_interval_ms / 1000,
        ),
        publish,
        metrics,
    )


def development_secret() -> str:
    return secrets.token_urlsafe(32)


def create_app(settings: Settings) -> Starlette:
    """The ASGI application for `settings`; its lifespan owns the engine."""
    if settings.database_url is None:
        raise ValueError(
            "create_app needs settings.database_url (see gql.__main__ for the embedded default)"
        )
    install_log_redaction()
    auth_secret = settings.auth_secret
    signs_for_development = settings.development_secret
    if auth_secret is None:
        auth_secret = development_secret()
        signs_for_development = True
        log.warning(
            "AUTH_SECRET is not set: using a generated development secret (tokens stop working "
            "at restart)"
        )
    engine = build_engine(
        settings.database_url,
        EngineOptions(
            statement_timeout_ms=settings.statement_timeout_ms,
            pool_size=settings.database_pool_size,
            max_overflow=0,
            role=settings.database_app_role,
        ),
    )
    sessions = build_sessionmaker(engine)
    server_metrics = ServerMetrics(settings.prometheus_multiproc_dir)
    server_metrics.watch_pool(engine, settings.database_pool_size)
    metrics = server_metrics.counters
    schema = build_schema(settings.query_limits)
    operations = Operations(schema, metrics, settings.graphql_executor)
    hub = FanOutHub(
        schema=schema,
        sessions=sessions,
        broadcast_url=settings.broadcast_url,
        default_region=settings.default_region,
        metrics=metrics,
        operations=operations,
        live_metrics=server_metrics.live,
    )
    token_vault = TokenVault(settings.channel_secret_keys) if settings.channel_secret_keys else None
    # The sender's own small pool: its polling never takes a connection a request waits for,
    # and what requests run (the tests count their statements) is theirs alone.
    sender_engine = build_engine(
        settings.database_url,
        EngineOptions(
            statement_timeout_ms=settings.statement_timeout_ms,
            pool_size=SENDER_POOL_SIZE,
            max_overflow=0,
            role=settings.database_app_role,
        ),
    )
    sender = _sender(settings, build_sessionmaker(sender_engine), token_vault, hub.publish, metrics)
    hub.contexts = dataclasses.replace(
        hub.contexts,
        token_vault=token_vault,
        sending=Sending(timedelta(seconds=settings.send_deadline_s), sender.wake),
    )
    persisted_documents = PersistedDocuments(
        settings.trusted_documents,
        # As Apollo Server does, only documents that parse and validate are learned.
        accepts=lambda text: not checked_document(schema, text)[1],
    )
    if settings.trusted_documents is not None:
        log.info(
            "TRUSTED_DOCUMENTS: only the %d documents of %s run",
            len(settings.trusted_documents.by_id),
            settings.trusted_documents.source,
        )
    # HTTP ingests and webhook deliveries of a business share statements
    # (domain/group_commit.py).
    group_commit = GroupCommit(sessions, metrics)
    graphql = GraphQLEndpoint(
        schema,
        contexts=dataclasses.replace(hub.contexts, group_commit=group_commit),
        auth_secret=auth_secret,
        max_body_bytes=settings.max_body_bytes,
        max_batch_operations=settings.max_batch_operations,
        persisted_documents=persisted_documents,
        operations=operations,
    )
    websockets = InboxWebSocketView(
        schema,
        hub=hub,
        auth_secret=auth_secret,
        connection_init_timeout=timedelta(seconds=settings.ws_connection_init_timeout_s),
        max_subscriptions_per_connection=settings.ws_max_subscriptions,
        allowed_origins=settings.cors_allowed_origins,
        persisted_documents=persisted_documents,
    )
    whatsapp = WhatsAppWebhook(
        sessions=sessions,
        app_secret=settings.whatsapp_app_secret,
        verify_token=settings.whatsapp_verify_token,
        max_body_bytes=settings.webhook_max_body_bytes,
        default_region=settings.default_region,
        metrics=metrics,
        publish=hub.publish,
        group_commit=group_commit,
    )
    if settings.whatsapp_app_secret is None:
        log.warning(
            "[WA-WEBHOOK] WHATSAPP_APP_SECRET is not set: /webhooks/whatsapp refuses deliveries "
            "(503) until it is"
        )
    legacy = LegacyRestEndpoints(
        sessions=sessions,
        auth_secret=auth_secret,
        default_region=settings.default_region,
        metrics=metrics,
        publish=hub.publish,
        max_body_bytes=settings.max_body_bytes,
    )
    health = HealthEndpoints(sessions, lambda: hub.pubsub_state)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        database = await check_database(sessions)
        if not database.reachable:
            log.error("[WA-SESSION] database unreachable at start-up; /readyz answers 503")
        for name in database.missing_constraints:
            log.error(
                "[WA-SESSION] unique constraint %s is missing: its ON CONFLICT statement will fail "
                "and writes go through the serialized fallback; restore it (alembic upgrade head)",
                name,
            )
        if database.reachable and token_vault is None:
            await _require_key_for_stored_tokens(sessions)
        await hub.start()
        await sender.start()
        try:
            yield
        finally:
            await sender.stop()
            await sender_engine.dispose()
            await hub.stop()
            await engine.dispose()

    app = InboxApp(
        live=WebSocketOriginGuard(websockets, settings.cors_allowed_origins),
        routes=[
            # Every method reaches the endpoint, which answers the ones it does not serve with
            # a GraphQL-shaped 405.
            Route(LIVE_PATH, server_metrics.timed_graphql(graphql), methods=None),
            Route("/webhooks/whatsapp", whatsapp.verify, methods=["GET"]),
            Route(
                "/webhooks/whatsapp",
                server_metrics.timed_webhook(whatsapp.receive),
                methods=["POST"],
            ),
            Route("/healthz", health.healthz, methods=["GET"]),
            Route("/readyz", health.readyz, methods=["GET"]),
            Route("/metrics", server_metrics.endpoint, methods=["GET"]),
            # The old front end's REST endpoints (issue 13), each answering every method: a
            # wrong one gets the legacy's JSON error envelope.
            Route("/api/crm/threads", AnyMethod(legacy.threads)),
            Route("/api/crm/threads/{thread_id}/messages", AnyMethod(legacy.messages)),
            Route(
                "/api/whatsapp/conversations/{id_or_phone}/mark_read", AnyMethod(legacy.mark_read)
            ),
            # `selectedThread.id || selectedThread.phone` of a thread with neither is empty: a
            # 400 saying so, not the unknown-path 404.
            Route("/api/whatsapp/conversations//mark_read", AnyMethod(legacy.mark_read)),
            Route("/api/openapi.json", AnyMethod(legacy.openapi)),
            Route("/api/{path:path}", AnyMethod(legacy.unknown_route)),
            # The reference inbox page (issue 17) and the files it and GraphiQL load.
            Route("/", inbox_page, methods=["GET", "HEAD"]),
            Route(
                "/inbox/development-token",
                DevelopmentToken(auth_secret if signs_for_development else None).answer,
                methods=["GET"],
            ),
            Mount("/static", StaticFilesWithCaching()),
        ],
        lifespan=lifespan,
        middleware=[
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_allowed_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["authorization", "content-type", "accept", "x-request-id"],
                expose_headers=["x-request-id"],
                # Bearer tokens only: cookies are never read, so never invited cross-site.
                allow_credentials=False,
                max_age=600,
            )
        ],
    )
    app.state.engine = engine
    app.state.metrics = metrics
    app.state.server_metrics = server_metrics
    app.state.hub = hub
    app.state.sender = sender
    return app
