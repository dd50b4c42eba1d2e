"""Composition root of the router service: builds stores, clients, servers and consumers."""

from __future__ import annotations

from mlbus.core.service import ServiceApp
from mlbus.router.settings import RouterSettings


def build_app(settings: RouterSettings) -> ServiceApp:
    """Wire the router service from its settings."""
    return ServiceApp(settings)
