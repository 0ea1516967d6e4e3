"""Channel access tokens, sealed (issue 16): `whatsapp_channel.access_token_sealed` holds the
Cloud API token encrypted with CHANNEL_SECRET_KEY (domain/channel_tokens.py), never plain.

`wa_inbox_sealed_channel_tokens()` counts the channels holding one across businesses (as the
owner, like `wa_inbox_channel_owners`), so a server started without the key can say it needs
one before anything tries to send.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "wa_inbox_app"


def upgrade() -> None:
    op.execute(
        "ALTER TABLE whatsapp_channel ADD COLUMN access_token_sealed bytea, "
        "ADD COLUMN access_token_set_at timestamptz"
    )
    op.execute(
        """
        CREATE FUNCTION wa_inbox_sealed_channel_tokens() RETURNS bigint
        LANGUAGE sql STABLE SECURITY DEFINER SET search_path FROM CURRENT
        AS $$ SELECT count(*) FROM whatsapp_channel WHERE access_token_sealed IS NOT NULL $$
        """
    )
    op.execute(f"GRANT EXECUTE ON FUNCTION wa_inbox_sealed_channel_tokens() TO {APP_ROLE}")


def downgrade() -> None:
    op.execute("DROP FUNCTION wa_inbox_sealed_channel_tokens()")
    op.execute(
        "ALTER TABLE whatsapp_channel DROP COLUMN access_token_sealed, "
        "DROP COLUMN access_token_set_at"
    )
