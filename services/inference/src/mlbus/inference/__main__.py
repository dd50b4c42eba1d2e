"""``mlbus-inference``: run the inference service until SIGTERM or Ctrl-C."""

from __future__ import annotations

from mlbus.core.service import run_service
from mlbus.inference.app import build_app
from mlbus.inference.settings import InferenceSettings


def main() -> None:
    """Settings → logging/telemetry → app → run until a signal."""
    run_service(InferenceSettings(), build_app)


if __name__ == "__main__":
    main()
