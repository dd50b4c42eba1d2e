"""numpy arrays ↔ Open Inference Protocol v2 tensors, for clients of the protocol (the SDK's
predictors, the router's shadow comparison).

Requests always carry ``raw_input_contents`` (little-endian bytes; BYTES elements as a
4-byte little-endian length followed by the bytes), which every v2 server accepts and is
the cheapest to build. Responses are decoded from ``raw_output_contents`` or from typed
``contents``, whichever the server used. BYTES tensors decode to numpy object arrays of
``bytes``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from typing import Any, Final

import numpy as np

from mlbus.inference.v2 import grpc_service_pb2 as pb

#: v2 datatype → numpy dtype (BYTES is an object array of bytes).
NUMPY_DTYPES: Final[Mapping[str, np.dtype[Any]]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
_BY_DTYPE: Final = {dtype: name for name, dtype in NUMPY_DTYPES.items() if name != "BYTES"}
_CONTENTS: Final = {
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
_LENGTH = struct.Struct("<I")


class TensorError(ValueError):
    """An array cannot become, or bytes cannot be read as, the tensor asked for."""


def datatype_of(array: np.ndarray) -> str:
    """The v2 datatype of ``array`` (strings and bytes → BYTES)."""
    if array.dtype.kind in "OSU":
        return "BYTES"
    name = _BY_DTYPE.get(
        array.dtype.newbyteorder("=") if array.dtype.byteorder == ">" else array.dtype
    )
    if name is None:
        raise TensorError(f"numpy dtype {array.dtype} has no Open Inference Protocol datatype")
    return name


def encode_bytes(elements: Iterable[object]) -> bytes:
    """BYTES raw content: each element (bytes, or str as UTF-8) length-prefixed."""
    parts: list[bytes] = []
    for element in elements:
        if isinstance(element, str):
            data = element.encode()
        elif isinstance(element, (bytes, bytearray, memoryview)):
            data = bytes(element)
        else:
            data = str(element).encode()
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def decode_bytes(raw: bytes) -> list[bytes]:
    """The elements of BYTES raw content."""
    out: list[bytes] = []
    pos = 0
    size = len(raw)
    while pos < size:
        if pos + 4 > size:
            raise TensorError(f"BYTES content: truncated length prefix at byte {pos}")
        (length,) = _LENGTH.unpack_from(raw, pos)
        pos += 4
        if pos + length > size:
            raise TensorError(
                f"BYTES content: element at byte {pos - 4} declares {length} bytes "
                f"but only {size - pos} remain"
            )
        out.append(raw[pos : pos + length])
        pos += length
    return out


def to_raw(array: np.ndarray, datatype: str) -> bytes:
    """Raw content of ``array`` as ``datatype`` (the caller has cast it)."""
    if datatype == "BYTES":
        return encode_bytes(array.ravel().tolist())
    dtype = NUMPY_DTYPES[datatype]
    return np.ascontiguousarray(array, dtype=dtype.newbyteorder("<")).tobytes()


def add_input(
    request: pb.ModelInferRequest, name: str, array: np.ndarray, datatype: str | None = None
) -> None:
    """Append ``array`` as input ``name`` (raw content) to ``request``."""
    datatype = datatype or datatype_of(array)
    if datatype not in NUMPY_DTYPES:
        raise TensorError(f"input {name!r}: unknown datatype {datatype!r}")
    request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
    request.raw_input_contents.append(to_raw(array, datatype))


def decode_output(tensor: pb.ModelInferResponse.InferOutputTensor, raw: bytes | None) -> np.ndarray:
    """One output tensor as a numpy array, from its raw content or its typed contents."""
    shape = tuple(int(d) for d in tensor.shape)
    datatype = tensor.datatype
    if datatype not in NUMPY_DTYPES:
        raise TensorError(f"output {tensor.name!r}: unknown datatype {datatype!r}")
    if raw is not None:
        if datatype == "BYTES":
            values: Any = decode_bytes(raw)
        else:
            dtype = NUMPY_DTYPES[datatype].newbyteorder("<")
            if len(raw) % dtype.itemsize:
                raise TensorError(
                    f"output {tensor.name!r}: {len(raw)} bytes is not a whole number of "
                    f"{datatype} elements"
                )
            return (
                np.frombuffer(raw, dtype=dtype)
                .astype(NUMPY_DTYPES[datatype], copy=False)
                .reshape(shape)
            )
    else:
        field = _CONTENTS.get(datatype)
        if field is None:
            raise TensorError(f"output {tensor.name!r}: {datatype} needs raw content")
        values = list(getattr(tensor.contents, field))
    if datatype == "BYTES":
        array = np.empty(len(values), dtype=object)
        array[:] = [bytes(v) for v in values]
        return array.reshape(shape)
    return np.asarray(values, dtype=NUMPY_DTYPES[datatype]).reshape(shape)


def decode_outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """Output name → numpy array, in the response's order."""
    raw = response.raw_output_contents
    return {
        tensor.name: decode_output(tensor, raw[index] if index < len(raw) else None)
        for index, tensor in enumerate(response.outputs)
    }
