"""Initial registry schema: model groups, versions, aliases, audit log, endpoints, outbox.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
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

_SQLITE_APPEND_ONLY = [
    """CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
       BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END""",
    """CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
       BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END""",
]
_POSTGRES_APPEND_ONLY = [
    """CREATE FUNCTION registry_audit_log_append_only() RETURNS trigger
       LANGUAGE plpgsql AS $$
       BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$""",
    """CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
       FOR EACH ROW EXECUTE FUNCTION registry_audit_log_append_only()""",
]


def upgrade() -> None:
    op.create_table(
        "model_groups",
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("latest_version", sa.BigInteger(), nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("create_time", Time, nullable=False),
        sa.Column("update_time", Time, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_model_groups"),
    )
    op.create_table(
        "model_group_tags",
        sa.Column("model_group", sa.String(63), nullable=False),
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("value", sa.String(1024), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_group"],
            ["model_groups.name"],
            name="fk_model_group_tags_model_group_model_groups",
        ),
        sa.PrimaryKeyConstraint("model_group", "key", name="pk_model_group_tags"),
    )
    op.create_index("ix_model_group_tags_key_value", "model_group_tags", ["key", "value"])
    op.create_table(
        "model_versions",
        sa.Column("model_group", sa.String(63), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("artifact_uri", sa.Text(), nullable=False),
        sa.Column("artifact_sha256", sa.String(64), nullable=False),
        sa.Column("artifact_size", sa.BigInteger(), nullable=False),
        sa.Column("artifact_content_type", sa.String(255), nullable=False),
        sa.Column("signature_json", sa.Text(), nullable=False),
        sa.Column("approval_status", sa.String(32), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=False),
        sa.Column("metrics_json", sa.Text(), nullable=False),
        sa.Column("hyperparameters_json", sa.Text(), nullable=False),
        sa.Column("lineage_json", sa.Text(), nullable=False),
        sa.Column("model_card_json", sa.Text(), nullable=False),
        sa.Column("tags_json", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("registered_by", sa.String(256), nullable=False),
        sa.Column("register_time", Time, nullable=False),
        sa.Column("update_time", Time, nullable=False),
        sa.Column("baseline_json", sa.Text(), nullable=True),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.ForeignKeyConstraint(
            ["model_group"],
            ["model_groups.name"],
            name="fk_model_versions_model_group_model_groups",
        ),
        sa.PrimaryKeyConstraint("model_group", "version", name="pk_model_versions"),
        sa.UniqueConstraint(
            "model_group", "request_id", name="uq_model_versions_model_group_request_id"
        ),
    )
    op.create_index("ix_model_versions_artifact_sha256", "model_versions", ["artifact_sha256"])
    op.create_index(
        "ix_model_versions_model_group_approval_status_version",
        "model_versions",
        ["model_group", "approval_status", "version"],
    )
    op.create_table(
        "model_aliases",
        sa.Column("model_group", sa.String(63), nullable=False),
        sa.Column("alias", sa.String(63), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("update_time", Time, nullable=False),
        sa.ForeignKeyConstraint(
            ["model_group", "version"],
            ["model_versions.model_group", "model_versions.version"],
            name="fk_model_aliases_model_group_version_model_versions",
        ),
        sa.PrimaryKeyConstraint("model_group", "alias", name="pk_model_aliases"),
    )
    op.create_index(
        "ix_model_aliases_model_group_version", "model_aliases", ["model_group", "version"]
    )
    op.create_table(
        "audit_log",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("entity_type", sa.String(32), nullable=False),
        sa.Column("entity_id", sa.String(255), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("time", Time, nullable=False),
        sa.Column("before_json", sa.Text(), nullable=True),
        sa.Column("after_json", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_entity_type_entity_id", "audit_log", ["entity_type", "entity_id"])
    op.create_index("ix_audit_log_entity_id", "audit_log", ["entity_id"])
    statements = (
        _SQLITE_APPEND_ONLY if op.get_bind().dialect.name == "sqlite" else _POSTGRES_APPEND_ONLY
    )
    for statement in statements:
        op.execute(statement)
    op.create_table(
        "endpoints",
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("current_revision", sa.BigInteger(), nullable=False),
        sa.Column("create_time", Time, nullable=False),
        sa.Column("update_time", Time, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_endpoints"),
    )
    op.create_table(
        "endpoint_configs",
        sa.Column("endpoint", sa.String(63), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("spec_json", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("create_time", Time, nullable=False),
        sa.Column("rolled_back_from", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["endpoint"], ["endpoints.name"], name="fk_endpoint_configs_endpoint_endpoints"
        ),
        sa.PrimaryKeyConstraint("endpoint", "revision", name="pk_endpoint_configs"),
    )
    op.create_table(
        "endpoint_model_refs",
        sa.Column("endpoint", sa.String(63), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("variant", sa.String(63), nullable=False),
        sa.Column("model_group", sa.String(63), nullable=False),
        sa.Column("model_version", sa.BigInteger(), nullable=False),
        sa.Column("shadow", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["endpoint", "revision"],
            ["endpoint_configs.endpoint", "endpoint_configs.revision"],
            name="fk_endpoint_model_refs_endpoint_revision_endpoint_configs",
        ),
        sa.PrimaryKeyConstraint("endpoint", "revision", "variant", name="pk_endpoint_model_refs"),
    )
    op.create_index(
        "ix_endpoint_model_refs_model_group_model_version",
        "endpoint_model_refs",
        ["model_group", "model_version"],
    )
    op.create_table(
        "outbox",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("event_type", sa.String(255), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("create_time", Time, nullable=False),
        sa.Column("sent_time", Time, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
        sa.UniqueConstraint("event_id", name="uq_outbox_event_id"),
    )
    op.create_index(
        "ix_outbox_pending",
        "outbox",
        ["id"],
        sqlite_where=sa.text("sent_time IS NULL"),
        postgresql_where=sa.text("sent_time IS NULL"),
    )
    op.create_index("ix_outbox_sent_time", "outbox", ["sent_time"])


def downgrade() -> None:
    op.drop_table("outbox")
    op.drop_table("endpoint_model_refs")
    op.drop_table("endpoint_configs")
    op.drop_table("endpoints")
    op.drop_table("audit_log")
    if op.get_bind().dialect.name != "sqlite":
        op.execute("DROP FUNCTION IF EXISTS registry_audit_log_append_only()")
    op.drop_table("model_aliases")
    op.drop_table("model_versions")
    op.drop_table("model_group_tags")
    op.drop_table("model_groups")
