"""Through the router to real worker processes: deployment from the registry, variant
selection, the v2 metadata RPCs, and every kind of bad input."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from typing import Any

import grpc
import numpy as np
import pytest

from mlbus.inference.v2 import grpc_service_pb2 as pb

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]


async def test_endpoint_is_deployed_and_serves_through_the_router(
    stack: Any, endpoint_name: str
) -> None:
    version = await stack.model(endpoint_name, seed=1)
    await stack.create(
        endpoint_name, [{"name": "blue", "model_group": endpoint_name, "model_version": version}]
    )
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    response = await stack.infer(endpoint_name, x, request_id="req-1")
    np.testing.assert_allclose(stack.output(response), stack.reference(1, x), rtol=1e-5)
    assert response.model_name == endpoint_name
    assert response.id == "req-1"
    assert response.parameters["variant"].string_param == "blue"
    assert response.parameters["model_version"].string_param == str(version)

    meta = await stack.stub.ModelMetadata(pb.ModelMetadataRequest(name=endpoint_name), timeout=5)
    assert list(meta.versions) == [str(version)]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("x", "FP32", [-1, 4])]
    ready = await stack.stub.ModelReady(pb.ModelReadyRequest(name=endpoint_name), timeout=5)
    assert ready.ready
    not_ready = await stack.stub.ModelReady(
        pb.ModelReadyRequest(name="no-such-endpoint"), timeout=5
    )
    assert not not_ready.ready
    server = await stack.stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=5)
    assert server.name == "mlbus-router"
    assert (await stack.stub.ServerReady(pb.ServerReadyRequest(), timeout=5)).ready

    # The hop to the worker: small requests on its stream (many per message under load),
    # large ones as unary calls; the same answers either way.
    [instance] = stack.router.table.get(endpoint_name).variants[0].instances
    client = instance.client
    streamed, unary = client.stream.requests_sent, client.unary_requests
    xs = [np.full((2, 4), i, dtype=np.float32) for i in range(64)]
    answers = await asyncio.gather(*(stack.infer(endpoint_name, x) for x in xs))
    for x, answer in zip(xs, answers, strict=True):
        np.testing.assert_allclose(stack.output(answer), stack.reference(1, x), rtol=1e-5)
    assert client.stream.requests_sent == streamed + 64
    assert client.unary_requests == unary
    big = np.random.default_rng(0).normal(size=(20_000, 4)).astype(np.float32)  # 320 kB
    answer = await stack.infer(endpoint_name, big, timeout=30)
    np.testing.assert_allclose(stack.output(answer), stack.reference(1, big), rtol=1e-4, atol=1e-6)
    assert client.unary_requests == unary + 1


async def test_bad_requests_get_precise_statuses(stack: Any, endpoint_name: str) -> None:
    version = await stack.model(endpoint_name, seed=2)
    await stack.create(
        endpoint_name, [{"name": "blue", "model_group": endpoint_name, "model_version": version}]
    )
    x = np.ones((1, 4), dtype=np.float32)

    async def status_of(call: Any) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        return info.value.code(), info.value.details() or ""

    code, msg = await status_of(stack.infer("no-such-endpoint", x))
    assert code is grpc.StatusCode.NOT_FOUND
    assert "'no-such-endpoint' is not deployed" in msg
    assert endpoint_name in msg

    code, msg = await status_of(stack.infer(endpoint_name, x, target_variant="red"))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "target_variant 'red'" in msg
    assert "expected one of blue" in msg

    code, msg = await status_of(stack.infer(endpoint_name, x, version="99"))
    assert code is grpc.StatusCode.NOT_FOUND
    assert "no model version '99'" in msg

    # Validation happens on the worker; its status and message come back unchanged.
    wrong = stack.request(endpoint_name, x)
    wrong.inputs[0].datatype = "FP64"
    code, msg = await status_of(stack.stub.ModelInfer(wrong, timeout=5))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'x'" in msg
    assert "FP32" in msg
    assert "FP64" in msg

    short = stack.request(endpoint_name, x)
    short.raw_input_contents[0] = b"\x00" * 3
    code, msg = await status_of(stack.stub.ModelInfer(short, timeout=5))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "3 bytes" in msg

    code, msg = await status_of(stack.stub.ModelInfer(pb.ModelInferRequest(), timeout=5))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "model_name: required" in msg

    bad_param = stack.request(endpoint_name, x)
    bad_param.parameters["target_variant"].int64_param = 3
    code, msg = await status_of(stack.stub.ModelInfer(bad_param, timeout=5))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "expected a string_param" in msg

    garbage = stack.channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    code, msg = await status_of(garbage(b"\xff\xff\xff\xff", timeout=5))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid inference.ModelInferRequest" in msg

    # The worker is unaffected by all of that.
    ok = await stack.infer(endpoint_name, x)
    assert ok.parameters["variant"].string_param == "blue"


async def test_weights_split_traffic_and_target_variant_pins(
    stack: Any, endpoint_name: str
) -> None:
    v1 = await stack.model(endpoint_name, seed=3)
    v2 = await stack.model(endpoint_name, seed=4)
    await stack.create(
        endpoint_name,
        [
            {"name": "blue", "model_group": endpoint_name, "model_version": v1, "weight": 75},
            {"name": "green", "model_group": endpoint_name, "model_version": v2, "weight": 25},
        ],
    )
    x = np.ones((1, 4), dtype=np.float32)
    n = 400
    counts: Counter[str] = Counter()
    for start in range(0, n, 40):
        batch = [stack.infer(endpoint_name, x) for _ in range(start, start + 40)]
        for response in await asyncio.gather(*batch):
            counts[response.parameters["variant"].string_param] += 1
    sigma = math.sqrt(n * 0.75 * 0.25)
    assert counts["blue"] + counts["green"] == n
    assert abs(counts["blue"] - 0.75 * n) < 4 * sigma, counts

    pinned = [await stack.infer(endpoint_name, x, target_variant="green") for _ in range(20)]
    assert {r.parameters["variant"].string_param for r in pinned} == {"green"}
    assert {r.parameters["model_version"].string_param for r in pinned} == {str(v2)}
    by_header = [
        await stack.infer(endpoint_name, x, metadata=[("mlbus-target-variant", "blue")])
        for _ in range(20)
    ]
    assert {r.parameters["variant"].string_param for r in by_header} == {"blue"}
    by_version = [await stack.infer(endpoint_name, x, version=str(v2)) for _ in range(10)]
    assert {r.parameters["variant"].string_param for r in by_version} == {"green"}


async def test_shadow_gets_mirrored_traffic_but_never_answers(
    stack: Any, endpoint_name: str
) -> None:
    prod = await stack.model(endpoint_name, seed=5)
    candidate = await stack.model(endpoint_name, seed=6)
    await stack.create(
        endpoint_name,
        [{"name": "prod", "model_group": endpoint_name, "model_version": prod}],
        shadow={
            "variant": {"name": "next", "model_group": endpoint_name, "model_version": candidate},
            "sampling_percent": 100,
        },
    )
    rng = np.random.default_rng(0)
    for _ in range(30):
        x = rng.standard_normal((3, 4)).astype(np.float32)
        response = await stack.infer(endpoint_name, x)
        assert response.parameters["variant"].string_param == "prod"
        np.testing.assert_allclose(
            stack.output(response), stack.reference(5, x), rtol=1e-4, atol=1e-5
        )
    stats = stack.router.metrics.stats
    await stack.wait_until(
        lambda: stats.shadow_for(endpoint_name).mirrored >= 30,
        timeout=10,
        what="30 shadow comparisons",
    )
    shadow = stats.shadow_for(endpoint_name)
    assert shadow.errors == 0
    assert shadow.ok == 30
    # Different weights: the candidate's predictions differ, and the difference is recorded.
    assert shadow.differing == 30
    assert shadow.max_abs_diff > 0.01
    assert stats.requests[(endpoint_name, "prod")] >= 30
    assert (endpoint_name, "next") not in stats.requests
