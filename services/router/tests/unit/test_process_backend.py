"""The local process backend starts each worker on port 0 and learns the port the kernel
gave it from the worker's port file: two workers started at once never share an address,
a port file left by an earlier router is not read, and a worker that exits or never
listens is reported instead of waited on. The "workers" here are small real processes
that listen like the inference worker does (the real one is started in the integration
tests)."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from mlbus.router.adapters.workers import ProcessBackend, WorkerProcess
from mlbus.router.domain.deployment import WorkerSpec

# Listens on the port it is given (0 here), then writes the port file like ServiceApp does.
WORKER = """
import os, socket, sys, time
assert os.environ["INFERENCE_GRPC_PORT"] == "0"
mode = os.environ.get("FAKE_MODE", "listen")
time.sleep(float(os.environ.get("FAKE_DELAY_S", "0")))
if mode == "exit":
    sys.exit(3)
if mode == "listen":
    sock = socket.create_server((os.environ["INFERENCE_HOST"], 0))
    path = os.environ["INFERENCE_PORT_FILE"]
    with open(path + ".tmp", "w") as fh:
        fh.write(f"{sock.getsockname()[1]}\\n")
    os.replace(path + ".tmp", path)
time.sleep(60)
"""

SPEC = WorkerSpec(
    endpoint="churn",
    variant="a",
    model_group="churn",
    model_version=1,
    artifact_uri="file:///m.onnx",
    artifact_sha256="0" * 64,
)


def backend(tmp_path: Path, **env: str) -> ProcessBackend:
    return ProcessBackend(
        command=[sys.executable, "-c", WORKER], base_env=env, log_dir=tmp_path / "workers"
    )


async def accepts(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        _, writer = await asyncio.open_connection(host, int(port))
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def test_workers_started_together_each_get_their_own_address(tmp_path: Path) -> None:
    procs: list[WorkerProcess] = []
    try:
        procs = list(
            await asyncio.gather(*(backend(tmp_path).spawn(SPEC, f"churn/a/{i}") for i in range(4)))
        )
        assert all(p.address == "" for p in procs)  # unknown until the worker listens
        assert await asyncio.gather(*(p.bound(30) for p in procs)) == [True] * 4
        addresses = [p.address for p in procs]
        assert len(set(addresses)) == 4
        for p in procs:
            assert p.address.startswith("127.0.0.1:")
            assert p.port_file is not None
            assert p.address.endswith(f":{int(p.port_file.read_text())}")
            assert await accepts(p.address)
    finally:
        for p in procs:
            await p.stop(1)
    # A stopped worker's port file goes with it.
    assert not list((tmp_path / "workers").glob("*.port"))


async def test_a_port_file_left_by_an_earlier_router_is_not_read(tmp_path: Path) -> None:
    stale = tmp_path / "workers" / "churn_a_1.port"
    stale.parent.mkdir(parents=True)
    stale.write_text("1\n")  # the same instance id, started by the router before a restart
    proc = await backend(tmp_path, FAKE_DELAY_S="0.3").spawn(SPEC, "churn/a/1")
    try:
        assert proc.port_file == stale
        assert await proc.bound(30)
        assert not proc.address.endswith(":1")
        assert await accepts(proc.address)
    finally:
        await proc.stop(1)


async def test_a_worker_that_exits_before_listening_is_not_waited_for(tmp_path: Path) -> None:
    proc = await backend(tmp_path, FAKE_MODE="exit").spawn(SPEC, "churn/a/2")
    started = time.monotonic()
    assert not await proc.bound(30)
    assert time.monotonic() - started < 10
    assert proc.returncode == 3
    assert proc.address == ""


async def test_a_worker_that_never_listens_runs_out_of_time(tmp_path: Path) -> None:
    proc = await backend(tmp_path, FAKE_MODE="hang").spawn(SPEC, "churn/a/3")
    try:
        started = time.monotonic()
        assert not await proc.bound(0.3)
        assert 0.3 <= time.monotonic() - started < 5
        assert proc.returncode is None
        assert proc.address == ""
    finally:
        await proc.stop(1)
