"""Command line: `python -m gql serve | migrate | export-schema | token | sign-webhook`."""

import argparse
import logging
import sys
from typing import Any

from db.embedded import start_embedded_postgres
from db.migrations import upgrade_to_head
from domain.access import Role
from gql.auth import issue_token
from gql.settings import Settings, SettingsError

log = logging.getLogger("wa_inbox")


def _database_url(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url
    log.info("DATABASE_URL is not set: starting the embedded PostgreSQL in %s", settings.data_dir)
    return start_embedded_postgres(settings.data_dir)


def serve(settings: Settings) -> None:
    import dataclasses
    import gc

    import uvicorn

    from gql.app import create_app

    url = _database_url(settings)
    upgrade_to_head(url)
    if settings.auth_secret is None:
        settings = dataclasses.replace(settings, auth_secret=_development_secret_banner())
    log.info(
        "migrations applied; serving GraphQL at http://%s:%s/graphql", settings.host, settings.port
    )
    app = create_app(dataclasses.replace(settings, database_url=url))
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


def _development_secret_banner() -> str:
    """A secret for this run, and an admin token for business 1 printed on the terminal.

    Printed, never logged: log lines are shipped and kept, and tokens never belong in them.
    """
    from gql.app import development_secret

    secret = development_secret()
    token = issue_token(secret, user_id="developer", business_id=1, role=Role.ADMIN)
    print(
        "AUTH_SECRET is not set: using a generated development secret (tokens stop working at "
        f"restart).\nDevelopment admin token for business_id=1:\n\n    Bearer {token}\n",
        file=sys.stderr,
        flush=True,
    )
    return secret


def websocket_server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's websocket options: bounded messages, no per-message compression.

    Compression would cost every subscriber its own zlib state (tens of KB) for payloads of
    a few hundred bytes; frames from clients are small, so anything larger is refused.
    """
    return {
        "ws": "websockets-sansio",
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
    token = commands.add_parser("token", help="print a bearer token signed with AUTH_SECRET")
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

    if args.command == "export-schema":
        from gql.schema import schema_sdl

        sys.stdout.write(schema_sdl())
        return 0

    try:
        settings = Settings.from_environment()
    except SettingsError as error:
        parser.exit(2, f"configuration error: {error}\n")
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if args.command == "token":
        if not settings.auth_secret:
            parser.exit(2, "set AUTH_SECRET to sign a token the server will accept\n")
        print(
            issue_token(
                settings.auth_secret,
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
        serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
