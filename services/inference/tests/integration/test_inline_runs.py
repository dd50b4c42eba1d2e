"""Inline session runs with ONNX Runtime: a small model runs on the event loop once timed,
answers exactly as in threads, and a request the model refuses fails alone among others."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from mlbus.inference.v2 import grpc_service_pb2 as pb

pytestmark = pytest.mark.asyncio


async def test_small_model_runs_inline_with_the_same_results(start_worker, onnx_models, v2) -> None:
    model = onnx_models.mlp(inputs=30, hidden=(64, 64), outputs=3)
    inline = await start_worker(model)  # default INFERENCE_INLINE_RUN_MAX_US (100)
    threads = await start_worker(model, inline_run_max_us=0)
    rng = np.random.default_rng(3)
    for i in range(20):
        request = v2.request({"x": rng.standard_normal((1 + i % 4, 30)).astype(np.float32)})
        got = v2.outputs(await inline.infer(request))["y"]
        expected = v2.outputs(await threads.infer(request))["y"]
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    # The first run after start (no timing yet) went to a thread, the others inline.
    assert inline.app.metrics.stats.inline_runs >= 18
    assert threads.app.metrics.stats.inline_runs == 0
    assert threads.app.metrics.stats.session_runs == 20


async def test_a_request_the_model_refuses_inline_fails_alone(
    start_worker, onnx_models, v2
) -> None:
    worker = await start_worker(onnx_models.lookup())
    table = np.arange(20, dtype=np.float32).reshape(10, 2)
    await worker.infer(v2.request({"idx": np.array([0], np.int64)}))  # timed: cheap
    good = [np.array([i % 10], np.int64) for i in range(10)]
    calls = [worker.infer(v2.request({"idx": idx})) for idx in good[:5]]
    calls.append(worker.infer(v2.request({"idx": np.array([1, 99], np.int64)})))
    calls += [worker.infer(v2.request({"idx": idx})) for idx in good[5:]]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)

    refused = outcomes.pop(5)
    assert isinstance(refused, grpc.aio.AioRpcError)
    assert refused.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "indices element out of data bounds, idx=99" in (refused.details() or "")
    for idx, response in zip(good, outcomes, strict=True):
        assert isinstance(response, pb.ModelInferResponse), response
        np.testing.assert_array_equal(v2.outputs(response)["rows"], table[idx])
    stats = worker.app.metrics.stats
    assert stats.inline_runs >= 10, stats
    response = await worker.infer(v2.request({"idx": np.array([9], np.int64)}))
    np.testing.assert_array_equal(v2.outputs(response)["rows"], table[[9]])
