"""An adopted legacy database's merged-away duplicate conversations lead to their survivor.

Revision 0001 adopts the legacy tables and keeps each removed duplicate conversation's id in
`wa_inbox_legacy_merge`; the tables that make old ids work (aliases, thread merges) exist only
from 0002 and 0005 on, so this revision turns them into thread merges, and analyzes the adopted
tables. On any other database it does nothing.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

from db.legacy_adoption import resolve_legacy_merges

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    resolve_legacy_merges(op.get_bind())


def downgrade() -> None:
    # The merges stay: they are history of the adopted data, like the merges the app makes.
    pass
