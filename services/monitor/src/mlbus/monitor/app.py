"""Composition root of the monitor service: builds stores, clients, servers and consumers."""

from __future__ import annotations

from mlbus.core.service import ServiceApp
from mlbus.monitor.settings import MonitorSettings


def build_app(settings: MonitorSettings) -> ServiceApp:
    """Wire the monitor service from its settings."""
    return ServiceApp(settings)
