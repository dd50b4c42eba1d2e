"""`mlbus up` brings the broker and all seven services to SERVING; `mlbus down` and Ctrl-C
leave no process behind; a service that dies is reported with the tail of its log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mlbus.sdk.local.stack import SERVICES, pid_alive

pytestmark = pytest.mark.slow

MLBUS = str(Path(sys.executable).parent / "mlbus")


def mlbus(*args: str, home: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MLBUS, *args, "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200"},
    )


def status(home: Path) -> dict[str, Any]:
    result = mlbus("status", "--json", home=home)
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_up_detached_status_and_down(tmp_path: Path) -> None:
    home = tmp_path / "stack"
    started = mlbus("up", "--detach", "--free-ports", home=home)
    assert started.returncode == 0, started.stdout + started.stderr
    for spec in SERVICES:
        assert spec.name in started.stdout

    rows = {row["service"]: row for row in status(home)["services"]}
    assert set(rows) == {"broker", *(s.name for s in SERVICES)}
    assert rows.pop("broker")["status"] == "RUNNING"
    assert {name: row["status"] for name, row in rows.items()} == {
        s.name: "SERVING" for s in SERVICES
    }
    pids = [int(row["pid"]) for row in status(home)["services"]]
    for name, row in rows.items():
        assert Path(row["log"]).exists(), name
        # Every service logs JSON lines: the readiness line names its gRPC port.
        lines = [
            json.loads(x) for x in Path(row["log"]).read_text().splitlines() if x.startswith("{")
        ]
        ready = [x for x in lines if x["message"] == "service ready"]
        assert ready, f"{name} never logged readiness"
        assert f":{ready[0]['grpc_port']}" in row["grpc"]
    # Free ports are not the SDK's defaults: `up` says how other commands reach the stack,
    # and those commands work with it.
    export = next(x for x in started.stdout.splitlines() if x.strip().startswith("export "))
    env = dict(item.split("=", 1) for item in export.split()[1:])
    assert env["MLBUS_REGISTRY"] in rows["registry"]["grpc"]
    assert env["MLBUS_ROUTER"] in rows["router"]["grpc"]
    listed = subprocess.run(
        [MLBUS, "models", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
    assert listed.returncode == 0, listed.stdout + listed.stderr

    again = mlbus("up", "--detach", "--free-ports", home=home)
    assert again.returncode != 0
    assert "already running" in again.stderr
    demo = mlbus("demo", home=home)  # one line, not a traceback
    assert demo.returncode != 0
    assert "already running" in demo.stderr
    assert "Traceback" not in demo.stderr

    stopped = mlbus("down", home=home)
    assert stopped.returncode == 0, stopped.stderr
    wait_until(lambda: not any(pid_alive(p) for p in pids), 20, "all processes to exit")
    assert status(home) == {"running": False, "services": []}
    for name, row in rows.items():
        # SIGTERM → graceful stop (server drained, producer flushed), not a kill after the grace.
        assert '"service stopped"' in Path(row["log"]).read_text(), name


def test_foreground_reports_a_dead_service_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    home = tmp_path / "stack"
    proc = subprocess.Popen(
        [MLBUS, "up", "--free-ports", "--home", str(home)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        wait_until(
            lambda: (
                (home / "stack.json").exists()
                and all(r["status"] in ("SERVING", "RUNNING") for r in status(home)["services"])
                and len(status(home)["services"]) == 8
            ),
            120,
            "the stack to be SERVING",
        )
        rows = {row["service"]: row for row in status(home)["services"]}
        pids = [int(r["pid"]) for r in rows.values()]
        victim = int(rows["monitor"]["pid"])
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: (
                {r["service"]: r["status"] for r in status(home)["services"]}["monitor"] == "DEAD"
            ),
            10,
            "monitor to show as DEAD",
        )
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "monitor" in err
    assert "died" in err
    assert "service ready" in err, "the dead service's log tail is shown"
    assert "stopped" in out
    wait_until(lambda: not any(pid_alive(p) for p in pids), 20, "all processes to exit")
    assert not (home / "stack.json").exists()


def test_register_approve_deploy_and_predict_on_the_local_stack(tmp_path: Path) -> None:
    """What a user does first: models register/approve, endpoints create, predict — the
    router's controller starts the worker, `mlbus down` stops it too."""
    from mlbus.testing.onnx_models import sklearn_classifier

    home = tmp_path / "stack"
    model = tmp_path / "model.onnx"
    model.write_bytes(sklearn_classifier(4))
    started = mlbus("up", "--detach", "--free-ports", home=home)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        rows = {row["service"]: row for row in status(home)["services"]}
        env = {
            **os.environ,
            "MLBUS_REGISTRY": rows["registry"]["grpc"],
            "MLBUS_ROUTER": rows["router"]["grpc"],
            "COLUMNS": "200",
        }

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [MLBUS, *args], capture_output=True, text=True, timeout=60, env=env
            )

        steps = [
            run(
                "models",
                "register",
                str(model),
                "--group",
                "churn",
                "--create-group",
                "--actor",
                "bob",
            ),
            run("models", "approve", "churn", "1", "--actor", "alice", "--reason", "holdout ok"),
            run(
                "endpoints", "create", "churn-prod", "--variant", "name=blue,group=churn,version=1"
            ),
        ]
        for step in steps:
            assert step.returncode == 0, step.stdout + step.stderr

        result: dict[str, Any] = {}

        def predicted() -> bool:
            out = run("predict", "churn-prod", "--data", "[[0.1, 0.2, 0.3, 0.4]]", "--json")
            if out.returncode == 0:
                result.update(json.loads(out.stdout))
                return True
            # 9 = UNAVAILABLE while the worker starts; anything else is a failure.
            assert out.returncode == 9, out.stdout + out.stderr
            assert "is being deployed" in out.stderr
            return False

        wait_until(predicted, 90, "the endpoint to serve")
        assert result["variant"] == "blue"
        assert result["model_version"] == "1"
        outputs = {o["name"]: o for o in result["outputs"]}
        assert outputs["probabilities"]["shape"] == [1, 2]
        assert abs(sum(outputs["probabilities"]["data"]) - 1.0) < 1e-5
        router_log = Path(rows["router"]["log"]).read_text()
        pid = next(
            json.loads(x)["pid"]
            for x in router_log.splitlines()
            if x.startswith("{") and json.loads(x)["message"] == "worker ready"
        )
        assert pid_alive(pid)
    finally:
        stopped = mlbus("down", home=home)
    assert stopped.returncode == 0, stopped.stderr
    wait_until(lambda: not pid_alive(pid), 20, "the worker to exit with the stack")
