"""``python -m mlbus.trainer.child TASK.json``: run one job, write result.json, exit."""

from __future__ import annotations

import signal
import sys
import traceback
from pathlib import Path
from types import FrameType

from mlbus.trainer.child.errors import JobFailed, Stopped
from mlbus.trainer.child.protocol import EXIT_FAILED, EXIT_MEMORY, EXIT_STOPPED, Result, Task, say


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Stopped()


def main(argv: list[str] | None = None) -> int:
    """Run the task file named by the first argument."""
    args = sys.argv[1:] if argv is None else argv
    task = Task.load(Path(args[0]))
    work_dir = Path(task.work_dir)
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
