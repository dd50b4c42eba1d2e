"""Settings of the feature-store service (env prefix ``FEATURE_STORE_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from mlbus.core.settings import ServiceSettings


class FeatureStoreSettings(ServiceSettings):
    """Everything the feature-store service reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="FEATURE_STORE_")

    service_name: ClassVar[str] = "feature-store"

    grpc_port: int = Field(default=50056, ge=0, le=65535)
    """gRPC port; 0 picks a free port (the chosen port is logged)."""
    metrics_port: int = Field(default=9106, ge=0, le=65535)
    """Port of the Prometheus text endpoint; 0 picks a free port."""
