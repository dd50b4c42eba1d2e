"""Real, tiny ONNX models that tests build themselves (no downloads).

- :func:`linear_model`: ``y = x @ W + b`` written with ``onnx.helper`` (fast, no sklearn);
- :func:`sklearn_classifier` / :func:`sklearn_regressor`: scikit-learn models fitted on
  synthetic data and converted with skl2onnx (tensor outputs only, no ZipMap);
- :func:`write_large_model`: a valid model of any size, written as a stream, for upload
  and memory tests;
- :func:`sha256_hex`: the checksum registries and object stores use.

Every model takes ``x`` (FP32, ``[N, n_features]`` with a dynamic batch dimension).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DEFAULT_OPSET = 17


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def linear_model(
    n_features: int = 4,
    n_outputs: int = 1,
    *,
    seed: int = 0,
    opset: int = DEFAULT_OPSET,
    input_name: str = "x",
    output_name: str = "y",
) -> bytes:
    """A serialized ``y = x @ W + b`` model; ``seed`` varies the weights (and so the bytes)."""
    rng = np.random.default_rng(seed)
    weights = numpy_helper.from_array(
        rng.standard_normal((n_features, n_outputs)).astype(np.float32), "W"
    )
    bias = numpy_helper.from_array(rng.standard_normal(n_outputs).astype(np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", [input_name, "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], [output_name]),
        ],
        "linear",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", n_features])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", n_outputs])],
        initializer=[weights, bias],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="mlbus-testing"
    )
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _synthetic(n_features: int, seed: int, rows: int = 64) -> tuple[Any, Any]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, n_features)).astype(np.float32)
    y = (x.sum(axis=1) > 0).astype(np.int64)
    return x, y


def _fit_and_convert(kind: str, n_features: int, seed: int, *, zipmap: bool = False) -> bytes:
    from skl2onnx import to_onnx  # type: ignore[import-untyped]
    from sklearn.linear_model import (  # type: ignore[import-untyped]
        LinearRegression,
        LogisticRegression,
    )

    x, y = _synthetic(n_features, seed)
    model = LogisticRegression() if kind == "classifier" else LinearRegression()
    model.fit(x, y if kind == "classifier" else y.astype(np.float32))
    options = {id(model): {"zipmap": False}} if kind == "classifier" and not zipmap else None
    onx = to_onnx(model, x[:1], options=options, target_opset={"": DEFAULT_OPSET, "ai.onnx.ml": 3})
    data: bytes = onx.SerializeToString()
    return data


def sklearn_classifier(n_features: int = 4, *, seed: int = 0) -> bytes:
    """A scikit-learn LogisticRegression converted with skl2onnx: outputs ``label`` (INT64)
    and ``probabilities`` (FP32), no ZipMap."""
    return _fit_and_convert("classifier", n_features, seed)


def sklearn_classifier_with_zipmap(n_features: int = 4, *, seed: int = 0) -> bytes:
    """Like :func:`sklearn_classifier` but with skl2onnx's default ZipMap output (a
    sequence of maps, not a tensor)."""
    return _fit_and_convert("classifier", n_features, seed, zipmap=True)


def sklearn_regressor(n_features: int = 4, *, seed: int = 0) -> bytes:
    """A scikit-learn LinearRegression converted with skl2onnx: output ``variable`` (FP32)."""
    return _fit_and_convert("regressor", n_features, seed)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def write_large_model(path: Path, approx_bytes: int, *, n_features: int = 1024) -> Path:
    """Write a valid ``y = x @ W`` model of about ``approx_bytes`` to ``path``, in bounded
    memory: ``W`` (``[n_features, m]``, zeros) is streamed out as ``raw_data``.

    Protobuf merges repeated occurrences of a message field, so the file is a small model
    followed by a second ``graph`` field that adds the large initializer.
    """
    n_outputs = max(1, approx_bytes // (4 * n_features))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "large",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n_outputs])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", DEFAULT_OPSET)])
    head = TensorProto(name="W", dims=[n_features, n_outputs], data_type=TensorProto.FLOAT)
    head_bytes = head.SerializeToString()
    raw_size = 4 * n_features * n_outputs
    # TensorProto = its small fields + raw_data (field 9); GraphProto.initializer is field 5;
    # ModelProto.graph is field 7.
    tensor_size = len(head_bytes) + 1 + len(_varint(raw_size)) + raw_size
    graph_size = 1 + len(_varint(tensor_size)) + tensor_size
    block = bytes(1024 * 1024)
    with open(path, "wb") as handle:
        handle.write(model.SerializeToString())
        handle.write(b"\x3a" + _varint(graph_size))
        handle.write(b"\x2a" + _varint(tensor_size) + head_bytes)
        handle.write(b"\x4a" + _varint(raw_size))
        remaining = raw_size
        while remaining:
            step = min(remaining, len(block))
            handle.write(block[:step])
            remaining -= step
    return path
