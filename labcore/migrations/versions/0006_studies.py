"""studies: an experiment's declared design and its owner

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 19:10:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("experiments") as batch_op:
        batch_op.add_column(sa.Column("design", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("owner_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_experiments_owner_id_users"), "users", ["owner_id"], ["id"], ondelete="SET NULL"
        )


def downgrade() -> None:
    with op.batch_alter_table("experiments") as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_experiments_owner_id_users"), type_="foreignkey")
        batch_op.drop_column("owner_id")
        batch_op.drop_column("design")
