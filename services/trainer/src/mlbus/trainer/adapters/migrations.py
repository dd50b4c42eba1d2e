"""Alembic, driven from code: the trainer migrates its schema at start-up.

Scripts live in ``mlbus/trainer/migrations``; they run on a connection the caller opened,
inside its transaction. From the command line:
``uv run alembic -c services/trainer/alembic.ini upgrade head``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent.parent / "migrations"
#: The trainer's own version table (see migrations/env.py): a database shared with the
#: registry must not mix their revisions.
VERSION_TABLE: Final = "trainer_alembic_version"


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config for the trainer's scripts, bound to ``connection`` if given."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def run_upgrade(connection: Connection, revision: str = "head") -> None:
    """``alembic upgrade <revision>`` on ``connection`` (synchronous; use ``run_sync``)."""
    command.upgrade(alembic_config(connection), revision)


def current_revision(connection: Connection) -> str | None:
    """The schema revision the database is at (None: never migrated)."""
    return MigrationContext.configure(
        connection, opts={"version_table": VERSION_TABLE}
    ).get_current_revision()


def head_revision() -> str | None:
    """The newest revision of the scripts."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()
