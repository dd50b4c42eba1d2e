"""Settings of the monitor service (env prefix ``MONITOR_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from mlbus.core.settings import ServiceSettings


class MonitorSettings(ServiceSettings):
    """Everything the monitor service reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="MONITOR_")

    service_name: ClassVar[str] = "monitor"

    grpc_port: int = Field(default=50057, ge=0, le=65535)
    """gRPC port; 0 picks a free port (the chosen port is logged)."""
    metrics_port: int = Field(default=9107, ge=0, le=65535)
    """Port of the Prometheus text endpoint; 0 picks a free port."""
