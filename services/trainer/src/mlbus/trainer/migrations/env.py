"""Alembic environment of the trainer.

The trainer runs migrations itself at start-up on a connection it opened
(``config.attributes["connection"]``). Run standalone (``alembic -c
services/trainer/alembic.ini upgrade head``), it opens the database named by ``-x url=...``,
else by the trainer settings (``TRAINER_DATABASE_URL``).
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection

from mlbus.trainer.adapters.migrations import VERSION_TABLE
from mlbus.trainer.adapters.tables import metadata

config = context.config
if config.config_file_name is not None and "connection" not in config.attributes:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _configure_and_run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        version_table=VERSION_TABLE,
    )
    with context.begin_transaction():
        context.run_migrations()


def _standalone_url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url")
    if url:
        return url
    from mlbus.trainer.settings import TrainerSettings

    return TrainerSettings().resolved_database_url()


async def _run_standalone() -> None:
    from mlbus.trainer.adapters.database import Database

    database = Database(_standalone_url())
    try:
        await database.start(migrate=True)
    finally:
        await database.aclose()


def run_migrations_offline() -> None:
    """Emit SQL instead of running it (``alembic upgrade head --sql``)."""
    context.configure(
        url=_standalone_url(),
        target_metadata=metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        version_table=VERSION_TABLE,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run on the caller's connection, or open the configured database."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure_and_run(connection)
    else:
        asyncio.run(_run_standalone())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
