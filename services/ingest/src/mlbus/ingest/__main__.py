"""``mlbus-ingest``: run the ingest service until SIGTERM or Ctrl-C."""

from __future__ import annotations

from mlbus.core.service import run_service
from mlbus.ingest.app import build_app
from mlbus.ingest.settings import IngestSettings


def main() -> None:
    """Settings → logging/telemetry → app → run until a signal."""
    run_service(IngestSettings(), build_app)


if __name__ == "__main__":
    main()
