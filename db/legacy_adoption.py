"""Adopting the legacy system's tables in place (issue 13, "Adopting a legacy database").

The system we replace stored `whatsapp_conversation` and `whatsapp_message` under our names but
looser: serial ids, naive UTC timestamps, un-normalized phones in keys, several conversations per
customer and several copies of one provider message, no read positions. Migration 0001 calls
`adopt_legacy_tables` instead of creating the tables: it reshapes them into exactly what 0001
creates (extra legacy columns kept), so migrations 0002 onwards add the constraints, counters,
row-level security and aliases with the same code as for a new database. The duplicates'
old ids wait in `wa_inbox_legacy_merge` until migration 0006 makes them thread merges.

Every statement is set-based: a million messages are rewritten a handful of times, never row by
row from Python. Only the distinct phone spellings travel to Python, to be normalized there.
"""

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sqlalchemy import bindparam, inspect, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection
from sqlalchemy.types import Text

logger = logging.getLogger("wa_inbox.legacy_adoption")

LEGACY_MERGE_TABLE = "wa_inbox_legacy_merge"
MERGE_REASON = "legacy duplicate (adoption)"

# Columns migrations 0002-0005 add. A legacy column of the same name would make them fail, so it
# is kept under `legacy_<name>` instead (and reported).
LATER_COLUMNS = {
    "whatsapp_conversation": ("contact_name", "wa_user_id", "unread_count"),
    "whatsapp_message": (
        "message_type",
        "media_id",
        "provider_payload",
        "error_code",
        "error_title",
        "status_at",
        "reply_to_provider_id",
        "forwarded",
        "referral",
        "edited_at",
        "original_body",
    ),
}

# A `phone:` key's phone part, whatever the legacy wrote after `phone:{business}:`.
PHONE_KEY_PATTERN = "^phone:[^:]*:"


@dataclass
class AdoptionSummary:
    """What adoption found and did, for the log."""

    conversations: int = 0
    messages: int = 0
    duplicate_conversations_merged: int = 0
    duplicate_messages_removed: int = 0
    sources_derived: int = 0
    phones_normalized: int = 0
    historical_messages: int = 0
    unparseable_phones: list[str] = field(default_factory=list)
    renamed_columns: list[str] = field(default_factory=list)

    def log_line(self) -> str:
        shown = ", ".join(repr(phone) for phone in self.unparseable_phones[:20])
        more = len(self.unparseable_phones) - 20
        return (
            f"[WA-LEGACY-ADOPTION] adopted {self.conversations} threads and {self.messages}"
            f" messages: {self.duplicate_conversations_merged} duplicate conversations merged"
            f" into their survivor, {self.duplicate_messages_removed} duplicate messages removed,"
            f" {self.sources_derived} sources derived from the direction,"
            f" {self.phones_normalized} threads' phones respelled in E.164,"
            f" {self.historical_messages} messages before a never-read thread's start marked"
            f" historical; {len(self.unparseable_phones)} unparseable phones kept as they were"
            + (f" ({shown}{f' and {more} more' if more > 0 else ''})" if shown else "")
            + (
                f"; legacy columns kept as {', '.join(self.renamed_columns)}"
                if self.renamed_columns
                else ""
            )
        )


def holds_legacy_tables(connection: Connection) -> bool:
    """Whether the database holds the legacy conversation tables (asked before 0001 creates)."""
    return bool(inspect(connection).has_table("whatsapp_conversation"))


def adopt_legacy_tables(
    connection: Connection, normalize_phone: Callable[[str], str | None]
) -> AdoptionSummary:
    """Reshape the legacy tables into revision 0001's schema, in the caller's transaction.

    `normalize_phone` returns a spelling's E.164 form, or None when it cannot be read.
    """
    if not inspect(connection).has_table("whatsapp_message"):
        raise RuntimeError(
            "whatsapp_conversation exists without whatsapp_message: not a database of the "
            "legacy system, and not one of ours; refusing to adopt it"
        )
    summary = AdoptionSummary()
    # Both tables up front, in one order: a legacy writer still running waits, or is refused,
    # instead of deadlocking with the first ALTER halfway through.
    _execute(connection, "LOCK TABLE whatsapp_conversation, whatsapp_message IN EXCLUSIVE MODE")
    summary.renamed_columns = _keep_colliding_columns(connection)
    _reshape_conversations(connection)
    summary.phones_normalized, summary.unparseable_phones = _normalize_phones(
        connection, normalize_phone
    )
    summary.duplicate_conversations_merged = _record_duplicate_conversations(connection)
    _reshape_messages(connection)
    summary.duplicate_messages_removed = _remove_duplicate_messages(connection)
    summary.sources_derived, summary.historical_messages = _place_messages(connection)
    _finish_conversations(connection)
    _add_revision_0001_constraints(connection)
    summary.conversations = _count(connection, "whatsapp_conversation")
    summary.messages = _count(connection, "whatsapp_message")
    logger.info(summary.log_line())
    return summary


def resolve_legacy_merges(connection: Connection) -> int:
    """Turn adoption's merged-away conversation ids into thread merges and aliases (0006).

    Returns how many; 0 when the database was not adopted.
    """
    if not inspect(connection).has_table(LEGACY_MERGE_TABLE):
        return 0
    # A survivor may itself have been merged into its lead's thread by 0005: follow it there.
    _execute(
        connection,
        f"""
        UPDATE {LEGACY_MERGE_TABLE} l SET into_conversation_id = t.into_conversation_id
        FROM whatsapp_thread_merge t WHERE t.merged_conversation_id = l.into_conversation_id
        """,
    )
    merged = connection.execute(
        text(
            f"""
            INSERT INTO whatsapp_thread_merge
                (business_id, merged_conversation_id, into_conversation_id, reason)
            SELECT business_id, merged_conversation_id, into_conversation_id, :reason
            FROM {LEGACY_MERGE_TABLE}
            ON CONFLICT (merged_conversation_id) DO NOTHING
            """
        ),
        {"reason": MERGE_REASON},
    ).rowcount
    # The old spelling of a duplicate's key names its customer too (as a merge's keys do).
    _execute(
        connection,
        f"""
        INSERT INTO whatsapp_conversation_alias (business_id, alias_key, conversation_id)
        SELECT DISTINCT ON (l.business_id, l.merged_canonical_key)
               l.business_id, l.merged_canonical_key, l.into_conversation_id
        FROM {LEGACY_MERGE_TABLE} l
        WHERE NOT EXISTS (
            SELECT 1 FROM whatsapp_conversation c
            WHERE c.business_id = l.business_id AND c.canonical_key = l.merged_canonical_key
        )
        ORDER BY l.business_id, l.merged_canonical_key, l.merged_conversation_id
        ON CONFLICT (business_id, alias_key) DO NOTHING
        """,
    )
    _execute(connection, f"DROP TABLE {LEGACY_MERGE_TABLE}")
    # A freshly rewritten table without statistics gets pathological plans (issue 13 measured
    # a thread page at 3.5 s on 300,000 unanalyzed messages), and autovacuum may be off.
    _execute(
        connection,
        "ANALYZE whatsapp_conversation, whatsapp_message, whatsapp_conversation_alias, "
        "whatsapp_thread_merge, whatsapp_business_unread",
    )
    logger.info(
        "[WA-LEGACY-ADOPTION] %s merged-away legacy conversation ids now lead to their survivor",
        merged,
    )
    return int(merged)


# --- the steps ----------------------------------------------------------------------------


def _keep_colliding_columns(connection: Connection) -> list[str]:
    renamed = []
    for table, later in LATER_COLUMNS.items():
        present = set(_column_types(connection, table))
        for column in later:
            if column in present:
                kept = f"legacy_{column}"
                _execute(connection, f"ALTER TABLE {table} RENAME COLUMN {column} TO {kept}")
                renamed.append(f"{table}.{kept}")
    return renamed


def _reshape_conversations(connection: Connection) -> None:
    types = _column_types(connection, "whatsapp_conversation")
    changes = [
        *_serial_to_plain_bigint(connection, "whatsapp_conversation"),
        "ALTER business_id TYPE bigint",
        "ALTER canonical_key TYPE text",
        "ALTER lead_id TYPE varchar(128)",
        "ALTER status TYPE varchar(16)",
        *_timestamps_to_utc(types, ("started_at", "last_message_at", "last_read_at")),
        "ADD COLUMN message_seq bigint NOT NULL DEFAULT 0",
        "ADD COLUMN read_seq bigint NOT NULL DEFAULT 0",
        # The spellings adoption replaced, kept where they changed.
        "ADD COLUMN legacy_canonical_key text",
        "ADD COLUMN legacy_phone_e164 text",
    ]
    _execute(connection, f"ALTER TABLE whatsapp_conversation {', '.join(changes)}")


def _normalize_phones(
    connection: Connection, normalize_phone: Callable[[str], str | None]
) -> tuple[int, list[str]]:
    spellings = connection.scalars(
        text(
            f"""
            SELECT phone_e164 FROM whatsapp_conversation WHERE phone_e164 IS NOT NULL
            UNION
            SELECT regexp_replace(canonical_key, '{PHONE_KEY_PATTERN}', '')
            FROM whatsapp_conversation WHERE canonical_key ~ '{PHONE_KEY_PATTERN}'
            """
        )
    ).all()
    normalized = {spelling: normalize_phone(spelling) for spelling in spellings}
    _execute(
        connection,
        "CREATE TEMPORARY TABLE legacy_phone (spelling text PRIMARY KEY, e164 text) ON COMMIT DROP",
    )
    connection.execute(
        text(
            "INSERT INTO legacy_phone (spelling, e164) "
            "SELECT * FROM unnest(:spellings, :e164s) ON CONFLICT DO NOTHING"
        ).bindparams(
            bindparam("spellings", type_=ARRAY(Text)), bindparam("e164s", type_=ARRAY(Text))
        ),
        {"spellings": list(normalized), "e164s": list(normalized.values())},
    )
    changed = connection.execute(
        text(
            f"""
            UPDATE whatsapp_conversation c
            SET canonical_key = new.canonical_key,
                phone_e164 = new.phone_e164,
                legacy_canonical_key = nullif(c.canonical_key, new.canonical_key),
                legacy_phone_e164 = CASE WHEN new.phone_e164 IS DISTINCT FROM c.phone_e164
                                         THEN c.phone_e164 END
            FROM (
                SELECT c2.id,
                       CASE WHEN key_phone.e164 IS NOT NULL
                            THEN 'phone:' || c2.business_id || ':' || key_phone.e164
                            ELSE c2.canonical_key END AS canonical_key,
                       -- An unparseable phone cannot be E.164: it stays in legacy_phone_e164.
                       CASE WHEN c2.phone_e164 IS NULL THEN key_phone.e164
                            ELSE column_phone.e164 END AS phone_e164
                FROM whatsapp_conversation c2
                LEFT JOIN legacy_phone key_phone
                  ON c2.canonical_key ~ '{PHONE_KEY_PATTERN}'
                 AND key_phone.spelling
                     = regexp_replace(c2.canonical_key, '{PHONE_KEY_PATTERN}', '')
                LEFT JOIN legacy_phone column_phone ON column_phone.spelling = c2.phone_e164
            ) new
            WHERE new.id = c.id
              AND (new.canonical_key <> c.canonical_key
                   OR new.phone_e164 IS DISTINCT FROM c.phone_e164)
            """
        )
    ).rowcount
    _execute(connection, "ALTER TABLE whatsapp_conversation ALTER phone_e164 TYPE varchar(16)")
    unparseable = sorted(spelling for spelling, e164 in normalized.items() if e164 is None)
    return int(changed), unparseable


def _record_duplicate_conversations(connection: Connection) -> int:
    # The most recent conversation of a customer survives: latest activity, then highest id.
    _execute(
        connection,
        f"""
        CREATE TABLE {LEGACY_MERGE_TABLE} AS
        SELECT id AS merged_conversation_id, business_id, survivor AS into_conversation_id,
               coalesce(legacy_canonical_key, canonical_key) AS merged_canonical_key
        FROM (
            SELECT id, business_id, canonical_key, legacy_canonical_key,
                   first_value(id) OVER customer AS survivor
            FROM whatsapp_conversation
            WINDOW customer AS (
                PARTITION BY business_id, canonical_key
                ORDER BY last_message_at DESC NULLS LAST, id DESC
            )
        ) ranked
        WHERE id <> survivor
        """,
    )
    _execute(
        connection, f"ALTER TABLE {LEGACY_MERGE_TABLE} ADD PRIMARY KEY (merged_conversation_id)"
    )
    return _count(connection, LEGACY_MERGE_TABLE)


def _reshape_messages(connection: Connection) -> None:
    types = _column_types(connection, "whatsapp_message")
    # Whatever the legacy constraint on conversation_id was, 0001's (ON DELETE CASCADE) replaces
    # it once the duplicates are gone.
    for name in connection.scalars(
        text(
            """
            SELECT conname FROM pg_constraint
            WHERE conrelid = 'whatsapp_message'::regclass AND contype = 'f'
              AND confrelid = 'whatsapp_conversation'::regclass
            """
        )
    ):
        _execute(connection, f'ALTER TABLE whatsapp_message DROP CONSTRAINT "{name}"')
    changes = [
        *_serial_to_plain_bigint(connection, "whatsapp_message"),
        "ALTER business_id TYPE bigint",
        "ALTER conversation_id TYPE bigint",
        "ALTER direction TYPE varchar(3)",
        "ALTER source TYPE varchar(16)",
        "ALTER status TYPE varchar(16)",
        "ALTER provider_message_id TYPE varchar(128)",
        "ALTER body TYPE text",
        *_timestamps_to_utc(types, ("created_at", "sent_at")),
        "ADD COLUMN seq bigint",
        "ADD COLUMN historical boolean NOT NULL DEFAULT false",
    ]
    if "sent_at" not in types:
        changes.append("ADD COLUMN sent_at timestamptz")
    _execute(connection, f"ALTER TABLE whatsapp_message {', '.join(changes)}")


def _remove_duplicate_messages(connection: Connection) -> int:
    # An empty provider id meant "none" (a message not sent yet), never one shared message.
    _execute(
        connection,
        "UPDATE whatsapp_message SET provider_message_id = NULL "
        "WHERE btrim(provider_message_id) = ''",
    )
    # A redelivered webhook stored again: the first copy is the message.
    return int(
        connection.execute(
            text(
                """
                DELETE FROM whatsapp_message m
                USING (
                    SELECT id, row_number() OVER (
                        PARTITION BY business_id, provider_message_id ORDER BY created_at, id
                    ) AS copy
                    FROM whatsapp_message WHERE provider_message_id IS NOT NULL
                ) copies
                WHERE m.id = copies.id AND copies.copy > 1
                """
            )
        ).rowcount
    )


def _place_messages(connection: Connection) -> tuple[int, int]:
    """Move messages into their survivor and give each its seq; returns (sources, historical)."""
    derived_sources = _scalar(
        connection, "SELECT count(*) FROM whatsapp_message WHERE source IS NULL"
    )
    # Read state is judged in the message's own legacy conversation, as the seed's unread query
    # did: read when created at or before its last_read_at; a never-read conversation counted
    # only messages from its started_at on, so older ones are history. Read messages come first
    # in the merged thread (then created_at, id), so one read point keeps each conversation's
    # read messages read and its unread ones unread, as wa_inbox_merge_threads orders them.
    _execute(
        connection,
        f"""
        CREATE TEMPORARY TABLE legacy_placement ON COMMIT DROP AS
        SELECT judged.id, judged.thread_id, judged.historical, judged.was_read,
               row_number() OVER (
                   PARTITION BY judged.thread_id
                   ORDER BY judged.was_read DESC, judged.created_at, judged.id
               ) AS seq
        FROM (
            SELECT m.id, m.created_at,
                   coalesce(merge.into_conversation_id, m.conversation_id) AS thread_id,
                   coalesce(m.created_at <= c.last_read_at, false) AS was_read,
                   c.last_read_at IS NULL AND m.created_at < c.started_at AS historical
            FROM whatsapp_message m
            JOIN whatsapp_conversation c ON c.id = m.conversation_id
            LEFT JOIN {LEGACY_MERGE_TABLE} merge ON merge.merged_conversation_id = m.conversation_id
        ) judged
        """,
    )
    orphans = _count(connection, "whatsapp_message") - _count(connection, "legacy_placement")
    if orphans:
        raise RuntimeError(
            f"{orphans} legacy messages name no conversation: adoption would lose them; "
            "give them their conversation (or remove them) and run the migration again"
        )
    _execute(
        connection,
        """
        UPDATE whatsapp_message m
        SET conversation_id = placed.thread_id,
            seq = placed.seq,
            historical = placed.historical,
            source = coalesce(m.source, CASE WHEN m.direction = 'in' THEN 'customer'
                                             ELSE 'human' END),
            status = coalesce(m.status, CASE WHEN m.direction = 'in' THEN 'received'
                                             ELSE 'sent' END),
            sent_at = coalesce(m.sent_at, m.created_at)
        FROM legacy_placement placed
        WHERE placed.id = m.id
        """,
    )
    historical = _scalar(connection, "SELECT count(*) FROM legacy_placement WHERE historical")
    return derived_sources, historical


def _finish_conversations(connection: Connection) -> None:
    """Read positions from the placement; the duplicates' times into their survivor; then the
    duplicates go (their messages have moved)."""
    _execute(
        connection,
        f"""
        UPDATE whatsapp_conversation c
        SET message_seq = coalesce(placed.messages, 0),
            read_seq = coalesce(placed.read, 0),
            started_at = least(c.started_at, absorbed.started_at),
            last_message_at = coalesce(
                greatest(c.last_message_at, absorbed.last_message_at, placed.last_created_at),
                c.started_at),
            last_read_at = greatest(c.last_read_at, absorbed.last_read_at)
        FROM whatsapp_conversation t
        LEFT JOIN (
            SELECT p.thread_id, count(*) AS messages, count(*) FILTER (WHERE p.was_read) AS read,
                   max(m.created_at) AS last_created_at
            FROM legacy_placement p JOIN whatsapp_message m ON m.id = p.id
            GROUP BY p.thread_id
        ) placed ON placed.thread_id = t.id
        LEFT JOIN (
            SELECT l.into_conversation_id, min(d.started_at) AS started_at,
                   max(d.last_message_at) AS last_message_at, max(d.last_read_at) AS last_read_at
            FROM {LEGACY_MERGE_TABLE} l
            JOIN whatsapp_conversation d ON d.id = l.merged_conversation_id
            GROUP BY l.into_conversation_id
        ) absorbed ON absorbed.into_conversation_id = t.id
        WHERE t.id = c.id
        """,
    )
    _execute(
        connection,
        f"""
        DELETE FROM whatsapp_conversation c
        USING {LEGACY_MERGE_TABLE} l WHERE l.merged_conversation_id = c.id
        """,
    )


def _add_revision_0001_constraints(connection: Connection) -> None:
    """Defaults, NOT NULLs, keys, checks and indexes exactly as revision 0001 names them."""
    for table in ("whatsapp_conversation", "whatsapp_message"):
        _identity_from(connection, table)
    _drop_named(
        connection,
        "whatsapp_conversation",
        ("uq_wa_conv_business_canonical", "ck_wa_conv_status", "ck_wa_conv_read_seq"),
    )
    _drop_named(
        connection,
        "whatsapp_message",
        (
            "uq_wa_msg_business_provider_id",
            "ck_wa_msg_direction",
            "ck_wa_msg_source",
            "ck_wa_msg_source_fits_direction",
            "ck_wa_msg_status",
        ),
    )
    for index in (
        "ix_wa_conv_business_activity",
        "ix_wa_conv_business_phone",
        "ix_wa_msg_thread_chronology",
        "ix_wa_msg_unread_candidates",
    ):
        _execute(connection, f"DROP INDEX IF EXISTS {index}")
    _execute(
        connection,
        """
        ALTER TABLE whatsapp_conversation
            ALTER business_id SET NOT NULL,
            ALTER canonical_key SET NOT NULL,
            ALTER status SET DEFAULT 'open',
            ALTER status SET NOT NULL,
            ALTER started_at SET NOT NULL,
            ALTER last_message_at SET NOT NULL,
            ADD CONSTRAINT uq_wa_conv_business_canonical UNIQUE (business_id, canonical_key),
            ADD CONSTRAINT ck_wa_conv_status CHECK (status IN ('open', 'closed')),
            ADD CONSTRAINT ck_wa_conv_read_seq CHECK (read_seq <= message_seq)
        """,
    )
    _execute(
        connection,
        """
        ALTER TABLE whatsapp_message
            ALTER business_id SET NOT NULL,
            ALTER conversation_id SET NOT NULL,
            ALTER seq SET NOT NULL,
            ALTER direction SET NOT NULL,
            ALTER source SET NOT NULL,
            ALTER status SET NOT NULL,
            ALTER sent_at SET NOT NULL,
            ALTER created_at SET NOT NULL,
            ADD CONSTRAINT whatsapp_message_conversation_id_fkey FOREIGN KEY (conversation_id)
                REFERENCES whatsapp_conversation (id) ON DELETE CASCADE,
            ADD CONSTRAINT uq_wa_msg_business_provider_id
                UNIQUE (business_id, provider_message_id),
            ADD CONSTRAINT ck_wa_msg_direction CHECK (direction IN ('in', 'out')),
            ADD CONSTRAINT ck_wa_msg_source
                CHECK (source IN ('customer', 'bot', 'automation', 'human')),
            ADD CONSTRAINT ck_wa_msg_source_fits_direction
                CHECK ((direction = 'in') = (source = 'customer')),
            ADD CONSTRAINT ck_wa_msg_status CHECK (status IN
                ('received', 'pending', 'sent', 'delivered', 'read', 'failed', 'deleted'))
        """,
    )
    for statement in (
        "CREATE INDEX ix_wa_conv_business_activity ON whatsapp_conversation "
        "(business_id, last_message_at DESC, id DESC)",
        "CREATE INDEX ix_wa_conv_business_phone ON whatsapp_conversation (business_id, phone_e164)",
        "CREATE INDEX ix_wa_msg_thread_chronology ON whatsapp_message "
        "(conversation_id, sent_at, id)",
        "CREATE INDEX ix_wa_msg_unread_candidates ON whatsapp_message (conversation_id, seq) "
        "WHERE direction = 'in' AND NOT historical AND status <> 'deleted'",
    ):
        _execute(connection, statement)


# --- small pieces -------------------------------------------------------------------------


def _column_types(connection: Connection, table: str) -> dict[str, str]:
    rows = connection.execute(
        text(
            """
            SELECT column_name, data_type FROM information_schema.columns
            WHERE table_schema = current_schema() AND table_name = :table
            """
        ),
        {"table": table},
    )
    return {row.column_name: row.data_type for row in rows}


def _timestamps_to_utc(types: dict[str, str], columns: Iterable[str]) -> list[str]:
    # The legacy wrote naive UTC: say so explicitly rather than trust the session's TimeZone.
    return [
        f"ALTER {column} TYPE timestamptz USING {column} AT TIME ZONE 'UTC'"
        for column in columns
        if types.get(column) == "timestamp without time zone"
    ]


def _serial_to_plain_bigint(connection: Connection, table: str) -> list[str]:
    """The id's serial default goes (an identity replaces it once the rows are settled)."""
    sequence = connection.scalar(
        text("SELECT pg_get_serial_sequence(:table, 'id')"), {"table": table}
    )
    changes = ["ALTER id TYPE bigint"]
    identity = connection.scalar(
        text(
            """
            SELECT is_identity FROM information_schema.columns
            WHERE table_schema = current_schema() AND table_name = :table AND column_name = 'id'
            """
        ),
        {"table": table},
    )
    if identity == "YES":
        changes.insert(0, "ALTER id DROP IDENTITY")
    elif sequence is not None:
        changes.insert(0, "ALTER id DROP DEFAULT")
    return changes


def _identity_from(connection: Connection, table: str) -> None:
    sequence = connection.scalar(
        text("SELECT pg_get_serial_sequence(:table, 'id')"), {"table": table}
    )
    # Past every id the legacy ever handed out, not just past the rows left: a removed
    # duplicate's id must never name a new row (its old links lead to the survivor).
    handed_out = 0
    if sequence is not None:
        handed_out = int(connection.scalar(text(f"SELECT last_value FROM {sequence}")) or 0)
        _execute(connection, f"DROP SEQUENCE {sequence}")
    removed = 0
    if table == "whatsapp_conversation" and inspect(connection).has_table(LEGACY_MERGE_TABLE):
        removed = _scalar(
            connection, f"SELECT coalesce(max(merged_conversation_id), 0) FROM {LEGACY_MERGE_TABLE}"
        )
    left = _scalar(connection, f"SELECT coalesce(max(id), 0) FROM {table}")
    start = max(handed_out, removed, left) + 1
    _execute(
        connection,
        f"ALTER TABLE {table} ALTER id SET NOT NULL, "
        f"ALTER id ADD GENERATED BY DEFAULT AS IDENTITY (START WITH {start})",
    )
    has_primary_key = connection.scalar(
        text(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = CAST(:table AS regclass) "
            "AND contype = 'p'"
        ),
        {"table": table},
    )
    if not has_primary_key:
        _execute(connection, f"ALTER TABLE {table} ADD PRIMARY KEY (id)")


def _drop_named(connection: Connection, table: str, constraints: Iterable[str]) -> None:
    for name in constraints:
        _execute(connection, f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name}")


def _count(connection: Connection, table: str) -> int:
    return _scalar(connection, f"SELECT count(*) FROM {table}")


def _scalar(connection: Connection, statement: str) -> int:
    return int(connection.scalar(text(statement)) or 0)


def _execute(connection: Connection, statement: str) -> None:
    connection.execute(text(statement))
