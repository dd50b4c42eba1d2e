"""Settings of the trainer service (env prefix ``TRAINER_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from mlbus.core.settings import ServiceSettings


class TrainerSettings(ServiceSettings):
    """Everything the trainer service reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="TRAINER_")

    service_name: ClassVar[str] = "trainer"

    grpc_port: int = Field(default=50054, ge=0, le=65535)
    """gRPC port; 0 picks a free port (the chosen port is logged)."""
    metrics_port: int = Field(default=9104, ge=0, le=65535)
    """Port of the Prometheus text endpoint; 0 picks a free port."""
