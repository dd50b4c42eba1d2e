"""Open Inference Protocol datatypes and their ONNX and numpy counterparts.

Every ONNX tensor element type that has a v2 datatype is served; BF16 (no numpy type
without extra packages) and the ONNX types without a v2 name (complex, float8, int4, ...)
are not. ONNX ``string`` tensors are v2 ``BYTES``: their elements travel as bytes on the
wire and are UTF-8 text inside the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import numpy as np


@dataclass(frozen=True, slots=True)
class DataType:
    """One v2 datatype: its name, numpy dtype, ONNX element type and typed-contents field."""

    name: str
    """v2 name, e.g. ``FP32``."""
    dtype: np.dtype[np.generic]
    """numpy dtype of decoded tensors (little-endian; ``object`` holding str for BYTES)."""
    onnx: str
    """ONNX Runtime element type, as in ``tensor(<onnx>)``."""
    contents_field: str | None
    """Field of ``InferTensorContents`` that carries this type; None when only raw works."""
    # Derived once (read for every tensor of every request).
    is_bytes: bool = field(init=False)
    """True for BYTES (length-prefixed elements instead of fixed-size ones)."""
    is_bool: bool = field(init=False)
    itemsize: int = field(init=False)
    """Bytes per element in raw contents (0 for BYTES, whose elements vary)."""

    def __post_init__(self) -> None:
        is_bytes = self.name == "BYTES"
        object.__setattr__(self, "is_bytes", is_bytes)
        object.__setattr__(self, "is_bool", self.name == "BOOL")
        object.__setattr__(self, "itemsize", 0 if is_bytes else int(self.dtype.itemsize))

    def __str__(self) -> str:
        return self.name


def _dt(name: str, dtype: str, onnx: str, field: str | None) -> DataType:
    return DataType(name, np.dtype(dtype), onnx, field)


#: Every served datatype, in the order of the v2 specification's table.
DATATYPES: Final[tuple[DataType, ...]] = (
    _dt("BOOL", "?", "bool", "bool_contents"),
    _dt("UINT8", "u1", "uint8", "uint_contents"),
    _dt("UINT16", "<u2", "uint16", "uint_contents"),
    _dt("UINT32", "<u4", "uint32", "uint_contents"),
    _dt("UINT64", "<u8", "uint64", "uint64_contents"),
    _dt("INT8", "i1", "int8", "int_contents"),
    _dt("INT16", "<i2", "int16", "int_contents"),
    _dt("INT32", "<i4", "int32", "int_contents"),
    _dt("INT64", "<i8", "int64", "int64_contents"),
    _dt("FP16", "<f2", "float16", None),
    _dt("FP32", "<f4", "float", "fp32_contents"),
    _dt("FP64", "<f8", "double", "fp64_contents"),
    _dt("BYTES", "O", "string", "bytes_contents"),
)

BY_NAME: Final[dict[str, DataType]] = {d.name: d for d in DATATYPES}
BY_ONNX: Final[dict[str, DataType]] = {d.onnx: d for d in DATATYPES}


def from_name(name: str) -> DataType | None:
    """The datatype called ``name`` (v2 spelling, e.g. ``FP32``), or None."""
    return BY_NAME.get(name)


def from_onnx_type(onnx_type: str) -> DataType | None:
    """The datatype of an ONNX Runtime type string such as ``tensor(float)``; None for
    non-tensor types (sequences, maps) and element types without a v2 datatype."""
    if not (onnx_type.startswith("tensor(") and onnx_type.endswith(")")):
        return None
    return BY_ONNX.get(onnx_type[len("tensor(") : -1])
