from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field, ValidationError
from pydantic_settings import SettingsConfigDict

from mlbus.core.settings import (
    SHARED_SECTIONS,
    KafkaSettings,
    ServiceSettings,
    settings_table,
)


class DemoSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DEMO_")

    grpc_port: int = Field(default=5555, ge=0, le=65535)
    """gRPC port of the demo."""


def test_kafka_bootstrap_is_set_once_for_every_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLBUS_KAFKA_BOOTSTRAP_SERVERS", "kafka-a:9092,kafka-b:9092")
    monkeypatch.setenv("DEMO_GRPC_PORT", "6000")
    settings = DemoSettings()
    assert settings.kafka.bootstrap_servers == "kafka-a:9092,kafka-b:9092"
    assert settings.grpc_port == 6000


def test_defaults_suit_the_embedded_broker() -> None:
    kafka = KafkaSettings()
    assert kafka.bootstrap_servers == "127.0.0.1:29092"
    assert 4000 <= kafka.session_timeout_ms <= 6000
    assert kafka.fetch_max_wait_ms <= 50
    assert kafka.acks != "0"


def test_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_GRPC_PORT", "not-a-port")
    with pytest.raises(ValidationError, match="grpc_port"):
        DemoSettings()
    monkeypatch.setenv("DEMO_GRPC_PORT", "70000")
    with pytest.raises(ValidationError, match="less than or equal to 65535"):
        DemoSettings()


@pytest.mark.parametrize("cls", [*SHARED_SECTIONS, DemoSettings])
def test_every_field_is_documented_and_typed(cls: type) -> None:
    for name, info in cls.model_fields.items():
        assert info.description, f"{cls.__name__}.{name} has no docstring"
        assert info.annotation is not None


def test_settings_table_lists_env_names_defaults_and_docs() -> None:
    table = settings_table(DemoSettings, own_only=True)
    assert "| `DEMO_GRPC_PORT` | int | `5555` | gRPC port of the demo. |" in table
    assert "DEMO_KAFKA" not in table
    assert str(Path.home()) not in table


def test_a_queue_consumer_stays_in_its_group_while_it_handles_long_records() -> None:
    from mlbus.core.messaging.consumer import consumer_config

    settings = KafkaSettings(bootstrap_servers="127.0.0.1:9092", session_timeout_ms=6000)
    plain = consumer_config(settings, group_id="g", source="s")
    assert "max_poll_interval_ms" not in plain  # aiokafka's defaults (5 min; the session)
    assert "rebalance_timeout_ms" not in plain
    assert plain["max_poll_records"] == settings.max_poll_records
    queue = consumer_config(
        settings, group_id="g", source="s", max_poll_records=8, max_handle_s=3600
    )
    assert queue["max_poll_records"] == 8
    # Eight records of up to an hour each, one after another, and a minute's margin.
    assert queue["max_poll_interval_ms"] == (8 * 3600 + 60) * 1000
    # At a revocation the record in hand may take its hour to finish.
    assert queue["rebalance_timeout_ms"] == (3600 + 30) * 1000
    short = consumer_config(settings, group_id="g", source="s", max_handle_s=1)
    assert short["max_poll_interval_ms"] == 300_000  # never below aiokafka's default
    assert short["rebalance_timeout_ms"] == 31_000
