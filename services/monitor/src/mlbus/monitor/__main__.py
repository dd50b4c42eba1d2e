"""``mlbus-monitor``: run the monitor service until SIGTERM or Ctrl-C."""

from __future__ import annotations

from mlbus.core.service import run_service
from mlbus.monitor.app import build_app
from mlbus.monitor.settings import MonitorSettings


def main() -> None:
    """Settings → logging/telemetry → app → run until a signal."""
    run_service(MonitorSettings(), build_app)


if __name__ == "__main__":
    main()
