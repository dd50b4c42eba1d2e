"""ONNX validation and signature extraction in bounded memory.

``onnx.load`` would hold the whole model in memory, and a model is mostly its weights
(initializers). Instead, the model file is read field by field (protobuf wire format) and
a *light* copy is written beside it in which every large initializer's ``raw_data`` is
replaced by an external-data reference to its byte range in the original file. The light
copy holds the graph, types and small tensors only; ``onnx.checker`` validates it with the
original file as the external data (the checker verifies that file, not its bytes), and
the signature comes from its inputs, outputs and opsets.

Memory therefore grows with the size of the graph, not of the weights. Weights stored in
typed fields (``float_data``...) or in Constant nodes stay inline and are read; converters
write large tensors as ``raw_data``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import BinaryIO, Final

import onnx
from google.protobuf.message import DecodeError

from mlbus.core.errors import InvalidArgument
from mlbus.registry.domain.models import Signature, TensorSpec
from mlbus.registry.ports import ArtifactInspector

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
# ModelProto.graph, GraphProto.initializer, TensorProto.raw_data / external_data /
# data_location, StringStringEntryProto.key / value.
_MODEL_GRAPH, _GRAPH_INITIALIZER = 7, 5
_TENSOR_NAME, _TENSOR_RAW, _TENSOR_EXTERNAL, _TENSOR_LOCATION = 8, 9, 13, 14
_EXTERNAL = 1

#: ONNX element type → Open Inference Protocol datatype.
DATATYPES: Final = {
    "BOOL": "BOOL",
    "UINT8": "UINT8",
    "UINT16": "UINT16",
    "UINT32": "UINT32",
    "UINT64": "UINT64",
    "INT8": "INT8",
    "INT16": "INT16",
    "INT32": "INT32",
    "INT64": "INT64",
    "FLOAT16": "FP16",
    "BFLOAT16": "BF16",
    "FLOAT": "FP32",
    "DOUBLE": "FP64",
    "STRING": "BYTES",
}
_MAX_MESSAGE: Final = 1500


class CorruptModel(ValueError):
    """The file is not a well-formed protobuf ModelProto."""


class ExternalData(ValueError):
    """An initializer keeps its data in another file: the model is not self-contained."""


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _tag(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _len_field(field: int, payload: bytes) -> bytes:
    return _tag(field, _LEN) + _varint(len(payload)) + payload


class _Reader:
    """Reads protobuf wire format from a file, keeping its position."""

    def __init__(self, handle: BinaryIO, size: int) -> None:
        self._handle = handle
        self.size = size
        self.pos = 0

    def _corrupt(self, what: str) -> CorruptModel:
        return CorruptModel(f"{what} at byte {self.pos}")

    def read(self, count: int) -> bytes:
        data = self._handle.read(count)
        if len(data) != count:
            raise self._corrupt(f"unexpected end of file reading {count} bytes")
        self.pos += count
        return data

    def seek(self, pos: int) -> None:
        self._handle.seek(pos)
        self.pos = pos

    def varint(self) -> int:
        result = shift = 0
        for _ in range(10):
            byte = self._handle.read(1)
            if not byte:
                raise self._corrupt("unexpected end of file in a varint")
            self.pos += 1
            result |= (byte[0] & 0x7F) << shift
            if not byte[0] & 0x80:
                return result
            shift += 7
        raise self._corrupt("varint longer than 10 bytes")

    def key(self, end: int) -> tuple[int, int]:
        key = self.varint()
        field, wire_type = key >> 3, key & 7
        if field == 0 or wire_type not in (_VARINT, _I64, _LEN, _I32):
            raise self._corrupt(f"invalid field key {key}")
        if self.pos > end:
            raise self._corrupt("field beyond the end of its message")
        return field, wire_type

    def length(self, end: int) -> int:
        length = self.varint()
        if self.pos + length > end:
            raise self._corrupt(f"length {length} beyond the end of its message")
        return length

    def value(self, wire_type: int, end: int) -> bytes:
        """The encoded value (after its key) of a field, as bytes to copy."""
        if wire_type == _VARINT:
            return _varint(self.varint())
        if wire_type == _I64:
            return self.read(8)
        if wire_type == _I32:
            return self.read(4)
        length = self.length(end)
        return _varint(length) + self.read(length)


def _light_tensor(reader: _Reader, end: int, location: str, threshold: int) -> bytes:
    out = bytearray()
    external_entries = bytearray()
    raw: tuple[int, int] | None = None
    already_external = False
    name = b""
    while reader.pos < end:
        field, wire_type = reader.key(end)
        if field == _TENSOR_NAME and wire_type == _LEN:
            name = reader.read(reader.length(end))
            out += _len_field(field, name)
        elif field == _TENSOR_RAW and wire_type == _LEN:
            length = reader.length(end)
            raw = (reader.pos, length)
            reader.seek(reader.pos + length)
        elif field == _TENSOR_EXTERNAL and wire_type == _LEN:
            external_entries += _tag(field, wire_type) + reader.value(wire_type, end)
        elif field == _TENSOR_LOCATION and wire_type == _VARINT:
            value = reader.varint()
            already_external = value == _EXTERNAL
            out += _tag(field, wire_type) + _varint(value)
        else:
            out += _tag(field, wire_type) + reader.value(wire_type, end)
    if reader.pos != end:
        raise CorruptModel(f"tensor overruns its message at byte {reader.pos}")
    if already_external:
        raise ExternalData(name.decode("utf-8", "replace"))
    if raw is None or raw[1] < threshold:
        out += external_entries
        if raw is not None:
            reader.seek(raw[0])
            out += _len_field(_TENSOR_RAW, reader.read(raw[1]))
            reader.seek(end)
        return bytes(out)
    out += _tag(_TENSOR_LOCATION, _VARINT) + _varint(_EXTERNAL)
    for key, text in (("location", location), ("offset", str(raw[0])), ("length", str(raw[1]))):
        entry = _len_field(1, key.encode()) + _len_field(2, text.encode())
        out += _len_field(_TENSOR_EXTERNAL, entry)
    return bytes(out)


def _light_graph(reader: _Reader, end: int, location: str, threshold: int) -> bytes:
    out = bytearray()
    while reader.pos < end:
        field, wire_type = reader.key(end)
        if field == _GRAPH_INITIALIZER and wire_type == _LEN:
            length = reader.length(end)
            tensor = _light_tensor(reader, reader.pos + length, location, threshold)
            out += _len_field(field, tensor)
        else:
            out += _tag(field, wire_type) + reader.value(wire_type, end)
    if reader.pos != end:
        raise CorruptModel(f"graph overruns its message at byte {reader.pos}")
    return bytes(out)


def build_light_model(path: Path, *, location: str, threshold: int) -> bytes:
    """The serialized ModelProto of ``path`` with every initializer of at least
    ``threshold`` bytes of ``raw_data`` moved to external data (``location``, the
    original file's name relative to where the light model is written)."""
    with open(path, "rb", buffering=64 * 1024) as handle:
        size = os.fstat(handle.fileno()).st_size
        reader = _Reader(handle, size)
        out = bytearray()
        while reader.pos < size:
            field, wire_type = reader.key(size)
            if field == _MODEL_GRAPH and wire_type == _LEN:
                length = reader.length(size)
                graph = _light_graph(reader, reader.pos + length, location, threshold)
                out += _len_field(field, graph)
            else:
                out += _tag(field, wire_type) + reader.value(wire_type, size)
        return bytes(out)


def _shape(tensor_type: onnx.TypeProto.Tensor) -> tuple[int, ...]:
    if not tensor_type.HasField("shape"):
        return ()
    return tuple(
        dim.dim_value if dim.HasField("dim_value") else -1 for dim in tensor_type.shape.dim
    )


def _elem_name(elem: int) -> str:
    return onnx.TensorProto.DataType.Name(elem)


def describe_type(type_proto: onnx.TypeProto) -> str:
    """``tensor(FLOAT)``, ``sequence<map<INT64, tensor(FLOAT)>>``, ..."""
    kind = type_proto.WhichOneof("value")
    if kind == "tensor_type":
        return f"tensor({_elem_name(type_proto.tensor_type.elem_type)})"
    if kind == "sparse_tensor_type":
        return f"sparse_tensor({_elem_name(type_proto.sparse_tensor_type.elem_type)})"
    if kind == "sequence_type":
        return f"sequence<{describe_type(type_proto.sequence_type.elem_type)}>"
    if kind == "optional_type":
        return f"optional<{describe_type(type_proto.optional_type.elem_type)}>"
    if kind == "map_type":
        key = _elem_name(type_proto.map_type.key_type)
        return f"map<{key}, {describe_type(type_proto.map_type.value_type)}>"
    return kind or "unknown"


def _tensor_spec(value: onnx.ValueInfoProto, what: str) -> TensorSpec:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        described = describe_type(value.type)
        hint = ""
        if kind in ("sequence_type", "map_type"):
            hint = " (skl2onnx classifiers: convert with options {'zipmap': False})"
        raise InvalidArgument(
            f"artifact: {what} '{value.name}' has type {described}, which is not a tensor; "
            f"the Open Inference Protocol carries tensors only{hint}",
            details={"field": "artifact", what: value.name},
        )
    name = _elem_name(value.type.tensor_type.elem_type)
    datatype = DATATYPES.get(name)
    if datatype is None:
        raise InvalidArgument(
            f"artifact: {what} '{value.name}' has element type {name}, which has no Open "
            f"Inference Protocol datatype (expected one of {', '.join(sorted(DATATYPES))})",
            details={"field": "artifact", what: value.name},
        )
    return TensorSpec(name=value.name, datatype=datatype, shape=_shape(value.type.tensor_type))


def signature_of(model: onnx.ModelProto) -> Signature:
    """Inputs (initializers excluded), outputs and the default-domain opset of ``model``."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer} | {
        s.values.name for s in graph.sparse_initializer
    }
    return Signature(
        inputs=tuple(_tensor_spec(v, "input") for v in graph.input if v.name not in initializers),
        outputs=tuple(_tensor_spec(v, "output") for v in graph.output),
        opset=next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0),
    )


def _invalid(reason: str) -> InvalidArgument:
    if len(reason) > _MAX_MESSAGE:
        reason = reason[:_MAX_MESSAGE] + " ..."
    return InvalidArgument(
        f"artifact: not a valid ONNX model: {reason}", details={"field": "artifact"}
    )


class OnnxInspector(ArtifactInspector):
    """Validates ONNX files with ``onnx.checker`` and derives their signatures, holding at
    most ``external_threshold`` bytes of any one initializer in memory."""

    def __init__(self, *, external_threshold: int = 64 * 1024) -> None:
        self.external_threshold = external_threshold

    def inspect(self, path: Path) -> Signature:
        """Blocking. InvalidArgument naming what is wrong when ``path`` is not a valid model."""
        try:
            light = build_light_model(path, location=path.name, threshold=self.external_threshold)
            model = onnx.ModelProto.FromString(light)
        except (CorruptModel, DecodeError) as exc:
            raise _invalid(f"the file is not a protobuf ModelProto ({exc})") from None
        except ExternalData as exc:
            raise _invalid(
                f"initializer '{exc}' keeps its data in a separate file; upload a single-file "
                "model (onnx.save_model(model, path, save_as_external_data=False))"
            ) from None
        light_path = path.with_name(f"{path.name}.light")
        try:
            light_path.write_bytes(light)
            onnx.checker.check_model(str(light_path))
        except onnx.checker.ValidationError as exc:
            raise _invalid(str(exc).strip()) from None
        except (UnicodeDecodeError, ValueError) as exc:
            # Corrupt bytes the protobuf parser accepted can still fail inside the checker
            # (e.g. a name that is not UTF-8): the file is bad, not the registry.
            raise _invalid(f"{type(exc).__name__}: {exc}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                light_path.unlink()
        try:
            return signature_of(model)
        except ValueError as exc:  # e.g. an element type this onnx version does not know
            raise _invalid(str(exc)) from None
