"""``mlbus-registry``: run the registry service until SIGTERM or Ctrl-C."""

from __future__ import annotations

from mlbus.core.service import run_service
from mlbus.registry.app import build_app
from mlbus.registry.settings import RegistrySettings


def main() -> None:
    """Settings → logging/telemetry → app → run until a signal."""
    run_service(RegistrySettings(), build_app)


if __name__ == "__main__":
    main()
