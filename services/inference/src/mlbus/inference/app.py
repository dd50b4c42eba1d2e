"""Composition root of the inference service: builds stores, clients, servers and consumers."""

from __future__ import annotations

from mlbus.core.service import ServiceApp
from mlbus.inference.settings import InferenceSettings


def build_app(settings: InferenceSettings) -> ServiceApp:
    """Wire the inference service from its settings."""
    return ServiceApp(settings)
