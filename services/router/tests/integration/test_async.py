"""Asynchronous inference end to end: the router's InvokeAsync/GetAsyncResult, the request
topic, the workers' consumer group, results in the object store, notifications."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import json_format

from mlbus.core import async_inference as ai
from mlbus.core.messaging import EventProducer
from mlbus.core.messaging.envelope import JSON
from mlbus.inference.v1 import events_pb2 as ev
from mlbus.inference.v2 import grpc_service_pb2 as pb
from mlbus.router.v1 import router_pb2 as rpb
from mlbus.router.v1 import router_pb2_grpc as rpb_grpc

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]


async def deploy(stack: Any, endpoint: str, seed: int, instances: int = 1) -> int:
    version = await stack.model(endpoint, seed=seed)
    await stack.create(
        endpoint,
        [
            {
                "name": "main",
                "model_group": endpoint,
                "model_version": version,
                "instance_count": instances,
            }
        ],
    )
    return version


async def result_of(stub: Any, endpoint: str, inference_id: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await stub.GetAsyncResult(
            rpb.GetAsyncResultRequest(endpoint=endpoint, inference_id=inference_id), timeout=5
        )
        if result.status != rpb.ASYNC_RESULT_STATUS_PENDING:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{inference_id} still pending after {timeout}s")
        await asyncio.sleep(0.05)


def ids_of(records: list[Any], message_type: Any) -> list[str]:
    return [message_type.FromString(r.value).inference_id for r in records]


async def test_invoke_async_inline_and_offloaded(stack: Any, endpoint_name: str) -> None:
    version = await deploy(stack, endpoint_name, seed=31)
    stub = rpb_grpc.RouterServiceStub(stack.channel)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    queued = await stub.InvokeAsync(
        rpb.InvokeAsyncRequest(endpoint=endpoint_name, request=stack.request(endpoint_name, x)),
        timeout=5,
    )
    assert not queued.input_offloaded
    assert queued.output_uri.endswith(f"async/{endpoint_name}/{queued.inference_id}/output.pb")
    result = await result_of(stub, endpoint_name, queued.inference_id)
    assert result.status == rpb.ASYNC_RESULT_STATUS_SUCCEEDED
    np.testing.assert_allclose(stack.output(result.response), stack.reference(31, x), rtol=1e-5)
    assert result.completion.model_version == version
    assert result.completion.variant == "main"
    assert result.output.uri == queued.output_uri

    # 300,000 rows (4.8 MB): above the inline limit, so it travels by claim check.
    big = np.random.default_rng(0).standard_normal((300_000, 4)).astype(np.float32)
    queued_big = await stub.InvokeAsync(
        rpb.InvokeAsyncRequest(
            endpoint=endpoint_name, request=stack.request(endpoint_name, big), inference_id="big-1"
        ),
        timeout=30,
    )
    assert queued_big.input_offloaded
    assert queued_big.inference_id == "big-1"
    result = await result_of(stub, endpoint_name, "big-1", timeout=60)
    assert result.status == rpb.ASYNC_RESULT_STATUS_SUCCEEDED, result.error
    np.testing.assert_allclose(
        stack.output(result.response), stack.reference(31, big), rtol=1e-4, atol=1e-4
    )

    # A second invocation with a finished id gives the first result and runs nothing.
    again = await stub.InvokeAsync(
        rpb.InvokeAsyncRequest(
            endpoint=endpoint_name,
            request=stack.request(endpoint_name, x),
            inference_id=queued.inference_id,
        ),
        timeout=5,
    )
    assert again.output_uri == queued.output_uri
    records = await stack.read_topic(
        stack.router.catalogue.async_results(endpoint_name).name, count=3, timeout=3
    )
    assert sorted(ids_of(records, ev.AsyncInferenceCompleted)) == sorted(
        [queued.inference_id, "big-1"]
    )


async def test_failures_are_notified_and_never_block(stack: Any, endpoint_name: str) -> None:
    await deploy(stack, endpoint_name, seed=32)
    stub = rpb_grpc.RouterServiceStub(stack.channel)
    catalogue = stack.router.catalogue
    x = np.ones((1, 4), dtype=np.float32)

    bad = stack.request(endpoint_name, x)
    bad.inputs[0].datatype = "FP64"
    queued = await stub.InvokeAsync(
        rpb.InvokeAsyncRequest(endpoint=endpoint_name, request=bad), timeout=5
    )
    failed = await result_of(stub, endpoint_name, queued.inference_id)
    assert failed.status == rpb.ASYNC_RESULT_STATUS_FAILED
    assert failed.error.code == "INVALID_ARGUMENT"
    assert "input 'x'" in failed.error.message

    producer = EventProducer(stack.settings.kafka, source="test-producer")
    await producer.start()
    try:
        requests = catalogue.async_requests(endpoint_name)
        # Past its deadline before any worker saw it: EXPIRED, not run.
        past = str(int(time.time() * 1000) - 1000).encode()
        await producer.publish(
            requests,
            stack.request(endpoint_name, x),
            key="late-1",
            headers=[(ai.H_INFERENCE_ID, b"late-1"), (ai.H_DEADLINE, past)],
        )
        # Poison bytes: dead-lettered, and its sender is told.
        await producer.publish_raw(
            requests.name,
            b"\xff\x00garbage",
            key=b"poison-1",
            headers=[(ai.H_INFERENCE_ID, b"poison-1"), ("content-type", b"application/x-protobuf")],
        )
        # A producer's v2 JSON body straight on the topic, with a reply topic.
        reply = f"{catalogue.name('test-replies')}-{uuid.uuid4().hex[:6]}"
        body = json.loads(json_format.MessageToJson(stack.request(endpoint_name, x)))
        await producer.publish(
            requests,
            json_format.ParseDict(body, pb.ModelInferRequest()),
            key="json-1",
            content_type=JSON,
            headers=[(ai.H_INFERENCE_ID, b"json-1"), (ai.H_REPLY_TOPIC, reply.encode())],
        )
    finally:
        await producer.stop()

    expired = await result_of(stub, endpoint_name, "late-1")
    assert expired.status == rpb.ASYNC_RESULT_STATUS_EXPIRED
    assert expired.error.code == "DEADLINE_EXCEEDED"
    poisoned = await result_of(stub, endpoint_name, "poison-1")
    assert poisoned.status == rpb.ASYNC_RESULT_STATUS_FAILED
    assert "sent to" in poisoned.error.message
    assert ".dlq" in poisoned.error.message
    ok = await result_of(stub, endpoint_name, "json-1")
    assert ok.status == rpb.ASYNC_RESULT_STATUS_SUCCEEDED
    np.testing.assert_allclose(stack.output(ok.response), stack.reference(32, x), rtol=1e-5)

    dlq = await stack.read_topic(catalogue.async_requests(endpoint_name).dlq_name, count=1)
    assert [r.key for r in dlq] == [b"poison-1"]
    errors = await stack.read_topic(catalogue.async_errors(endpoint_name).name, count=3)
    assert sorted(ids_of(errors, ev.AsyncInferenceFailed)) == sorted(
        [queued.inference_id, "late-1", "poison-1"]
    )
    replies = await stack.read_topic(reply, count=1)
    assert ids_of(replies, ev.AsyncInferenceCompleted) == ["json-1"]


async def test_bad_invocations_are_refused(stack: Any, endpoint_name: str) -> None:
    await deploy(stack, endpoint_name, seed=33)
    stub = rpb_grpc.RouterServiceStub(stack.channel)
    x = np.ones((1, 4), dtype=np.float32)
    cases = {
        "unknown": (
            rpb.InvokeAsyncRequest(endpoint="no-such-endpoint", request=stack.request("", x)),
            grpc.StatusCode.NOT_FOUND,
            "not deployed",
        ),
        "no input": (
            rpb.InvokeAsyncRequest(endpoint=endpoint_name),
            grpc.StatusCode.INVALID_ARGUMENT,
            "input: give either",
        ),
        "bad id": (
            rpb.InvokeAsyncRequest(
                endpoint=endpoint_name, request=stack.request("", x), inference_id="a/b"
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "inference_id: 'a/b': expected",
        ),
        "bad id of the inline request": (
            rpb.InvokeAsyncRequest(
                endpoint=endpoint_name,
                request=pb.ModelInferRequest(
                    id="x y", inputs=stack.request("", x).inputs, model_name=""
                ),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "request.id: 'x y': expected",
        ),
        "other model": (
            rpb.InvokeAsyncRequest(endpoint=endpoint_name, request=stack.request("other", x)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "request.model_name 'other'",
        ),
        "missing uri": (
            rpb.InvokeAsyncRequest(
                endpoint=endpoint_name,
                input_uri=stack.router.async_service.store.uri_for("nope/x.pb"),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "input_uri",
        ),
        "timeout": (
            rpb.InvokeAsyncRequest(
                endpoint=endpoint_name, request=stack.request("", x), timeout_seconds=1e9
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "timeout_seconds",
        ),
    }
    for name, (request, code, text) in cases.items():
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.InvokeAsync(request, timeout=5)
        assert info.value.code() is code, name
        assert text in (info.value.details() or ""), (name, info.value.details())


async def test_killed_worker_loses_and_duplicates_nothing(stack: Any, endpoint_name: str) -> None:
    await deploy(stack, endpoint_name, seed=34, instances=2)
    stub = rpb_grpc.RouterServiceStub(stack.channel)
    x = np.ones((1, 4), dtype=np.float32)
    n = 300
    ids = [f"bulk-{i}" for i in range(n)]
    for start in range(0, n, 50):
        await asyncio.gather(
            *(
                stub.InvokeAsync(
                    rpb.InvokeAsyncRequest(
                        endpoint=endpoint_name, request=stack.request("", x), inference_id=i
                    ),
                    timeout=10,
                )
                for i in ids[start : start + 50]
            )
        )
    os.kill(stack.workers(endpoint_name)[0]["pid"], signal.SIGKILL)
    results = [await result_of(stub, endpoint_name, i, timeout=90) for i in ids]
    assert {r.status for r in results} == {rpb.ASYNC_RESULT_STATUS_SUCCEEDED}
    store = stack.router.async_service.store
    outputs = [
        o async for o in store.list(f"async/{endpoint_name}/") if o.uri.endswith("/output.pb")
    ]
    assert len(outputs) == n
    notes = await stack.read_topic(
        stack.router.catalogue.async_results(endpoint_name).name, count=n, timeout=30
    )
    seen = ids_of(notes, ev.AsyncInferenceCompleted)
    assert set(seen) == set(ids)
    # A duplicate can only be the crash window's re-send, with the same event id.
    event_ids = {dict(r.headers)["ce_id"] for r in notes}
    assert len(event_ids) == n


async def test_async_predictor_and_cli(stack: Any, endpoint_name: str) -> None:
    from click.testing import CliRunner

    from mlbus.sdk import AsyncPredictor
    from mlbus.sdk.cli import cli
    from mlbus.sdk.errors import InvalidArgument

    await deploy(stack, endpoint_name, seed=35)
    rows = np.arange(12, dtype=np.float64).reshape(3, 4)

    def run() -> dict[str, Any]:
        with AsyncPredictor(endpoint_name, stack.router_target, poll_interval=0.05) as predictor:
            prediction = predictor.predict(rows, timeout=60)
            job = predictor.invoke(rows, inference_id="sdk-1")
            done = predictor.result("sdk-1", timeout=60)
            bad = predictor.invoke(
                request=stack.request(endpoint_name, np.ones((1, 3), np.float32))
            )
            try:
                predictor.predict(np.ones((1, 3)), timeout=60)
                refused = ""
            except InvalidArgument as exc:
                refused = str(exc)
            failed = predictor.result(bad.inference_id, timeout=60)
        runner = CliRunner()
        base = ["--router", stack.router_target]
        waited = runner.invoke(
            cli, ["invoke-async", endpoint_name, *base, "--data", "[[1,2,3,4]]", "--wait", "--json"]
        )
        queued = runner.invoke(
            cli,
            [
                "invoke-async",
                endpoint_name,
                *base,
                "--data",
                "[[1,2,3,4]]",
                "--id",
                "cli-2",
                "--json",
            ],
        )
        status = runner.invoke(
            cli, ["async-result", endpoint_name, "cli-2", *base, "--wait", "--json"]
        )
        # A FAILED result is a failure to the shell too (it exited 0).
        failed_status = runner.invoke(
            cli, ["async-result", endpoint_name, bad.inference_id, *base, "--json"]
        )
        return {
            "failed_status": failed_status,
            "prediction": prediction,
            "job": job,
            "done": done,
            "failed": failed,
            "refused": refused,
            "waited": waited,
            "queued": queued,
            "status": status,
        }

    out = await asyncio.to_thread(run)
    expected = stack.reference(35, rows.astype(np.float32))
    np.testing.assert_allclose(out["prediction"]["y"], expected, rtol=1e-5)
    assert out["prediction"].variant == "main"
    assert out["job"].inference_id == "sdk-1"
    assert out["done"].status == "SUCCEEDED"
    np.testing.assert_allclose(out["done"].prediction["y"], expected, rtol=1e-5)
    assert out["failed"].status == "FAILED"
    assert out["failed"].error_code == "INVALID_ARGUMENT"
    # predict() raises the class of the failure's status, with the worker's message.
    assert "input 'x'" in out["refused"]
    for name in ("waited", "queued", "status"):
        assert out[name].exit_code == 0, (name, out[name].output)
    waited = json.loads(out["waited"].output)
    assert waited["status"] == "SUCCEEDED"
    assert waited["result"]["outputs"][0]["shape"] == [1, 1]
    assert json.loads(out["queued"].output)["inference_id"] == "cli-2"
    assert json.loads(out["status"].output)["status"] == "SUCCEEDED"
    assert out["failed_status"].exit_code == 1, out["failed_status"].output
    assert json.loads(out["failed_status"].output)["status"] == "FAILED"


async def test_a_request_whose_output_was_written_succeeds_even_past_its_deadline(
    stack: Any, endpoint_name: str
) -> None:
    # An earlier delivery ran the request and wrote its output, then its worker stopped
    # before the completion record; by the redelivery the deadline has passed. The request
    # succeeded: it must not be recorded EXPIRED next to its output.
    await deploy(stack, endpoint_name, seed=33)
    stub = rpb_grpc.RouterServiceStub(stack.channel)
    x = np.full((1, 4), 0.5, dtype=np.float32)
    response = pb.ModelInferResponse(
        model_name=endpoint_name,
        id="ran-1",
        outputs=[
            pb.ModelInferResponse.InferOutputTensor(
                name="y",
                datatype="FP32",
                shape=[1, 1],
                contents=pb.InferTensorContents(fp32_contents=[7.0]),
            )
        ],
    )
    store = stack.router.transform.store
    await store.put(ai.output_key(endpoint_name, "ran-1"), response.SerializeToString())
    past = str(int(time.time() * 1000) - 1000).encode()
    async with EventProducer(stack.settings.kafka, source="test-producer") as producer:
        await producer.publish(
            stack.router.catalogue.async_requests(endpoint_name),
            stack.request(endpoint_name, x),
            key="ran-1",
            headers=[(ai.H_INFERENCE_ID, b"ran-1"), (ai.H_DEADLINE, past)],
        )
    result = await result_of(stub, endpoint_name, "ran-1")
    assert result.status == rpb.ASYNC_RESULT_STATUS_SUCCEEDED, result
    assert list(result.response.outputs[0].contents.fp32_contents) == [7.0]  # that output
    assert not await store.exists(store.uri_for(ai.failure_key(endpoint_name, "ran-1")))
