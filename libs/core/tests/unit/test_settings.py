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
