"""Fixtures of the inference worker tests: tiny real ONNX models built with onnx.helper, an
artifact store holding them, and workers started in-process with a v2 stub to them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mlbus.core.settings import GrpcSettings, KafkaSettings, StorageSettings
from mlbus.core.storage import LocalObjectStore, ObjectRef
from mlbus.inference.app import InferenceApp, build_app
from mlbus.inference.settings import InferenceSettings
from mlbus.inference.v2 import grpc_service_pb2 as pb
from mlbus.inference.v2 import grpc_service_pb2_grpc as pb_grpc
from mlbus.testing.plugin import RunningApp

OPSET = 17
IR_VERSION = 9  # what onnxruntime 1.2x-1.3x reads; onnx.helper would write a newer one

#: v2 datatype → ONNX element type, for the identity-per-datatype model.
ONNX_TYPES: dict[str, int] = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def _model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: Sequence[onnx.TensorProto] = (),
) -> bytes:
    graph = helper.make_graph(list(nodes), "test", list(inputs), list(outputs), list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _vi(name: str, elem: int, shape: Sequence[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, list(shape))


class OnnxModels:
    """Builders of the small models the tests serve (bytes of a valid ONNX model)."""

    @staticmethod
    def mixed() -> bytes:
        """x FP32 [N, 4] → y = 2x; i INT64 [N, 2] → j = i + 1; s BYTES [N] → t = s."""
        return _model(
            [
                helper.make_node("Mul", ["x", "two"], ["y"]),
                helper.make_node("Add", ["i", "one"], ["j"]),
                helper.make_node("Identity", ["s"], ["t"]),
            ],
            [
                _vi("x", TensorProto.FLOAT, ["N", 4]),
                _vi("i", TensorProto.INT64, ["N", 2]),
                _vi("s", TensorProto.STRING, ["N"]),
            ],
            [
                _vi("y", TensorProto.FLOAT, ["N", 4]),
                _vi("j", TensorProto.INT64, ["N", 2]),
                _vi("t", TensorProto.STRING, ["N"]),
            ],
            [
                numpy_helper.from_array(np.array(2.0, np.float32), "two"),
                numpy_helper.from_array(np.array(1, np.int64), "one"),
            ],
        )

    @staticmethod
    def all_types(datatypes: Sequence[str] = tuple(ONNX_TYPES)) -> bytes:
        """For every v2 datatype D of ``datatypes``: in_D [N, 3] → out_D = in_D (Identity)."""
        types = {d: ONNX_TYPES[d] for d in datatypes}
        return _model(
            [helper.make_node("Identity", [f"in_{d}"], [f"out_{d}"]) for d in types],
            [_vi(f"in_{d}", t, ["N", 3]) for d, t in types.items()],
            [_vi(f"out_{d}", t, ["N", 3]) for d, t in types.items()],
        )

    @staticmethod
    def fixed() -> bytes:
        """x FP32 [2, 4] (fixed first dimension) → y = x·W [2, 3]."""
        weights = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
        return _model(
            [helper.make_node("MatMul", ["x", "w"], ["y"])],
            [_vi("x", TensorProto.FLOAT, [2, 4])],
            [_vi("y", TensorProto.FLOAT, [2, 3])],
            [numpy_helper.from_array(weights, "w")],
        )

    @staticmethod
    def lookup() -> bytes:
        """idx INT64 [N] → rows of a 10 × 2 table (an index ≥ 10 makes the run fail)."""
        table = np.arange(20, dtype=np.float32).reshape(10, 2)
        return _model(
            [helper.make_node("Gather", ["table", "idx"], ["rows"], axis=0)],
            [_vi("idx", TensorProto.INT64, ["N"])],
            [_vi("rows", TensorProto.FLOAT, ["N", 2])],
            [numpy_helper.from_array(table, "table")],
        )

    @staticmethod
    def mlp(
        inputs: int = 30, hidden: Sequence[int] = (64, 64), outputs: int = 2, seed: int = 0
    ) -> bytes:
        """x FP32 [N, inputs] → ReLU MLP → y FP32 [N, outputs], random weights."""
        rng = np.random.default_rng(seed)
        nodes: list[onnx.NodeProto] = []
        initializers: list[onnx.TensorProto] = []
        previous, width = "x", inputs
        sizes = [*hidden, outputs]
        for layer, size in enumerate(sizes):
            w = (rng.standard_normal((width, size)) / np.sqrt(width)).astype(np.float32)
            b = (rng.standard_normal(size) * 0.1).astype(np.float32)
            initializers += [
                numpy_helper.from_array(w, f"w{layer}"),
                numpy_helper.from_array(b, f"b{layer}"),
            ]
            out = "y" if layer == len(sizes) - 1 else f"h{layer}"
            gemm = out if out == "y" else f"g{layer}"
            nodes.append(helper.make_node("MatMul", [previous, f"w{layer}"], [f"m{layer}"]))
            nodes.append(helper.make_node("Add", [f"m{layer}", f"b{layer}"], [gemm]))
            if out != "y":
                nodes.append(helper.make_node("Relu", [gemm], [out]))
            previous, width = out, size
        return _model(
            nodes,
            [_vi("x", TensorProto.FLOAT, ["N", inputs])],
            [_vi("y", TensorProto.FLOAT, ["N", outputs])],
            initializers,
        )


@pytest.fixture(scope="session")
def onnx_models() -> type[OnnxModels]:
    """The model builders."""
    return OnnxModels


@pytest.fixture
def artifact_root(tmp_path: Path) -> Path:
    """Root of this test's local object store."""
    return tmp_path / "objects"


@pytest.fixture
async def put_artifact(
    artifact_root: Path,
) -> AsyncIterator[Callable[[bytes], Awaitable[ObjectRef]]]:
    """``ref = await put_artifact(model_bytes)``: store a model content-addressed."""
    store = LocalObjectStore(artifact_root)
    await store.start()

    async def put(data: bytes) -> ObjectRef:
        return await store.put_content(data)

    yield put
    await store.aclose()


@pytest.fixture(scope="session")
def shared_namespace() -> str:
    """Topic namespace of workers whose captured records no test reads (created once)."""
    return f"inference-{uuid.uuid4().hex[:8]}"


@dataclass
class RunningWorker:
    """A worker started in-process, with a v2 stub on a ready channel."""

    running: RunningApp
    stub: pb_grpc.GRPCInferenceServiceStub

    @property
    def app(self) -> InferenceApp:
        app = self.running.app
        assert isinstance(app, InferenceApp)
        return app

    async def infer(
        self, request: pb.ModelInferRequest, timeout: float = 10
    ) -> pb.ModelInferResponse:
        return await self.stub.ModelInfer(request, timeout=timeout)


WorkerFactory = Callable[..., Awaitable[RunningWorker]]


@pytest.fixture
def worker_settings(
    kafka_settings: KafkaSettings, artifact_root: Path, shared_namespace: str
) -> Callable[..., InferenceSettings]:
    """``worker_settings(ref, model_name=..., **fields)``: settings of a worker on port 0 that
    serves the artifact ``ref`` (or no model when ``ref`` is None)."""

    def make(
        ref: ObjectRef | None, *, namespace: str | None = None, **fields: Any
    ) -> InferenceSettings:
        model: dict[str, Any] = {}
        if ref is not None:
            model = {
                "model_name": "m",
                "artifact_uri": ref.uri,
                "artifact_sha256": ref.sha256,
                "variant": "blue",
            }
        base: dict[str, Any] = {
            "grpc_port": 0,
            "metrics_port": 0,
            "kafka": kafka_settings.model_copy(
                update={"topic_namespace": namespace or shared_namespace}
            ),
            "storage": StorageSettings(root=artifact_root),
            "grpc": GrpcSettings(shutdown_grace_s=1),
            # Many workers of model "m" share a namespace here: their async consumers would
            # all join one group. Asynchronous requests are tested where each has its own.
            "async_enabled": False,
        }
        return InferenceSettings(**{**base, **model, **fields})

    return make


@pytest.fixture
def start_worker(
    run_app: Callable[[InferenceApp], Awaitable[RunningApp]],
    put_artifact: Callable[[bytes], Awaitable[ObjectRef]],
    worker_settings: Callable[..., InferenceSettings],
) -> WorkerFactory:
    """``worker = await start_worker(model_bytes, **settings)``: store the model, start a
    worker serving it as model ``m`` (version 1, variant ``blue``) and wait until SERVING."""

    async def start(model: bytes | None, **fields: Any) -> RunningWorker:
        ref = await put_artifact(model) if model is not None else None
        app = build_app(worker_settings(ref, **fields))
        running = await run_app(app)
        return RunningWorker(running, pb_grpc.GRPCInferenceServiceStub(running.channel))

    return start


# --- v2 requests and responses, encoded independently of the code under test ------------

_NUMPY: dict[str, str] = {
    "BOOL": "?",
    "UINT8": "u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}
_FIELDS: dict[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def v2_datatype(array: np.ndarray) -> str:
    """The v2 datatype of a numpy array (object/str/bytes arrays are BYTES)."""
    if array.dtype.kind in "OSU":
        return "BYTES"
    for name, code in _NUMPY.items():
        if np.dtype(code) == array.dtype:
            return name
    raise TypeError(f"no v2 datatype for {array.dtype}")


def _elements(array: np.ndarray) -> list[bytes]:
    return [v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1)]


def raw_bytes(array: np.ndarray) -> bytes:
    """The raw (wire) form of ``array``: length-prefixed elements for BYTES."""
    if v2_datatype(array) == "BYTES":
        return b"".join(len(e).to_bytes(4, "little") + e for e in _elements(array))
    return np.ascontiguousarray(array).tobytes()


class V2:
    """Builds ModelInferRequests and reads ModelInferResponses."""

    @staticmethod
    def request(
        inputs: dict[str, np.ndarray],
        *,
        raw: bool = True,
        outputs: Sequence[str] = (),
        model: str = "m",
        version: str = "",
        id: str = "",
    ) -> pb.ModelInferRequest:
        request = pb.ModelInferRequest(model_name=model, model_version=version, id=id)
        for name, array in inputs.items():
            datatype = v2_datatype(array)
            tensor = request.inputs.add(name=name, datatype=datatype, shape=array.shape)
            if raw:
                request.raw_input_contents.append(raw_bytes(array))
            elif datatype == "BYTES":
                tensor.contents.bytes_contents.extend(_elements(array))
            elif datatype in _FIELDS:  # FP16 has no typed field: sent without contents
                getattr(tensor.contents, _FIELDS[datatype]).extend(array.reshape(-1).tolist())
        for name in outputs:
            request.outputs.add(name=name)
        return request

    @staticmethod
    def outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
        """Every output of ``response`` as an array (BYTES as an object array of bytes)."""
        arrays: dict[str, np.ndarray] = {}
        for index, tensor in enumerate(response.outputs):
            shape = tuple(tensor.shape)
            if response.raw_output_contents:
                data = response.raw_output_contents[index]
                if tensor.datatype == "BYTES":
                    items, offset = [], 0
                    while offset < len(data):
                        size = int.from_bytes(data[offset : offset + 4], "little")
                        items.append(data[offset + 4 : offset + 4 + size])
                        offset += 4 + size
                    array = np.empty(len(items), dtype=object)
                    array[:] = items
                else:
                    array = np.frombuffer(data, dtype=_NUMPY[tensor.datatype])
            else:
                assert not tensor.contents.ListFields() or tensor.datatype in _FIELDS
                values = list(getattr(tensor.contents, _FIELDS[tensor.datatype]))
                if tensor.datatype == "BYTES":
                    array = np.empty(len(values), dtype=object)
                    array[:] = values
                else:
                    array = np.array(values, dtype=_NUMPY[tensor.datatype])
            arrays[tensor.name] = array.reshape(shape)
        return arrays


@pytest.fixture(scope="session")
def v2() -> type[V2]:
    """Request builder and response reader."""
    return V2
