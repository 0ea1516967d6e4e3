"""Unread counters: per thread, and per business in shards, kept in the writing transaction.

The unread badge was counted from message history on every request, which grows with the
whole history. Each thread now carries its `unread_count` and each business its total, split
over 16 shard rows (by thread id) so concurrent writers of one business rarely queue on the
same row. Every statement that changes what is unread changes the counters in the same
transaction: storing an inbound message, markRead, deleting a message, merging threads.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "wa_inbox_app"
UNREAD_SHARDS = 16


def upgrade() -> None:
    op.add_column(
        "whatsapp_conversation",
        sa.Column("unread_count", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_check_constraint(
        "ck_wa_conv_unread_count", "whatsapp_conversation", "unread_count >= 0"
    )
    op.create_table(
        "whatsapp_business_unread",
        sa.Column("business_id", sa.BigInteger, nullable=False),
        sa.Column("shard", sa.SmallInteger, nullable=False),
        sa.Column("unread", sa.BigInteger, nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("business_id", "shard", name="pk_wa_business_unread"),
        sa.CheckConstraint("unread >= 0", name="ck_wa_business_unread"),
    )
    # Threads with something unread, by activity: the `unreadOnly` list reads only these.
    op.create_index(
        "ix_wa_conv_business_unread_activity",
        "whatsapp_conversation",
        ["business_id", sa.text("last_message_at DESC"), sa.text("id DESC")],
        postgresql_where=sa.text("unread_count > 0"),
    )
    op.execute(
        """
        UPDATE whatsapp_conversation c
        SET unread_count = counted.unread
        FROM (
            SELECT m.conversation_id, count(*) AS unread
            FROM whatsapp_message m
            JOIN whatsapp_conversation c2 ON c2.id = m.conversation_id
            WHERE m.direction = 'in' AND NOT m.historical AND m.status <> 'deleted'
              AND m.seq > c2.read_seq
            GROUP BY m.conversation_id
        ) counted
        WHERE counted.conversation_id = c.id
        """
    )
    op.execute(
        f"""
        INSERT INTO whatsapp_business_unread (business_id, shard, unread)
        SELECT business_id, (id % {UNREAD_SHARDS})::smallint, sum(unread_count)
        FROM whatsapp_conversation
        GROUP BY business_id, (id % {UNREAD_SHARDS})
        """
    )
    op.execute("ALTER TABLE whatsapp_business_unread ENABLE ROW LEVEL SECURITY")
    op.execute(
        """
        CREATE POLICY business_isolation ON whatsapp_business_unread
        USING (business_id = wa_inbox_current_business())
        WITH CHECK (business_id = wa_inbox_current_business())
        """
    )
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON whatsapp_business_unread TO {APP_ROLE}")


def downgrade() -> None:
    op.drop_table("whatsapp_business_unread")
    op.drop_index("ix_wa_conv_business_unread_activity", "whatsapp_conversation")
    op.drop_constraint("ck_wa_conv_unread_count", "whatsapp_conversation")
    op.drop_column("whatsapp_conversation", "unread_count")
