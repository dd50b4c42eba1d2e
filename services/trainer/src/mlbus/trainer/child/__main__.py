"""``python -m mlbus.trainer.child TASK.json``: run one job, write result.json, exit."""

from __future__ import annotations

import os
import signal
import sys
import traceback
from pathlib import Path
from types import FrameType

from mlbus.trainer.child.errors import JobFailed, Stopped
from mlbus.trainer.child.protocol import EXIT_FAILED, EXIT_MEMORY, EXIT_STOPPED, Result, Task, say


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Stopped()


def _die_with_trainer() -> None:
    # If the trainer dies (even by SIGKILL), the kernel kills this job too, so no job
    # outlives its trainer unseen (Linux). Done here rather than in a preexec_fn: forking
    # the trainer's gRPC threads through Python code can abort the child.
    parent = os.environ.get("MLBUS_TRAINER_PID")
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent and os.getppid() != int(parent):
        os._exit(EXIT_STOPPED)  # the trainer died before the line above


def main(argv: list[str] | None = None) -> int:
    """Run the task file named by the first argument."""
    args = sys.argv[1:] if argv is None else argv
    _die_with_trainer()
    task = Task.load(Path(args[0]))
    work_dir = Path(task.work_dir)
    if task.checkpoint_dir:
        # User code finds its checkpoint directory here (restored from an earlier attempt).
        Path(task.checkpoint_dir).mkdir(parents=True, exist_ok=True)
        os.environ["MLBUS_CHECKPOINT_DIR"] = task.checkpoint_dir
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if task.kind == "PROCESSING":
            from mlbus.trainer.child.processing import run_processing

            result = run_processing(task)
        else:
            from mlbus.trainer.child.run import run_training

            result = run_training(task)
    except Stopped:
        Result(ok=False, reason="stopped (SIGTERM)").save(work_dir)
        return EXIT_STOPPED
    except MemoryError:
        Result(ok=False, reason="memory limit exceeded: the job ran out of memory").save(work_dir)
        return EXIT_MEMORY
    except JobFailed as exc:
        say(f"job failed: {exc}")
        Result(ok=False, reason=str(exc)).save(work_dir)
        return EXIT_FAILED
    except Exception as exc:
        traceback.print_exc()
        sys.stderr.flush()
        Result(ok=False, reason=f"{type(exc).__name__}: {exc}").save(work_dir)
        return EXIT_FAILED
    result.save(work_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
