"""The SDK and the ``mlbus`` CLI against the real trainer: jobs train/list/describe/logs,
processing and tuning jobs, and comparing an experiment's runs with a plot."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from mlbus.sdk.cli import cli

PROCESS = """
import pandas as pd
from pathlib import Path

def process(input_path, output_dir, arguments):
    frame = pd.read_csv(input_path)
    frame["double_f0"] = frame["f0"] * float(arguments.get("factor", 2))
    frame.to_csv(Path(output_dir) / "features.csv", index=False)
    (Path(output_dir) / "summary").mkdir()
    (Path(output_dir) / "summary" / "rows.txt").write_text(str(len(frame)))
"""


async def mlbus(stack: Any, *args: str) -> Result:
    """Run the CLI in a thread (its gRPC calls block; the trainer runs on this loop)."""
    runner = CliRunner()
    full = [*args, "--trainer", stack_target(stack), "--actor", "dana"]
    return await asyncio.to_thread(
        runner.invoke, cli, full, catch_exceptions=False, env={"COLUMNS": "300"}
    )


def stack_target(stack: Any) -> str:
    return f"127.0.0.1:{stack.trainer.server.port}"


async def test_cli_train_wait_describe_list_logs(stack: Any, tmp_path: Path) -> None:
    data = stack.classification_csv(tmp_path / "cli.csv")
    result = await mlbus(
        stack,
        "jobs",
        "train",
        str(data),
        "--target",
        "label",
        "--algorithm",
        "hist-gradient-boosting-classifier",
        "--hp",
        "max_iter=20",
        "-e",
        "cli-exp",
        "--job-id",
        "cli-job-1",
        "--wait",
    )
    assert result.exit_code == 0, result.output
    assert "COMPLETED" in result.output
    assert "ONNX parity" in result.output  # the logs were streamed
    described = await mlbus(stack, "jobs", "describe", "cli-job-1", "--json")
    job = json.loads(described.output)
    assert job["status"] == "COMPLETED"
    assert job["metrics"]["accuracy"] > 0.7
    listed = json.loads((await mlbus(stack, "jobs", "list", "-e", "cli-exp", "--json")).output)
    assert [j["job_id"] for j in listed] == ["cli-job-1"]
    logs = await mlbus(stack, "jobs", "logs", "cli-job-1")
    assert "training hist-gradient-boosting-classifier" in logs.output
    missing = await mlbus(stack, "jobs", "describe", "nope")
    assert missing.exit_code == 4
    assert "NOT_FOUND" in missing.output


async def test_processing_job_writes_its_outputs(stack: Any, tmp_path: Path) -> None:
    data = stack.classification_csv(tmp_path / "raw.csv", rows=40)
    (tmp_path / "prep.py").write_text(PROCESS)
    out = tmp_path / "prepared"
    result = await mlbus(
        stack,
        "jobs",
        "process",
        str(data),
        "--script",
        str(tmp_path / "prep.py"),
        "--output",
        str(out),
        "--arg",
        "factor=3",
        "--wait",
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert (out / "summary" / "rows.txt").read_text() == "40"
    assert "double_f0" in (out / "features.csv").read_text().splitlines()[0]


async def test_tuning_registers_the_best_trial_and_compare_plots(
    stack: Any, tmp_path: Path
) -> None:
    data = stack.classification_csv(tmp_path / "tune.csv", rows=300, seed=7)
    result = await mlbus(
        stack,
        "jobs",
        "tune",
        str(data),
        "--target",
        "label",
        "--algorithm",
        "random-forest-classifier",
        "--hp",
        "n_estimators=10",
        "--param",
        "max_depth=int:1:6",
        "--param",
        "min_samples_leaf=cat:1,5",
        "--objective",
        "log_loss",
        "--strategy",
        "bayesian",
        "--max-jobs",
        "4",
        "--max-parallel",
        "2",
        "-g",
        "tuned-rf",
        "-e",
        "tune-exp",
        "--job-id",
        "tune-1",
        "--wait",
        "--json",
    )
    assert result.exit_code == 0, result.output
    job = json.loads(result.output[result.output.index("{") :])
    assert job["status"] == "COMPLETED"
    tuning = job["tuning"]
    assert tuning["trials_total"] == 4
    trials = json.loads((await mlbus(stack, "experiments", "compare", "tune-exp", "--json")).output)
    assert tuning["trials_completed"] == 4, [(t["job_id"], t["reason"]) for t in trials]
    best = tuning["best_trial_job_id"]
    assert best.startswith("tune-1-trial-")

    runs = json.loads(
        (
            await mlbus(
                stack,
                "experiments",
                "compare",
                "tune-exp",
                "--metric",
                "log_loss",
                "--ascending",
                "--json",
            )
        ).output
    )
    assert len(runs) == 4
    losses = [r["metrics"]["log_loss"] for r in runs]
    assert losses == sorted(losses)
    # The best trial has the lowest loss (TPE may try one point twice: ties are possible).
    assert {r["job_id"]: r["metrics"]["log_loss"] for r in runs}[best] == losses[0]
    assert job["metrics"]["log_loss"] == losses[0]

    version = await stack.registry.get_version("tuned-rf", job["model_version"])
    assert version.lineage.training_job_id == best
    assert version.tags["mlbus.tuning_job"] == "tune-1"
    assert version.baseline is not None

    png = tmp_path / "loss.png"
    shown = await mlbus(
        stack,
        "experiments",
        "compare",
        "tune-exp",
        "--metric",
        "log_loss",
        "--ascending",
        "--plot",
        str(png),
    )
    assert shown.exit_code == 0, shown.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert best in shown.output
    listed = json.loads((await mlbus(stack, "experiments", "list", "--json")).output)
    assert {"name": "tune-exp", "run_count": 4} in [
        {"name": e["name"], "run_count": e["run_count"]} for e in listed
    ]
