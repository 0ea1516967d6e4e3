"""What a browser opens besides GraphiQL: the inbox page at `/` (gql/static/inbox/), the
vendored files under /static/vendor/, and the development token the page may pre-fill.

The page is the reference front end (issue 17): plain files, no build step, no CDN.
"""

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

from domain.access import Role
from gql.auth import issue_token

STATIC_DIR = Path(__file__).resolve().parent / "static"
VENDOR_DIR = STATIC_DIR / "vendor"
INBOX_DIR = STATIC_DIR / "inbox"

# Vendored files sit under their package's version, so a URL's content never changes; the
# inbox's own files change with the server and are revalidated (their ETag) on every load.
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
# The inbox runs only its own files: no inline script, nothing from another origin.
INBOX_CSP = (
    "default-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
LOOPBACK_CLIENTS = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})
# The names a browser on this machine uses for it: any other Host is a page that pointed its
# own name at 127.0.0.1 (DNS rebinding), or a proxy passing a request on.
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-real-ip")
# What a browser says of a fetch made by a page of this origin (or typed in the address bar).
SAME_SITE_FETCHES = frozenset({"same-origin", "none"})


class StaticFilesWithCaching:
    """Starlette's StaticFiles for gql/static/, with the cache policy above."""

    def __init__(self) -> None:
        self.files = StaticFiles(directory=STATIC_DIR)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        cache_control = IMMUTABLE if "/vendor/" in path else REVALIDATE

        async def send_with_caching(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] < 400:
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"cache-control"]
                headers.append((b"cache-control", cache_control.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.files(scope, receive, send_with_caching)


async def inbox_page(request: Request) -> Response:
    return FileResponse(
        INBOX_DIR / "index.html",
        media_type="text/html; charset=utf-8",
        headers={"Cache-Control": REVALIDATE, "Content-Security-Policy": INBOX_CSP},
    )


def _from_this_machine(request: Request) -> bool:
    """A request of a browser on this machine, to this machine by its own name, not through a
    proxy, not from another site's page."""
    client = request.client.host if request.client else None
    if client not in LOOPBACK_CLIENTS:
        return False
    host = request.headers.get("host", "")
    if host.startswith("[") and "]" in host:
        name = host[: host.index("]") + 1]  # [::1]:8000
    else:
        name = host.rsplit(":", 1)[0]
    if name.lower() not in LOOPBACK_HOSTS:
        return False
    if any(header in request.headers for header in PROXY_HEADERS):
        return False
    fetched_by = request.headers.get("sec-fetch-site")
    return fetched_by is None or fetched_by in SAME_SITE_FETCHES


class DevelopmentToken:
    """`GET /inbox/development-token`: an agent token of business 1 for the sign-in form,
    only when the server signs with a generated development secret (`make run` without
    AUTH_SECRET), and only to a browser on this machine. 404 otherwise: a server with a real
    AUTH_SECRET never hands out tokens."""

    def __init__(self, development_secret: str | None) -> None:
        self.development_secret = development_secret

    async def answer(self, request: Request) -> Response:
        if self.development_secret is None or not _from_this_machine(request):
            return JSONResponse({"error": "no development token here"}, status_code=404)
        token = issue_token(
            self.development_secret, user_id="developer", business_id=1, role=Role.AGENT
        )
        return JSONResponse(
            {"token": token, "businessId": 1, "role": Role.AGENT.value},
            headers={"Cache-Control": "no-store"},
        )
