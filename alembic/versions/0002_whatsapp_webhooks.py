"""WhatsApp Cloud API webhooks: channels, customer identities, message content and statuses.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "whatsapp_channel",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("business_id", sa.BigInteger, nullable=False),
        sa.Column("phone_number_id", sa.String(64), nullable=False),
        sa.Column("display_phone_number", sa.String(32)),
        sa.Column(
            "connected_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        ),
        sa.UniqueConstraint("phone_number_id", name="uq_wa_channel_phone_number_id"),
    )
    op.create_index("ix_wa_channel_business", "whatsapp_channel", ["business_id"])

    op.add_column("whatsapp_conversation", sa.Column("contact_name", sa.Text))
    op.add_column("whatsapp_conversation", sa.Column("wa_user_id", sa.String(128)))
    op.create_table(
        "whatsapp_conversation_alias",
        sa.Column("business_id", sa.BigInteger, nullable=False),
        sa.Column("alias_key", sa.Text, nullable=False),
        sa.Column(
            "conversation_id",
            sa.BigInteger,
            sa.ForeignKey("whatsapp_conversation.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("business_id", "alias_key", name="pk_wa_conv_alias"),
    )
    op.create_index(
        "ix_wa_conv_alias_conversation", "whatsapp_conversation_alias", ["conversation_id"]
    )

    op.add_column(
        "whatsapp_message",
        sa.Column("message_type", sa.String(32), nullable=False, server_default="text"),
    )
    op.add_column("whatsapp_message", sa.Column("media_id", sa.String(128)))
    op.add_column("whatsapp_message", sa.Column("provider_payload", postgresql.JSONB))
    op.add_column("whatsapp_message", sa.Column("error_code", sa.Integer))
    op.add_column("whatsapp_message", sa.Column("error_title", sa.Text))
    op.add_column("whatsapp_message", sa.Column("status_at", sa.DateTime(timezone=True)))

    op.create_table(
        "whatsapp_pending_status",
        sa.Column("business_id", sa.BigInteger, nullable=False),
        sa.Column("provider_message_id", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("error_code", sa.Integer),
        sa.Column("error_title", sa.Text),
        sa.Column(
            "received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("business_id", "provider_message_id", name="pk_wa_pending_status"),
        sa.CheckConstraint(
            "status IN ('sent', 'delivered', 'read', 'failed')", name="ck_wa_pending_status"
        ),
    )

    op.create_table(
        "whatsapp_webhook_rejection",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("business_id", sa.BigInteger),
        sa.Column("phone_number_id", sa.String(64)),
        sa.Column("provider_message_id", sa.String(128)),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("fragment", postgresql.JSONB),
        sa.Column(
            "received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.create_index(
        "ix_wa_webhook_rejection_business",
        "whatsapp_webhook_rejection",
        ["business_id", "received_at"],
    )


def downgrade() -> None:
    op.drop_table("whatsapp_webhook_rejection")
    op.drop_table("whatsapp_pending_status")
    for column in ("status_at", "error_title", "error_code", "provider_payload", "media_id"):
        op.drop_column("whatsapp_message", column)
    op.drop_column("whatsapp_message", "message_type")
    op.drop_table("whatsapp_conversation_alias")
    op.drop_column("whatsapp_conversation", "wa_user_id")
    op.drop_column("whatsapp_conversation", "contact_name")
    op.drop_table("whatsapp_channel")
