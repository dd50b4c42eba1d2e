"""``mlbus-feature-store``: run the feature-store service until SIGTERM or Ctrl-C."""

from __future__ import annotations

from mlbus.core.service import run_service
from mlbus.feature_store.app import build_app
from mlbus.feature_store.settings import FeatureStoreSettings


def main() -> None:
    """Settings → logging/telemetry → app → run until a signal."""
    run_service(FeatureStoreSettings(), build_app)


if __name__ == "__main__":
    main()
