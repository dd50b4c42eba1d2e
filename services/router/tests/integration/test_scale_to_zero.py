"""Scale to zero: a variant with ``scale_to_zero_after_seconds`` stops its workers when idle
and starts them again for a real-time call (which waits for the cold start) or for queued
asynchronous requests (which wait in the topic) — nothing is lost in between."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import grpc
import numpy as np
import pytest

from mlbus.core.async_inference import async_group_id
from mlbus.core.messaging import TopicCatalogue, ensure_topics
from mlbus.inference.v2 import grpc_service_pb2 as pb
from mlbus.router.adapters.queue_depth import KafkaQueueDepth
from mlbus.router.v1 import router_pb2 as rpb
from mlbus.router.v1 import router_pb2_grpc as rpb_grpc

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

IDLE_S = 2


def scaling(stack: Any, endpoint: str) -> dict[str, Any]:
    for item in stack.router.controller.describe():
        if item["endpoint"] == endpoint:
            [variant] = item["scaling"]
            return {**variant, "workers": item["workers"], "queue_depth": item["queue_depth"]}
    raise AssertionError(f"{endpoint} unknown to the controller")


async def scaled_to_zero(stack: Any, endpoint: str, timeout: float = 30.0) -> None:
    def done() -> bool:
        view = scaling(stack, endpoint)
        return bool(view["scaled_to_zero"]) and not view["workers"]

    await stack.wait_until(done, timeout=timeout, what=f"{endpoint} scaled to zero")


async def test_idle_variant_scales_to_zero_and_back(stack: Any, endpoint_name: str) -> None:
    version = await stack.model(endpoint_name, seed=51)
    await stack.create(
        endpoint_name,
        [
            {
                "name": "main",
                "model_group": endpoint_name,
                "model_version": version,
                "scale_to_zero_after_seconds": IDLE_S,
            }
        ],
    )
    # Deployed like any variant (the model is proven to load), then idle → zero workers.
    await scaled_to_zero(stack, endpoint_name)
    stats = stack.router.metrics.stats.scale_events
    assert stats.get((endpoint_name, "main", "down")) == 1
    ready = await stack.stub.ModelReady(pb.ModelReadyRequest(name=endpoint_name), timeout=5)
    assert ready.ready, "a scaled-to-zero endpoint can still take requests"

    # A real-time call starts a worker and waits for it: answered, not refused.
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    response = await stack.infer(endpoint_name, x, timeout=60)
    np.testing.assert_allclose(stack.output(response), stack.reference(51, x), rtol=1e-5)
    assert stats.get((endpoint_name, "main", "up")) == 1
    # Concurrent calls during one cold start share it (one scale-up, every call answered).
    await scaled_to_zero(stack, endpoint_name)
    answers = await asyncio.gather(*(stack.infer(endpoint_name, x, timeout=60) for _ in range(8)))
    assert len(answers) == 8
    assert stats.get((endpoint_name, "main", "up")) == 2

    # Requests keep it up: traffic more often than the idle time never scales it down.
    for _ in range(12):
        await stack.infer(endpoint_name, x, timeout=10)
        await asyncio.sleep(IDLE_S / 4)
    assert stats.get((endpoint_name, "main", "down")) == 2

    # Asynchronous requests sent while it is at zero wait in the topic; the queue depth
    # starts a worker and every one of them completes exactly once.
    await scaled_to_zero(stack, endpoint_name)
    stub = rpb_grpc.RouterServiceStub(stack.channel)
    ids = []
    for i in range(20):
        queued = await stub.InvokeAsync(
            rpb.InvokeAsyncRequest(
                endpoint=endpoint_name,
                request=stack.request(endpoint_name, x + i),
                inference_id=f"stz-{i}",
            ),
            timeout=5,
        )
        ids.append(queued.inference_id)

    async def all_done() -> bool:
        for inference_id in ids:
            result = await stub.GetAsyncResult(
                rpb.GetAsyncResultRequest(endpoint=endpoint_name, inference_id=inference_id),
                timeout=5,
            )
            if result.status == rpb.ASYNC_RESULT_STATUS_PENDING:
                return False
            assert result.status == rpb.ASYNC_RESULT_STATUS_SUCCEEDED, result
        return True

    await stack.wait_until(all_done, timeout=90, what="async requests sent at zero completed")
    assert stats.get((endpoint_name, "main", "up")) == 3
    completions = await stack.read_topic(
        stack.router.catalogue.async_results(endpoint_name).name, count=21, timeout=5
    )
    assert len(completions) == 20, "one notification per request, none twice"
    # Once the queue is drained and nothing arrives, it goes back to zero.
    await scaled_to_zero(stack, endpoint_name)
    assert scaling(stack, endpoint_name)["queue_depth"] == 0


async def test_always_on_variant_never_scales(stack: Any, endpoint_name: str) -> None:
    version = await stack.model(endpoint_name, seed=52)
    await stack.create(
        endpoint_name, [{"name": "main", "model_group": endpoint_name, "model_version": version}]
    )
    await asyncio.sleep(IDLE_S + 1.5)
    [view] = [e for e in stack.router.controller.describe() if e["endpoint"] == endpoint_name]
    assert view["scaling"] == []
    assert [w["state"] for w in view["workers"]] == ["ready"]


async def test_queue_depth_counts_unhandled_records(stack: Any) -> None:
    """The probe reads end offsets minus the group's commits (or the first offset when the
    group never committed) across the async and batch queues."""
    kafka = stack.settings.kafka.model_copy(
        update={"topic_namespace": f"depth-{uuid.uuid4().hex[:8]}"}
    )
    catalogue = TopicCatalogue(kafka.topic_namespace)
    endpoint = "depth"
    topic = catalogue.async_requests(endpoint)
    await ensure_topics(kafka, [topic, catalogue.batch_chunks(endpoint)])
    probe = KafkaQueueDepth(kafka, catalogue)
    try:
        assert await probe.depth(endpoint) == 0
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
        from aiokafka.structs import OffsetAndMetadata

        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
        await producer.start()
        try:
            for i in range(7):
                await producer.send_and_wait(topic.name, b"x", partition=i % topic.partitions)
        finally:
            await producer.stop()
        assert await probe.depth(endpoint) == 7
        # The workers' group commits 3 records of partition 0 (offsets 0, 1 and 2 there).
        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap_servers,
            group_id=async_group_id(endpoint),
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            tp = TopicPartition(topic.name, 0)
            consumer.assign([tp])
            sent_to_zero = len(range(0, 7, topic.partitions))
            await consumer.commit({tp: OffsetAndMetadata(sent_to_zero, "")})
        finally:
            await consumer.stop()
        assert await probe.depth(endpoint) == 7 - sent_to_zero
    finally:
        await probe.close()


async def test_list_deployments_shows_workers_scaling_and_errors(
    stack: Any, endpoint_name: str
) -> None:
    """The controller's view over the API and `mlbus deployments` (SRE's view)."""
    from click.testing import CliRunner
    from google.protobuf import json_format

    from mlbus.sdk.cli import cli

    version = await stack.model(endpoint_name, seed=53)
    await stack.create(
        endpoint_name,
        [
            {
                "name": "main",
                "model_group": endpoint_name,
                "model_version": version,
                "scale_to_zero_after_seconds": 600,
            }
        ],
    )
    stub = rpb_grpc.RouterServiceStub(stack.channel)
    reply = await stub.ListDeployments(rpb.ListDeploymentsRequest(endpoint=endpoint_name))
    [d] = reply.deployments
    assert (d.endpoint, d.status, d.applied_revision) == (endpoint_name, "serving", 1)
    [w] = d.workers
    assert (w.variant, w.model_version, w.state) == ("main", version, "ready")
    assert w.pid > 0
    assert w.address.startswith("127.0.0.1:")
    [s] = d.scaling
    assert (s.variant, s.scale_to_zero_after_seconds, s.instances) == ("main", 600, 1)
    assert not s.scaled_to_zero
    everything = await stub.ListDeployments(rpb.ListDeploymentsRequest())
    assert endpoint_name in [e.endpoint for e in everything.deployments]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ListDeployments(rpb.ListDeploymentsRequest(endpoint="no-such-endpoint"))
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    assert "no-such-endpoint" in (info.value.details() or "")

    def run(*args: str) -> Any:
        return CliRunner().invoke(cli, ["deployments", *args, "--router", stack.router_target])

    shown = await asyncio.to_thread(run, endpoint_name)
    assert shown.exit_code == 0, shown.output
    assert endpoint_name in shown.output
    assert "ready" in shown.output
    assert "scales to zero after 600s idle" in shown.output
    as_json = await asyncio.to_thread(run, endpoint_name, "--json")
    assert as_json.exit_code == 0, as_json.output
    loaded = json.loads(as_json.output)
    assert loaded[0]["workers"][0]["pid"] == str(w.pid)  # int64 in JSON: a string
    json_format.ParseDict(loaded[0], rpb.Deployment())  # the JSON is the message's form
    missing = await asyncio.to_thread(run, "no-such-endpoint")
    assert missing.exit_code != 0
    assert "NOT_FOUND" in missing.output
