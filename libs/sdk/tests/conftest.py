"""Fixtures of the SDK tests: tiny ONNX models built here, and the real registry service
started in-process from its composition root.

The registry runs on its own event loop in a background thread: the SDK's main client and
the CLI are synchronous, and a blocking call on the test's loop would starve a server
living on that same loop.
"""

from __future__ import annotations

import array
import asyncio
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from mlbus.core.settings import GrpcSettings, KafkaSettings, StorageSettings
from mlbus.sdk.errors import Unimplemented
from mlbus.sdk.registry import RegistryClient

#: Where a test can see why the integration tests were skipped.
REGISTRY_NOT_READY = "the registry service (mlbus.registry.app.build_app) is not implemented yet"


def linear_onnx(seed: int = 0, *, outputs: int = 2) -> bytes:
    """``Y = X·W + B`` with X ``FP32 [N, 4]`` (N dynamic) and Y ``FP32 [N, outputs]``;
    ``seed`` changes W, so different seeds give different artifacts (and SHA-256s)."""
    onnx = pytest.importorskip("onnx")
    helper = onnx.helper
    floats = onnx.TensorProto.FLOAT
    weights = array.array("f", (float(seed + i % 7) for i in range(4 * outputs)))
    bias = array.array("f", (0.5,) * outputs)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["X", "W"], ["XW"]),
            helper.make_node("Add", ["XW", "B"], ["Y"]),
        ],
        "linear",
        [helper.make_tensor_value_info("X", floats, ["N", 4])],
        [helper.make_tensor_value_info("Y", floats, ["N", outputs])],
        initializer=[
            helper.make_tensor("W", floats, [4, outputs], weights.tobytes(), raw=True),
            helper.make_tensor("B", floats, [outputs], bias.tobytes(), raw=True),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="mlbus-sdk-tests"
    )
    model.ir_version = 8  # readable by every onnxruntime since 1.10
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


@pytest.fixture
def onnx_file(tmp_path: Path) -> Callable[..., Path]:
    """``onnx_file(seed=0, outputs=2)``: write a linear model to a file and return its path."""

    def make(seed: int = 0, *, outputs: int = 2) -> Path:
        path = tmp_path / f"linear-{seed}-{outputs}.onnx"
        path.write_bytes(linear_onnx(seed, outputs=outputs))
        return path

    return make


class RegistryThread:
    """The registry ``ServiceApp`` started and stopped on an event loop of its own thread."""

    def __init__(self, build: Callable[[Any], Any], settings: Any) -> None:
        self._build = build
        self._settings = settings
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started: Future[int] = Future()
        self._thread = threading.Thread(target=self._run, name="registry", daemon=True)
        self.port = 0

    @property
    def target(self) -> str:
        """``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> None:
        """Start and wait until the gRPC server is up (re-raises a start failure)."""
        self._thread.start()
        self.port = self._started.result(timeout)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            app = self._build(self._settings)
            port = await app.start()
        except BaseException as exc:
            self._started.set_exception(exc)
            return
        self._started.set_result(port)
        try:
            await self._stop.wait()
        finally:
            await app.stop()

    def stop(self, timeout: float = 30) -> None:
        """Stop the app and join the thread."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)


def _registry_settings(tmp: Path, kafka: KafkaSettings) -> Any:
    from mlbus.registry.settings import RegistrySettings

    fields = RegistrySettings.model_fields
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "grpc_port": 0,
        "metrics_port": 0,
        "home": tmp,
        # Topics of its own, so tests sharing the session's broker never see each other's events.
        "kafka": kafka.model_copy(update={"topic_namespace": f"sdk-{uuid.uuid4().hex[:8]}"}),
        "storage": StorageSettings(type="local", root=tmp / "objects"),
        "grpc": GrpcSettings(shutdown_grace_s=1),
    }
    if "database_url" in fields:
        values["database_url"] = f"sqlite+aiosqlite:///{tmp / 'registry.db'}"
    return RegistrySettings(**values)


@pytest.fixture(scope="module")
def registry_target(
    tmp_path_factory: pytest.TempPathFactory, kafka_settings: KafkaSettings
) -> Iterator[str]:
    """``host:port`` of a real registry (SQLite and a local object store in a temporary
    directory, the session's broker), one per test module."""
    try:
        from mlbus.registry.app import build_app
        from mlbus.registry.settings import RegistrySettings  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"{REGISTRY_NOT_READY}: {exc}")
    settings = _registry_settings(tmp_path_factory.mktemp("registry"), kafka_settings)
    server = RegistryThread(build_app, settings)
    server.start()
    try:
        with RegistryClient(server.target) as probe:
            probe.wait_for_ready(timeout=30)
            try:
                list(probe.list_groups(limit=1))
            except Unimplemented as exc:
                pytest.skip(
                    f"{REGISTRY_NOT_READY}: ListModelGroups answered UNIMPLEMENTED ({exc.message})"
                )
        yield server.target
    finally:
        server.stop()


@pytest.fixture
def registry(registry_target: str) -> Iterator[RegistryClient]:
    """A client acting as ``alice`` (the registrant in most tests)."""
    with RegistryClient(registry_target, actor="alice", timeout=15) as client:
        yield client


@pytest.fixture
def approver(registry_target: str) -> Iterator[RegistryClient]:
    """A client acting as ``bob`` (approves what alice registers)."""
    with RegistryClient(registry_target, actor="bob", timeout=15) as client:
        yield client
