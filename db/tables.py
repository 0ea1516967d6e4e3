"""Table definitions (SQLAlchemy Core). The schema itself is created by alembic migrations."""

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData()

CONVERSATION_KEY_CONSTRAINT = "uq_wa_conv_business_canonical"
MESSAGE_PROVIDER_ID_CONSTRAINT = "uq_wa_msg_business_provider_id"

conversations = Table(
    "whatsapp_conversation",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("business_id", BigInteger, nullable=False),
    Column("canonical_key", Text, nullable=False),
    Column("phone_e164", String(16)),
    Column("lead_id", String(128)),
    Column("status", String(16), nullable=False, server_default="open"),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("last_message_at", DateTime(timezone=True), nullable=False),
    Column("last_read_at", DateTime(timezone=True)),
    # Read tracking by position, not by clock: every stored message takes the next
    # `message_seq` of its thread under the thread's row lock, and `markRead` copies
    # `message_seq` into `read_seq` under the same lock. A message is unread when its
    # seq is above `read_seq`, which is exact even for late webhooks and for writes that
    # race a markRead (timestamps taken in two transactions cannot promise that).
    Column("message_seq", BigInteger, nullable=False, server_default="0"),
    Column("read_seq", BigInteger, nullable=False, server_default="0"),
    UniqueConstraint("business_id", "canonical_key", name=CONVERSATION_KEY_CONSTRAINT),
    CheckConstraint("status IN ('open', 'closed')", name="ck_wa_conv_status"),
    CheckConstraint("read_seq <= message_seq", name="ck_wa_conv_read_seq"),
    Index(
        "ix_wa_conv_business_activity", "business_id", text("last_message_at DESC"), text("id DESC")
    ),
    Index("ix_wa_conv_business_phone", "business_id", "phone_e164"),
)

messages = Table(
    "whatsapp_message",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("business_id", BigInteger, nullable=False),
    Column(
        "conversation_id",
        BigInteger,
        ForeignKey("whatsapp_conversation.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("seq", BigInteger, nullable=False),
    Column("provider_message_id", String(128)),
    Column("direction", String(3), nullable=False),
    Column("source", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("body", Text),
    Column("sent_at", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("historical", Boolean, nullable=False, server_default="false"),
    UniqueConstraint("business_id", "provider_message_id", name=MESSAGE_PROVIDER_ID_CONSTRAINT),
    CheckConstraint("direction IN ('in', 'out')", name="ck_wa_msg_direction"),
    CheckConstraint(
        "source IN ('customer', 'bot', 'automation', 'human')", name="ck_wa_msg_source"
    ),
    CheckConstraint(
        "(direction = 'in') = (source = 'customer')", name="ck_wa_msg_source_fits_direction"
    ),
    CheckConstraint(
        "status IN ('received', 'pending', 'sent', 'delivered', 'read', 'failed', 'deleted')",
        name="ck_wa_msg_status",
    ),
    Index("ix_wa_msg_thread_chronology", "conversation_id", "sent_at", "id"),
    # Exactly the rows that can be unread: counting a thread's unread messages reads only
    # the entries above its read point.
    Index(
        "ix_wa_msg_unread_candidates",
        "conversation_id",
        "seq",
        postgresql_where=text("direction = 'in' AND NOT historical AND status <> 'deleted'"),
    ),
)

# Unique constraints that `INSERT ... ON CONFLICT` statements rely on, by table and columns.
CONFLICT_TARGETS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (CONVERSATION_KEY_CONSTRAINT, "whatsapp_conversation", ("business_id", "canonical_key")),
    (MESSAGE_PROVIDER_ID_CONSTRAINT, "whatsapp_message", ("business_id", "provider_message_id")),
)

__all__ = [
    "CONFLICT_TARGETS",
    "CONVERSATION_KEY_CONSTRAINT",
    "MESSAGE_PROVIDER_ID_CONSTRAINT",
    "conversations",
    "messages",
    "metadata",
]
