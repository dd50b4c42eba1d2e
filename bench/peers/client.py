"""The one load client used for every target: grpc.aio with the workspace's generated v2 stubs.

``concurrency`` coroutines share one plain channel (no interceptors); each sends a pre-built
request, awaits the response and sends the next, for ``duration_s`` after ``warmup_s``. Every
loop is bounded three ways: by time, by a total request count, and by a count of failed calls
(a failing server is never hammered). tritonclient is never imported here: its generated
protos would clash with ours in one process.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

import grpc
import numpy as np

from mlbus.inference.v2 import grpc_service_pb2 as pb
from mlbus.inference.v2 import grpc_service_pb2_grpc as pb_grpc

from .targets import Endpoint

CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 << 20)]
CALL_TIMEOUT_S = 10.0
MAX_ERRORS = 50
DATATYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}
CONTENTS = {
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "INT64": "int64_contents",
    "INT32": "int_contents",
}


def make_request(model_name: str, inputs: dict[str, np.ndarray]) -> pb.ModelInferRequest:
    """A v2 request with raw FP32 (or other fixed-size) contents, as tritonclient sends them."""
    names = {np.dtype(v): k for k, v in DATATYPES.items()}
    request = pb.ModelInferRequest(model_name=model_name)
    for name, array in inputs.items():
        request.inputs.add(name=name, datatype=names[array.dtype], shape=list(array.shape))
        request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
    return request


def decode_outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """Output name → array, from raw contents or typed contents (servers differ)."""
    arrays = {}
    for index, output in enumerate(response.outputs):
        dtype = DATATYPES[output.datatype]
        if index < len(response.raw_output_contents):
            flat = np.frombuffer(response.raw_output_contents[index], dtype=dtype)
        else:
            flat = np.asarray(getattr(output.contents, CONTENTS[output.datatype]), dtype=dtype)
        arrays[output.name] = flat.reshape(list(output.shape))
    return arrays


async def infer_once(endpoint: Endpoint, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
    async with grpc.aio.insecure_channel(endpoint.address, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        return await stub.ModelInfer(request, timeout=CALL_TIMEOUT_S)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


@dataclass
class Load:
    """What one load run measured (latencies of the calls started after the warm-up)."""

    concurrency: int
    requests: int
    rate: float
    p50_ms: float
    p99_ms: float
    errors: int
    first_error: str | None
    stopped_early: str | None


async def drive(
    endpoint: Endpoint,
    request: pb.ModelInferRequest,
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    max_requests: int,
) -> Load:
    """Closed-loop load: ``concurrency`` callers, each one request in flight at a time."""
    async with grpc.aio.insecure_channel(endpoint.address, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        loop = asyncio.get_running_loop()
        measure_from = loop.time() + warmup_s
        stop_at = measure_from + duration_s
        latencies: list[float] = []
        sent = 0
        errors = 0
        first_error: str | None = None
        stopped: str | None = None

        async def caller() -> None:
            nonlocal sent, errors, first_error, stopped
            while stopped is None:
                started = loop.time()
                if started >= stop_at:
                    return
                if sent >= max_requests:
                    stopped = f"request cap {max_requests} reached"
                    return
                sent += 1
                try:
                    await stub.ModelInfer(request, timeout=CALL_TIMEOUT_S)
                except grpc.aio.AioRpcError as exc:
                    errors += 1
                    if first_error is None:
                        first_error = f"{exc.code().name}: {exc.details()}"
                    if errors >= MAX_ERRORS:
                        stopped = f"{errors} failed calls"
                    continue
                if started >= measure_from:
                    latencies.append(loop.time() - started)

        await asyncio.gather(*(caller() for _ in range(concurrency)))
        measured_s = duration_s if stopped is None else max(1e-9, loop.time() - measure_from)
    return Load(
        concurrency=concurrency,
        requests=len(latencies),
        rate=len(latencies) / measured_s if measured_s > 0 else 0.0,
        p50_ms=percentile(latencies, 50) * 1000,
        p99_ms=percentile(latencies, 99) * 1000,
        errors=errors,
        first_error=first_error,
        stopped_early=stopped,
    )
