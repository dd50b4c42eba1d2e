"""The plugin's fixtures give real, isolated parts."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import psycopg
import redis

from mlbus.core.settings import KafkaSettings
from mlbus.sdk.local.broker import wait_for_broker


async def test_broker_answers_metadata(kafka_settings: KafkaSettings) -> None:
    await wait_for_broker(kafka_settings.bootstrap_servers, timeout=5)
    host, _, port = kafka_settings.bootstrap_servers.rpartition(":")
    assert host == "127.0.0.1"
    assert port != "29092", "tests must not collide with a developer's `mlbus up`"


def test_postgres_database_is_the_sessions_own_and_writable(postgres_url: str) -> None:
    url = postgres_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(url) as conn:
        # The session's own database (other tests of the session may have used it already,
        # in whatever order they ran), never the admin database it was created from.
        table = f"probe_{uuid.uuid4().hex[:8]}"
        conn.execute(f"CREATE TABLE {table} (id int)")
        conn.execute(f"INSERT INTO {table} VALUES (1)")
        row = conn.execute(f"SELECT current_database(), sum(id) FROM {table}").fetchone()
        assert row is not None
        assert row[0].startswith("mlbus_test_")
        assert row[1] == 1


def test_redis_round_trip(redis_url: str, unique_name: Callable[[str], str]) -> None:
    client = redis.Redis.from_url(redis_url)
    key = unique_name("probe")
    value = uuid.uuid4().hex
    try:
        client.set(key, value, ex=60)
        assert client.get(key) == value.encode()
    finally:
        client.delete(key)
        client.close()


def test_unique_names_differ(unique_name: Callable[[str], str]) -> None:
    a, b = unique_name("topic"), unique_name("topic")
    assert a != b
    assert a.startswith("topic-test-unique-names-differ-")
