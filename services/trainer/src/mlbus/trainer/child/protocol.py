"""What the trainer and a job's child process tell each other.

The trainer writes a task file (JSON) and starts the child with its path. The child writes
log lines on stdout/stderr; a line starting with :data:`EVENT_PREFIX` is an event (JSON)
instead, e.g. per-iteration metrics. At the end the child writes ``result.json`` next to
the task file. Only the standard library here: the service imports this module too.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

EVENT_PREFIX: Final = "@@mlbus-event "
RESULT_FILE: Final = "result.json"
MODEL_FILE: Final = "model.onnx"
BASELINE_FILE: Final = "baseline.json"

#: Exit status of a child that failed for a reason it reported in result.json.
EXIT_FAILED: Final = 2
#: Exit status of a child that ran out of memory (MemoryError).
EXIT_MEMORY: Final = 3
#: Exit status of a child that stopped on SIGTERM.
EXIT_STOPPED: Final = 143


@dataclass
class Task:
    """Everything a child needs to run one job; paths are local."""

    job_id: str
    kind: str
    algorithm: str
    hyperparameters: dict[str, str]
    target_column: str
    input_path: str
    validation_path: str
    script_path: str
    output_dir: str
    work_dir: str
    validation_fraction: float
    seed: int
    parity_atol: float
    parity_rtol: float
    objective_metric: str = ""
    dataset_uri: str = ""
    dataset_sha256: str = ""
    #: One-hot columns per categorical feature at most (the most frequent categories).
    max_categories: int = 50
    #: The job's checkpoint directory (MLBUS_CHECKPOINT_DIR), kept between attempts.
    checkpoint_dir: str = ""

    def save(self, path: Path) -> None:
        """Write the task file."""
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> Task:
        """Read a task file."""
        return cls(**json.loads(path.read_text()))


@dataclass
class Result:
    """What a child reports at its end."""

    ok: bool
    reason: str = ""
    task: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    history: dict[str, list[float]] = field(default_factory=dict)
    hyperparameters: dict[str, str] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    model_file: str = ""
    baseline_file: str = ""
    outputs: list[str] = field(default_factory=list)

    def save(self, work_dir: Path) -> None:
        """Write ``result.json`` into ``work_dir`` (atomically)."""
        tmp = work_dir / (RESULT_FILE + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, default=float))
        tmp.replace(work_dir / RESULT_FILE)

    @classmethod
    def load(cls, work_dir: Path) -> Result | None:
        """The child's result, or None if it wrote none (killed, crashed)."""
        path = work_dir / RESULT_FILE
        if not path.exists():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError):
            return None


def say(text: str) -> None:
    """Write one log line of the job (child side): stdout is the job's log."""
    sys.stdout.write(f"{text}\n")
    sys.stdout.flush()


def emit(event: str, **fields: Any) -> None:
    """Send an event line to the trainer (child side)."""
    line = json.dumps({"event": event, **fields}, default=float, separators=(",", ":"))
    sys.stdout.write(f"{EVENT_PREFIX}{line}\n")
    sys.stdout.flush()


def parse_event(line: str) -> dict[str, Any] | None:
    """The event of a child's output line, or None if it is a log line (trainer side)."""
    if not line.startswith(EVENT_PREFIX):
        return None
    try:
        value = json.loads(line[len(EVENT_PREFIX) :])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
