"""How the SDK's Predictor lays out arrays, frames and mappings as v2 inputs (pure)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlbus.core.errors import InvalidArgument
from mlbus.core.tensors import decode_output
from mlbus.inference.v2 import grpc_service_pb2 as pb
from mlbus.sdk.predictor import ModelInfo, TensorInfo, build_request

# A model trained on a frame with string columns: one [-1, 1] input per column.
PER_COLUMN = ModelInfo(
    name="churn",
    versions=("1",),
    platform="onnxruntime_onnx",
    inputs=(
        TensorInfo("tenure", "FP32", (-1, 1)),
        TensorInfo("plan", "BYTES", (-1, 1)),
    ),
    outputs=(TensorInfo("label", "INT64", (-1,)),),
)
ONE_INPUT = ModelInfo(
    name="m",
    versions=("1",),
    platform="onnxruntime_onnx",
    inputs=(TensorInfo("input", "FP32", (-1, 3)),),
    outputs=(TensorInfo("y", "FP32", (-1, 1)),),
)


def inputs_of(request: pb.ModelInferRequest) -> dict[str, np.ndarray]:
    """The request's inputs decoded back (raw contents, as the SDK sends them)."""
    decoded = {}
    for index, tensor in enumerate(request.inputs):
        like = pb.ModelInferResponse.InferOutputTensor(
            name=tensor.name, datatype=tensor.datatype, shape=tensor.shape
        )
        decoded[tensor.name] = decode_output(like, request.raw_input_contents[index])
    return decoded


def test_a_frame_with_a_column_per_input_sends_each_column_as_n_rows() -> None:
    frame = pd.DataFrame({"plan": ["basic", "pro", "basic"], "tenure": [1, 24, 7]})
    got = inputs_of(build_request("churn", PER_COLUMN, frame))
    assert got["tenure"].shape == (3, 1)
    assert got["tenure"].dtype == np.float32
    assert got["tenure"][:, 0].tolist() == [1.0, 24.0, 7.0]
    assert got["plan"].shape == (3, 1)
    assert [v.decode() for v in got["plan"][:, 0]] == ["basic", "pro", "basic"]


def test_a_1d_array_for_a_one_value_per_row_input_is_a_column() -> None:
    got = inputs_of(
        build_request(
            "churn", PER_COLUMN, {"tenure": np.array([1.0, 2.0]), "plan": np.array(["a", "b"])}
        )
    )
    assert got["tenure"].shape == (2, 1)
    assert got["plan"].shape == (2, 1)


def test_one_row_and_whole_frames_for_a_single_input() -> None:
    assert inputs_of(build_request("m", ONE_INPUT, [1.0, 2.0, 3.0]))["input"].shape == (1, 3)
    frame = pd.DataFrame(np.arange(6, dtype=np.float64).reshape(2, 3), columns=list("abc"))
    assert inputs_of(build_request("m", ONE_INPUT, frame))["input"].shape == (2, 3)
    with pytest.raises(InvalidArgument, match=r"frame columns: .*missing plan"):
        build_request("churn", PER_COLUMN, pd.DataFrame({"tenure": [1]}))
