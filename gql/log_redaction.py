"""Keeps secrets out of the server's log: tokens, verify tokens, signatures, frames.

Two of the libraries under us would write them: uvicorn's access log prints each request's
query string (Meta's verification handshake carries `hub.verify_token` there), and the
websockets library, at DEBUG on uvicorn's error logger, prints every frame (a
`connection_init` carries the bearer token, subscription frames carry message bodies).
"""

import logging
import re

# GraphiQL's `headers` parameter carries the development link's bearer token; a GraphQL GET's
# `variables` may carry a channel's access token (refused as a mutation, but logged first).
_SECRET_QUERY_PARAMETER = re.compile(
    r"(?P<name>[^&?=]*(?:token|secret|signature|password|headers|authorization|variables)"
    r"[^&=]*)"
    r"=(?P<value>[^&]*)",
    re.IGNORECASE,
)
# The websockets library's frame dumps: `self.logger.debug("< %s", frame)`.
_FRAME_DUMPS = frozenset({"< %s", "> %s"})
REDACTED = "[redacted]"


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg in _FRAME_DUMPS:
            return False
        if record.name == "uvicorn.access" and isinstance(record.args, tuple):
            record.args = tuple(
                _SECRET_QUERY_PARAMETER.sub(rf"\g<name>={REDACTED}", arg)
                if isinstance(arg, str) and "=" in arg
                else arg
                for arg in record.args
            )
        return True


def install_log_redaction() -> None:
    """Filter the loggers that would carry secrets (idempotent; they are process-wide)."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(existing, RedactSecrets) for existing in logger.filters):
            logger.addFilter(RedactSecrets())
