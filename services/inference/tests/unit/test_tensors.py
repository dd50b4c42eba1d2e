"""Datatype mapping, the BYTES codec and decoding of raw and typed contents."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from mlbus.core.errors import InvalidArgument
from mlbus.inference.domain.datatypes import DATATYPES, from_name, from_onnx_type
from mlbus.inference.domain.tensors import (
    BytesFormatError,
    decode_bytes_elements,
    decode_raw,
    decode_values,
    encode_bytes_elements,
    to_raw,
    to_values,
)

FP32 = from_name("FP32")
BYTES = from_name("BYTES")


@pytest.mark.parametrize(
    ("onnx_type", "v2", "itemsize", "field"),
    [
        ("tensor(bool)", "BOOL", 1, "bool_contents"),
        ("tensor(uint8)", "UINT8", 1, "uint_contents"),
        ("tensor(uint16)", "UINT16", 2, "uint_contents"),
        ("tensor(uint32)", "UINT32", 4, "uint_contents"),
        ("tensor(uint64)", "UINT64", 8, "uint64_contents"),
        ("tensor(int8)", "INT8", 1, "int_contents"),
        ("tensor(int16)", "INT16", 2, "int_contents"),
        ("tensor(int32)", "INT32", 4, "int_contents"),
        ("tensor(int64)", "INT64", 8, "int64_contents"),
        ("tensor(float16)", "FP16", 2, None),
        ("tensor(float)", "FP32", 4, "fp32_contents"),
        ("tensor(double)", "FP64", 8, "fp64_contents"),
        ("tensor(string)", "BYTES", 0, "bytes_contents"),
    ],
)
def test_every_onnx_element_type_with_a_v2_datatype_maps(
    onnx_type: str, v2: str, itemsize: int, field: str | None
) -> None:
    datatype = from_onnx_type(onnx_type)
    assert datatype is not None
    assert datatype is from_name(v2)
    assert datatype.itemsize == itemsize
    assert datatype.contents_field == field
    if not datatype.is_bytes:
        assert datatype.dtype.byteorder in ("<", "|", "=")


@pytest.mark.parametrize(
    "onnx_type",
    ["tensor(bfloat16)", "tensor(complex64)", "seq(map(int64,tensor(float)))", "map(string,float)"],
)
def test_types_without_a_v2_datatype_are_not_mapped(onnx_type: str) -> None:
    assert from_onnx_type(onnx_type) is None


def test_datatype_names_are_unique_and_complete() -> None:
    names = [d.name for d in DATATYPES]
    assert len(names) == len(set(names)) == 13
    assert from_name("BF16") is None
    assert from_name("fp32") is None  # v2 names are upper case


def test_bytes_codec_round_trips_with_4_byte_little_endian_lengths() -> None:
    elements = [b"", b"a", "é".encode(), b"\x00\xff" * 300]
    raw = encode_bytes_elements(elements)
    assert raw[:4] == b"\x00\x00\x00\x00"
    assert raw[4:9] == b"\x01\x00\x00\x00a"
    assert raw[9:13] == struct.pack("<I", 2)
    assert decode_bytes_elements(raw) == elements
    assert decode_bytes_elements(b"") == []


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x01\x00", r"element 0 at byte 0: 2 byte\(s\) left, too few for its 4-byte length"),
        (b"\x05\x00\x00\x00abc", r"element 0 at byte 0 declares 5 bytes but only 3 remain"),
        (
            b"\x01\x00\x00\x00a\xff\xff\xff\xff",
            r"element 1 at byte 5 declares 4294967295 bytes but only 0 remain",
        ),
    ],
)
def test_malformed_bytes_content_is_refused(raw: bytes, message: str) -> None:
    with pytest.raises(BytesFormatError, match=message):
        decode_bytes_elements(raw)


def test_decode_raw_numeric_checks_the_byte_length() -> None:
    array = np.arange(8, dtype="<f4").reshape(2, 4)
    decoded = decode_raw("x", FP32, (2, 4), array.tobytes())
    np.testing.assert_array_equal(decoded, array)
    with pytest.raises(
        InvalidArgument,
        match=r"^input 'x': raw content is 28 bytes, expected 32 for FP32 \[2, 4\] "
        r"\(8 × 4 bytes\)$",
    ):
        decode_raw("x", FP32, (2, 4), array.tobytes()[:-4])


def test_decode_raw_bytes_gives_text_and_checks_count_and_utf8() -> None:
    raw = encode_bytes_elements([b"ab", "é".encode()])
    decoded = decode_raw("s", BYTES, (2,), raw)
    assert decoded.dtype == object
    assert decoded.tolist() == ["ab", "é"]
    with pytest.raises(
        InvalidArgument, match=r"input 's': BYTES content holds 2 element\(s\), expected 3"
    ):
        decode_raw("s", BYTES, (3,), raw)
    with pytest.raises(InvalidArgument, match=r"input 's': malformed BYTES content: element 0"):
        decode_raw("s", BYTES, (1,), b"\x09\x00\x00\x00x")
    with pytest.raises(InvalidArgument, match=r"input 's': BYTES element 1 is not valid UTF-8"):
        decode_raw("s", BYTES, (2,), encode_bytes_elements([b"ok", b"\xff"]))


def test_decode_raw_bool_refuses_bytes_other_than_0_and_1() -> None:
    boolean = from_name("BOOL")
    assert decode_raw("b", boolean, (3,), b"\x00\x01\x01").tolist() == [False, True, True]
    with pytest.raises(InvalidArgument, match="BOOL raw content must hold bytes 0 or 1"):
        decode_raw("b", boolean, (2,), b"\x00\x02")


def test_decode_values_checks_count_and_narrow_integer_ranges() -> None:
    assert decode_values("x", FP32, (2,), [1.5, 2.5]).dtype == np.float32
    with pytest.raises(
        InvalidArgument,
        match=r"^input 'x': 3 value\(s\) in fp32_contents, expected 4 for FP32 \[2, 2\]$",
    ):
        decode_values("x", FP32, (2, 2), [1.0, 2.0, 3.0])
    int8 = from_name("INT8")
    assert decode_values("q", int8, (2,), [-128, 127]).tolist() == [-128, 127]
    with pytest.raises(InvalidArgument, match=r"value 300 is out of range for INT8 \(-128..127\)"):
        decode_values("q", int8, (2,), [1, 300])
    uint16 = from_name("UINT16")
    with pytest.raises(InvalidArgument, match=r"value 70000 is out of range for UINT16"):
        decode_values("u", uint16, (1,), [70000])
    assert decode_values("s", BYTES, (2,), [b"a", b"b"]).tolist() == ["a", "b"]


def test_outputs_encode_to_raw_and_typed_values() -> None:
    array = np.array([[1.0, 2.0]], dtype=np.float32)
    assert to_raw(FP32, array) == array.tobytes()
    assert to_values(FP32, array) == [1.0, 2.0]
    strings = np.array(["a", "é"], dtype=object)
    assert to_raw(BYTES, strings) == encode_bytes_elements([b"a", "é".encode()])
    assert to_values(BYTES, strings) == [b"a", "é".encode()]
    # A non-contiguous view (a slice of a merged batch) still encodes row-major.
    wide = np.arange(12, dtype=np.float32).reshape(3, 4)[:, 1:3]
    assert to_raw(FP32, wide) == np.ascontiguousarray(wide).tobytes()
