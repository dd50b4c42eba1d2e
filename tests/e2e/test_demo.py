"""The README's main command: `mlbus demo` runs the whole story and cleans up after itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlbus.sdk.local.stack import StackState, pid_alive

pytestmark = pytest.mark.slow

MLBUS = str(Path(sys.executable).parent / "mlbus")


def test_demo_trains_deploys_and_serves_three_ways(tmp_path: Path) -> None:
    home = tmp_path / "demo"
    result = subprocess.run(
        [MLBUS, "demo", "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "200"},
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "registered churn version 1" in out
    assert "churn/1 APPROVED by reviewer" in out
    assert "endpoint churn-demo serving" in out
    assert "served by variant blue, model version 1" in out
    assert "SUCCEEDED: " in out
    assert "COMPLETED: 2,000 records (0 failed)" in out
    assert "stack stopped" in out
    output = next(line.split("output: ", 1)[1] for line in out.splitlines() if "output: " in line)
    lines = Path(output.removeprefix("file://")).read_text().splitlines()
    assert len(lines) == 2_000
    # Joined with the input: 6 feature columns, the label and two probabilities.
    assert all(len(line.split(",")) == 9 for line in lines)
    state = StackState.load(home)
    pids = [p.pid for p in ([state.broker, *state.services] if state else [])]
    assert not any(pid_alive(p) for p in pids)
