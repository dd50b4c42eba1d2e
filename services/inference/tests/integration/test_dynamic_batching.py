"""Dynamic batching with ONNX Runtime: concurrent requests share session runs, get the same
results as unbatched runs, and a bad request in a burst fails alone."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from mlbus.inference.v2 import grpc_service_pb2 as pb

pytestmark = pytest.mark.asyncio


async def test_concurrent_requests_are_merged_with_unbatched_results(
    start_worker, onnx_models, v2
) -> None:
    model = onnx_models.mlp(inputs=30, hidden=(64, 64), outputs=3)
    batched = await start_worker(model, max_batch_size=32, max_queue_delay_us=50_000)
    plain = await start_worker(model)  # max_batch_size 1: batching off
    assert batched.app.worker.engine.batching
    assert not plain.app.worker.engine.batching
    rng = np.random.default_rng(7)
    requests = [
        v2.request({"x": rng.standard_normal((1 + i % 3, 30)).astype(np.float32)}, id=str(i))
        for i in range(16)
    ]
    stats = batched.app.metrics.stats
    before = stats.session_runs
    responses = await asyncio.gather(*(batched.infer(r) for r in requests))
    runs = stats.session_runs - before
    assert runs < len(requests) / 2, f"{runs} session runs for {len(requests)} requests"
    assert stats.batched_runs >= 1
    for request, response in zip(requests, responses, strict=True):
        assert response.id == request.id
        expected = v2.outputs(await plain.infer(request))["y"]
        got = v2.outputs(response)["y"]
        assert got.shape == expected.shape == (request.inputs[0].shape[0], 3)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


async def test_a_bad_request_in_a_burst_fails_alone(start_worker, onnx_models, v2) -> None:
    worker = await start_worker(onnx_models.lookup(), max_batch_size=64, max_queue_delay_us=50_000)
    table = np.arange(20, dtype=np.float32).reshape(10, 2)
    good = [np.array([i % 10, (i + 3) % 10], np.int64) for i in range(12)]
    invalid = v2.request({"idx": np.array([1, 2], np.int32)})  # fails validation
    out_of_range = v2.request({"idx": np.array([1, 99], np.int64)})  # fails inside the model
    calls = [worker.infer(v2.request({"idx": idx})) for idx in good[:6]]
    calls += [worker.infer(invalid), worker.infer(out_of_range)]
    calls += [worker.infer(v2.request({"idx": idx})) for idx in good[6:]]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)

    results = outcomes[:6] + outcomes[8:]
    for idx, response in zip(good, results, strict=True):
        assert isinstance(response, pb.ModelInferResponse), response
        np.testing.assert_array_equal(v2.outputs(response)["rows"], table[idx])
    assert isinstance(outcomes[6], grpc.aio.AioRpcError)
    assert outcomes[6].code() is grpc.StatusCode.INVALID_ARGUMENT
    assert outcomes[6].details() == "input 'idx': expected INT64 [-1], got INT32 [2]"
    assert isinstance(outcomes[7], grpc.aio.AioRpcError)
    assert outcomes[7].code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "indices element out of data bounds, idx=99" in (outcomes[7].details() or "")
    # The out-of-range request was merged with good ones; the batch was re-run one by one.
    assert worker.app.metrics.stats.batch_fallbacks >= 1
    response = await worker.infer(v2.request({"idx": np.array([9], np.int64)}))
    np.testing.assert_array_equal(v2.outputs(response)["rows"], table[[9]])


async def test_a_caller_deadline_in_the_queue_does_not_disturb_others(
    start_worker, onnx_models, v2
) -> None:
    worker = await start_worker(onnx_models.mlp(), max_batch_size=8, max_queue_delay_us=400_000)
    x = np.ones((1, 30), np.float32)
    hasty = worker.infer(v2.request({"x": x}), timeout=0.1)
    patient = [worker.infer(v2.request({"x": x * i})) for i in range(3)]
    outcomes = await asyncio.gather(hasty, *patient, return_exceptions=True)
    assert isinstance(outcomes[0], grpc.aio.AioRpcError)
    assert outcomes[0].code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert all(isinstance(o, pb.ModelInferResponse) for o in outcomes[1:]), outcomes


async def test_session_runs_are_traced_within_their_requests(
    start_worker, onnx_models, v2, span_exporter
) -> None:
    from opentelemetry.trace import SpanKind

    worker = await start_worker(onnx_models.mlp(), max_batch_size=8, max_queue_delay_us=50_000)
    span_exporter.clear()
    x = np.ones((1, 30), np.float32)
    await asyncio.gather(*(worker.infer(v2.request({"x": x})) for _ in range(3)))

    def finished() -> tuple[list, list]:
        spans = span_exporter.get_finished_spans()
        servers = [
            s
            for s in spans
            if s.name == "inference.GRPCInferenceService/ModelInfer" and s.kind is SpanKind.SERVER
        ]
        return servers, [s for s in spans if s.name == "onnxruntime run"]

    async with asyncio.timeout(5):
        # Server spans end in the server's tasks, just after the responses went out.
        while len(finished()[0]) < 3:  # noqa: ASYNC110 - nothing to await on
            await asyncio.sleep(0.01)
    servers, runs = finished()
    assert len(runs) == 1, [r.attributes for r in runs]
    run = runs[0]
    assert run.attributes["mlbus.batch.requests"] == 3
    assert run.attributes["mlbus.batch.rows"] == 3
    server_ids = {s.context.span_id for s in servers}
    assert run.parent is not None
    assert run.parent.span_id in server_ids
    assert {link.context.span_id for link in run.links} == server_ids
