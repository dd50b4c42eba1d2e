"""Jobs, their log lines, and the status-event outbox.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Time = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("job_id", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("experiment", sa.String(128), nullable=False),
        sa.Column("parent_job_id", sa.String(128), nullable=False),
        sa.Column("spec_json", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("create_time", Time, nullable=False),
        sa.Column("start_time", Time, nullable=True),
        sa.Column("end_time", Time, nullable=True),
        sa.Column("update_time", Time, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("trainer_id", sa.String(256), nullable=False),
        sa.Column("lease_expires", Time, nullable=True),
        sa.Column("stop_requested", sa.Boolean(), nullable=False),
        sa.Column("result_json", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", name="pk_jobs"),
    )
    op.create_index("ix_jobs_create_time", "jobs", ["create_time"])
    op.create_index("ix_jobs_experiment", "jobs", ["experiment"])
    op.create_index("ix_jobs_parent_job_id", "jobs", ["parent_job_id"])
    op.create_index("ix_jobs_status", "jobs", ["status"])
    op.create_table(
        "job_logs",
        sa.Column("job_id", sa.String(128), nullable=False),
        sa.Column("number", sa.BigInteger(), nullable=False),
        sa.Column("time", Time, nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "number", name="pk_job_logs"),
    )
    op.create_table(
        "trainer_outbox",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("trainer_id", sa.String(256), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("job_id", sa.String(128), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("create_time", Time, nullable=False),
        sa.Column("sent_time", Time, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_trainer_outbox"),
    )
    op.create_index("ix_trainer_outbox_trainer_id", "trainer_outbox", ["trainer_id"])
    op.create_index("ix_trainer_outbox_sent_time", "trainer_outbox", ["sent_time"])


def downgrade() -> None:
    op.drop_table("trainer_outbox")
    op.drop_table("job_logs")
    op.drop_table("jobs")
