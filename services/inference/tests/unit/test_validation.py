"""Requests checked against a signature: names, datatypes, shapes, contents, outputs."""

from __future__ import annotations

import numpy as np
import pytest

from mlbus.core.errors import InvalidArgument
from mlbus.inference.api.converters import decode_request, encode_response
from mlbus.inference.domain.datatypes import from_name
from mlbus.inference.domain.signature import ModelSignature, TensorSpec, check_input_header
from mlbus.inference.v2 import grpc_service_pb2 as pb


def spec(name: str, datatype: str, shape: tuple[int, ...] | None) -> TensorSpec:
    found = from_name(datatype)
    assert found is not None
    return TensorSpec(name, found, shape)


SIGNATURE = ModelSignature(
    inputs=(spec("x", "FP32", (-1, 4)), spec("s", "BYTES", (-1,))),
    outputs=(spec("y", "FP32", (-1, 2)), spec("h", "FP16", (-1,)), spec("t", "BYTES", (-1,))),
)


def request(*, raw: bool = True) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="m")
    x = message.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    s = message.inputs.add(name="s", datatype="BYTES", shape=[2])
    if raw:
        message.raw_input_contents.append(np.zeros((2, 4), "<f4").tobytes())
        message.raw_input_contents.append(b"\x01\x00\x00\x00a\x01\x00\x00\x00b")
    else:
        x.contents.fp32_contents.extend([0.0] * 8)
        s.contents.bytes_contents.extend([b"a", b"b"])
    return message


def test_header_check_says_expected_and_got() -> None:
    x = spec("x", "FP32", (-1, 4))
    assert check_input_header(x, "FP32", (3, 4)).name == "FP32"
    cases = {
        ("FP64", (2, 4)): r"^input 'x': expected FP32 \[-1, 4\], got FP64 \[2, 4\]$",
        ("FP32", (2, 5)): r"^input 'x': expected FP32 \[-1, 4\], got FP32 \[2, 5\]$",
        ("FP32", (2, 4, 1)): r"got FP32 \[2, 4, 1\] \(rank 3, expected 2\)$",
        ("FP32", (-2, 4)): r"got FP32 \[-2, 4\] \(dimensions must not be negative\)$",
        ("", (2, 4)): r"got \(no datatype\) \[2, 4\]$",
        ("fp32", (2, 4)): r"expected FP32 \[-1, 4\], got fp32 \[2, 4\]$",
    }
    for (datatype, shape), message in cases.items():
        with pytest.raises(InvalidArgument, match=message):
            check_input_header(x, datatype, shape)
    undeclared = spec("u", "INT64", None)
    assert check_input_header(undeclared, "INT64", (1, 2, 3)).name == "INT64"


def test_signature_batchability() -> None:
    assert SIGNATURE.batchable
    fixed = ModelSignature((spec("x", "FP32", (2, 4)),), (spec("y", "FP32", (2, 3)),))
    assert not fixed.batchable
    scalar_out = ModelSignature((spec("x", "FP32", (-1, 4)),), (spec("n", "INT64", ()),))
    assert not scalar_out.batchable
    unknown = ModelSignature((spec("x", "FP32", None),), (spec("y", "FP32", (-1,)),))
    assert not unknown.batchable


def test_valid_requests_decode_raw_and_typed() -> None:
    for raw in (True, False):
        decoded = decode_request(request(raw=raw), SIGNATURE)
        assert decoded.inputs["x"].shape == (2, 4)
        assert decoded.inputs["s"].tolist() == ["a", "b"]
        assert decoded.outputs == ("y", "h", "t")
        # FP16 has no typed form, so a response holding it is raw either way.
        assert decoded.raw_output
        assert len(decoded.inference_id) == 25  # 16 hex digits, '-', a counter


def test_typed_request_gets_typed_output_unless_asked_or_forced() -> None:
    message = request(raw=False)
    message.outputs.add(name="t")
    message.outputs.add(name="y")
    decoded = decode_request(message, SIGNATURE)
    assert decoded.outputs == ("t", "y")
    assert not decoded.raw_output
    message.parameters["binary_data_output"].bool_param = True
    assert decode_request(message, SIGNATURE).raw_output
    del message.parameters["binary_data_output"]
    message.outputs[0].parameters["binary_data"].bool_param = True
    assert decode_request(message, SIGNATURE).raw_output


def test_inference_id_comes_from_id_then_parameter() -> None:
    message = request()
    message.parameters["inference_id"].string_param = "from-router"
    assert decode_request(message, SIGNATURE).inference_id == "from-router"
    message.id = "from-client"
    assert decode_request(message, SIGNATURE).inference_id == "from-client"


def _mutations() -> dict[str, tuple[object, str]]:
    def missing(m: pb.ModelInferRequest) -> None:
        del m.inputs[1]
        del m.raw_input_contents[1]

    def unknown(m: pb.ModelInferRequest) -> None:
        m.inputs.add(name="z", datatype="FP32", shape=[1])
        m.raw_input_contents.append(b"\x00" * 4)

    def duplicate(m: pb.ModelInferRequest) -> None:
        m.inputs.add(name="x", datatype="FP32", shape=[2, 4])
        m.raw_input_contents.append(b"\x00" * 32)

    def raw_count(m: pb.ModelInferRequest) -> None:
        del m.raw_input_contents[1]

    def both(m: pb.ModelInferRequest) -> None:
        m.inputs[0].contents.fp32_contents.append(1.0)

    def wrong_dtype(m: pb.ModelInferRequest) -> None:
        m.inputs[0].datatype = "FP64"

    def short(m: pb.ModelInferRequest) -> None:
        m.raw_input_contents[0] = b"\x00" * 28

    def bad_bytes(m: pb.ModelInferRequest) -> None:
        m.raw_input_contents[1] = b"\x01\x00\x00\x00a\x07\x00\x00\x00b"

    def unknown_output(m: pb.ModelInferRequest) -> None:
        m.outputs.add(name="nope")

    def twice_output(m: pb.ModelInferRequest) -> None:
        m.outputs.add(name="y")
        m.outputs.add(name="y")

    return {
        "missing input": (missing, r"^missing input 's' \(BYTES \[-1\]\); the model's inputs"),
        "unknown input": (unknown, r"^unknown input 'z'; the model's inputs are 'x' \(FP32"),
        "duplicate input": (duplicate, r"^input 'x' is given twice$"),
        "raw count": (raw_count, r"^raw_input_contents has 1 entries for 2 inputs"),
        "raw and typed": (both, r"^input 'x': has both contents and raw_input_contents"),
        "wrong datatype": (wrong_dtype, r"^input 'x': expected FP32 \[-1, 4\], got FP64 \[2, 4\]$"),
        "short raw": (short, r"^input 'x': raw content is 28 bytes, expected 32"),
        "malformed bytes": (bad_bytes, r"^input 's': malformed BYTES content: element 1 at byte 5"),
        "unknown output": (unknown_output, r"^unknown output 'nope'; the model's outputs are 'y'"),
        "output twice": (twice_output, r"^output 'y' is requested twice$"),
    }


@pytest.mark.parametrize("case", list(_mutations()))
def test_bad_requests_are_refused_with_a_precise_message(case: str) -> None:
    mutate, message = _mutations()[case]
    bad = request()
    mutate(bad)  # type: ignore[operator]
    with pytest.raises(InvalidArgument, match=message):
        decode_request(bad, SIGNATURE)


def test_typed_contents_in_the_wrong_field_or_for_fp16() -> None:
    message = request(raw=False)
    message.inputs[0].contents.ClearField("fp32_contents")
    message.inputs[0].contents.int_contents.extend([0] * 8)
    with pytest.raises(
        InvalidArgument, match=r"^input 'x': FP32 data belongs in contents.fp32_contents, got "
    ):
        decode_request(message, SIGNATURE)
    half = ModelSignature((spec("h", "FP16", (-1,)),), (spec("y", "FP16", (-1,)),))
    typed = pb.ModelInferRequest(model_name="m")
    typed.inputs.add(name="h", datatype="FP16", shape=[0])
    with pytest.raises(InvalidArgument, match="FP16 data can only be sent in raw_input_contents"):
        decode_request(typed, half)


def test_response_is_raw_or_typed_in_requested_order() -> None:
    message = request(raw=False)
    message.id = "abc"
    message.outputs.add(name="t")
    message.outputs.add(name="y")
    decoded = decode_request(message, SIGNATURE)
    outputs = {
        "y": np.array([[1.0, 2.0], [3.0, 4.0]], np.float32),
        "t": np.array(["a", "b"], dtype=object),
    }
    typed = encode_response(message, decoded, outputs, SIGNATURE, model_version="7", variant="blue")
    assert typed.id == "abc"
    assert typed.model_version == "7"
    assert [o.name for o in typed.outputs] == ["t", "y"]
    assert not typed.raw_output_contents
    assert list(typed.outputs[0].contents.bytes_contents) == [b"a", b"b"]
    assert list(typed.outputs[1].contents.fp32_contents) == [1.0, 2.0, 3.0, 4.0]
    assert list(typed.outputs[1].shape) == [2, 2]
    assert typed.parameters["variant"].string_param == "blue"
    assert typed.parameters["inference_id"].string_param == "abc"

    raw_request = request()
    raw_request.outputs.add(name="y")
    raw_decoded = decode_request(raw_request, SIGNATURE)
    raw = encode_response(
        raw_request, raw_decoded, outputs, SIGNATURE, model_version="7", variant=""
    )
    assert raw.raw_output_contents == [outputs["y"].tobytes()]
    assert not raw.outputs[0].contents.ListFields()
    assert "variant" not in raw.parameters


# --- the one-pass path for plain raw requests -----------------------------------------

NUMERIC = ModelSignature(
    inputs=(spec("x", "FP32", (-1, 4)), spec("i", "INT64", (-1, 2))),
    outputs=(spec("y", "FP32", (-1, 2)), spec("j", "INT64", (-1,))),
)


def numeric_request() -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="m", id="r1")
    message.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    message.inputs.add(name="i", datatype="INT64", shape=[2, 2])
    message.raw_input_contents.append(np.arange(8, dtype="<f4").tobytes())
    message.raw_input_contents.append(np.arange(4, dtype="<i8").tobytes())
    return message


def test_plain_raw_requests_decode_as_the_general_path_does() -> None:
    plain = decode_request(numeric_request(), NUMERIC)
    general_request = numeric_request()
    general_request.parameters["binary_data_output"].bool_param = True  # takes the long way
    general = decode_request(general_request, NUMERIC)
    assert (
        (plain.outputs, plain.raw_output, plain.inference_id)
        == (
            general.outputs,
            general.raw_output,
            general.inference_id,
        )
        == (("y", "j"), True, "r1")
    )
    assert plain.inputs.keys() == general.inputs.keys()
    for name in plain.inputs:
        np.testing.assert_array_equal(plain.inputs[name], general.inputs[name])
        assert plain.inputs[name].dtype == general.inputs[name].dtype
    assert plain.inputs["i"].tolist() == [[0, 1], [2, 3]]


def _numeric_mutations() -> dict[str, tuple[object, str]]:
    def missing(m: pb.ModelInferRequest) -> None:
        del m.inputs[1]
        del m.raw_input_contents[1]

    def swapped_name(m: pb.ModelInferRequest) -> None:
        m.inputs[1].name = "x"

    def unknown(m: pb.ModelInferRequest) -> None:
        m.inputs[1].name = "z"

    def both(m: pb.ModelInferRequest) -> None:
        m.inputs[0].contents.fp32_contents.append(1.0)

    def wrong_dtype(m: pb.ModelInferRequest) -> None:
        m.inputs[1].datatype = "INT32"

    def short(m: pb.ModelInferRequest) -> None:
        m.raw_input_contents[0] = b"\x00" * 28

    def rank(m: pb.ModelInferRequest) -> None:
        del m.inputs[0].shape[:]
        m.inputs[0].shape.extend([8])

    def negative(m: pb.ModelInferRequest) -> None:
        m.inputs[0].shape[0] = -2

    return {
        "missing input": (missing, r"^missing input 'i' \(INT64 \[-1, 2\]\)"),
        "duplicate input": (swapped_name, r"^input 'x' is given twice$"),
        "unknown input": (unknown, r"^unknown input 'z'"),
        "raw and typed": (both, r"^input 'x': has both contents and raw_input_contents"),
        "wrong datatype": (
            wrong_dtype,
            r"^input 'i': expected INT64 \[-1, 2\], got INT32 \[2, 2\]$",
        ),
        "short raw": (short, r"^input 'x': raw content is 28 bytes, expected 32"),
        "wrong rank": (rank, r"^input 'x': expected FP32 \[-1, 4\], got FP32 \[8\] \(rank 1"),
        "negative dimension": (negative, r"dimensions must not be negative"),
    }


@pytest.mark.parametrize("case", list(_numeric_mutations()))
def test_bad_plain_raw_requests_get_the_same_precise_message(case: str) -> None:
    mutate, message = _numeric_mutations()[case]
    bad = numeric_request()
    mutate(bad)  # type: ignore[operator]
    with pytest.raises(InvalidArgument, match=message):
        decode_request(bad, NUMERIC)
