"""ONNX validation and signatures from the light copy: the same answer as loading the whole
model, in memory bounded by the graph (not the weights), and a precise refusal of
anything that is not a valid tensor-in, tensor-out ONNX model."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from mlbus.core.errors import InvalidArgument
from mlbus.registry.adapters.onnx_inspector import OnnxInspector, build_light_model, signature_of
from mlbus.testing.onnx_models import (
    linear_model,
    sklearn_classifier_with_zipmap,
    write_large_model,
)


def _file(tmp_path: Path, data: bytes, name: str = "model.onnx") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_signature_of_an_sklearn_model(tmp_path: Path, onnx_sklearn_regressor: bytes) -> None:
    signature = OnnxInspector().inspect(_file(tmp_path, onnx_sklearn_regressor))
    assert [(t.name, t.datatype, t.shape) for t in signature.inputs] == [("X", "FP32", (-1, 4))]
    assert [(t.name, t.datatype, t.shape) for t in signature.outputs] == [
        ("variable", "FP32", (-1, 1))
    ]
    assert signature.opset == 17


def test_light_model_gives_the_signature_of_the_full_model(tmp_path: Path) -> None:
    data = linear_model(n_features=300, n_outputs=200, seed=3)  # 240 KB of weights
    path = _file(tmp_path, data)
    light = build_light_model(path, location=path.name, threshold=1024)
    assert len(light) < 2000 < len(data)
    light_model = onnx.ModelProto.FromString(light)
    weights = light_model.graph.initializer[0]
    assert weights.data_location == TensorProto.EXTERNAL
    assert {e.key: e.value for e in weights.external_data}["location"] == path.name
    assert signature_of(light_model) == signature_of(onnx.load_from_string(data))
    # Small tensors stay inline.
    assert light_model.graph.initializer[1].raw_data
    # The external reference points at the very bytes of the original.
    entries = {e.key: e.value for e in weights.external_data}
    offset, length = int(entries["offset"]), int(entries["length"])
    original = onnx.load_from_string(data).graph.initializer[0].raw_data
    assert data[offset : offset + length] == original
    assert OnnxInspector(external_threshold=1024).inspect(path) == signature_of(
        onnx.load_from_string(data)
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_inspection_memory_does_not_grow_with_the_weights(tmp_path: Path) -> None:
    path = write_large_model(tmp_path / "large.onnx", 40 * 1024 * 1024)
    tracemalloc.start()
    try:
        signature = OnnxInspector().inspect(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert signature.inputs[0].shape == (-1, 1024)
    assert peak < 2 * 1024 * 1024, f"peak Python allocation {peak} bytes"


def test_dynamic_and_symbolic_dimensions_are_minus_one(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.INT64, ["batch", 3, None])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, ["batch", 3, None])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx.ml", 3)]
    )
    signature = OnnxInspector().inspect(_file(tmp_path, model.SerializeToString()))
    assert signature.inputs[0].shape == (-1, 3, -1)
    assert signature.inputs[0].datatype == "INT64"
    assert signature.opset == 13


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: b"not a model", "not a protobuf ModelProto"),
        (lambda: linear_model()[:-5], "not a protobuf ModelProto"),
        (lambda: b"\x08\x07", "must specify opset_import"),
        (sklearn_classifier_with_zipmap, "sequence<map<INT64, tensor(FLOAT)>>"),
    ],
    ids=["not-protobuf", "truncated", "no-opset", "zipmap"],
)
def test_invalid_models_are_refused_precisely(
    tmp_path: Path, make: Callable[[], bytes], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=r"^artifact: ") as caught:
        OnnxInspector().inspect(_file(tmp_path, make()))
    assert message in caught.value.message


def test_unknown_operator_fails_the_checker(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("NoSuchOp", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(InvalidArgument, match=r"not a valid ONNX model.*NoSuchOp"):
        OnnxInspector().inspect(_file(tmp_path, model.SerializeToString()))


def test_external_data_files_are_refused(tmp_path: Path) -> None:
    data = linear_model(n_features=100, n_outputs=100)
    model = onnx.load_from_string(data)
    onnx.save_model(
        model,
        str(tmp_path / "ext.onnx"),
        save_as_external_data=True,
        location="ext.onnx.data",
        size_threshold=0,
    )
    upload = _file(tmp_path, (tmp_path / "ext.onnx").read_bytes(), "upload.onnx")
    # Even with the data file beside it: an artifact must be self-contained.
    assert (tmp_path / "ext.onnx.data").exists()
    with pytest.raises(InvalidArgument, match="initializer 'W' keeps its data in a separate file"):
        OnnxInspector().inspect(upload)


def test_corrupted_files_are_refused_as_invalid_never_as_internal_errors(
    tmp_path: Path, onnx_sklearn_regressor: bytes
) -> None:
    import random

    rng = random.Random(7)
    inspector = OnnxInspector()
    valid = 0
    refusals: list[str] = []
    for i in range(300):
        data = bytearray(onnx_sklearn_regressor)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            inspector.inspect(_file(tmp_path, bytes(data), name=f"m{i}.onnx"))
            valid += 1
        except InvalidArgument as exc:
            refusals.append(exc.message)
    # Some flips leave a valid model, most make an invalid one; none escapes as another error.
    assert valid + len(refusals) == 300
    assert refusals
    assert all(m.startswith("artifact: not a valid ONNX model: ") for m in refusals)
