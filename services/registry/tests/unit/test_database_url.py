"""Database URLs the registry accepts, and how a SQLite transaction drives its work."""

from __future__ import annotations

import asyncio

import pytest

from mlbus.registry.adapters.database import normalize_url, run_to_end


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:///x/registry.db", "sqlite+pysqlite:///x/registry.db"),
        ("sqlite+pysqlite:///x/registry.db", "sqlite+pysqlite:///x/registry.db"),
        # The spelling of older settings: the same database, now without aiosqlite.
        ("sqlite+aiosqlite:///x/registry.db", "sqlite+pysqlite:///x/registry.db"),
        ("postgresql://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgres://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
    ],
)
def test_database_urls_are_normalised(given: str, expected: str) -> None:
    assert normalize_url(given) == expected


@pytest.mark.parametrize("url", ["mysql://u@h/db", "postgresql+asyncpg://u@h/db"])
def test_other_databases_and_drivers_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="expected postgresql"):
        normalize_url(url)


def test_run_to_end_returns_what_work_that_never_suspends_returns() -> None:
    async def inner() -> int:
        return 41

    async def work() -> int:
        return await inner() + 1

    assert run_to_end(work()) == 42


def test_run_to_end_passes_exceptions_through() -> None:
    async def work() -> None:
        raise KeyError("missing")

    with pytest.raises(KeyError, match="missing"):
        run_to_end(work())


def test_run_to_end_refuses_work_that_suspends() -> None:
    finished = False

    async def work() -> None:
        nonlocal finished
        await asyncio.sleep(0)
        finished = True

    with pytest.raises(RuntimeError, match="may await only the unit of work's methods"):
        run_to_end(work())
    assert not finished
