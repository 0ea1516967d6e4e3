"""One customer, one thread, however they are named (issue 11).

- Every name of a customer (lead id, phones, WhatsApp user ids, earlier numbers) resolves to one
  thread: its canonical key, or a row of `whatsapp_conversation_alias`. Lead threads get an
  alias for the phone stored on them, and a phone thread that was split from its lead's thread
  by the old threading is merged into it.
- `whatsapp_thread_merge` remembers where every merged-away thread went, so old links to it
  keep working.
- `wa_inbox_merge_threads()`: the merge, in one statement, for the application and for this
  migration alike.
- Messages learn what WhatsApp says about them: the message they reply to, forwarding, the ad
  that started the conversation, edits (the first text kept) and revokes; an edit or revoke
  that arrives before its message waits in `whatsapp_pending_revision`.
- System notices (a number change) are stored in the thread and never counted unread.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "wa_inbox_app"
UNREAD_SHARDS = 16
NEW_TENANT_TABLES = ("whatsapp_thread_merge", "whatsapp_pending_revision")

# The unread rule, as the partial index and the merge function write it.
UNREAD_CANDIDATE = (
    "direction = 'in' AND NOT historical AND status <> 'deleted' AND message_type <> 'system'"
)

MERGE_FUNCTION = f"""
CREATE FUNCTION wa_inbox_merge_threads(survivor_id bigint, absorbed_id bigint, reason text)
RETURNS SETOF whatsapp_conversation
LANGUAGE plpgsql
AS $$
DECLARE
    survivor whatsapp_conversation;
    absorbed whatsapp_conversation;
    moved_count bigint;
    read_count bigint;
    merged whatsapp_conversation;
BEGIN
    -- Both rows locked in id order, as every writer that locks two threads does.
    PERFORM 1 FROM whatsapp_conversation
    WHERE id IN (survivor_id, absorbed_id) ORDER BY id FOR UPDATE;
    SELECT * INTO survivor FROM whatsapp_conversation WHERE id = survivor_id;
    SELECT * INTO absorbed FROM whatsapp_conversation WHERE id = absorbed_id;
    IF survivor.id IS NULL OR absorbed.id IS NULL OR survivor_id = absorbed_id
       OR survivor.business_id <> absorbed.business_id THEN
        -- One of them was merged away meanwhile: the caller looks its customer up again.
        RETURN;
    END IF;

    -- Everything either thread had read comes first: the merged read point then covers
    -- exactly the messages read before, and each thread's unread messages stay unread.
    WITH combined AS (
        SELECT m.id, m.seq <= c.read_seq AS was_read, m.sent_at
        FROM whatsapp_message m
        JOIN whatsapp_conversation c ON c.id = m.conversation_id
        WHERE m.conversation_id IN (survivor_id, absorbed_id)
    ), renumbered AS (
        SELECT id, was_read,
               row_number() OVER (ORDER BY was_read DESC, sent_at, id) AS new_seq
        FROM combined
    ), moved AS (
        UPDATE whatsapp_message m
        SET conversation_id = survivor_id, seq = r.new_seq
        FROM renumbered r
        WHERE m.id = r.id
        RETURNING r.was_read
    )
    SELECT count(*), count(*) FILTER (WHERE was_read) INTO moved_count, read_count FROM moved;

    -- The absorbed thread's names and the merges into it now lead to the survivor.
    UPDATE whatsapp_conversation_alias SET conversation_id = survivor_id
    WHERE conversation_id = absorbed_id;
    UPDATE whatsapp_thread_merge SET into_conversation_id = survivor_id
    WHERE into_conversation_id = absorbed_id;
    DELETE FROM whatsapp_conversation WHERE id = absorbed_id;
    INSERT INTO whatsapp_conversation_alias (business_id, alias_key, conversation_id)
    VALUES (survivor.business_id, absorbed.canonical_key, survivor_id)
    ON CONFLICT (business_id, alias_key) DO UPDATE SET conversation_id = EXCLUDED.conversation_id;
    INSERT INTO whatsapp_thread_merge
        (business_id, merged_conversation_id, into_conversation_id, reason)
    VALUES (survivor.business_id, absorbed_id, survivor_id, reason)
    ON CONFLICT (merged_conversation_id) DO UPDATE
    SET into_conversation_id = EXCLUDED.into_conversation_id;

    UPDATE whatsapp_conversation c
    SET message_seq = moved_count,
        read_seq = read_count,
        unread_count = (
            SELECT count(*) FROM whatsapp_message m
            WHERE m.conversation_id = survivor_id AND m.seq > read_count
              AND m.direction = 'in' AND NOT m.historical AND m.status <> 'deleted'
              AND m.message_type <> 'system'
        ),
        started_at = least(survivor.started_at, absorbed.started_at),
        last_message_at = greatest(survivor.last_message_at, absorbed.last_message_at),
        last_read_at = greatest(survivor.last_read_at, absorbed.last_read_at),
        phone_e164 = coalesce(survivor.phone_e164, absorbed.phone_e164),
        lead_id = coalesce(survivor.lead_id, absorbed.lead_id),
        contact_name = coalesce(survivor.contact_name, absorbed.contact_name),
        wa_user_id = coalesce(survivor.wa_user_id, absorbed.wa_user_id),
        status = CASE WHEN 'open' IN (survivor.status, absorbed.status) THEN 'open'
                      ELSE survivor.status END
    WHERE c.id = survivor_id
    RETURNING c.* INTO merged;

    -- Both threads' counts leave their shards; the merged thread's count enters its own.
    IF absorbed.unread_count <> 0 THEN
        UPDATE whatsapp_business_unread SET unread = unread - absorbed.unread_count
        WHERE business_id = survivor.business_id
          AND shard = (absorbed_id % {UNREAD_SHARDS})::smallint;
    END IF;
    IF merged.unread_count <> survivor.unread_count THEN
        INSERT INTO whatsapp_business_unread (business_id, shard, unread)
        VALUES (survivor.business_id, (survivor_id % {UNREAD_SHARDS})::smallint,
                merged.unread_count - survivor.unread_count)
        ON CONFLICT (business_id, shard)
        DO UPDATE SET unread = whatsapp_business_unread.unread + EXCLUDED.unread;
    END IF;
    RETURN NEXT merged;
END
$$
"""

# Lead threads carry the phone they were created with, but until now the phone named no thread
# but its own `phone:` one: every phone-only message split the customer from the lead's
# thread. A phone on exactly one lead thread becomes an alias of it; its split `phone:` thread,
# if any, is merged in. A phone on several leads' threads is a CRM question: left as it is.
HEAL_LEAD_SPLITS = """
DO $$
DECLARE
    pair record;
BEGIN
    FOR pair IN
        WITH lead_phones AS (
            SELECT business_id, phone_e164, min(id) AS lead_thread_id, count(*) AS leads
            FROM whatsapp_conversation
            WHERE lead_id IS NOT NULL AND phone_e164 IS NOT NULL
            GROUP BY business_id, phone_e164
        )
        SELECT l.business_id, l.lead_thread_id,
               'phone:' || l.business_id || ':' || l.phone_e164 AS phone_key,
               p.id AS phone_thread_id
        FROM lead_phones l
        LEFT JOIN whatsapp_conversation p
          ON p.business_id = l.business_id
         AND p.canonical_key = 'phone:' || l.business_id || ':' || l.phone_e164
        WHERE l.leads = 1
        ORDER BY l.business_id, l.lead_thread_id
    LOOP
        IF pair.phone_thread_id IS NOT NULL THEN
            PERFORM wa_inbox_merge_threads(
                pair.lead_thread_id, pair.phone_thread_id, 'lead linked (migration 0005)'
            );
        ELSE
            INSERT INTO whatsapp_conversation_alias (business_id, alias_key, conversation_id)
            VALUES (pair.business_id, pair.phone_key, pair.lead_thread_id)
            ON CONFLICT (business_id, alias_key) DO NOTHING;
        END IF;
    END LOOP;
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "whatsapp_thread_merge",
        sa.Column("merged_conversation_id", sa.BigInteger, primary_key=True),
        sa.Column("business_id", sa.BigInteger, nullable=False),
        sa.Column(
            "into_conversation_id",
            sa.BigInteger,
            sa.ForeignKey("whatsapp_conversation.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column(
            "merged_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.create_index("ix_wa_thread_merge_into", "whatsapp_thread_merge", ["into_conversation_id"])

    op.add_column("whatsapp_message", sa.Column("reply_to_provider_id", sa.String(128)))
    op.add_column(
        "whatsapp_message",
        sa.Column("forwarded", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.add_column("whatsapp_message", sa.Column("referral", JSONB))
    op.add_column("whatsapp_message", sa.Column("edited_at", sa.DateTime(timezone=True)))
    op.add_column("whatsapp_message", sa.Column("original_body", sa.Text))

    op.create_table(
        "whatsapp_pending_revision",
        sa.Column("business_id", sa.BigInteger, nullable=False),
        sa.Column("original_provider_message_id", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("revision_provider_message_id", sa.String(128), nullable=False),
        sa.Column("body", sa.Text),
        sa.Column("revised_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint(
            "business_id", "original_provider_message_id", "kind", name="pk_wa_pending_revision"
        ),
        sa.CheckConstraint("kind IN ('edit', 'revoke')", name="ck_wa_pending_revision_kind"),
    )

    # System notices are not unread: the partial index of unread candidates says so too.
    op.drop_index("ix_wa_msg_unread_candidates", "whatsapp_message")
    op.create_index(
        "ix_wa_msg_unread_candidates",
        "whatsapp_message",
        ["conversation_id", "seq"],
        postgresql_where=sa.text(UNREAD_CANDIDATE),
    )

    for table in NEW_TENANT_TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(
            f"""
            CREATE POLICY business_isolation ON {table}
            USING (business_id = wa_inbox_current_business())
            WITH CHECK (business_id = wa_inbox_current_business())
            """
        )
        op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {APP_ROLE}")

    op.execute(MERGE_FUNCTION)
    op.execute("REVOKE ALL ON FUNCTION wa_inbox_merge_threads(bigint, bigint, text) FROM PUBLIC")
    op.execute(
        f"GRANT EXECUTE ON FUNCTION wa_inbox_merge_threads(bigint, bigint, text) TO {APP_ROLE}"
    )
    op.execute(HEAL_LEAD_SPLITS)
    # Statistics for the planner after the rewrite (autovacuum may be off).
    op.execute("ANALYZE whatsapp_conversation, whatsapp_conversation_alias, whatsapp_message")


def downgrade() -> None:
    op.execute("DROP FUNCTION wa_inbox_merge_threads(bigint, bigint, text)")
    op.drop_index("ix_wa_msg_unread_candidates", "whatsapp_message")
    op.create_index(
        "ix_wa_msg_unread_candidates",
        "whatsapp_message",
        ["conversation_id", "seq"],
        postgresql_where=sa.text("direction = 'in' AND NOT historical AND status <> 'deleted'"),
    )
    op.drop_table("whatsapp_pending_revision")
    for column in ("original_body", "edited_at", "referral", "forwarded", "reply_to_provider_id"):
        op.drop_column("whatsapp_message", column)
    op.drop_table("whatsapp_thread_merge")
