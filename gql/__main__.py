"""Command line: `python -m gql serve | migrate | export-schema | token | sign-webhook`."""

import argparse
import errno
import json
import logging
import socket
import sys
from typing import Any
from urllib.parse import quote

from db.embedded import start_embedded_postgres
from db.migrations import upgrade_to_head
from domain.access import Role
from gql.auth import issue_token
from gql.development_secret import development_secret_path, load_or_create_development_secret
from gql.settings import LOG_FORMAT, Settings, SettingsError

log = logging.getLogger("wa_inbox")


class PortTaken(Exception):
    """The address to serve on is in use: say so before anything else starts."""


def _database_url(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url
    return start_embedded_postgres(settings.data_dir)


def check_port_free(host: str, port: int) -> None:
    """PortTaken when another process listens on (host, port) (port 0 picks a free one)."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As uvicorn binds: a port in TIME_WAIT after our own restart is free to take.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise PortTaken(
                    f"port {port} on {host} is already in use (is wa-inbox already running?): "
                    "stop that process, or serve on another port with PORT=8001 make run"
                ) from None
            raise


def serve(settings: Settings) -> None:
    import dataclasses
    import gc

    import uvicorn

    from gql.workers import prepare_metrics_directory, run_workers, serving_settings

    check_port_free(settings.host, settings.port)
    url = _database_url(settings)
    upgrade_to_head(url)
    if settings.auth_secret is None:
        secret = load_or_create_development_secret(settings.data_dir)
        settings = dataclasses.replace(settings, auth_secret=secret, development_secret=True)
        _show_development_token(settings, secret)
    log.info(
        "migrations applied; serving the inbox at http://%s:%s/ and GraphQL at /graphql",
        settings.host,
        settings.port,
    )
    settings = serving_settings(settings, url)
    if settings.workers > 1:
        run_workers(settings, websocket_server_options(settings))
        return

    from gql.app import create_app

    if settings.prometheus_multiproc_dir is not None:
        prepare_metrics_directory(settings)
    app = create_app(settings)
    # Everything built so far lives as long as the process: keep it out of the collector's
    # full passes, whose pauses grow with every tracked object (see bench/fanout.py).
    gc.freeze()
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        **websocket_server_options(settings),
    )


def _show_development_token(settings: Settings, secret: str) -> None:
    """An admin token for business 1, written to the terminal itself, never to a log.

    stdout and stderr may be redirected into files that are kept and shipped (`make run
    2>server.log`); the controlling terminal is the person in front of it.
    """
    token = issue_token(secret, user_id="developer", business_id=1, role=Role.ADMIN)
    headers = json.dumps({"Authorization": f"Bearer {token}"}, separators=(",", ":"))
    link = f"http://{settings.host}:{settings.port}/graphql?headers={quote(headers)}"
    banner = (
        "AUTH_SECRET is not set: tokens are signed with the development secret kept in "
        f"{development_secret_path(settings.data_dir)} (they survive restarts).\n"
        "Development admin token for business_id=1:\n\n"
        f"    Bearer {token}\n\n"
        f"GraphiQL with it in its headers:\n\n    {link}\n\n"
        "The inbox, its sign-in form pre-filled with an agent token:\n\n"
        f"    http://{settings.host}:{settings.port}/\n\n"
        "More tokens: make token ROLE=agent BUSINESS_ID=1\n"
    )
    if not write_to_terminal(banner):
        log.warning(
            "AUTH_SECRET is not set and there is no terminal to show the development token on "
            "(it is never logged): run `make token` to print one"
        )


def write_to_terminal(text: str) -> bool:
    """Write to the controlling terminal (not stdout/stderr); False when there is none."""
    try:
        with open("/dev/tty", "w", encoding="utf-8") as terminal:
            terminal.write(text)
    except OSError:
        return False
    return True


def websocket_server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's websocket options: bounded messages, no per-message compression, and its
    sans-I/O protocol holding less per connection (gql/live_protocol.py).

    Compression would cost every subscriber its own zlib state (tens of KB) for payloads of
    a few hundred bytes; frames from clients are small, so anything larger is refused.
    """
    from gql.live_protocol import LeanWebSocketsProtocol

    return {
        "ws": LeanWebSocketsProtocol,
        "ws_max_size": settings.ws_max_message_bytes,
        "ws_per_message_deflate": False,
        "ws_ping_interval": 20.0,
        "ws_ping_timeout": 20.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gql", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="apply migrations and serve (the default of `make run`)")
    commands.add_parser("migrate", help="apply migrations (alembic upgrade head)")
    commands.add_parser("export-schema", help="print the schema as SDL (schema.graphql)")
    commands.add_parser(
        "channel-key", help="print a new CHANNEL_SECRET_KEY (a Fernet key) for channel tokens"
    )
    token = commands.add_parser(
        "token",
        help="print a bearer token signed with the server's secret: AUTH_SECRET, else the "
        "development secret that `make run` keeps in the data directory",
    )
    token.add_argument("--business-id", type=int, required=True)
    token.add_argument("--user", default="developer")
    token.add_argument("--lifetime-days", type=int, default=30)
    token.add_argument(
        "--role",
        choices=[role.value for role in Role],
        default=Role.AGENT.value,
        help="agent (default: read, markRead, HUMAN messages), service (bots), admin",
    )
    sign = commands.add_parser(
        "sign-webhook",
        help="print the X-Hub-Signature-256 of a file's bytes, signed with WHATSAPP_APP_SECRET",
    )
    sign.add_argument("file", type=argparse.FileType("rb"), help="the request body (- for stdin)")
    args = parser.parse_args(argv)

    if args.command == "channel-key":
        from cryptography.fernet import Fernet

        print(Fernet.generate_key().decode())
        return 0
    if args.command == "export-schema":
        from gql.schema import schema_sdl

        sys.stdout.write(schema_sdl())
        return 0

    try:
        settings = Settings.from_environment()
    except SettingsError as error:
        parser.exit(2, f"configuration error: {error}\n")
    logging.basicConfig(level=settings.log_level, format=LOG_FORMAT)
    if args.command == "token":
        # The secret the server signs with: AUTH_SECRET, else the kept development secret.
        secret = settings.auth_secret or load_or_create_development_secret(settings.data_dir)
        print(
            issue_token(
                secret,
                user_id=args.user,
                business_id=args.business_id,
                role=Role(args.role),
                lifetime_s=args.lifetime_days * 86400,
            )
        )
    elif args.command == "sign-webhook":
        from gql.whatsapp_webhook import signature_of

        if not settings.whatsapp_app_secret:
            parser.exit(2, "set WHATSAPP_APP_SECRET to sign a delivery the server will accept\n")
        with args.file as body:
            print(signature_of(body.read(), settings.whatsapp_app_secret))
    elif args.command == "migrate":
        upgrade_to_head(_database_url(settings))
    else:
        try:
            serve(settings)
        except PortTaken as taken:
            parser.exit(1, f"cannot serve: {taken}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
