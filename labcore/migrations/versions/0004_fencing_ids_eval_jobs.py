"""fencing token, run ids never reused, enqueue time, robustness results per panel job

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 09:10:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # runs.attempt: the fencing token of the attempt that may write to the run (docs/design.md section 6).
    # On SQLite the table is rebuilt with AUTOINCREMENT so that a deleted run's id is never handed
    # out again (PostgreSQL's sequence never reuses one). env.py turns foreign keys off for this,
    # or dropping the old table would cascade into every run's metrics.
    rebuild = "always" if op.get_bind().dialect.name == "sqlite" else "auto"
    with op.batch_alter_table(
        "runs", recreate=rebuild, table_kwargs={"sqlite_autoincrement": True}
    ) as batch_op:
        batch_op.add_column(sa.Column("attempt", sa.Integer(), server_default="0", nullable=False))
        # When the run was last put on the broker; NULL while it is queued in the database only (the
        # workers' sweeper sends those).
        batch_op.add_column(sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE runs SET enqueued_at = created_at")  # runs from before were sent when created
    # Each panel job keeps its own results (NULL: the panel at the end of the run's own training).
    for table in ("eval_results", "sanity_checks"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(sa.Column("job_id", sa.Integer(), nullable=True))
            batch_op.create_index(batch_op.f(f"ix_{table}_job_id"), ["job_id"], unique=False)


def downgrade() -> None:
    for table in ("sanity_checks", "eval_results"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_index(batch_op.f(f"ix_{table}_job_id"))
            batch_op.drop_column("job_id")
    with op.batch_alter_table("runs") as batch_op:
        batch_op.drop_column("enqueued_at")
        batch_op.drop_column("attempt")
