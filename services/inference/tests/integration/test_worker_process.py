"""The worker as the deployment controller runs it: ``python -m mlbus.inference`` with its
settings in the environment, driven by the unchanged ``tritonclient.grpc`` package.

tritonclient registers the same ``inference.*`` protobuf symbols as our generated module,
so it runs in a process of its own (a script in a subprocess); so does the worker.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlbus.core.rpc import create_channel, wait_for_ready
from mlbus.core.settings import GrpcSettings, KafkaSettings
from mlbus.sdk.local.broker import free_port

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

TRITON_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tritonclient.grpc as tc
    from tritonclient.utils import InferenceServerException

    client = tc.InferenceServerClient(sys.argv[1])
    report = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready("churn", "4"),
    }
    meta = client.get_model_metadata("churn")
    report["versions"] = list(meta.versions)
    report["inputs"] = [[t.name, t.datatype, list(t.shape)] for t in meta.inputs]
    report["outputs"] = [[t.name, t.datatype, list(t.shape)] for t in meta.outputs]

    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    i = np.array([[1, 2], [3, 2**40]], dtype=np.int64)
    s = np.array(["héllo".encode(), b""], dtype=np.object_)
    inputs = [
        tc.InferInput("x", list(x.shape), "FP32"),
        tc.InferInput("i", list(i.shape), "INT64"),
        tc.InferInput("s", list(s.shape), "BYTES"),
    ]
    for tensor, array in zip(inputs, (x, i, s)):
        tensor.set_data_from_numpy(array)
    result = client.infer(
        "churn",
        inputs,
        outputs=[tc.InferRequestedOutput(n) for n in ("y", "j", "t")],
        request_id="abc-1",
    )
    report["id"] = result.get_response().id
    report["y_ok"] = bool(np.array_equal(result.as_numpy("y"), x * 2))
    report["j"] = result.as_numpy("j").tolist()
    report["t"] = [v.decode() for v in result.as_numpy("t").tolist()]
    subset = client.infer("churn", inputs, outputs=[tc.InferRequestedOutput("t")])
    report["subset"] = [o.name for o in subset.get_response().outputs]

    bad = tc.InferInput("x", [2, 4], "FP64")
    bad.set_data_from_numpy(x.astype(np.float64))
    try:
        client.infer("churn", [bad, inputs[1], inputs[2]])
    except InferenceServerException as exc:
        report["error"] = [exc.status(), exc.message()]
    print(json.dumps(report))
    """
)


def worker_env(
    kafka: KafkaSettings, storage_root: Path, port: int, **settings: str
) -> dict[str, str]:
    env = {
        **os.environ,
        "INFERENCE_GRPC_PORT": str(port),
        "INFERENCE_METRICS_PORT": "0",
        "MLBUS_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "MLBUS_KAFKA_TOPIC_NAMESPACE": "inference-process",
        "MLBUS_STORAGE_ROOT": str(storage_root),
        "MLBUS_TELEMETRY_METRICS_EXPORTER": "none",
        "MLBUS_GRPC_SHUTDOWN_GRACE_S": "1",
    }
    env.update({f"INFERENCE_{k.upper()}": v for k, v in settings.items()})
    return env


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator:
    """``proc = spawn(env)``: start ``python -m mlbus.inference``; killed after the test."""
    procs: list[subprocess.Popen[str]] = []

    def start(env: dict[str, str]) -> subprocess.Popen[str]:
        log = open(tmp_path / f"worker-{len(procs)}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlbus.inference"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        proc.log_path = Path(log.name)  # type: ignore[attr-defined]
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


async def test_tritonclient_drives_a_worker_process(
    spawn, put_artifact, onnx_models, kafka_settings, artifact_root
) -> None:
    ref = await put_artifact(onnx_models.mixed())
    port = free_port()
    proc = spawn(
        worker_env(
            kafka_settings,
            artifact_root,
            port,
            model_name="churn",
            model_version="4",
            variant="blue",
            artifact_uri=ref.uri,
            artifact_sha256=ref.sha256,
            max_batch_size="8",
        )
    )
    channel = create_channel(f"127.0.0.1:{port}", GrpcSettings())
    try:
        await wait_for_ready(channel, timeout=30)
    finally:
        await channel.close(None)

    client = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        TRITON_SCRIPT,
        f"127.0.0.1:{port}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(client.communicate(), 60)
    assert client.returncode == 0, stderr.decode()
    report = json.loads(stdout)
    assert report["live"]
    assert report["ready"]
    assert report["model_ready"]
    assert report["versions"] == ["4"]
    assert report["inputs"] == [
        ["x", "FP32", [-1, 4]],
        ["i", "INT64", [-1, 2]],
        ["s", "BYTES", [-1]],
    ]
    assert report["outputs"] == [
        ["y", "FP32", [-1, 4]],
        ["j", "INT64", [-1, 2]],
        ["t", "BYTES", [-1]],
    ]
    assert report["id"] == "abc-1"
    assert report["y_ok"]
    assert report["j"] == [[2, 3], [4, 2**40 + 1]]
    assert report["t"] == ["héllo", ""]
    assert report["subset"] == ["t"]
    assert report["error"] == [
        "StatusCode.INVALID_ARGUMENT",
        "input 'x': expected FP32 [-1, 4], got FP64 [2, 4]",
    ]

    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 20) == 0
    lines = [json.loads(x) for x in proc.log_path.read_text().splitlines() if x.startswith("{")]
    messages = [line["message"] for line in lines]
    assert "model ready" in messages
    assert "service ready" in messages
    assert messages.index("model ready") < messages.index("service ready")
    assert "service stopped" in messages


async def test_a_worker_process_with_a_corrupt_artifact_exits_with_status_3(
    spawn, put_artifact, onnx_models, kafka_settings, artifact_root
) -> None:
    ref = await put_artifact(onnx_models.mixed())
    wrong = "f" * 64
    proc = spawn(
        worker_env(
            kafka_settings,
            artifact_root,
            free_port(),
            model_name="churn",
            artifact_uri=ref.uri,
            artifact_sha256=wrong,
        )
    )
    assert await asyncio.to_thread(proc.wait, 60) == 3
    lines = [json.loads(x) for x in proc.log_path.read_text().splitlines() if x.startswith("{")]
    failures = [line for line in lines if line["message"].startswith("model load failed")]
    assert failures, proc.log_path.read_text()
    assert f"checksum mismatch: expected sha256 {wrong}, got {ref.sha256}" in failures[0]["message"]
    assert not any(line["message"] == "service ready" for line in lines)
