"""`played`: a voice message the customer listened to, a status after read (issue 16).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _check(table: str, name: str, statuses: str) -> None:
    op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {name}")
    op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} CHECK (status IN ({statuses}))")


def upgrade() -> None:
    _check(
        "whatsapp_message",
        "ck_wa_msg_status",
        "'received', 'pending', 'sent', 'delivered', 'read', 'played', 'failed', 'deleted'",
    )
    _check(
        "whatsapp_pending_status",
        "ck_wa_pending_status",
        "'sent', 'delivered', 'read', 'played', 'failed'",
    )


def downgrade() -> None:
    # A played message was read: it keeps what it told.
    op.execute("UPDATE whatsapp_message SET status = 'read' WHERE status = 'played'")
    op.execute("UPDATE whatsapp_pending_status SET status = 'read' WHERE status = 'played'")
    _check(
        "whatsapp_message",
        "ck_wa_msg_status",
        "'received', 'pending', 'sent', 'delivered', 'read', 'failed', 'deleted'",
    )
    _check(
        "whatsapp_pending_status", "ck_wa_pending_status", "'sent', 'delivered', 'read', 'failed'"
    )
