"""Settings of the inference service (env prefix ``INFERENCE_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from mlbus.core.settings import ServiceSettings


class InferenceSettings(ServiceSettings):
    """Everything the inference service reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="INFERENCE_")

    service_name: ClassVar[str] = "inference"

    grpc_port: int = Field(default=50053, ge=0, le=65535)
    """gRPC port; 0 picks a free port (the chosen port is logged)."""
    metrics_port: int = Field(default=9103, ge=0, le=65535)
    """Port of the Prometheus text endpoint; 0 picks a free port."""
