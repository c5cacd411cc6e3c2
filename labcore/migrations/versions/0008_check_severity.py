"""sanity_checks.severity: a failed check either suspects gradient masking (the numbers may be
inflated) or finds one attack weaker than another (the worst case covers it)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 11:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sanity_checks") as batch:
        batch.add_column(
            sa.Column("severity", sa.String(length=16), nullable=False, server_default="masking")
        )
    op.execute("UPDATE sanity_checks SET severity = 'weaker_attack' WHERE name = 'ce_margin_agree'")


def downgrade() -> None:
    with op.batch_alter_table("sanity_checks") as batch:
        batch.drop_column("severity")
