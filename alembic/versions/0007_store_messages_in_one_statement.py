"""Storing messages in one statement: `wa_inbox_store_messages` (issue 15).

The common ingest (a redelivery; a new message in a thread all of whose names are linked; the
first message of a customer nobody knows yet) was eight statements, each a round trip. This
function does the same in one call, for one message or a whole webhook delivery, with the
rules of domain/messages.py and domain/customer_identities.py:

- everything the call may write is locked first, in the one order every writer takes:
  provider ids, then customers' names (advisory locks, by hash, as db/advisory_locks.py
  `lock_many` takes them), then the threads those names lead to (row locks, by id; up to the
  first message that needs the general path, whose threads that path locks), then the
  business's unread shard rows (by shard, at the end). Deliveries crossing the same threads in
  opposite orders therefore never deadlock, nor does a single ingest or a status, which take
  the same kinds in the same order. A merge (wa_inbox_merge_threads) moves its two threads'
  shard counters in thread order, not shard order: a cycle with it is possible, PostgreSQL's
  detector breaks it, and the side it rolls back is repeated whole;
- a provider message id already stored for the business is a duplicate, answered without
  writing (looked for under the id's lock, which statuses and revisions take too);
- a thread all of whose names lead to it, needing no re-keying and not another lead's, is
  touched (next seq, counters, contact details, reopening);
- a customer none of whose names leads anywhere gets a new thread, and its other names become
  aliases;
- the message is inserted with ON CONFLICT DO NOTHING; the unread shard counters move once,
  at the end.

Anything else (names to link, threads to merge or re-key, another lead's thread, a status or a
revision that arrived before its message) stops the call at that message before it changes
anything: the row `slow` says so, and the caller stores that message by the general path
(domain/customer_identities.py), then calls again with the rest. Every message before it is
stored. A provider id inserted meanwhile by a writer that skipped the lock raises SQLSTATE
WA001: the statement is rolled back whole and may be repeated.

The function runs as its caller (row-level security applies) and scopes the transaction to
`p_business_id` itself, so one statement in autocommit is a whole unit of work.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the application's constants (db/advisory_locks.py, db/tables.py): a
# migration keeps meaning what it meant when it ran. tests/test_message_ingest.py compares.
PROVIDER_IDS_LOCK_SPACE = 0x5741_0002
CUSTOMER_NAMES_LOCK_SPACE = 0x5741_0003
UNREAD_SHARDS = 16

INCOMING_MESSAGE_TYPE = """
CREATE TYPE wa_inbox_incoming_message AS (
    keys text[],               -- every name of the customer, the preferred one first
    earlier_keys text[],       -- names the customer had before (a number change)
    phone text,                -- the number the customer uses now (E.164), if known
    lead_id text,
    from_customer boolean,     -- the phone becomes the thread's phone (else fills a missing one)
    reopen boolean,
    contact_name text,
    wa_user_id text,
    unread_delta integer,
    provider_message_id text,
    direction text,
    source text,
    status text,
    body text,
    sent_at timestamptz,
    historical boolean,
    message_type text,
    media_id text,
    provider_payload jsonb,
    reply_to_provider_id text,
    forwarded boolean,
    referral jsonb
)
"""

KEY_STRENGTH = """
CREATE FUNCTION wa_inbox_key_strength(key text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
-- domain/customer_identities.py _strength: lead ids name a customer most firmly.
AS $$ SELECT CASE WHEN key LIKE 'lead:%' THEN 0 WHEN key LIKE 'phone:%' THEN 1
                  WHEN key LIKE 'user:%' THEN 2 ELSE 3 END $$
"""

STORE_MESSAGES = f"""
CREATE FUNCTION wa_inbox_store_messages(
    p_business_id bigint, p_messages wa_inbox_incoming_message[]
) RETURNS TABLE (outcome text, message whatsapp_message, conversation whatsapp_conversation)
LANGUAGE plpgsql
AS $function$
DECLARE
    m wa_inbox_incoming_message;
    v_message whatsapp_message;
    v_conversation whatsapp_conversation;
    v_thread_ids bigint[];
    v_found integer;
    v_thread_id bigint;
    v_current_key text;
    v_lead_id text;
    v_preferred text;
    v_shard_deltas bigint[] := array_fill(0::bigint, ARRAY[{UNREAD_SHARDS}], ARRAY[0]);
BEGIN
    PERFORM set_config('wa_inbox.business_id', p_business_id::text, true);
    -- Everything the call may write is locked first, in the one order every writer takes
    -- (provider ids, then customers' names, each by hash, then threads by id, then shard
    -- counters): deliveries crossing the same threads in any order never wait in a cycle.
    PERFORM count(pg_advisory_xact_lock(wanted.space, wanted.hash))
    FROM (
        SELECT DISTINCT space, hash FROM (
            SELECT {PROVIDER_IDS_LOCK_SPACE} AS space,
                   hashtext(p_business_id::text || ':' || incoming.provider_message_id) AS hash
            FROM unnest(p_messages) AS incoming
            WHERE incoming.provider_message_id IS NOT NULL
            UNION ALL
            SELECT {CUSTOMER_NAMES_LOCK_SPACE},
                   hashtext(p_business_id::text || ':' || key)
            FROM unnest(p_messages) AS incoming, unnest(incoming.keys) AS key
        ) AS locks
        ORDER BY space, hash
    ) AS wanted;
    -- The threads to touch, up to the first message whose names lead to several threads or
    -- only partly anywhere (the general path links or merges them after this call, and must
    -- not find their rows held by it).
    WITH named AS (
        SELECT incoming.ordinality AS position, cardinality(incoming.keys) AS names,
               lookup.name, lookup.id
        FROM unnest(p_messages) WITH ORDINALITY AS incoming
        LEFT JOIN LATERAL (
            SELECT c.canonical_key AS name, c.id FROM whatsapp_conversation c
            WHERE c.business_id = p_business_id AND c.canonical_key = ANY (incoming.keys)
            UNION ALL
            SELECT a.alias_key, a.conversation_id FROM whatsapp_conversation_alias a
            WHERE a.business_id = p_business_id AND a.alias_key = ANY (incoming.keys)
        ) AS lookup ON true
    ), per_message AS (
        SELECT position, array_agg(DISTINCT id) FILTER (WHERE id IS NOT NULL) AS thread_ids,
               count(DISTINCT id) > 1
               OR (count(DISTINCT name) > 0 AND count(DISTINCT name) < max(names)) AS unsettled
        FROM named GROUP BY position
    ), first_unsettled AS (
        SELECT coalesce(min(position) FILTER (WHERE unsettled), cardinality(p_messages) + 1)
               AS position
        FROM per_message
    )
    SELECT ARRAY(
        SELECT DISTINCT thread_id
        FROM per_message, unnest(per_message.thread_ids) AS thread_id
        WHERE per_message.position < first_unsettled.position
    )
    INTO v_thread_ids FROM first_unsettled;
    PERFORM FROM whatsapp_conversation c WHERE c.id = ANY (v_thread_ids) ORDER BY c.id FOR UPDATE;

    FOREACH m IN ARRAY p_messages LOOP
        IF m.provider_message_id IS NOT NULL THEN
            -- Under the id's lock (statuses and revisions take it too), in a snapshot taken
            -- after it: a writer of this id that held it has committed.
            SELECT * INTO v_message FROM whatsapp_message
            WHERE business_id = p_business_id AND provider_message_id = m.provider_message_id
            LIMIT 1;
            IF FOUND THEN
                SELECT * INTO v_conversation FROM whatsapp_conversation
                WHERE id = v_message.conversation_id;
                RETURN QUERY SELECT 'duplicate'::text, v_message, v_conversation;
                CONTINUE;
            END IF;
            IF (m.direction = 'out' AND EXISTS (
                    SELECT FROM whatsapp_pending_status
                    WHERE business_id = p_business_id
                      AND provider_message_id = m.provider_message_id))
               OR (m.direction = 'in' AND EXISTS (
                    SELECT FROM whatsapp_pending_revision
                    WHERE business_id = p_business_id
                      AND original_provider_message_id = m.provider_message_id)) THEN
                RETURN QUERY SELECT 'slow'::text, NULL::whatsapp_message,
                    NULL::whatsapp_conversation;
                EXIT;
            END IF;
        END IF;

        v_preferred := m.keys[1];
        SELECT array_agg(DISTINCT named.id), count(DISTINCT named.name)
        INTO v_thread_ids, v_found
        FROM (
            SELECT c.canonical_key AS name, c.id FROM whatsapp_conversation c
            WHERE c.business_id = p_business_id AND c.canonical_key = ANY (m.keys)
            UNION ALL
            SELECT a.alias_key, a.conversation_id FROM whatsapp_conversation_alias a
            WHERE a.business_id = p_business_id AND a.alias_key = ANY (m.keys)
        ) AS named;

        IF v_found = 0 THEN
            -- A customer nobody knows (their names were locked above: nobody else can be
            -- creating or linking their thread).
            INSERT INTO whatsapp_conversation AS c (
                business_id, canonical_key, phone_e164, lead_id, status, started_at,
                last_message_at, message_seq, unread_count, contact_name, wa_user_id
            ) VALUES (
                p_business_id, v_preferred, m.phone, m.lead_id, 'open', m.sent_at, m.sent_at,
                1, m.unread_delta, m.contact_name, m.wa_user_id
            )
            ON CONFLICT (business_id, canonical_key) DO UPDATE SET
                message_seq = c.message_seq + 1,
                unread_count = c.unread_count + EXCLUDED.unread_count,
                started_at = least(c.started_at, EXCLUDED.started_at),
                last_message_at = greatest(c.last_message_at, EXCLUDED.last_message_at),
                phone_e164 = coalesce(EXCLUDED.phone_e164, c.phone_e164),
                contact_name = coalesce(EXCLUDED.contact_name, c.contact_name),
                wa_user_id = coalesce(EXCLUDED.wa_user_id, c.wa_user_id),
                status = CASE WHEN m.reopen THEN 'open' ELSE c.status END
            RETURNING c.* INTO v_conversation;
            INSERT INTO whatsapp_conversation_alias AS a (business_id, alias_key, conversation_id)
            SELECT DISTINCT p_business_id, key, v_conversation.id
            FROM unnest(m.keys) AS key
            WHERE key <> v_conversation.canonical_key
            ORDER BY key
            ON CONFLICT (business_id, alias_key)
            DO UPDATE SET conversation_id = EXCLUDED.conversation_id;
        ELSE
            IF cardinality(v_thread_ids) <> 1
               OR v_found <> (SELECT count(DISTINCT key) FROM unnest(m.keys) AS key) THEN
                RETURN QUERY SELECT 'slow'::text, NULL::whatsapp_message,
                    NULL::whatsapp_conversation;
                EXIT;
            END IF;
            v_thread_id := v_thread_ids[1];
            SELECT c.canonical_key, c.lead_id INTO v_current_key, v_lead_id
            FROM whatsapp_conversation c WHERE c.id = v_thread_id
            FOR UPDATE;
            -- Gone (merged away since we looked), to be re-keyed (a stronger or newer name),
            -- or another lead's thread: the general path decides.
            IF NOT FOUND
               OR (v_preferred <> v_current_key AND (
                    wa_inbox_key_strength(v_preferred) < wa_inbox_key_strength(v_current_key)
                    OR (wa_inbox_key_strength(v_preferred) = wa_inbox_key_strength(v_current_key)
                        AND v_current_key = ANY (m.earlier_keys))))
               OR (m.lead_id IS NOT NULL AND v_lead_id IS NOT NULL AND v_lead_id <> m.lead_id)
            THEN
                RETURN QUERY SELECT 'slow'::text, NULL::whatsapp_message,
                    NULL::whatsapp_conversation;
                EXIT;
            END IF;
            UPDATE whatsapp_conversation AS c SET
                message_seq = c.message_seq + 1,
                unread_count = c.unread_count + m.unread_delta,
                started_at = least(c.started_at, m.sent_at),
                last_message_at = greatest(c.last_message_at, m.sent_at),
                phone_e164 = CASE WHEN m.from_customer THEN coalesce(m.phone, c.phone_e164)
                                  ELSE coalesce(c.phone_e164, m.phone) END,
                contact_name = coalesce(m.contact_name, c.contact_name),
                wa_user_id = coalesce(m.wa_user_id, c.wa_user_id),
                status = CASE WHEN m.reopen THEN 'open' ELSE c.status END
            WHERE c.id = v_thread_id
            RETURNING c.* INTO v_conversation;
        END IF;

        INSERT INTO whatsapp_message (
            business_id, conversation_id, seq, provider_message_id, direction, source, status,
            body, sent_at, created_at, historical, message_type, media_id, provider_payload,
            reply_to_provider_id, forwarded, referral
        ) VALUES (
            p_business_id, v_conversation.id, v_conversation.message_seq,
            m.provider_message_id, m.direction, m.source, m.status, m.body, m.sent_at,
            clock_timestamp(), m.historical, m.message_type, m.media_id, m.provider_payload,
            m.reply_to_provider_id, m.forwarded, m.referral
        )
        ON CONFLICT (business_id, provider_message_id) DO NOTHING
        RETURNING * INTO v_message;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'provider message id % was stored by a writer without its lock',
                m.provider_message_id USING ERRCODE = 'WA001';
        END IF;
        IF m.unread_delta <> 0 THEN
            v_shard_deltas[v_conversation.id % {UNREAD_SHARDS}] :=
                v_shard_deltas[v_conversation.id % {UNREAD_SHARDS}] + m.unread_delta;
        END IF;
        RETURN QUERY SELECT 'stored'::text, v_message, v_conversation;
    END LOOP;

    INSERT INTO whatsapp_business_unread AS u (business_id, shard, unread)
    SELECT p_business_id, shard, v_shard_deltas[shard]
    FROM generate_series(0, {UNREAD_SHARDS - 1}) AS shard
    WHERE v_shard_deltas[shard] > 0
    ORDER BY shard
    ON CONFLICT (business_id, shard) DO UPDATE SET unread = u.unread + EXCLUDED.unread;
END
$function$
"""


def upgrade() -> None:
    op.execute(INCOMING_MESSAGE_TYPE)
    op.execute(KEY_STRENGTH)
    op.execute(STORE_MESSAGES)


def downgrade() -> None:
    op.execute("DROP FUNCTION wa_inbox_store_messages(bigint, wa_inbox_incoming_message[])")
    op.execute("DROP FUNCTION wa_inbox_key_strength(text)")
    op.execute("DROP TYPE wa_inbox_incoming_message")
