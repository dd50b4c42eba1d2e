"""Tensor contents ↔ numpy arrays: raw bytes, typed values and the BYTES codec.

Raw contents are the flattened row-major elements, little-endian, without padding. A BYTES
tensor's raw form is each element as a 4-byte little-endian length followed by that many
bytes. Decoded BYTES tensors are numpy ``object`` arrays of ``str`` (ONNX string tensors
hold UTF-8 text), so an element that is not valid UTF-8 is refused here.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import numpy as np

from mlbus.core.errors import InvalidArgument
from mlbus.inference.domain.datatypes import DataType
from mlbus.inference.domain.signature import element_count, format_shape

_LENGTH = struct.Struct("<I")

#: numpy arrays of any dtype (the worker's tensors). numpy.typing only for the type checker:
#: importing it costs tens of milliseconds of the worker's start-up.
if TYPE_CHECKING:
    import numpy.typing as npt

    Array: TypeAlias = npt.NDArray[Any]
else:
    Array = np.ndarray


class BytesFormatError(ValueError):
    """Raw BYTES content is not a well-formed sequence of length-prefixed elements."""


def encode_bytes_elements(elements: Iterable[bytes]) -> bytes:
    """The v2 raw form of BYTES elements: ``<u32 length><bytes>`` each, concatenated."""
    parts: list[bytes] = []
    for element in elements:
        parts.append(_LENGTH.pack(len(element)))
        parts.append(element)
    return b"".join(parts)


def decode_bytes_elements(raw: bytes) -> list[bytes]:
    """Split raw BYTES content into its elements; BytesFormatError when malformed."""
    view = memoryview(raw)
    size = len(view)
    elements: list[bytes] = []
    offset = 0
    while offset < size:
        if size - offset < 4:
            raise BytesFormatError(
                f"element {len(elements)} at byte {offset}: {size - offset} byte(s) left, "
                "too few for its 4-byte length prefix"
            )
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if length > size - offset:
            raise BytesFormatError(
                f"element {len(elements)} at byte {offset - 4} declares {length} bytes "
                f"but only {size - offset} remain"
            )
        elements.append(bytes(view[offset : offset + length]))
        offset += length
    return elements


def _text_array(name: str, elements: Sequence[bytes], shape: Sequence[int]) -> Array:
    texts: list[str] = []
    for index, element in enumerate(elements):
        try:
            texts.append(element.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise InvalidArgument(
                f"input {name!r}: BYTES element {index} is not valid UTF-8 ({exc.reason} at "
                f"byte {exc.start}); the model's string tensors hold text",
                details={"input": name},
            ) from None
    array = np.empty(len(texts), dtype=object)
    array[:] = texts
    return array.reshape(tuple(shape))


def decode_raw(name: str, datatype: DataType, shape: Sequence[int], raw: bytes) -> Array:
    """Raw content of input ``name`` as an array of ``shape``; InvalidArgument when its
    length (or, for BYTES, its element framing and count) does not fit."""
    count = element_count(shape)
    if datatype.is_bytes:
        try:
            elements = decode_bytes_elements(raw)
        except BytesFormatError as exc:
            raise InvalidArgument(
                f"input {name!r}: malformed BYTES content: {exc}", details={"input": name}
            ) from None
        if len(elements) != count:
            raise InvalidArgument(
                f"input {name!r}: BYTES content holds {len(elements)} element(s), "
                f"expected {count} for {datatype.name} {format_shape(shape)}",
                details={"input": name},
            )
        return _text_array(name, elements, shape)
    expected = count * datatype.itemsize
    if len(raw) != expected:
        raise InvalidArgument(
            f"input {name!r}: raw content is {len(raw)} bytes, expected {expected} for "
            f"{datatype.name} {format_shape(shape)} ({count} × {datatype.itemsize} bytes)",
            details={"input": name},
        )
    array = np.frombuffer(raw, dtype=datatype.dtype).reshape(shape)
    if datatype.is_bool and count and int(np.frombuffer(raw, dtype=np.uint8).max()) > 1:
        raise InvalidArgument(
            f"input {name!r}: BOOL raw content must hold bytes 0 or 1", details={"input": name}
        )
    return array


def decode_values(
    name: str, datatype: DataType, shape: Sequence[int], values: Sequence[Any]
) -> Array:
    """Typed contents (the datatype's ``*_contents`` values) of input ``name`` as an
    array of ``shape``; InvalidArgument when the count or a value's range does not fit."""
    count = element_count(shape)
    if len(values) != count:
        raise InvalidArgument(
            f"input {name!r}: {len(values)} value(s) in {datatype.contents_field}, expected "
            f"{count} for {datatype.name} {format_shape(shape)}",
            details={"input": name},
        )
    if datatype.is_bytes:
        return _text_array(name, [bytes(v) for v in values], shape)
    if datatype.dtype.kind in "iu" and datatype.itemsize < 4 and count:
        # int_contents / uint_contents are 32-bit: 8- and 16-bit types must be range-checked.
        wide = np.asarray(values, dtype=np.int64)
        info = np.iinfo(cast("np.dtype[np.integer[Any]]", datatype.dtype))
        low, high = int(wide.min()), int(wide.max())
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise InvalidArgument(
                f"input {name!r}: value {bad} is out of range for {datatype.name} "
                f"({info.min}..{info.max})",
                details={"input": name},
            )
        return wide.astype(datatype.dtype).reshape(tuple(shape))
    return np.asarray(values, dtype=datatype.dtype).reshape(tuple(shape))


def to_raw(datatype: DataType, array: Array) -> bytes:
    """Raw (wire) content of an output array."""
    if datatype.is_bytes:
        return encode_bytes_elements(_as_bytes(v) for v in array.reshape(-1))
    return np.ascontiguousarray(array, dtype=datatype.dtype).tobytes()


def to_values(datatype: DataType, array: Array) -> list[Any]:
    """Typed-contents values of an output array (not for FP16, which only travels raw)."""
    flat = array.reshape(-1)
    if datatype.is_bytes:
        return [_as_bytes(v) for v in flat]
    return list(flat.tolist())


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return str(value).encode("utf-8")
