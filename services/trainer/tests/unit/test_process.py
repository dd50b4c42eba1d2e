"""A job's child process, for real: a stop that reaches the child stops it; one that comes
once the child has exited (before the event loop has seen the exit) changes nothing."""

from __future__ import annotations

import os
import select
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from mlbus.trainer.adapters.process import ChildProcess, child_env


def wait_until_exited(pid: int, timeout: float = 30.0) -> None:
    """Block (the event loop too) until the process has exited; it is not reaped."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # exited and reaped already
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    assert ready, f"process {pid} still running after {timeout} s"


def child(tmp_path: Path, code: str, on_line: Callable[[str], None]) -> ChildProcess:
    return ChildProcess(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=child_env(),
        max_runtime_s=60,
        max_memory_bytes=1 << 30,
        check_interval_s=0.1,
        stop_grace_s=5,
        on_line=on_line,
    )


async def test_a_stop_after_the_child_exited_changes_nothing(tmp_path: Path) -> None:
    lines: list[str] = []

    def on_line(line: str) -> None:
        lines.append(line)
        # The event loop is held here, so it cannot learn of the exit before the stop.
        assert process.pid is not None
        wait_until_exited(process.pid)
        process.stop("stopped by carol: too late")

    process = child(tmp_path, "print('done')", on_line)
    outcome = await process.run()
    assert lines == ["done"]
    assert outcome.returncode == 0
    assert (outcome.cause, outcome.detail) == ("", "")


async def test_a_stop_of_a_running_child_stops_it(tmp_path: Path) -> None:
    def on_line(line: str) -> None:
        process.stop("stopped by carol: enough")

    process = child(tmp_path, "import time; print('up', flush=True); time.sleep(60)", on_line)
    outcome = await process.run()
    assert outcome.returncode == -signal.SIGTERM
    assert (outcome.cause, outcome.detail) == ("stop", "stopped by carol: enough")
    assert outcome.runtime_s < 5


async def test_processes_the_job_left_behind_end_with_it(tmp_path: Path) -> None:
    code = (
        "import subprocess, sys\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "print(p.pid, flush=True)\n"
    )
    lines: list[str] = []
    process = child(tmp_path, code, lines.append)
    outcome = await process.run()
    assert outcome.returncode == 0
    orphan = int(lines[0])
    # Killed with the job's session; it is its own process, so poll until it is gone.
    import asyncio

    for _ in range(100):
        try:
            os.kill(orphan, 0)
        except ProcessLookupError:
            break
        await asyncio.sleep(0.05)
    else:
        os.kill(orphan, signal.SIGKILL)
        raise AssertionError(f"process {orphan} the job started outlived it")
