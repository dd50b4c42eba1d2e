"""Decoding the outputs of a v2 ModelInferResponse, only to compare a shadow variant's
answer with production's (the routed path never decodes tensors)."""

from __future__ import annotations

import math
import struct
from typing import Final

import numpy as np

from mlbus.inference.v2 import grpc_service_pb2 as pb

_DTYPES: Final[dict[str, np.dtype[np.generic]]] = {
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
}
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

Output = np.ndarray | list[bytes]


def _split_bytes(raw: bytes) -> list[bytes]:
    out: list[bytes] = []
    pos = 0
    while pos + 4 <= len(raw):
        (size,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        out.append(raw[pos : pos + size])
        pos += size
    return out


def decode_outputs(response: pb.ModelInferResponse) -> dict[str, Output]:
    """Output name → numpy array (BYTES: list of elements)."""
    result: dict[str, Output] = {}
    raw = response.raw_output_contents
    for index, tensor in enumerate(response.outputs):
        shape = tuple(int(d) for d in tensor.shape)
        if index < len(raw):
            data = raw[index]
            if tensor.datatype == "BYTES":
                result[tensor.name] = _split_bytes(data)
                continue
            dtype = _DTYPES.get(tensor.datatype)
            if dtype is None:
                continue
            result[tensor.name] = np.frombuffer(data, dtype=dtype).reshape(shape)
            continue
        field = _CONTENTS.get(tensor.datatype)
        if field is None:
            continue
        values = list(getattr(tensor.contents, field))
        if tensor.datatype == "BYTES":
            result[tensor.name] = [bytes(v) for v in values]
        else:
            result[tensor.name] = np.asarray(values, dtype=_DTYPES[tensor.datatype]).reshape(shape)
    return result


def max_abs_diff(production: dict[str, Output], shadow: dict[str, Output]) -> float:
    """Largest absolute difference over the outputs both have (numeric), 1.0 for a
    differing BYTES output, infinity when an output is missing or its shape differs."""
    worst = 0.0
    for name, prod in production.items():
        other = shadow.get(name)
        if other is None:
            return math.inf
        if isinstance(prod, list) or isinstance(other, list):
            if prod != other:
                worst = max(worst, 1.0)
            continue
        if prod.shape != other.shape:
            return math.inf
        if prod.size == 0:
            continue
        delta = np.abs(prod.astype(np.float64) - other.astype(np.float64))
        worst = max(worst, float(np.nanmax(delta)) if not np.isnan(delta).all() else 0.0)
    return worst
