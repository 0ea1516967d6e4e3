"""Alembic environment: runs migrations over asyncpg, the only driver the project installs."""

import asyncio
import os
from logging.config import fileConfig

from alembic import context
from alembic.script import ScriptDirectory
from sqlalchemy import pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from db.engine import to_async_url
from db.tables import metadata

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _database_url() -> str:
    url = config.attributes.get("database_url") or os.environ.get("DATABASE_URL")
    if not url:
        raise SystemExit(
            "No database URL: set DATABASE_URL, or run `make migrate` (embedded PostgreSQL)."
        )
    return to_async_url(url)


def _default_region() -> str:
    # The region national phone spellings are read in when a legacy database is adopted
    # (revision 0001): the server's DEFAULT_REGION, as gql/settings.py reads it.
    region = config.attributes.get("default_region") or os.environ.get("DEFAULT_REGION") or "US"
    return str(region).strip().upper()


LEGACY_VERSION_TABLE = "legacy_alembic_version"


def _set_aside_the_legacy_version_table(connection: Connection) -> None:
    """The system we replace ran Flask-Migrate (alembic) up to revisions of its own: its
    `alembic_version` names none of ours. Beside its conversation tables that means a legacy
    database to adopt: the table is kept as `legacy_alembic_version` and our migrations run
    from the start (revision 0001 adopts). Anything else unknown is left for alembic to refuse.
    """
    if not (
        connection.dialect.has_table(connection, "alembic_version")
        and connection.dialect.has_table(connection, "whatsapp_conversation")
        and not connection.dialect.has_table(connection, "whatsapp_business_unread")
    ):
        return
    ours = {revision.revision for revision in ScriptDirectory.from_config(config).walk_revisions()}
    stamped = set(connection.execute(text("SELECT version_num FROM alembic_version")).scalars())
    if stamped and not stamped & ours:
        connection.execute(text(f"ALTER TABLE alembic_version RENAME TO {LEGACY_VERSION_TABLE}"))


def _run(connection: Connection) -> None:
    config.attributes["default_region"] = _default_region()
    context.configure(connection=connection, target_metadata=metadata, compare_type=True)
    with context.begin_transaction():
        # In the migrations' transaction: an adoption that fails leaves the table as it was.
        _set_aside_the_legacy_version_table(connection)
        context.run_migrations()


async def _run_online() -> None:
    engine = create_async_engine(_database_url(), poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_database_url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online())
