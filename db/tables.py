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
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

CONVERSATION_KEY_CONSTRAINT = "uq_wa_conv_business_canonical"
MESSAGE_PROVIDER_ID_CONSTRAINT = "uq_wa_msg_business_provider_id"
CHANNEL_PHONE_NUMBER_ID_CONSTRAINT = "uq_wa_channel_phone_number_id"

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
    # Unread messages of the thread, changed in the transaction that changes them.
    Column("unread_count", BigInteger, nullable=False, server_default="0"),
    Column("contact_name", Text),
    # WhatsApp's business-scoped user id (BSUID) of the customer, once a webhook carried it.
    Column("wa_user_id", String(128)),
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
    Column("message_type", String(32), nullable=False, server_default="text"),
    Column("media_id", String(128)),
    # The provider's own JSON of the message, so types we do not model yet lose nothing.
    Column("provider_payload", JSONB),
    Column("error_code", Integer),
    Column("error_title", Text),
    Column("status_at", DateTime(timezone=True)),
    # The provider id of the message this one quotes (WhatsApp's `context.id`), kept even when
    # that message is not stored.
    Column("reply_to_provider_id", String(128)),
    Column("forwarded", Boolean, nullable=False, server_default="false"),
    # The click-to-WhatsApp ad that started the conversation, as WhatsApp described it.
    Column("referral", JSONB),
    # A customer's edit replaces `body`; the text as first sent is kept in `original_body`.
    Column("edited_at", DateTime(timezone=True)),
    Column("original_body", Text),
    # FAILED without knowing whether WhatsApp took the message: the sender lost its answer
    # (db/outbox.py); resending could deliver it twice.
    Column("error_outcome_unknown", Boolean, nullable=False, server_default="false"),
    UniqueConstraint("business_id", "provider_message_id", name=MESSAGE_PROVIDER_ID_CONSTRAINT),
    CheckConstraint("direction IN ('in', 'out')", name="ck_wa_msg_direction"),
    CheckConstraint(
        "source IN ('customer', 'bot', 'automation', 'human')", name="ck_wa_msg_source"
    ),
    CheckConstraint(
        "(direction = 'in') = (source = 'customer')", name="ck_wa_msg_source_fits_direction"
    ),
    CheckConstraint(
        "status IN ('received', 'pending', 'sent', 'delivered', 'read', 'played', 'failed', "
        "'deleted')",
        name="ck_wa_msg_status",
    ),
    Index("ix_wa_msg_thread_chronology", "conversation_id", "sent_at", "id"),
    # Exactly the rows that can be unread: counting a thread's unread messages reads only
    # the entries above its read point. System notices (a number change) are never unread.
    Index(
        "ix_wa_msg_unread_candidates",
        "conversation_id",
        "seq",
        postgresql_where=text(
            "direction = 'in' AND NOT historical AND status <> 'deleted' "
            "AND message_type <> 'system'"
        ),
    ),
)

UNREAD_SHARDS = 16

# The business's unread total, split over UNREAD_SHARDS rows (a thread's shard: its id modulo
# UNREAD_SHARDS) so that concurrent writers of one business seldom wait on the same row.
business_unread = Table(
    "whatsapp_business_unread",
    metadata,
    Column("business_id", BigInteger, nullable=False),
    Column("shard", SmallInteger, nullable=False),
    Column("unread", BigInteger, nullable=False, server_default="0"),
    PrimaryKeyConstraint("business_id", "shard", name="pk_wa_business_unread"),
    CheckConstraint("unread >= 0", name="ck_wa_business_unread"),
)

# Other names of a conversation: every name of a customer (lead id, phones, WhatsApp user ids,
# earlier numbers) that is not the thread's canonical key lives here, pointing at its thread.
conversation_aliases = Table(
    "whatsapp_conversation_alias",
    metadata,
    Column("business_id", BigInteger, nullable=False),
    Column("alias_key", Text, nullable=False),
    Column(
        "conversation_id",
        BigInteger,
        ForeignKey("whatsapp_conversation.id", ondelete="CASCADE"),
        nullable=False,
    ),
    PrimaryKeyConstraint("business_id", "alias_key", name="pk_wa_conv_alias"),
    Index("ix_wa_conv_alias_conversation", "conversation_id"),
)

# Where each merged-away thread went, so that old links (a thread id in a CRM) keep working.
thread_merges = Table(
    "whatsapp_thread_merge",
    metadata,
    Column("merged_conversation_id", BigInteger, primary_key=True),
    Column("business_id", BigInteger, nullable=False),
    Column(
        "into_conversation_id",
        BigInteger,
        ForeignKey("whatsapp_conversation.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("reason", Text, nullable=False),
    Column("merged_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Index("ix_wa_thread_merge_into", "into_conversation_id"),
)

channels = Table(
    "whatsapp_channel",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("business_id", BigInteger, nullable=False),
    Column("phone_number_id", String(64), nullable=False),
    Column("display_phone_number", String(32)),
    Column("connected_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    # The Cloud API access token, encrypted (domain/channel_tokens.py); never plain.
    Column("access_token_sealed", LargeBinary),
    Column("access_token_set_at", DateTime(timezone=True)),
    UniqueConstraint("phone_number_id", name=CHANNEL_PHONE_NUMBER_ID_CONSTRAINT),
    Index("ix_wa_channel_business", "business_id"),
)

# Statuses that arrived before the outbound message they describe; applied when it is stored.
pending_statuses = Table(
    "whatsapp_pending_status",
    metadata,
    Column("business_id", BigInteger, nullable=False),
    Column("provider_message_id", String(128), nullable=False),
    Column("status", String(16), nullable=False),
    Column("status_at", DateTime(timezone=True), nullable=False),
    Column("error_code", Integer),
    Column("error_title", Text),
    Column("received_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    PrimaryKeyConstraint("business_id", "provider_message_id", name="pk_wa_pending_status"),
    CheckConstraint(
        "status IN ('sent', 'delivered', 'read', 'played', 'failed')",
        name="ck_wa_pending_status",
    ),
)

# A customer's edit or revoke that arrived before the message it changes; applied when that
# message is stored (WhatsApp guarantees no order between webhooks).
pending_revisions = Table(
    "whatsapp_pending_revision",
    metadata,
    Column("business_id", BigInteger, nullable=False),
    Column("original_provider_message_id", String(128), nullable=False),
    Column("kind", String(8), nullable=False),
    Column("revision_provider_message_id", String(128), nullable=False),
    Column("body", Text),
    Column("revised_at", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    PrimaryKeyConstraint(
        "business_id", "original_provider_message_id", "kind", name="pk_wa_pending_revision"
    ),
    CheckConstraint("kind IN ('edit', 'revoke')", name="ck_wa_pending_revision_kind"),
)

# Messages to post to the Cloud API (db/outbox.py): a row exists while its message is PENDING.
outbox = Table(
    "whatsapp_outbox",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("business_id", BigInteger, nullable=False),
    Column(
        "message_id",
        BigInteger,
        ForeignKey("whatsapp_message.id", ondelete="CASCADE"),
        nullable=False,
        unique=True,
    ),
    Column("phone_number_id", String(64), nullable=False),
    # The Cloud API request body, without the token (added as each attempt is made).
    Column("request", JSONB, nullable=False),
    Column("state", String(8), nullable=False, server_default="queued"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column(
        "next_attempt_at", DateTime(timezone=True), nullable=False, server_default=text("now()")
    ),
    Column("deadline_at", DateTime(timezone=True), nullable=False),
    Column("lease_until", DateTime(timezone=True)),
    Column("claimed_by", Text),
    Column("last_error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    CheckConstraint("state IN ('queued', 'sending')", name="ck_wa_outbox_state"),
)

# Parts of webhook deliveries that could not be stored, with the reason, for operators.
webhook_rejections = Table(
    "whatsapp_webhook_rejection",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("business_id", BigInteger),
    Column("phone_number_id", String(64)),
    Column("provider_message_id", String(128)),
    Column("reason", Text, nullable=False),
    Column("fragment", JSONB),
    Column("received_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Index("ix_wa_webhook_rejection_business", "business_id", "received_at"),
)

# Unique constraints that `INSERT ... ON CONFLICT` statements rely on, by table and columns.
CONFLICT_TARGETS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (CONVERSATION_KEY_CONSTRAINT, "whatsapp_conversation", ("business_id", "canonical_key")),
    (MESSAGE_PROVIDER_ID_CONSTRAINT, "whatsapp_message", ("business_id", "provider_message_id")),
    (CHANNEL_PHONE_NUMBER_ID_CONSTRAINT, "whatsapp_channel", ("phone_number_id",)),
    ("pk_wa_conv_alias", "whatsapp_conversation_alias", ("business_id", "alias_key")),
    ("pk_wa_pending_status", "whatsapp_pending_status", ("business_id", "provider_message_id")),
    ("pk_wa_business_unread", "whatsapp_business_unread", ("business_id", "shard")),
    (
        "pk_wa_pending_revision",
        "whatsapp_pending_revision",
        ("business_id", "original_provider_message_id", "kind"),
    ),
)

__all__ = [
    "CHANNEL_PHONE_NUMBER_ID_CONSTRAINT",
    "CONFLICT_TARGETS",
    "CONVERSATION_KEY_CONSTRAINT",
    "MESSAGE_PROVIDER_ID_CONSTRAINT",
    "UNREAD_SHARDS",
    "business_unread",
    "channels",
    "conversation_aliases",
    "conversations",
    "messages",
    "metadata",
    "outbox",
    "pending_revisions",
    "pending_statuses",
    "thread_merges",
    "webhook_rejections",
]
