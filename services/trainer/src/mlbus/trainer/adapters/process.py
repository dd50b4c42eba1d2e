"""A job's child process: started in its own session, its output read line by line, and
watched for its wall-clock and memory limits.

Memory is the resident set size of the child's whole process tree (psutil), measured every
``memory_check_interval_s``; a tree past its limit is killed at once (SIGKILL), since it
would only grow during a grace period. The time limit and StopJob send SIGTERM to the
process group, then SIGKILL once the grace period is over.

A stop (or the time limit) that comes once the child has exited changes nothing: the
outcome is how the child ended. "Exited" includes a child that is a zombie not reaped yet,
or reaped but not yet seen by the event loop, so a StopJob racing a job's last moments
cannot turn a finished job into a stopped one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil  # type: ignore[import-untyped]

log = logging.getLogger(__name__)

#: Longest line read from a child in one piece; longer lines are split.
_LINE_LIMIT = 1024 * 1024
MIB = 1024 * 1024
#: Names the trainer's pid to the child, which dies with it.
PARENT_PID_ENV = "MLBUS_TRAINER_PID"


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a child process ended."""

    returncode: int
    #: "" (it exited by itself), "time", "memory" or "stop".
    cause: str
    #: Why, for the job's reason, when ``cause`` is set.
    detail: str
    peak_rss_bytes: int
    runtime_s: float


def child_env(keep: Sequence[str] = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")) -> dict[str, str]:
    """A small environment for a job: none of the service's settings or secrets leak into
    user code. BLAS/OpenMP pools get one thread unless the trainer's environment says
    otherwise, as jobs run side by side."""
    env = {k: v for k, v in os.environ.items() if k in keep or k.startswith("OPENBLAS_")}
    env["PYTHONUNBUFFERED"] = "1"
    # The child asks the kernel to kill it when this process dies (see mlbus.trainer.child).
    env[PARENT_PID_ENV] = str(os.getpid())
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = os.environ.get(name, "1")
    return env


class ChildProcess:
    """One run of a child program under limits; :meth:`run` returns its :class:`Outcome`."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        cwd: Path,
        env: dict[str, str],
        max_runtime_s: float,
        max_memory_bytes: int,
        check_interval_s: float,
        stop_grace_s: float,
        on_line: Callable[[str], None],
    ) -> None:
        self.argv = list(argv)
        self.cwd = cwd
        self.env = env
        self.max_runtime_s = max_runtime_s
        self.max_memory_bytes = max_memory_bytes
        self.check_interval_s = check_interval_s
        self.stop_grace_s = stop_grace_s
        self._on_line = on_line
        self._process: asyncio.subprocess.Process | None = None
        self._cause = ""
        self._detail = ""
        self._kill_at: float | None = None
        self._peak = 0
        self._wake = asyncio.Event()

    @property
    def pid(self) -> int | None:
        """The child's pid once started."""
        return None if self._process is None else self._process.pid

    def stop(self, reason: str) -> None:
        """Ask the child to stop: SIGTERM now, SIGKILL after the grace period. Nothing
        happens once the child has exited (see the module docstring)."""
        self._terminate("stop", reason, kill=False)

    def _exited(self) -> bool:
        """Whether the started child has ended, even if nobody has reaped it yet."""
        process = self._process
        if process is None:
            return False
        if process.returncode is not None:
            return True
        try:
            # WNOWAIT: look without reaping; asyncio's child watcher still collects it.
            state = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True  # reaped already; the event loop has not been told yet
        return state is not None

    def _signal(self, sig: signal.Signals) -> None:
        if self._process is None or self._process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, sig)

    def _terminate(self, cause: str, detail: str, *, kill: bool, override: bool = False) -> None:
        if self._exited():
            # Too late: the child ended by itself, and that is its outcome. (A child that
            # exits between this check and the signal is judged by its result: see
            # mlbus.trainer.domain.executor.)
            return
        if override or not self._cause:
            self._cause, self._detail = cause, detail
        if kill:
            self._signal(signal.SIGKILL)
            self._kill_at = time.monotonic()
        elif self._kill_at is None:
            self._signal(signal.SIGTERM)
            self._kill_at = time.monotonic() + self.stop_grace_s
        self._wake.set()

    async def run(self) -> Outcome:
        """Start the child and wait for its end (its output fully read)."""
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            *self.argv,
            cwd=self.cwd,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            limit=_LINE_LIMIT,
        )
        self._process = process
        if self._cause:
            self._terminate(self._cause, self._detail, kill=False)
        reader = asyncio.create_task(self._read(process))
        watchdog = asyncio.create_task(self._watch(process, started))
        try:
            returncode = await process.wait()
        except BaseException:
            self._signal(signal.SIGKILL)
            raise
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
        # Whatever the child left behind in its session goes with it (the group outlives
        # its leader while members live; once it is empty there is nothing to signal).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader, timeout=5.0)
        if not reader.done():
            reader.cancel()
        return Outcome(
            returncode=returncode,
            cause=self._cause,
            detail=self._detail,
            peak_rss_bytes=self._peak,
            runtime_s=time.monotonic() - started,
        )

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        stream = process.stdout
        assert stream is not None
        while True:
            try:
                raw = await stream.readline()
            except ValueError:
                raw = await stream.read(_LINE_LIMIT)
            if not raw:
                return
            try:
                self._on_line(raw.decode("utf-8", "replace").rstrip("\r\n"))
            except Exception:
                log.exception("handling a job's output line failed")

    def _tree_rss(self, pid: int) -> int:
        try:
            root = psutil.Process(pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for p in processes:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    async def _watch(self, process: asyncio.subprocess.Process, started: float) -> None:
        deadline = started + self.max_runtime_s
        while process.returncode is None:
            now = time.monotonic()
            if self._kill_at is not None and now >= self._kill_at:
                self._signal(signal.SIGKILL)
            if now >= deadline and not self._cause:
                self._terminate(
                    "time",
                    f"time limit exceeded: the job ran longer than {self.max_runtime_s:g}s",
                    kill=False,
                )
            rss = await asyncio.to_thread(self._tree_rss, process.pid)
            self._peak = max(self._peak, rss)
            if rss > self.max_memory_bytes and self._cause != "memory":
                self._terminate(
                    "memory",
                    f"memory limit exceeded: the job used {rss / MIB:.0f} MiB, more than its "
                    f"limit of {self.max_memory_bytes / MIB:.0f} MiB",
                    kill=True,
                    override=True,
                )
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.check_interval_s)
