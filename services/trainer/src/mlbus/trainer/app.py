"""Composition root of the trainer service: builds stores, clients, servers and consumers."""

from __future__ import annotations

from mlbus.core.service import ServiceApp
from mlbus.trainer.settings import TrainerSettings


def build_app(settings: TrainerSettings) -> ServiceApp:
    """Wire the trainer service from its settings."""
    return ServiceApp(settings)
