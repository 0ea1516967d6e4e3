"""Settings, read from the environment once at start-up and passed down from there."""

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import phonenumbers

from domain.channel_tokens import valid_key
from gql.limits import QueryLimits
from gql.persisted_documents import ManifestError, TrustedDocuments

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The log line of the command line and of every worker process (gql/workers.py).
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# WORKERS beyond this is a typo, not a machine: each worker holds its own pool.
MAX_WORKERS = 256


class SettingsError(ValueError):
    """A configuration value the server cannot start with."""


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    auth_secret: str | None = None
    # auth_secret is the generated development secret (`make run` without AUTH_SECRET): the
    # inbox page may then pre-fill a development token (gql/browser.py). Never read from the
    # environment.
    development_secret: bool = False
    broadcast_url: str = "memory://"
    default_region: str = "US"
    data_dir: Path = field(default_factory=lambda: PROJECT_ROOT / ".pgdata")
    max_body_bytes: int = 1_048_576
    statement_timeout_ms: int = 15_000
    database_pool_size: int = 20
    ws_max_message_bytes: int = 65_536
    log_level: str = "INFO"
    database_app_role: str | None = "wa_inbox_app"
    whatsapp_app_secret: str | None = None
    whatsapp_verify_token: str | None = None
    webhook_max_body_bytes: int = 8_388_608
    max_query_depth: int = 10
    max_query_aliases: int = 30
    max_query_tokens: int = 2_000
    max_batch_operations: int = 1
    introspection: bool = True
    ws_max_subscriptions: int = 100
    ws_connection_init_timeout_s: int = 10
    # Browser origins allowed to call the API (CORS) and open websockets; same-origin pages
    # (GraphiQL served here) are always allowed, non-browser clients send no Origin.
    cors_allowed_origins: tuple[str, ...] = ()
    # The allow-list (TRUSTED_DOCUMENTS), read once here so a bad manifest stops the start.
    trusted_documents: TrustedDocuments | None = None
    # GRAPHQL_EXECUTOR: "compiled" plans (gql/execution_plan.py), or "reference" to run every
    # operation on graphql-core, the escape hatch should a plan ever answer differently.
    graphql_executor: Literal["compiled", "reference"] = "compiled"
    # Server processes on one port (gql/workers.py); 1 serves in the process that was started.
    workers: int = 1
    # CHANNEL_SECRET_KEY: Fernet keys sealing channel access tokens, the first seals
    # (domain/channel_tokens.py).
    channel_secret_keys: tuple[str, ...] = ()
    # Where the workers' prometheus_client metrics meet (multiprocess mode); with WORKERS > 1
    # and none given, `serve` makes a temporary one.
    prometheus_multiproc_dir: Path | None = None
    # Sending (gql/sender.py, issue 16): where the Cloud API is (a test points it at a fake),
    # how often and how long a message is tried, how long one request may take.
    whatsapp_api_base_url: str = "https://graph.facebook.com"
    whatsapp_api_version: str = "v23.0"
    send_max_attempts: int = 5
    send_deadline_s: int = 600
    send_request_timeout_s: int = 20
    send_lease_s: int = 60
    send_poll_interval_ms: int = 1000
    send_retry_base_ms: int = 1000

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        defaults = cls()
        region = env.get("DEFAULT_REGION", defaults.default_region).strip().upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise SettingsError(f"DEFAULT_REGION={region!r} is not a known ISO 3166 region code")
        return cls(
            database_url=env.get("DATABASE_URL") or None,
            host=env.get("HOST", defaults.host),
            port=_integer(env, "PORT", defaults.port, low=0, high=65535),
            auth_secret=_auth_secret(env.get("AUTH_SECRET") or None),
            broadcast_url=env.get("BROADCAST_URL") or defaults.broadcast_url,
            default_region=region,
            data_dir=Path(env["WA_INBOX_DATA_DIR"])
            if env.get("WA_INBOX_DATA_DIR")
            else defaults.data_dir,
            max_body_bytes=_integer(env, "MAX_BODY_BYTES", defaults.max_body_bytes, low=1024),
            statement_timeout_ms=_integer(
                env, "STATEMENT_TIMEOUT_MS", defaults.statement_timeout_ms, low=100
            ),
            database_pool_size=_integer(
                env, "DATABASE_POOL_SIZE", defaults.database_pool_size, low=1
            ),
            ws_max_message_bytes=_integer(
                env, "WS_MAX_MESSAGE_BYTES", defaults.ws_max_message_bytes, low=1024
            ),
            log_level=env.get("LOG_LEVEL", defaults.log_level).upper(),
            database_app_role=env.get("DATABASE_APP_ROLE", defaults.database_app_role or "")
            or None,
            whatsapp_app_secret=env.get("WHATSAPP_APP_SECRET") or None,
            whatsapp_verify_token=env.get("WHATSAPP_VERIFY_TOKEN") or None,
            webhook_max_body_bytes=_integer(
                env, "WEBHOOK_MAX_BODY_BYTES", defaults.webhook_max_body_bytes, low=1024
            ),
            max_query_depth=_integer(env, "MAX_QUERY_DEPTH", defaults.max_query_depth, low=1),
            max_query_aliases=_integer(env, "MAX_QUERY_ALIASES", defaults.max_query_aliases, low=0),
            max_query_tokens=_integer(env, "MAX_QUERY_TOKENS", defaults.max_query_tokens, low=100),
            max_batch_operations=_integer(
                env, "MAX_BATCH_OPERATIONS", defaults.max_batch_operations, low=1, high=100
            ),
            introspection=_boolean(env, "INTROSPECTION", defaults.introspection),
            ws_max_subscriptions=_integer(
                env, "WS_MAX_SUBSCRIPTIONS", defaults.ws_max_subscriptions, low=1
            ),
            ws_connection_init_timeout_s=_integer(
                env,
                "WS_CONNECTION_INIT_TIMEOUT_S",
                defaults.ws_connection_init_timeout_s,
                low=1,
                high=300,
            ),
            cors_allowed_origins=_origins(env.get("CORS_ALLOWED_ORIGINS", "")),
            trusted_documents=_trusted_documents(env.get("TRUSTED_DOCUMENTS", "").strip()),
            graphql_executor=_graphql_executor(env.get("GRAPHQL_EXECUTOR", "").strip().lower()),
            workers=_workers(env.get("WORKERS", "").strip().lower()),
            channel_secret_keys=_channel_secret_keys(env.get("CHANNEL_SECRET_KEY", "")),
            prometheus_multiproc_dir=Path(env["PROMETHEUS_MULTIPROC_DIR"])
            if env.get("PROMETHEUS_MULTIPROC_DIR")
            else None,
            **_sending(env, defaults),
        )

    @property
    def query_limits(self) -> QueryLimits:
        return QueryLimits(
            max_depth=self.max_query_depth,
            max_aliases=self.max_query_aliases,
            max_tokens=self.max_query_tokens,
            introspection=self.introspection,
        )


# HS256 keys shorter than the hash (32 bytes) can be brute-forced from one token (RFC 7518, 3.2).
MIN_AUTH_SECRET_BYTES = 32


def _channel_secret_keys(raw: str) -> tuple[str, ...]:
    keys = tuple(key.strip() for key in raw.split(",") if key.strip())
    for position, key in enumerate(keys, start=1):
        if not valid_key(key):
            raise SettingsError(
                f"CHANNEL_SECRET_KEY: key {position} is not a Fernet key (32 bytes, url-safe "
                "base64); make one with `python -m gql channel-key`"
            )
    return keys


# A lease covers the request (its timeout) and then recording the answer.
SEND_LEASE_MARGIN_S = 5


def _sending(env: Mapping[str, str], defaults: Settings) -> dict[str, Any]:
    base_url = (env.get("WHATSAPP_API_BASE_URL") or defaults.whatsapp_api_base_url).rstrip("/")
    if not base_url.startswith(("https://", "http://")) or base_url.count("/") != 2:
        raise SettingsError(
            f"WHATSAPP_API_BASE_URL={base_url!r} is an origin such as https://graph.facebook.com"
        )
    version = env.get("WHATSAPP_API_VERSION") or defaults.whatsapp_api_version
    if not (version.startswith("v") and version[1:].replace(".", "", 1).isdigit()):
        raise SettingsError(f"WHATSAPP_API_VERSION={version!r} is a Graph API version like v23.0")
    timeout = _integer(
        env, "SEND_REQUEST_TIMEOUT_SECONDS", defaults.send_request_timeout_s, low=1, high=300
    )
    lease = _integer(env, "SEND_LEASE_SECONDS", max(defaults.send_lease_s, timeout * 2), low=2)
    if lease < timeout + SEND_LEASE_MARGIN_S:
        raise SettingsError(
            f"SEND_LEASE_SECONDS={lease} must be at least SEND_REQUEST_TIMEOUT_SECONDS={timeout} "
            f"+ {SEND_LEASE_MARGIN_S}: a lease that ends while its request waits or its answer "
            "is being recorded lets the message be failed as abandoned"
        )
    return {
        "whatsapp_api_base_url": base_url,
        "whatsapp_api_version": version,
        "send_max_attempts": _integer(
            env, "SEND_MAX_ATTEMPTS", defaults.send_max_attempts, low=1, high=50
        ),
        "send_deadline_s": _integer(
            env, "SEND_DEADLINE_SECONDS", defaults.send_deadline_s, low=1, high=7 * 86_400
        ),
        "send_request_timeout_s": timeout,
        "send_lease_s": lease,
        "send_poll_interval_ms": _integer(
            env, "SEND_POLL_INTERVAL_MS", defaults.send_poll_interval_ms, low=10, high=60_000
        ),
        "send_retry_base_ms": _integer(
            env, "SEND_RETRY_BASE_MS", defaults.send_retry_base_ms, low=1, high=600_000
        ),
    }


def _auth_secret(raw: str | None) -> str | None:
    if raw is not None and len(raw.encode()) < MIN_AUTH_SECRET_BYTES:
        raise SettingsError(
            f"AUTH_SECRET is {len(raw.encode())} bytes: use at least {MIN_AUTH_SECRET_BYTES} "
            "random bytes, e.g. AUTH_SECRET=$(python3 -c 'import secrets; "
            "print(secrets.token_urlsafe(32))')"
        )
    return raw


def _trusted_documents(raw: str) -> TrustedDocuments | None:
    if not raw:
        return None
    try:
        return TrustedDocuments.load(Path(raw))
    except ManifestError as error:
        raise SettingsError(f"TRUSTED_DOCUMENTS={raw}: {error}") from None


def _graphql_executor(raw: str) -> Literal["compiled", "reference"]:
    if raw in ("", "compiled"):
        return "compiled"
    if raw == "reference":
        return "reference"
    raise SettingsError(f"GRAPHQL_EXECUTOR={raw!r} is compiled or reference")


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), as WORKERS=auto counts them."""
    process_cpu_count = getattr(os, "process_cpu_count", None)  # Python 3.13+
    if process_cpu_count is not None:
        return int(process_cpu_count() or 1)
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _workers(raw: str) -> int:
    if not raw:
        return 1
    if raw == "auto":
        return available_cores()
    try:
        count = int(raw)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_WORKERS:
        raise SettingsError(
            f"WORKERS={raw!r} is a number of server processes from 1 to {MAX_WORKERS}, "
            "or auto (one per core)"
        )
    return count


def _boolean(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={raw!r} is not true or false")


def _origins(raw: str) -> tuple[str, ...]:
    """`https://app.example.com,https://admin.example.com` as exact origins, no wildcards."""
    origins = []
    for item in raw.split(","):
        origin = item.strip().rstrip("/")
        if not origin:
            continue
        if (
            origin == "*"
            or not origin.startswith(("http://", "https://"))
            or origin.count("/") != 2
        ):
            raise SettingsError(
                f"CORS_ALLOWED_ORIGINS entry {origin!r} must be an exact origin such as "
                "https://app.example.com (no wildcard, no path)"
            )
        origins.append(origin.lower())
    return tuple(origins)


def _integer(
    env: Mapping[str, str], name: str, default: int, *, low: int, high: int | None = None
) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a whole number") from None
    if value < low or (high is not None and value > high):
        raise SettingsError(f"{name}={value} is out of range")
    return value
