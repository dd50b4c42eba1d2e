"""Composition root of the registry service: builds stores, clients, servers and consumers."""

from __future__ import annotations

from mlbus.core.service import ServiceApp
from mlbus.registry.settings import RegistrySettings


def build_app(settings: RegistrySettings) -> ServiceApp:
    """Wire the registry service from its settings."""
    return ServiceApp(settings)
