"""docker-compose.yml and .env.example must match the code: no Docker engine runs here, so
this is what keeps the production-like stack from drifting (ports, settings names, health)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from mlbus.core.settings import SHARED_SECTIONS
from mlbus.sdk.local.stack import SERVICES

ROOT = Path(__file__).resolve().parents[2]
INFRA = {"kafka", "postgres", "redis", "minio", "jaeger", "prometheus"}
# Read by third-party code (boto3, the OpenTelemetry SDK) or by the infrastructure images.
THIRD_PARTY_PREFIXES = ("AWS_", "OTEL_", "POSTGRES_", "MINIO_")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def _env_names(cls: type[BaseSettings]) -> set[str]:
    prefix = str(cls.model_config.get("env_prefix", ""))
    return {f"{prefix}{name}".upper() for name in cls.model_fields}


def _env_example() -> dict[str, str]:
    pairs = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key] = value
    return pairs


def test_compose_has_infrastructure_and_all_seven_services(compose: dict[str, Any]) -> None:
    names = set(compose["services"])
    assert names == INFRA | {s.name for s in SERVICES}


def test_kafka_is_apache_kafka_in_kraft_mode(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    # mlbus creates its topics explicitly; auto-creation would hide a missing catalogue entry.
    assert kafka["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


@pytest.mark.parametrize("spec", SERVICES, ids=lambda s: s.name)
def test_service_ports_settings_and_health_match_code(compose: dict[str, Any], spec: Any) -> None:
    service = compose["services"][spec.name]
    settings_cls = spec.settings_class()
    defaults = settings_cls()
    prefix = spec.env_prefix
    env = {k: str(v) for k, v in service["environment"].items()}
    own = _env_names(settings_cls)
    assert set(env) - {"OTEL_SERVICE_NAME"} <= own, "unknown settings names in compose"
    assert env["OTEL_SERVICE_NAME"] == spec.name
    assert env[f"{prefix}GRPC_PORT"] == str(defaults.grpc_port)
    assert env[f"{prefix}METRICS_PORT"] == str(defaults.metrics_port)
    assert env[f"{prefix}HOST"] == "0.0.0.0"
    assert service["command"] == [f"mlbus-{spec.name}"]
    assert f"{defaults.grpc_port}:{defaults.grpc_port}" in service["ports"]
    assert service["healthcheck"]["test"] == [
        "CMD",
        "mlbus",
        "health",
        f"127.0.0.1:{defaults.grpc_port}",
    ]
    assert service["build"]["dockerfile"] == "deploy/Dockerfile"
    assert service["env_file"] == ".env"


def test_scripts_named_in_compose_exist() -> None:
    import tomllib

    for spec in SERVICES:
        project = tomllib.loads((ROOT / "services" / spec.name / "pyproject.toml").read_text())
        assert (
            project["project"]["scripts"][f"mlbus-{spec.name}"] == f"{spec.package}.__main__:main"
        )


def test_env_example_names_are_real_settings() -> None:
    known = set().union(*(_env_names(cls) for cls in SHARED_SECTIONS))
    for key in _env_example():
        if key.startswith(THIRD_PARTY_PREFIXES):
            continue
        assert key in known, f".env.example sets {key}, which no settings class reads"


def test_env_example_values_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in _env_example().items():
        monkeypatch.setenv(key, value)
    for cls in SHARED_SECTIONS:
        cls()  # raises ValidationError on a bad value


def test_prometheus_scrapes_every_metrics_port() -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = set(config["scrape_configs"][0]["static_configs"][0]["targets"])
    expected = {f"{s.name}:{s.settings_class()().metrics_port}" for s in SERVICES}
    assert targets == expected
