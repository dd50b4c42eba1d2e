"""Child processes that must not outlive their supervisor (workers of the router's
deployment controller, job processes of the trainer)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Mapping
from typing import Final

#: Set by a supervisor in a child's environment: the supervisor's pid.
PARENT_PID_ENV: Final = "MLBUS_PARENT_PID"
_PR_SET_PDEATHSIG: Final = 1


def die_with_parent(env: Mapping[str, str] | None = None, sig: int = signal.SIGTERM) -> bool:
    """If ``MLBUS_PARENT_PID`` is set, have the kernel send ``sig`` to this process when its
    parent dies (Linux), and exit at once if the parent is already gone. Called first thing in
    the child's ``main()`` — not in a ``preexec_fn``, since running Python between fork and
    exec of a process with gRPC threads can abort the child. Returns whether it applies."""
    environ = os.environ if env is None else env
    parent = environ.get(PARENT_PID_ENV, "")
    if not parent.isdigit() or not sys.platform.startswith("linux"):
        return False
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    if os.getppid() != int(parent):
        # The parent died before prctl took effect: nobody supervises this process.
        os._exit(0)
    return True
