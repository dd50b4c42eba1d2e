"""``mlbus-trainer``: run the trainer service until SIGTERM or Ctrl-C."""

from __future__ import annotations

from mlbus.core.service import run_service
from mlbus.trainer.app import build_app
from mlbus.trainer.settings import TrainerSettings


def main() -> None:
    """Settings → logging/telemetry → app → run until a signal."""
    run_service(TrainerSettings(), build_app)


if __name__ == "__main__":
    main()
