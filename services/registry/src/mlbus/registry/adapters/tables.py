"""The registry's database schema (SQLAlchemy Core), shared by the repository and the
Alembic migrations (a test checks they agree).

JSON documents (signatures, metrics, specs) are stored as text: the same on SQLite and
PostgreSQL, and only ever read whole. Times are timezone-aware UTC on both.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.types import TypeDecorator


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; the registry stores aware UTC times")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        moment: datetime = value
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


#: Auto-increment ids: BIGINT on PostgreSQL, INTEGER (the rowid alias) on SQLite.
Id = BigInteger().with_variant(Integer(), "sqlite")

NAME = 63
ACTOR = 256

metadata: Final = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

model_groups = Table(
    "model_groups",
    metadata,
    Column("name", String(NAME), primary_key=True),
    Column("description", Text, nullable=False),
    Column("latest_version", BigInteger, nullable=False),
    Column("created_by", String(ACTOR), nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    Column("update_time", UtcDateTime, nullable=False),
)

model_group_tags = Table(
    "model_group_tags",
    metadata,
    Column("model_group", String(NAME), ForeignKey("model_groups.name"), primary_key=True),
    Column("key", String(128), primary_key=True),
    Column("value", String(1024), nullable=False),
    Index(None, "key", "value"),
)

model_versions = Table(
    "model_versions",
    metadata,
    Column("model_group", String(NAME), ForeignKey("model_groups.name"), primary_key=True),
    Column("version", BigInteger, primary_key=True),
    Column("artifact_uri", Text, nullable=False),
    Column("artifact_sha256", String(64), nullable=False, index=True),
    Column("artifact_size", BigInteger, nullable=False),
    Column("artifact_content_type", String(255), nullable=False),
    Column("signature_json", Text, nullable=False),
    Column("approval_status", String(32), nullable=False),
    Column("status_reason", Text, nullable=False),
    Column("metrics_json", Text, nullable=False),
    Column("hyperparameters_json", Text, nullable=False),
    Column("lineage_json", Text, nullable=False),
    Column("model_card_json", Text, nullable=False),
    Column("tags_json", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("registered_by", String(ACTOR), nullable=False),
    Column("register_time", UtcDateTime, nullable=False),
    Column("update_time", UtcDateTime, nullable=False),
    Column("baseline_json", Text, nullable=True),
    Column("request_id", String(128), nullable=True),
    # NULLs are distinct on both backends: only registrations with a key are unique.
    UniqueConstraint("model_group", "request_id"),
    Index(None, "model_group", "approval_status", "version"),
)

model_aliases = Table(
    "model_aliases",
    metadata,
    Column("model_group", String(NAME), primary_key=True),
    Column("alias", String(NAME), primary_key=True),
    Column("version", BigInteger, nullable=False),
    Column("update_time", UtcDateTime, nullable=False),
    ForeignKeyConstraint(
        ["model_group", "version"], ["model_versions.model_group", "model_versions.version"]
    ),
    Index(None, "model_group", "version"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("entity_type", String(32), nullable=False),
    Column("entity_id", String(255), nullable=False),
    Column("action", String(32), nullable=False),
    Column("actor", String(ACTOR), nullable=False),
    Column("reason", Text, nullable=False),
    Column("time", UtcDateTime, nullable=False),
    Column("before_json", Text, nullable=True),
    Column("after_json", Text, nullable=True),
    Index(None, "entity_type", "entity_id"),
    Index(None, "entity_id"),
)

endpoints = Table(
    "endpoints",
    metadata,
    Column("name", String(NAME), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("status_reason", Text, nullable=False),
    Column("revision", BigInteger, nullable=False),
    Column("current_revision", BigInteger, nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    Column("update_time", UtcDateTime, nullable=False),
)

endpoint_configs = Table(
    "endpoint_configs",
    metadata,
    Column("endpoint", String(NAME), ForeignKey("endpoints.name"), primary_key=True),
    Column("revision", BigInteger, primary_key=True),
    Column("spec_json", Text, nullable=False),
    Column("created_by", String(ACTOR), nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    Column("rolled_back_from", BigInteger, nullable=False),
)

#: Which versions each configuration serves, so "who serves churn/3?" is one indexed query.
endpoint_model_refs = Table(
    "endpoint_model_refs",
    metadata,
    Column("endpoint", String(NAME), primary_key=True),
    Column("revision", BigInteger, primary_key=True),
    Column("variant", String(NAME), primary_key=True),
    Column("model_group", String(NAME), nullable=False),
    Column("model_version", BigInteger, nullable=False),
    Column("shadow", Boolean, nullable=False),
    ForeignKeyConstraint(
        ["endpoint", "revision"], ["endpoint_configs.endpoint", "endpoint_configs.revision"]
    ),
    Index(None, "model_group", "model_version"),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("event_id", String(36), nullable=False, unique=True),
    Column("event_type", String(255), nullable=False),
    Column("key", String(255), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    Column("sent_time", UtcDateTime, nullable=True),
    # The relay's query: unsent rows in id order. Partial, so it stays as small as the backlog.
    Index(
        "ix_outbox_pending",
        "id",
        sqlite_where=text("sent_time IS NULL"),
        postgresql_where=text("sent_time IS NULL"),
    ),
    Index(None, "sent_time"),
)
