"""A processing job inside the child: the user's ``process(input_path, output_dir,
arguments)`` over the staged input; the trainer uploads what it writes to output_dir."""

from __future__ import annotations

from pathlib import Path

from mlbus.trainer.child import training
from mlbus.trainer.child.errors import JobFailed
from mlbus.trainer.child.protocol import Result, Task, emit, say


def run_processing(task: Task) -> Result:
    """Run the script's ``process`` function and list the files it wrote."""
    module = training.load_script(task.script_path)
    process = getattr(module, "process", None)
    if not callable(process):
        raise JobFailed(
            f"script {task.script_path}: defines no function process(input_path, output_dir, "
            "arguments)"
        )
    output = Path(task.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    emit("phase", phase="processing")
    say(f"processing {task.input_path} into {output}")
    process(task.input_path, str(output), training.parse_hyperparameters(task.hyperparameters))
    files = sorted(p.relative_to(output).as_posix() for p in output.rglob("*") if p.is_file())
    say(f"wrote {len(files)} output files")
    return Result(ok=True, outputs=files, hyperparameters=dict(task.hyperparameters))
