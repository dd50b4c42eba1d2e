"""Composition root of the ingest service: builds stores, clients, servers and consumers."""

from __future__ import annotations

from mlbus.core.service import ServiceApp
from mlbus.ingest.settings import IngestSettings


def build_app(settings: IngestSettings) -> ServiceApp:
    """Wire the ingest service from its settings."""
    return ServiceApp(settings)
