"""``mlbus-router``: run the router service until SIGTERM or Ctrl-C."""

from __future__ import annotations

from mlbus.core.service import run_service
from mlbus.router.app import build_app
from mlbus.router.settings import RouterSettings


def main() -> None:
    """Settings → logging/telemetry → app → run until a signal."""
    run_service(RouterSettings(), build_app)


if __name__ == "__main__":
    main()
