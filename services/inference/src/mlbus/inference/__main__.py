"""``mlbus-inference`` / ``python -m mlbus.inference``: run one worker until SIGTERM or Ctrl-C.

Exit status: 0 after a graceful stop, 2 when the bus is unreachable at start, 3 when the
configured model cannot be fetched, verified, loaded or warmed up (the reason is logged).
"""

from __future__ import annotations

import sys

from mlbus.core.process import die_with_parent
from mlbus.core.service import run_service
from mlbus.inference.app import build_app
from mlbus.inference.domain.errors import ModelLoadError
from mlbus.inference.settings import InferenceSettings

#: Exit status of a worker whose model could not be made ready.
EXIT_MODEL_LOAD_FAILED = 3


def main() -> None:
    """Settings → logging/telemetry → app (model loaded and warm) → run until a signal."""
    die_with_parent()  # a worker started by the router's controller dies with the router
    settings = InferenceSettings()
    if settings.gil_switch_interval_us:
        # Process-wide, so set here and not by the app (which tests run in their process).
        sys.setswitchinterval(settings.gil_switch_interval_us / 1e6)
    try:
        run_service(settings, build_app)
    except ModelLoadError as exc:
        # Already logged with its cause by the worker; the status tells the supervisor.
        raise SystemExit(EXIT_MODEL_LOAD_FAILED) from exc


if __name__ == "__main__":
    main()
