"""Composition root of the feature-store service: builds stores, clients, servers and consumers."""

from __future__ import annotations

from mlbus.core.service import ServiceApp
from mlbus.feature_store.settings import FeatureStoreSettings


def build_app(settings: FeatureStoreSettings) -> ServiceApp:
    """Wire the feature-store service from its settings."""
    return ServiceApp(settings)
