"""Row-level security: every tenant table shows a connection only its business's rows.

The application connects as (or switches to) the role `wa_inbox_app`, which owns nothing and
bypasses nothing, so the policies below apply to every statement it runs. Each unit of work
names its business with `set_config('wa_inbox.business_id', ..., true)`; without it, no tenant
row is visible. Migrations run as the tables' owner, to whom the policies do not apply.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "wa_inbox_app"
TENANT_TABLES = (
    "whatsapp_conversation",
    "whatsapp_message",
    "whatsapp_conversation_alias",
    "whatsapp_channel",
    "whatsapp_pending_status",
    "whatsapp_webhook_rejection",
)


def upgrade() -> None:
    # Roles belong to the cluster, not the database: another database may have created it.
    op.execute(
        f"""
        DO $$
        BEGIN
            CREATE ROLE {APP_ROLE} NOLOGIN NOSUPERUSER NOBYPASSRLS;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END
        $$
        """
    )
    # The migrating user may switch its application connections to the role.
    op.execute(
        f"""
        DO $$
        BEGIN
            IF NOT pg_has_role(current_user, '{APP_ROLE}', 'MEMBER') THEN
                EXECUTE format('GRANT {APP_ROLE} TO %I', current_user);
            END IF;
        END
        $$
        """
    )
    op.execute(
        f"""
        DO $$
        BEGIN
            EXECUTE format('GRANT USAGE ON SCHEMA %I TO {APP_ROLE}', current_schema());
        END
        $$
        """
    )
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {', '.join(TENANT_TABLES)} TO {APP_ROLE}")
    op.execute(
        f"""
        DO $$
        BEGIN
            EXECUTE format(
                'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA %I TO {APP_ROLE}', current_schema()
            );
        END
        $$
        """
    )
    op.execute(
        """
        CREATE FUNCTION wa_inbox_current_business() RETURNS bigint
        LANGUAGE sql STABLE PARALLEL SAFE
        AS $$ SELECT NULLIF(current_setting('wa_inbox.business_id', true), '')::bigint $$
        """
    )
    for table in TENANT_TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(
            f"""
            CREATE POLICY business_isolation ON {table}
            USING (business_id = wa_inbox_current_business())
            WITH CHECK (business_id = wa_inbox_current_business())
            """
        )
    # A webhook names a WhatsApp number, not a business: this one question is answered across
    # businesses, by a function that runs as the owner and returns only the owning business.
    op.execute(
        """
        CREATE FUNCTION wa_inbox_channel_owners(phone_number_ids text[])
        RETURNS TABLE (phone_number_id text, business_id bigint)
        LANGUAGE sql STABLE SECURITY DEFINER
        SET search_path FROM CURRENT
        AS $$
            SELECT c.phone_number_id::text, c.business_id
            FROM whatsapp_channel c
            WHERE c.phone_number_id = ANY (phone_number_ids)
        $$
        """
    )
    op.execute("REVOKE ALL ON FUNCTION wa_inbox_channel_owners(text[]) FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION wa_inbox_channel_owners(text[]) TO {APP_ROLE}")


def downgrade() -> None:
    op.execute("DROP FUNCTION wa_inbox_channel_owners(text[])")
    for table in TENANT_TABLES:
        op.execute(f"DROP POLICY business_isolation ON {table}")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    op.execute("DROP FUNCTION wa_inbox_current_business()")
    op.execute(f"REVOKE ALL ON {', '.join(TENANT_TABLES)} FROM {APP_ROLE}")
