"""A 100 MB artifact streams through the registry: the registry process (run as
``python -m mlbus.registry``) grows its peak RSS by less than 50 MB while it registers the
model, and the artifact downloads intact."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mlbus.common.v1 import common_pb2
from mlbus.core.rpc import create_channel, wait_for_ready
from mlbus.core.settings import GrpcSettings
from mlbus.registry.v1 import registry_pb2 as pb
from mlbus.registry.v1 import registry_pb2_grpc
from mlbus.sdk.local.broker import free_port
from mlbus.testing.onnx_models import write_large_model

pytestmark = pytest.mark.slow

SIZE = 100 * 1024 * 1024
CHUNK = 1024 * 1024
MAX_GROWTH_KB = 50 * 1024


def _blocks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        yield from iter(lambda: handle.read(CHUNK), b"")


def peak_rss_kb(pid: int) -> int:
    """VmHWM (peak resident set size) of a process, in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


@pytest.fixture
def registry_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    env = {
        **os.environ,
        "REGISTRY_GRPC_PORT": str(port),
        "REGISTRY_METRICS_PORT": "0",
        "REGISTRY_HOME": str(tmp_path / "home"),
        "MLBUS_STORAGE_ROOT": str(tmp_path / "objects"),
        # No broker: the registry serves without one (events wait in the outbox).
        "MLBUS_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "MLBUS_LOG_LEVEL": "WARNING",
    }
    with open(tmp_path / "registry.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlbus.registry"], env=env, stdout=log, stderr=log
        )
    try:
        yield process, port
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


async def test_a_100_mb_model_streams_through_in_bounded_memory(
    registry_process: tuple[subprocess.Popen[bytes], int], tmp_path: Path
) -> None:
    process, port = registry_process
    model = write_large_model(tmp_path / "large.onnx", SIZE)
    sha = hashlib.sha256()
    for block in _blocks(model):
        sha.update(block)
    expected = sha.hexdigest()

    channel = create_channel(f"127.0.0.1:{port}", GrpcSettings())
    try:
        await wait_for_ready(channel, timeout=60)
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        # Warm up every code path once (imports, first allocations) with a small model.
        small = tmp_path / "small.onnx"
        write_large_model(small, 64 * 1024)
        await _register(stub, "warm-up", small, hashlib.sha256(small.read_bytes()).hexdigest())
        before = peak_rss_kb(process.pid)

        version = await _register(stub, "large", model, expected)
        growth = peak_rss_kb(process.pid) - before
        assert growth < MAX_GROWTH_KB, f"peak RSS grew by {growth / 1024:.1f} MB"
        assert version.artifact.size_bytes == model.stat().st_size
        assert version.artifact.sha256 == expected
        assert [t.name for t in version.signature.inputs] == ["x"]

        received = hashlib.sha256()
        header = None
        async for message in stub.DownloadArtifact(
            pb.DownloadArtifactRequest(model_group="large", version=1), timeout=120
        ):
            if message.WhichOneof("part") == "artifact":
                header = message.artifact
            else:
                received.update(message.chunk)
        assert header is not None
        assert header.sha256 == expected
        assert received.hexdigest() == expected
    finally:
        await channel.close(None)
    assert process.poll() is None, "the registry died"


async def _register(
    stub: registry_pb2_grpc.RegistryServiceAsyncStub, group: str, path: Path, sha: str
) -> pb.ModelVersion:
    async def requests() -> AsyncIterator[pb.RegisterModelVersionRequest]:
        yield pb.RegisterModelVersionRequest(
            header=pb.RegisterModelVersionHeader(
                model_group=group,
                create_group=True,
                expected_sha256=sha,
                actor=common_pb2.Actor(name="alice"),
            )
        )
        for block in _blocks(path):
            yield pb.RegisterModelVersionRequest(chunk=block)

    response = await stub.RegisterModelVersion(requests(), timeout=120)
    return response.model_version
