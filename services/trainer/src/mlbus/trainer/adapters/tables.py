"""The trainer's tables (SQLAlchemy Core); the schema itself is made by the migrations."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Time = sa.DateTime(timezone=True)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("job_id", sa.String(128), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("experiment", sa.String(128), nullable=False, index=True),
    sa.Column("parent_job_id", sa.String(128), nullable=False, index=True),
    sa.Column("spec_json", sa.Text(), nullable=False),
    sa.Column("actor", sa.String(256), nullable=False),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("create_time", Time, nullable=False, index=True),
    sa.Column("start_time", Time, nullable=True),
    sa.Column("end_time", Time, nullable=True),
    sa.Column("update_time", Time, nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False),
    # The replica that claimed the job, and until when its claim holds without renewal.
    sa.Column("trainer_id", sa.String(256), nullable=False),
    sa.Column("lease_expires", Time, nullable=True),
    sa.Column("stop_requested", sa.Boolean(), nullable=False),
    sa.Column("result_json", sa.Text(), nullable=False),
)

job_logs = sa.Table(
    "job_logs",
    metadata,
    sa.Column("job_id", sa.String(128), primary_key=True),
    sa.Column("number", sa.BigInteger(), primary_key=True),
    sa.Column("time", Time, nullable=False),
    sa.Column("text", sa.Text(), nullable=False),
)

# Status events written in the same transaction as the change; a relay publishes them.
outbox = sa.Table(
    "trainer_outbox",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("trainer_id", sa.String(256), nullable=False, index=True),
    sa.Column("event_id", sa.String(64), nullable=False),
    sa.Column("job_id", sa.String(128), nullable=False),
    sa.Column("payload", sa.LargeBinary(), nullable=False),
    sa.Column("create_time", Time, nullable=False),
    sa.Column("sent_time", Time, nullable=True, index=True),
)
