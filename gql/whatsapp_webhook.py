"""`/webhooks/whatsapp`: the WhatsApp Cloud API webhook, a thin HTTP entry point.

GET answers Meta's verification handshake. POST checks `X-Hub-Signature-256` on the raw bytes
before reading them, then hands the delivery to the domain. The answer is honest: 200 only
once every part is durably stored (or deliberately rejected), 503 when storage failed so that
WhatsApp retries; the retry is idempotent.
"""

import hashlib
import hmac
import json
import logging
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from db.errors import STORAGE_FAILURES
from db.unit_of_work import Sessions
from domain.events import InboxEvent
from domain.group_commit import GroupCommit
from domain.metrics import InboxMetrics
from domain.webhook_deliveries import store_delivery
from domain.webhook_payloads import MalformedDelivery, read_delivery
from gql.request_bodies import BodyTooLarge, ClientGone, read_bounded_body, request_id_of

log = logging.getLogger("wa_inbox.webhooks")

SIGNATURE_HEADER = "x-hub-signature-256"
_SIGNATURE_PREFIX = "sha256="
RETRY_AFTER_S = "5"


def signature_of(body: bytes, app_secret: str) -> str:
    """The `X-Hub-Signature-256` value Meta sends for `body`."""
    digest = hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
    return f"{_SIGNATURE_PREFIX}{digest}"


def _signature_matches(offered: str | None, body: bytes, app_secret: str) -> bool:
    if offered is None:
        return False
    expected = signature_of(body, app_secret)
    # Compared as bytes, in constant time; the hex digest is case-insensitive.
    return hmac.compare_digest(offered.strip().lower().encode(), expected.encode())


class WhatsAppWebhook:
    def __init__(
        self,
        *,
        sessions: Sessions,
        app_secret: str | None,
        verify_token: str | None,
        max_body_bytes: int,
        default_region: str,
        metrics: InboxMetrics,
        publish: Callable[[InboxEvent | None], None],
        group_commit: GroupCommit | None = None,
    ) -> None:
        self.sessions = sessions
        self.app_secret = app_secret
        self.verify_token = verify_token
        self.max_body_bytes = max_body_bytes
        self.default_region = default_region
        self.metrics = metrics
        self.publish = publish
        self.group_commit = group_commit

    async def verify(self, request: Request) -> Response:
        """Meta's subscription handshake: echo `hub.challenge` when the verify token matches."""
        params = request.query_params
        offered = params.get("hub.verify_token", "")
        token_matches = self.verify_token is not None and hmac.compare_digest(
            offered.encode(), self.verify_token.encode()
        )
        if params.get("hub.mode") != "subscribe" or not token_matches:
            log.warning("[WA-WEBHOOK] verification refused (mode or verify token wrong)")
            return PlainTextResponse("verification failed", status_code=403)
        log.info("[WA-WEBHOOK] verification handshake answered")
        return PlainTextResponse(params.get("hub.challenge", ""))

    async def receive(self, request: Request) -> Response:
        request_id = request_id_of(request)
        if self.app_secret is None:
            log.error(
                "[WA-WEBHOOK] delivery refused: WHATSAPP_APP_SECRET is not set, so no "
                "signature can be checked (request_id=%s)",
                request_id,
            )
            return _problem(503, "the webhook is not configured on this server", request_id)
        try:
            body = await read_bounded_body(request, self.max_body_bytes)
        except BodyTooLarge as too_large:
            return _problem(413, str(too_large), request_id)
        except ClientGone:
            return _problem(400, "the client went away mid-request", request_id)
        if not _signature_matches(request.headers.get(SIGNATURE_HEADER), body, self.app_secret):
            self.metrics.webhook_signature_failures += 1
            log.warning(
                "[WA-WEBHOOK] signature missing or wrong from %s: nothing stored (request_id=%s)",
                request.client.host if request.client else "unknown",
                request_id,
            )
            return _problem(401, f"missing or wrong {SIGNATURE_HEADER} signature", request_id)
        try:
            delivery = read_delivery(json.loads(body))
        except (ValueError, RecursionError, MalformedDelivery) as unreadable:
            # json.JSONDecodeError and UnicodeDecodeError are ValueErrors.
            self.metrics.webhook_malformed_deliveries += 1
            reason = (
                unreadable.message
                if isinstance(unreadable, MalformedDelivery)
                else "the body is not JSON"
            )
            log.warning("[WA-WEBHOOK] malformed delivery: %s (request_id=%s)", reason, request_id)
            return _problem(400, reason, request_id)
        self.metrics.webhook_deliveries += 1
        try:
            report = await store_delivery(
                self.sessions,
                delivery,
                default_region=self.default_region,
                metrics=self.metrics,
                on_stored=self.publish,
                group_commit=self.group_commit,
            )
        except STORAGE_FAILURES as failure:
            self.metrics.webhook_storage_failures += 1
            log.error(
                "[WA-WEBHOOK] storage failed (%s): answering 503 so WhatsApp retries "
                "(request_id=%s)",
                type(failure).__name__,
                request_id,
                exc_info=failure,
            )
            return _problem(
                503,
                "storage is unavailable; retry the delivery",
                request_id,
                headers={"Retry-After": RETRY_AFTER_S},
            )
        except Exception as failure:
            # A bug, not an outage: still never a trace to the caller, and still a non-200, so
            # WhatsApp keeps the delivery and retries it once the bug is fixed.
            log.exception(
                "[WA-WEBHOOK] delivery failed unexpectedly (request_id=%s)",
                request_id,
                exc_info=failure,
            )
            return _problem(500, "internal error; the delivery will be retried", request_id)
        log.info("[WA-WEBHOOK] delivery %s (request_id=%s)", report.as_dict(), request_id)
        return JSONResponse({"status": report.outcome, **report.as_dict()})


def _problem(
    status: int, detail: str, request_id: str, headers: dict[str, str] | None = None
) -> Response:
    return JSONResponse(
        {"error": detail, "requestId": request_id},
        status_code=status,
        headers={"X-Request-Id": request_id, **(headers or {})},
    )
