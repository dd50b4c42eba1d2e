"""v2 protobuf messages ↔ the worker's domain (numpy arrays checked against the signature).

Requests are fully checked here, before anything is queued: input names (unknown,
duplicate, missing), datatypes and shapes, raw content lengths and BYTES framing, typed
content fields and counts, requested output names. Responses carry the outputs in raw form
when the request used raw inputs (as Triton does), when the request asks for it with the
``binary_data_output`` parameter (or ``binary_data`` on a requested output), or when an
output is FP16 (which has no typed representation); otherwise in typed ``contents``.
"""

from __future__ import annotations

import itertools
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from mlbus.core.errors import InvalidArgument
from mlbus.inference.domain.signature import ModelSignature, check_input_header
from mlbus.inference.domain.tensors import Array, decode_raw, decode_values, to_raw, to_values
from mlbus.inference.v2 import grpc_service_pb2 as pb

#: Request parameter (Triton's name) asking for raw outputs even with typed inputs.
BINARY_OUTPUT_PARAMETER: Final = "binary_data_output"
#: Requested-output parameter (Triton's name) asking for that output in raw form.
BINARY_OUTPUT_TENSOR_PARAMETER: Final = "binary_data"
#: Request parameter that carries the inference id when the request ``id`` is empty (the
#: router sets it); the response carries it back under the same name.
INFERENCE_ID_PARAMETER: Final = "inference_id"
#: Response parameters naming what served the request.
VARIANT_PARAMETER: Final = "variant"
MODEL_VERSION_PARAMETER: Final = "model_version"

# Generated inference ids: a random per-process prefix and a counter (cheaper than a uuid4
# per request, and as unique: 64 random bits tell processes apart).
_ID_PREFIX: Final = uuid.uuid4().hex[:16]
_ID_COUNTER = itertools.count(1)


@dataclass(frozen=True, slots=True)
class DecodedRequest:
    """A checked ModelInferRequest: inputs as arrays and what to send back."""

    inputs: dict[str, Array]
    outputs: tuple[str, ...]
    """Output names to return, in the order to return them."""
    raw_output: bool
    inference_id: str


def _flag(parameters: Mapping[str, pb.InferParameter], name: str) -> bool:
    parameter = parameters.get(name)
    return (
        parameter is not None
        and parameter.WhichOneof("parameter_choice") == "bool_param"
        and (parameter.bool_param)
    )


def _inference_id(request: pb.ModelInferRequest) -> str:
    if request.id:
        return request.id
    parameter = request.parameters.get(INFERENCE_ID_PARAMETER)
    if (
        parameter is not None
        and parameter.WhichOneof("parameter_choice") == "string_param"
        and parameter.string_param
    ):
        return parameter.string_param
    return f"{_ID_PREFIX}-{next(_ID_COUNTER):08x}"


def _typed_values(
    name: str, tensor: pb.ModelInferRequest.InferInputTensor, field: str | None, datatype: str
) -> Any:
    present = [descriptor.name for descriptor, _ in tensor.contents.ListFields()]
    if field is None:
        raise InvalidArgument(
            f"input {name!r}: {datatype} data can only be sent in raw_input_contents",
            details={"input": name},
        )
    wrong = [p for p in present if p != field]
    if wrong:
        raise InvalidArgument(
            f"input {name!r}: {datatype} data belongs in contents.{field}, "
            f"got contents.{', contents.'.join(wrong)}",
            details={"input": name},
        )
    return getattr(tensor.contents, field)


def _decode_plain_raw(
    request: pb.ModelInferRequest, signature: ModelSignature
) -> DecodedRequest | None:
    """The common request decoded in one pass: every model input once, in raw form, of a
    fixed-size datatype, no requested outputs, no parameters. None for anything else, and
    for anything wrong, which :func:`decode_request` then reports precisely."""
    raw = request.raw_input_contents
    tensors = request.inputs
    if (
        not raw
        or len(raw) != len(tensors)
        or len(tensors) != len(signature.inputs)
        or request.outputs
        or request.parameters
    ):
        return None
    inputs: dict[str, Array] = {}
    for tensor, content in zip(tensors, raw, strict=True):
        spec = signature.spec_of(tensor.name)
        if spec is None:
            return None
        datatype = spec.datatype
        shape = tuple(tensor.shape)
        if (
            datatype.name != tensor.datatype
            or datatype.is_bytes
            or datatype.is_bool
            or not spec.accepts(shape)
            or len(content) != math.prod(shape) * datatype.itemsize
            or tensor.HasField("contents")
        ):
            return None
        inputs[tensor.name] = np.frombuffer(content, dtype=datatype.dtype).reshape(shape)
    if len(inputs) != len(tensors):  # a name given twice
        return None
    return DecodedRequest(inputs, signature.output_names, True, _inference_id(request))


def decode_request(request: pb.ModelInferRequest, signature: ModelSignature) -> DecodedRequest:
    """Check ``request`` against ``signature`` and decode its inputs; InvalidArgument
    naming the tensor and the expected vs given form on the first problem found."""
    plain = _decode_plain_raw(request, signature)
    if plain is not None:
        return plain
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
            "expected one entry per input, in the order of inputs"
        )
    inputs: dict[str, Array] = {}
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        spec = signature.input(name)
        if name in inputs:
            raise InvalidArgument(f"input {name!r} is given twice", details={"input": name})
        shape = tuple(tensor.shape)
        datatype = check_input_header(spec, tensor.datatype, shape)
        if raw:
            if tensor.HasField("contents") and tensor.contents.ListFields():
                raise InvalidArgument(
                    f"input {name!r}: has both contents and raw_input_contents; "
                    "a request uses one or the other",
                    details={"input": name},
                )
            inputs[name] = decode_raw(name, datatype, shape, raw[index])
        else:
            values = _typed_values(name, tensor, datatype.contents_field, datatype.name)
            inputs[name] = decode_values(name, datatype, shape, values)
    signature.check_all_inputs(inputs)

    raw_output = bool(raw) or _flag(request.parameters, BINARY_OUTPUT_PARAMETER)
    if request.outputs:
        names: list[str] = []
        for requested in request.outputs:
            signature.output(requested.name)
            if requested.name in names:
                raise InvalidArgument(
                    f"output {requested.name!r} is requested twice",
                    details={"output": requested.name},
                )
            names.append(requested.name)
            raw_output = raw_output or _flag(requested.parameters, BINARY_OUTPUT_TENSOR_PARAMETER)
        outputs = tuple(names)
    else:
        outputs = signature.output_names
    if not raw_output:
        raw_output = any(signature.output(n).datatype.contents_field is None for n in outputs)
    return DecodedRequest(inputs, outputs, raw_output, _inference_id(request))


def encode_response(
    request: pb.ModelInferRequest,
    decoded: DecodedRequest,
    outputs: Mapping[str, Array],
    signature: ModelSignature,
    *,
    model_version: str,
    variant: str,
) -> pb.ModelInferResponse:
    """The ModelInferResponse for ``outputs`` (in the order of ``decoded.outputs``)."""
    response = pb.ModelInferResponse(
        model_name=request.model_name, model_version=model_version, id=request.id
    )
    response.parameters[INFERENCE_ID_PARAMETER].string_param = decoded.inference_id
    response.parameters[MODEL_VERSION_PARAMETER].string_param = model_version
    if variant:
        response.parameters[VARIANT_PARAMETER].string_param = variant
    for name in decoded.outputs:
        array = outputs[name]
        datatype = signature.output(name).datatype
        tensor = response.outputs.add(name=name, datatype=datatype.name, shape=array.shape)
        if decoded.raw_output:
            response.raw_output_contents.append(to_raw(datatype, array))
        else:
            assert datatype.contents_field is not None  # raw_output is forced otherwise
            getattr(tensor.contents, datatype.contents_field).extend(to_values(datatype, array))
    return response
