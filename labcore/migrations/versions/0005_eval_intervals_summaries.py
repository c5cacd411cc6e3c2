"""robustness panel v2: an interval and details per row, a summary per panel (probe, minimum norms, AutoAttack's warnings)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 12:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The 95 % Wilson interval of each accuracy (NULL for rows stored before it existed) and the
    # attack's own details (a targeted attack's target success rate).
    with op.batch_alter_table("eval_results") as batch_op:
        batch_op.add_column(sa.Column("ci_low", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("ci_high", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("info", sa.JSON(), nullable=True))
    op.create_table(
        "eval_summaries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("panel", sa.String(length=16), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_eval_summaries_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_eval_summaries")),
    )
    with op.batch_alter_table("eval_summaries") as batch_op:
        batch_op.create_index(batch_op.f("ix_eval_summaries_run_id"), ["run_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_eval_summaries_job_id"), ["job_id"], unique=False)


def downgrade() -> None:
    op.drop_table("eval_summaries")
    with op.batch_alter_table("eval_results") as batch_op:
        batch_op.drop_column("info")
        batch_op.drop_column("ci_high")
        batch_op.drop_column("ci_low")
