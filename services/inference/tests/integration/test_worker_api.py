"""The worker's v2 gRPC API, in-process on a free port, over a real grpc.aio channel."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mlbus.core.rpc import error_details
from mlbus.inference.v2 import grpc_service_pb2 as pb

pytestmark = pytest.mark.asyncio

MIXED = {
    "x": np.arange(8, dtype=np.float32).reshape(2, 4) - 3.5,
    "i": np.array([[1, -2], [2**40, 0]], dtype=np.int64),
    "s": np.array(["héllo".encode(), b""], dtype=object),
}


async def expect_error(call, code: grpc.StatusCode, match: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() is code, info.value.details()
    assert info.value.details() is not None
    import re

    assert re.search(match, info.value.details()), info.value.details()
    return info.value


async def test_health_liveness_readiness_and_metadata(start_worker, onnx_models) -> None:
    worker = await start_worker(onnx_models.mixed())
    stub = worker.stub
    health = health_pb2_grpc.HealthStub(worker.running.channel)
    for service in ("", "inference.GRPCInferenceService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert (await stub.ServerLive(pb.ServerLiveRequest())).live
    assert (await stub.ServerReady(pb.ServerReadyRequest())).ready
    server = await stub.ServerMetadata(pb.ServerMetadataRequest())
    assert server.name == "mlbus-inference"
    assert server.version
    assert (await stub.ModelReady(pb.ModelReadyRequest(name="m"))).ready
    assert (await stub.ModelReady(pb.ModelReadyRequest(name="m", version="1"))).ready

    meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name="m"))
    assert meta.name == "m"
    assert list(meta.versions) == ["1"]
    assert meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("x", "FP32", [-1, 4]),
        ("i", "INT64", [-1, 2]),
        ("s", "BYTES", [-1]),
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("y", "FP32", [-1, 4]),
        ("j", "INT64", [-1, 2]),
        ("t", "BYTES", [-1]),
    ]

    error = await expect_error(
        stub.ModelMetadata(pb.ModelMetadataRequest(name="other")),
        grpc.StatusCode.NOT_FOUND,
        r"^model 'other' is not served here; this worker serves 'm'$",
    )
    assert error_details(error.trailing_metadata()) == {"model": "other"}
    await expect_error(
        stub.ModelReady(pb.ModelReadyRequest(name="m", version="2")),
        grpc.StatusCode.NOT_FOUND,
        r"^model 'm' version '2' is not served here; this worker serves version '1'$",
    )


async def test_infer_raw_in_raw_out_and_typed_in_typed_out(start_worker, onnx_models, v2) -> None:
    worker = await start_worker(onnx_models.mixed())
    expected = {"y": MIXED["x"] * 2, "j": MIXED["i"] + 1, "t": MIXED["s"]}
    for raw in (True, False):
        response = await worker.infer(v2.request(MIXED, raw=raw, id=f"req-{raw}", version="1"))
        assert response.model_name == "m"
        assert response.model_version == "1"
        assert response.id == f"req-{raw}"
        assert bool(response.raw_output_contents) is raw
        assert response.parameters["inference_id"].string_param == f"req-{raw}"
        assert response.parameters["variant"].string_param == "blue"
        assert response.parameters["model_version"].string_param == "1"
        outputs = v2.outputs(response)
        assert [o.name for o in response.outputs] == ["y", "j", "t"]
        for name, want in expected.items():
            assert outputs[name].dtype == want.dtype if name != "t" else True
            assert outputs[name].tolist() == want.tolist(), name


async def test_every_datatype_round_trips(start_worker, onnx_models, v2) -> None:
    worker = await start_worker(onnx_models.all_types())
    arrays = {
        "BOOL": np.array([[True, False, True]] * 2),
        "UINT8": np.array([[0, 1, 255]] * 2, np.uint8),
        "UINT16": np.array([[0, 1, 65535]] * 2, np.uint16),
        "UINT32": np.array([[0, 1, 2**32 - 1]] * 2, np.uint32),
        "UINT64": np.array([[0, 1, 2**64 - 1]] * 2, np.uint64),
        "INT8": np.array([[-128, 0, 127]] * 2, np.int8),
        "INT16": np.array([[-(2**15), 0, 2**15 - 1]] * 2, np.int16),
        "INT32": np.array([[-(2**31), 0, 2**31 - 1]] * 2, np.int32),
        "INT64": np.array([[-(2**63), 0, 2**63 - 1]] * 2, np.int64),
        "FP16": np.array([[0.5, -1.0, 65504.0]] * 2, np.float16),
        "FP32": np.array([[0.5, -1.0, 3.4e38]] * 2, np.float32),
        "FP64": np.array([[0.5, -1.0, 1e308]] * 2, np.float64),
        "BYTES": np.array([[b"a", "ü".encode(), b""]] * 2, dtype=object),
    }
    inputs = {f"in_{d}": a for d, a in arrays.items()}
    response = await worker.infer(v2.request(inputs))
    outputs = v2.outputs(response)
    for datatype, array in arrays.items():
        got = outputs[f"out_{datatype}"]
        assert response.outputs[list(arrays).index(datatype)].datatype == datatype
        assert got.tolist() == array.tolist(), datatype
        if datatype != "BYTES":
            assert got.dtype == array.dtype, datatype

    # FP16 has no typed contents field: typed FP16 data is refused.
    typed = v2.request(inputs, raw=False, outputs=["out_FP32"])
    await expect_error(
        worker.infer(typed),
        grpc.StatusCode.INVALID_ARGUMENT,
        r"^input 'in_FP16': FP16 data can only be sent in raw_input_contents$",
    )

    # Typed contents for every other datatype, on a model without FP16.
    no_half = [d for d in arrays if d != "FP16"]
    typed_worker = await start_worker(onnx_models.all_types(no_half))
    response = await typed_worker.infer(
        v2.request({f"in_{d}": arrays[d] for d in no_half}, raw=False)
    )
    assert not response.raw_output_contents
    outputs = v2.outputs(response)
    for datatype in no_half:
        assert outputs[f"out_{datatype}"].tolist() == arrays[datatype].tolist(), datatype


async def test_requested_outputs_subset_in_requested_order(start_worker, onnx_models, v2) -> None:
    worker = await start_worker(onnx_models.mixed())
    response = await worker.infer(v2.request(MIXED, outputs=["t", "y"]))
    assert [o.name for o in response.outputs] == ["t", "y"]
    assert len(response.raw_output_contents) == 2
    assert v2.outputs(response)["y"].tolist() == (MIXED["x"] * 2).tolist()
    typed = v2.request(MIXED, raw=False, outputs=["j"])
    typed.parameters["binary_data_output"].bool_param = True
    response = await worker.infer(typed)
    assert [o.name for o in response.outputs] == ["j"]
    assert response.raw_output_contents  # asked for raw outputs


def _bad_requests(v2) -> dict[str, tuple[pb.ModelInferRequest, str]]:
    cases: dict[str, tuple[pb.ModelInferRequest, str]] = {}
    missing = v2.request({k: v for k, v in MIXED.items() if k != "i"})
    cases["missing input"] = (missing, r"^missing input 'i' \(INT64 \[-1, 2\]\)")
    unknown = v2.request({**MIXED, "z": np.zeros((2, 1), np.float32)})
    cases["unknown input"] = (unknown, r"^unknown input 'z'; the model's inputs are 'x'")
    wrong_type = v2.request({**MIXED, "x": MIXED["x"].astype(np.float64)})
    cases["wrong datatype"] = (
        wrong_type,
        r"^input 'x': expected FP32 \[-1, 4\], got FP64 \[2, 4\]$",
    )
    wrong_rank = v2.request({**MIXED, "x": MIXED["x"].reshape(2, 2, 2)})
    cases["wrong rank"] = (
        wrong_rank,
        r"^input 'x': expected FP32 \[-1, 4\], got FP32 \[2, 2, 2\] \(rank 3, expected 2\)$",
    )
    wrong_dim = v2.request({**MIXED, "x": np.zeros((2, 5), np.float32)})
    cases["wrong fixed dim"] = (
        wrong_dim,
        r"^input 'x': expected FP32 \[-1, 4\], got FP32 \[2, 5\]$",
    )
    short = v2.request(MIXED)
    short.raw_input_contents[0] = short.raw_input_contents[0][:-1]
    cases["raw length"] = (
        short,
        r"^input 'x': raw content is 31 bytes, expected 32 for FP32 \[2, 4\] \(8 × 4 bytes\)$",
    )
    malformed = v2.request(MIXED)
    malformed.raw_input_contents[2] = b"\x06\x00\x00\x00h\xc3\xa9llo\xff\x00\x00\x00"
    cases["malformed BYTES"] = (
        malformed,
        r"^input 's': malformed BYTES content: element 1 at byte 10 declares 255 bytes but "
        r"only 0 remain$",
    )
    count = v2.request(MIXED)
    count.raw_input_contents[2] = b"\x01\x00\x00\x00a"
    cases["BYTES count"] = (
        count,
        r"^input 's': BYTES content holds 1 element\(s\), expected 2 for BYTES \[2\]$",
    )
    typed_count = v2.request(MIXED, raw=False)
    typed_count.inputs[1].contents.int64_contents.append(7)
    cases["typed count"] = (
        typed_count,
        r"^input 'i': 5 value\(s\) in int64_contents, expected 4 for INT64 \[2, 2\]$",
    )
    not_utf8 = v2.request({**MIXED, "s": np.array([b"\xff", b"ok"], dtype=object)})
    cases["BYTES not UTF-8"] = (not_utf8, r"^input 's': BYTES element 0 is not valid UTF-8")
    unknown_output = v2.request(MIXED, outputs=["y", "nope"])
    cases["unknown output"] = (unknown_output, r"^unknown output 'nope'; the model's outputs")
    return cases


async def test_bad_inputs_of_every_kind_are_refused_and_the_worker_keeps_serving(
    start_worker, onnx_models, v2
) -> None:
    worker = await start_worker(onnx_models.mixed())
    for case, (request, message) in _bad_requests(v2).items():
        error = await expect_error(worker.infer(request), grpc.StatusCode.INVALID_ARGUMENT, message)
        assert error.details(), case
        response = await worker.infer(v2.request(MIXED))
        assert v2.outputs(response)["y"].tolist() == (MIXED["x"] * 2).tolist(), case
    await expect_error(
        worker.infer(v2.request(MIXED, model="other")),
        grpc.StatusCode.NOT_FOUND,
        r"^model 'other' is not served here; this worker serves 'm'$",
    )
    await expect_error(
        worker.infer(v2.request(MIXED, version="3")),
        grpc.StatusCode.NOT_FOUND,
        r"version '3' is not served here",
    )


async def test_fixed_first_dimension_turns_batching_off(start_worker, onnx_models, v2) -> None:
    worker = await start_worker(onnx_models.fixed(), max_batch_size=8)
    assert worker.app.worker.engine is not None
    assert not worker.app.worker.engine.batching
    x = np.ones((2, 4), np.float32)
    response = await worker.infer(v2.request({"x": x}))
    weights = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    np.testing.assert_allclose(v2.outputs(response)["y"], x @ weights, rtol=1e-6)
    await expect_error(
        worker.infer(v2.request({"x": np.ones((3, 4), np.float32)})),
        grpc.StatusCode.INVALID_ARGUMENT,
        r"^input 'x': expected FP32 \[2, 4\], got FP32 \[3, 4\]$",
    )


async def test_a_worker_without_a_model_is_ready_and_serves_none(start_worker, v2) -> None:
    worker = await start_worker(None)
    stub = worker.stub
    assert (await stub.ServerLive(pb.ServerLiveRequest())).live
    assert (await stub.ServerReady(pb.ServerReadyRequest())).ready
    message = r"^model 'm' is not served here; this worker serves no model$"
    await expect_error(
        stub.ModelReady(pb.ModelReadyRequest(name="m")), grpc.StatusCode.NOT_FOUND, message
    )
    await expect_error(
        stub.ModelMetadata(pb.ModelMetadataRequest(name="m")), grpc.StatusCode.NOT_FOUND, message
    )
    await expect_error(worker.infer(v2.request(MIXED)), grpc.StatusCode.NOT_FOUND, message)


async def test_admission_limit_refuses_with_resource_exhausted(
    start_worker, onnx_models, v2
) -> None:
    worker = await start_worker(
        onnx_models.mixed(), max_concurrent_requests=1, max_batch_size=4, max_queue_delay_us=300_000
    )
    first = worker.infer(v2.request(MIXED))
    import asyncio

    task = asyncio.ensure_future(first)
    while worker.app.servicer.in_flight == 0:  # noqa: ASYNC110 - server state, no event
        await asyncio.sleep(0.001)
    await expect_error(
        worker.infer(v2.request(MIXED)),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        r"^the worker is at its limit of 1 concurrent requests",
    )
    assert (await task).outputs
