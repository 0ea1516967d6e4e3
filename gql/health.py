"""Liveness and readiness for operators and load balancers (counters: gql/metrics.py)."""

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from db.statements import missing_conflict_targets
from db.unit_of_work import Sessions, unit_of_work

log = logging.getLogger("wa_inbox.health")

READINESS_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class DatabaseHealth:
    reachable: bool
    missing_constraints: tuple[str, ...] = ()


async def check_database(sessions: Sessions) -> DatabaseHealth:
    """Whether the database answers, and which ON CONFLICT constraints are missing."""
    try:
        async with (
            asyncio.timeout(READINESS_TIMEOUT_S),
            unit_of_work(sessions, business_id=None) as session,
        ):
            await session.execute(text("SELECT 1"))
            missing = await missing_conflict_targets(session)
    except (TimeoutError, OSError) as failure:
        log.warning("database unreachable: %s", type(failure).__name__)
        return DatabaseHealth(reachable=False)
    except Exception as failure:  # any driver error here means "not ready", never a 500
        log.warning("database check failed: %s", type(failure).__name__)
        return DatabaseHealth(reachable=False)
    return DatabaseHealth(reachable=True, missing_constraints=tuple(missing))


class HealthEndpoints:
    def __init__(
        self,
        sessions: Sessions,
        pubsub_state: Callable[[], dict[str, str]],
    ) -> None:
        self.sessions = sessions
        self.pubsub_state = pubsub_state

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        """503 while the database is unreachable; 200 otherwise, naming degraded parts."""
        database = await check_database(self.sessions)
        if not database.reachable:
            return JSONResponse(
                {"status": "unavailable", "checks": {"database": {"status": "unreachable"}}},
                status_code=503,
            )
        constraints = {name: "missing" for name in database.missing_constraints}
        database_check: dict[str, object] = {"status": "ok"}
        if constraints:
            database_check = {
                "status": "degraded",
                "missing_constraints": constraints,
                "detail": "writes use the serialized fallback until the constraints are restored",
            }
        pubsub = self.pubsub_state()
        degraded = bool(constraints) or pubsub["status"] != "ok"
        return JSONResponse(
            {
                "status": "degraded" if degraded else "ok",
                "checks": {"database": database_check, "pubsub": pubsub},
            }
        )
