"""numpy ↔ v2 tensors for protocol clients."""

from __future__ import annotations

import numpy as np
import pytest

from mlbus.core.tensors import (
    NUMPY_DTYPES,
    TensorError,
    add_input,
    datatype_of,
    decode_bytes,
    decode_outputs,
    encode_bytes,
)
from mlbus.inference.v2 import grpc_service_pb2 as pb


@pytest.mark.parametrize("datatype", [d for d in NUMPY_DTYPES if d != "BYTES"])
def test_every_numeric_datatype_round_trips_raw_and_typed(datatype: str) -> None:
    array = (
        (np.arange(6) % 2 == 0)
        if datatype == "BOOL"
        else np.arange(6).astype(NUMPY_DTYPES[datatype])
    )
    array = array.reshape(2, 3)
    assert datatype_of(array) == datatype
    request = pb.ModelInferRequest()
    add_input(request, "x", array)
    assert list(request.inputs[0].shape) == [2, 3]
    assert request.raw_input_contents[0] == array.astype(array.dtype.newbyteorder("<")).tobytes()
    response = pb.ModelInferResponse()
    response.outputs.add(name="x", datatype=datatype, shape=[2, 3])
    response.raw_output_contents.append(request.raw_input_contents[0])
    np.testing.assert_array_equal(decode_outputs(response)["x"], array)


def test_bytes_round_trip_and_typed_contents() -> None:
    elements = [b"", "héllo".encode(), b"\x00\xff"]
    raw = encode_bytes(["", "héllo", b"\x00\xff"])
    assert decode_bytes(raw) == elements
    response = pb.ModelInferResponse()
    response.outputs.add(name="s", datatype="BYTES", shape=[3]).contents.bytes_contents.extend(
        elements
    )
    response.outputs.add(name="f", datatype="FP32", shape=[2]).contents.fp32_contents.extend(
        [0.5, 2.0]
    )
    out = decode_outputs(response)
    assert out["s"].tolist() == elements
    np.testing.assert_array_equal(out["f"], np.array([0.5, 2.0], np.float32))


def test_malformed_content_is_refused_with_position() -> None:
    with pytest.raises(TensorError, match="declares 9 bytes but only 2 remain"):
        decode_bytes(b"\x09\x00\x00\x00ab")
    response = pb.ModelInferResponse()
    response.outputs.add(name="y", datatype="FP32", shape=[1])
    response.raw_output_contents.append(b"\x00" * 3)
    with pytest.raises(TensorError, match="3 bytes is not a whole number of FP32"):
        decode_outputs(response)
    with pytest.raises(TensorError, match="no Open Inference Protocol datatype"):
        datatype_of(np.zeros(2, dtype=np.complex64))
