"""Conversations and messages, with the unique constraints ON CONFLICT relies on.

A database of the system we replace already holds both tables under these names: they are
adopted in place instead (db/legacy_adoption.py, issue 13), into exactly what this revision
creates, so the later revisions run on them as on a new database.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from db.legacy_adoption import adopt_legacy_tables, holds_legacy_tables
from domain.errors import BadInput
from domain.phones import normalize_phone

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Revision 0001 runs only where alembic has never run: tables of ours cannot be here.
    if holds_legacy_tables(op.get_bind()):
        region = context.config.attributes.get("default_region", "US")

        def e164_or_none(spelling: str) -> str | None:
            try:
                return normalize_phone(spelling, region)
            except BadInput:
                return None

        adopt_legacy_tables(op.get_bind(), e164_or_none)
        return
    op.create_table(
        "whatsapp_conversation",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("business_id", sa.BigInteger, nullable=False),
        sa.Column("canonical_key", sa.Text, nullable=False),
        sa.Column("phone_e164", sa.String(16)),
        sa.Column("lead_id", sa.String(128)),
        sa.Column("status", sa.String(16), nullable=False, server_default="open"),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_message_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_read_at", sa.DateTime(timezone=True)),
        sa.Column("message_seq", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("read_seq", sa.BigInteger, nullable=False, server_default="0"),
        sa.UniqueConstraint("business_id", "canonical_key", name="uq_wa_conv_business_canonical"),
        sa.CheckConstraint("status IN ('open', 'closed')", name="ck_wa_conv_status"),
        sa.CheckConstraint("read_seq <= message_seq", name="ck_wa_conv_read_seq"),
    )
    op.create_index(
        "ix_wa_conv_business_activity",
        "whatsapp_conversation",
        ["business_id", sa.text("last_message_at DESC"), sa.text("id DESC")],
    )
    op.create_index(
        "ix_wa_conv_business_phone", "whatsapp_conversation", ["business_id", "phone_e164"]
    )

    op.create_table(
        "whatsapp_message",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("business_id", sa.BigInteger, nullable=False),
        sa.Column(
            "conversation_id",
            sa.BigInteger,
            sa.ForeignKey("whatsapp_conversation.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("provider_message_id", sa.String(128)),
        sa.Column("direction", sa.String(3), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("body", sa.Text),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("historical", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.UniqueConstraint(
            "business_id", "provider_message_id", name="uq_wa_msg_business_provider_id"
        ),
        sa.CheckConstraint("direction IN ('in', 'out')", name="ck_wa_msg_direction"),
        sa.CheckConstraint(
            "source IN ('customer', 'bot', 'automation', 'human')", name="ck_wa_msg_source"
        ),
        sa.CheckConstraint(
            "(direction = 'in') = (source = 'customer')", name="ck_wa_msg_source_fits_direction"
        ),
        sa.CheckConstraint(
            "status IN ('received', 'pending', 'sent', 'delivered', 'read', 'failed', 'deleted')",
            name="ck_wa_msg_status",
        ),
    )
    op.create_index(
        "ix_wa_msg_thread_chronology", "whatsapp_message", ["conversation_id", "sent_at", "id"]
    )
    op.create_index(
        "ix_wa_msg_unread_candidates",
        "whatsapp_message",
        ["conversation_id", "seq"],
        postgresql_where=sa.text("direction = 'in' AND NOT historical AND status <> 'deleted'"),
    )


def downgrade() -> None:
    op.drop_table("whatsapp_message")
    op.drop_table("whatsapp_conversation")
