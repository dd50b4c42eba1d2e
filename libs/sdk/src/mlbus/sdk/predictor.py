"""Calling deployed endpoints in real time: :class:`Predictor` sends numpy arrays or pandas
frames through the router (Open Inference Protocol v2 gRPC) and returns numpy arrays.

    from mlbus.sdk import Predictor

    with Predictor("churn") as churn:                 # router: $MLBUS_ROUTER or 127.0.0.1:8001
        result = churn.predict(features)              # ndarray [n, 30], DataFrame, or {name: array}
        result["probabilities"], result.variant, result.model_version

Inputs are matched to the model's signature (read once with ModelMetadata): a single array
or frame goes to a model's only input; a mapping names its inputs; a frame whose columns are
the model's input names feeds one input per column. Numbers are cast to the input's
datatype (e.g. float64 → FP32), strings and bytes go to BYTES inputs, and a 1-D array for a
``[-1, n]`` input is one row. Anything else is refused before a request is sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from mlbus.core.rpc.channel import channel_options
from mlbus.core.settings import GrpcSettings
from mlbus.core.tensors import NUMPY_DTYPES, TensorError, add_input, decode_outputs
from mlbus.inference.v2 import grpc_service_pb2 as pb
from mlbus.inference.v2 import grpc_service_pb2_grpc as pb_grpc
from mlbus.sdk.defaults import default_router
from mlbus.sdk.errors import InvalidArgument, MlbusError, from_rpc_error

__all__ = ["ModelInfo", "Prediction", "Predictor", "TensorInfo"]

TARGET_VARIANT_HEADER = "mlbus-target-variant"


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One input or output of a served model."""

    name: str
    datatype: str
    #: -1 for an open dimension.
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What ModelMetadata says about an endpoint."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]

    def input(self, name: str) -> TensorInfo:
        """The input called ``name``; InvalidArgument naming the inputs otherwise."""
        for tensor in self.inputs:
            if tensor.name == name:
                return tensor
        raise InvalidArgument(
            f"input {name!r}: endpoint {self.name!r} has no such input; "
            f"expected one of {', '.join(t.name for t in self.inputs)}"
        )


class Prediction(dict[str, np.ndarray]):
    """Output name → numpy array, plus who answered."""

    def __init__(
        self,
        outputs: Mapping[str, np.ndarray],
        *,
        model_name: str,
        variant: str,
        model_version: str,
        inference_id: str,
    ) -> None:
        super().__init__(outputs)
        self.model_name = model_name
        self.variant = variant
        self.model_version = model_version
        self.inference_id = inference_id

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {v.dtype}{list(v.shape)}" for k, v in self.items())
        return (
            f"Prediction({shapes}; variant={self.variant!r}, "
            f"model_version={self.model_version!r}, inference_id={self.inference_id!r})"
        )


def _is_frame(data: object) -> bool:
    return hasattr(data, "columns") and hasattr(data, "to_numpy")


def _as_input(value: Any, spec: TensorInfo) -> np.ndarray:
    """``value`` as an array fit for ``spec`` (cast, one row made a batch of one)."""
    array = value.to_numpy() if hasattr(value, "to_numpy") else np.asarray(value)
    if spec.datatype == "BYTES":
        if array.dtype.kind not in "OSU":
            raise InvalidArgument(
                f"input {spec.name!r}: expected strings or bytes (BYTES), got {array.dtype}"
            )
        array = array.astype(object)
    else:
        target = NUMPY_DTYPES.get(spec.datatype)
        if target is None:
            raise InvalidArgument(f"input {spec.name!r}: unsupported datatype {spec.datatype}")
        if array.dtype.kind not in "biuf":
            raise InvalidArgument(
                f"input {spec.name!r}: expected numbers ({spec.datatype}), got {array.dtype}"
            )
        if array.dtype != target:
            array = array.astype(target)
    rank = len(spec.shape)
    if rank == 2 and array.ndim == 1 and spec.shape[1] == 1:
        # [-1, 1]: one value per row, so n values are n rows (a frame's column, say).
        array = array.reshape((-1, 1))
    elif rank == array.ndim + 1 and rank >= 2:
        array = array.reshape((1, *array.shape))
    if array.ndim != rank:
        raise InvalidArgument(
            f"input {spec.name!r}: expected {rank} dimensions {list(spec.shape)}, "
            f"got {array.ndim} {list(array.shape)}"
        )
    return array


def build_request(
    endpoint: str,
    info: ModelInfo,
    data: Any,
    *,
    outputs: Sequence[str] = (),
    model_version: str = "",
    inference_id: str = "",
    target_variant: str = "",
) -> pb.ModelInferRequest:
    """The v2 request that sends ``data`` to ``endpoint`` (see the module docstring)."""
    request = pb.ModelInferRequest(
        model_name=endpoint, model_version=model_version, id=inference_id
    )
    if isinstance(data, Mapping):
        named = dict(data)
    elif _is_frame(data):
        columns = [str(c) for c in data.columns]
        only = info.inputs[0] if len(info.inputs) == 1 else None
        if only is not None and not (len(only.shape) == 1 and columns == [only.name]):
            # One input: the frame's rows are its rows.
            named = {only.name: data.to_numpy()}
        else:
            input_names = [t.name for t in info.inputs]
            missing = [n for n in input_names if n not in columns]
            if missing:
                raise InvalidArgument(
                    f"frame columns: endpoint {endpoint!r} needs one column per input "
                    f"({', '.join(input_names)}); missing {', '.join(missing)}"
                )
            # A column per input: the frame's rows are the batch, so a rank-2 input gets
            # its column as [n, 1].
            named = {}
            for name in input_names:
                column = data[name].to_numpy()
                if len(info.input(name).shape) == 2 and column.ndim == 1:
                    column = column.reshape((-1, 1))
                named[name] = column
    else:
        if len(info.inputs) != 1:
            raise InvalidArgument(
                f"endpoint {endpoint!r} has {len(info.inputs)} inputs "
                f"({', '.join(t.name for t in info.inputs)}); pass a mapping name → array"
            )
        named = {info.inputs[0].name: data}
    for name, value in named.items():
        spec = info.input(name)
        try:
            add_input(request, name, _as_input(value, spec), spec.datatype)
        except TensorError as exc:
            raise InvalidArgument(str(exc)) from exc
    for name in outputs:
        request.outputs.add(name=name)
    if target_variant:
        request.parameters["target_variant"].string_param = target_variant
    return request


def _info(response: pb.ModelMetadataResponse) -> ModelInfo:
    def tensors(items: Any) -> tuple[TensorInfo, ...]:
        return tuple(TensorInfo(t.name, t.datatype, tuple(int(d) for d in t.shape)) for t in items)

    return ModelInfo(
        name=response.name,
        versions=tuple(response.versions),
        platform=response.platform,
        inputs=tensors(response.inputs),
        outputs=tensors(response.outputs),
    )


class Predictor:
    """Real-time predictions from one endpoint through the router."""

    def __init__(
        self,
        endpoint: str,
        target: str | None = None,
        *,
        timeout: float = 30.0,
        target_variant: str = "",
        settings: GrpcSettings | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.target = target or default_router()
        self.timeout = timeout
        self.target_variant = target_variant
        self._channel = grpc.insecure_channel(
            self.target, options=channel_options(settings or GrpcSettings())
        )
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self._info: ModelInfo | None = None

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __repr__(self) -> str:
        return f"Predictor({self.endpoint!r}, target={self.target!r})"

    def _error(self, exc: grpc.RpcError, timeout: float) -> MlbusError:
        return from_rpc_error(exc, target=self.target, service="router", timeout=timeout)

    def metadata(self, *, refresh: bool = False) -> ModelInfo:
        """The endpoint's inputs, outputs and served versions (cached)."""
        if self._info is None or refresh:
            try:
                response = self._stub.ModelMetadata(
                    pb.ModelMetadataRequest(name=self.endpoint), timeout=self.timeout
                )
            except grpc.RpcError as exc:
                raise self._error(exc, self.timeout) from None
            self._info = _info(response)
        return self._info

    def ready(self) -> bool:
        """True when the endpoint has a ready worker."""
        try:
            response = self._stub.ModelReady(
                pb.ModelReadyRequest(name=self.endpoint), timeout=self.timeout
            )
        except grpc.RpcError as exc:
            raise self._error(exc, self.timeout) from None
        return bool(response.ready)

    def predict(
        self,
        data: Any,
        *,
        outputs: Sequence[str] = (),
        target_variant: str | None = None,
        model_version: str = "",
        inference_id: str = "",
        timeout: float | None = None,
    ) -> Prediction:
        """Run the model on ``data``; returns every output (or ``outputs``) as arrays."""
        request = build_request(
            self.endpoint,
            self.metadata(),
            data,
            outputs=outputs,
            model_version=model_version,
            inference_id=inference_id,
            target_variant=self.target_variant if target_variant is None else target_variant,
        )
        return self.predict_request(request, timeout=timeout)

    def predict_request(
        self, request: pb.ModelInferRequest, *, timeout: float | None = None
    ) -> Prediction:
        """Send a prepared v2 request (e.g. from a v2 JSON body); returns the outputs."""
        deadline = timeout or self.timeout
        try:
            response = self._stub.ModelInfer(request, timeout=deadline)
        except grpc.RpcError as exc:
            raise self._error(exc, deadline) from None
        params = response.parameters
        return Prediction(
            decode_outputs(response),
            model_name=response.model_name,
            variant=params["variant"].string_param if "variant" in params else "",
            model_version=response.model_version
            or (params["model_version"].string_param if "model_version" in params else ""),
            inference_id=response.id
            or (params["inference_id"].string_param if "inference_id" in params else ""),
        )
