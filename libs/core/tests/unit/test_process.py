"""A supervised child dies with its supervisor, however the supervisor dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

SUPERVISOR = textwrap.dedent(
    """
    import os, subprocess, sys, time
    child = subprocess.Popen(
        [sys.executable, "-c", "from mlbus.core.process import die_with_parent; "
         "assert die_with_parent(); import time; time.sleep(60)"],
        env={**os.environ, "MLBUS_PARENT_PID": str(os.getpid())},
    )
    print(child.pid, flush=True)
    time.sleep(60)
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by init) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_child_exits_when_its_supervisor_is_killed() -> None:
    supervisor = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR], stdout=subprocess.PIPE, text=True
    )
    try:
        assert supervisor.stdout is not None
        child = int(supervisor.stdout.readline())
        time.sleep(1.0)  # let the child get past die_with_parent()
        assert _alive(child)
        supervisor.send_signal(signal.SIGKILL)
        supervisor.wait(10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()


def test_without_the_variable_nothing_happens() -> None:
    from mlbus.core.process import die_with_parent

    assert not die_with_parent({})
    assert not die_with_parent({"MLBUS_PARENT_PID": "not-a-pid"})
