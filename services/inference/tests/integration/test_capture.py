"""Data capture: the configured share of inferences reaches the capture topic, off the
response path; a stuck bus makes captures drop (counted) and never slows inference."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer

from mlbus.core.messaging import TopicCatalogue
from mlbus.core.settings import KafkaSettings
from mlbus.inference.v1.events_pb2 import InferenceCaptured
from mlbus.inference.v2 import grpc_service_pb2 as pb
from mlbus.sdk.local.broker import BrokerProcess, free_port, start_broker

pytestmark = pytest.mark.asyncio

X = np.arange(30, dtype=np.float32).reshape(1, 30) / 30


async def read_captured(
    kafka: KafkaSettings,
    namespace: str,
    count: int,
    timeout: float = 20.0,
    event_ids: list[str] | None = None,
) -> list[InferenceCaptured]:
    """The first ``count`` records of the namespace's capture topic (no consumer group);
    their event ids (``ce_id``) are appended to ``event_ids`` when given."""
    topic = TopicCatalogue(namespace).inference_captured.name
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=20,
    )
    await consumer.start()
    records: list[InferenceCaptured] = []
    try:
        async with asyncio.timeout(timeout):
            while len(records) < count:
                batch = await consumer.getmany(timeout_ms=200)
                for part in batch.values():
                    records.extend(InferenceCaptured.FromString(r.value) for r in part)
                    if event_ids is not None:
                        event_ids.extend(dict(r.headers)["ce_id"].decode() for r in part)
    finally:
        await consumer.stop()
    return records


async def wait_flushed(app, timeout: float = 20.0) -> None:
    """Until the capture queue is empty and every sampled record is accounted for."""
    await asyncio.wait_for(app.capture.drained(), timeout)


async def test_every_inference_is_captured_at_100_percent(
    start_worker, onnx_models, v2, kafka_settings, unique_name
) -> None:
    namespace = unique_name("capture")
    worker = await start_worker(
        onnx_models.mlp(), namespace=namespace, capture_percent=100, model_group="churn"
    )
    ids = [f"inf-{i}" for i in range(10)]
    responses = {i: await worker.infer(v2.request({"x": X * n}, id=i)) for n, i in enumerate(ids)}
    anonymous = await worker.infer(v2.request({"x": X}))
    generated = anonymous.parameters["inference_id"].string_param
    assert len(generated) == 25

    records = await read_captured(kafka_settings, namespace, len(ids) + 1)
    by_id = {r.inference_id: r for r in records}
    assert set(by_id) == {*ids, generated}
    for inference_id, response in responses.items():
        record = by_id[inference_id]
        assert (record.endpoint, record.variant, record.model_group, record.model_version) == (
            "m",
            "blue",
            "churn",
            1,
        )
        assert not record.shadow
        assert pb.ModelInferRequest.FromString(record.request).id == inference_id
        assert pb.ModelInferResponse.FromString(record.response) == response
        assert 0 < record.latency.ToNanoseconds() < 5e9
        assert abs(record.request_time.ToSeconds() - time.time()) < 60
    await wait_flushed(worker.app)
    assert worker.app.metrics.stats.captured == len(ids) + 1
    assert worker.app.metrics.stats.capture_dropped == 0


async def test_captures_of_requests_sharing_an_id_have_their_own_event_ids(
    start_worker, onnx_models, v2, kafka_settings, unique_name
) -> None:
    # Clients reuse request ids; consumers drop records whose event id they have seen, so
    # each capture needs an event id of its own (it was the request id).
    namespace = unique_name("capture")
    worker = await start_worker(onnx_models.mlp(), namespace=namespace, capture_percent=100)
    for _ in range(3):
        await worker.infer(v2.request({"x": X}, id="1"))
    event_ids: list[str] = []
    records = await read_captured(kafka_settings, namespace, 3, event_ids=event_ids)
    assert [r.inference_id for r in records] == ["1", "1", "1"]
    assert len(set(event_ids)) == 3


async def test_the_configured_share_is_captured(
    start_worker, onnx_models, v2, kafka_settings, unique_name
) -> None:
    namespace = unique_name("capture")
    worker = await start_worker(onnx_models.mlp(), namespace=namespace, capture_percent=25)
    total = 400
    for start in range(0, total, 50):
        await asyncio.gather(
            *(worker.infer(v2.request({"x": X}, id=str(i))) for i in range(start, start + 50))
        )
    await wait_flushed(worker.app)
    captured = worker.app.metrics.stats.captured
    assert worker.app.metrics.stats.capture_dropped == 0
    # Binomial(400, 0.25): mean 100, sd 8.7; these bounds are > 5 sd away.
    assert 55 <= captured <= 145, captured
    records = await read_captured(kafka_settings, namespace, captured)
    assert len({r.inference_id for r in records}) == captured


@pytest.fixture
async def stoppable_broker(tmp_path) -> AsyncIterator[BrokerProcess]:
    """A broker of this test's own, which the test may freeze with SIGSTOP."""
    broker = await asyncio.to_thread(
        start_broker, port=free_port(), log_path=tmp_path / "broker.log"
    )
    try:
        yield broker
    finally:
        os.kill(broker.pid, signal.SIGCONT)
        await asyncio.to_thread(broker.stop)


async def capturing_worker(stoppable_broker, start_worker, onnx_models, kafka_settings):
    """A worker capturing every inference (queue of 5) to ``stoppable_broker``."""
    kafka = kafka_settings.model_copy(
        update={"bootstrap_servers": stoppable_broker.bootstrap_servers, "request_timeout_ms": 4000}
    )
    return await start_worker(
        onnx_models.mlp(), capture_percent=100, capture_queue_size=5, kafka=kafka
    )


async def test_a_stuck_bus_drops_captures_without_slowing_inference(
    stoppable_broker, start_worker, onnx_models, v2, kafka_settings
) -> None:
    # stoppable_broker comes first so that it is torn down after the worker.
    worker = await capturing_worker(stoppable_broker, start_worker, onnx_models, kafka_settings)
    request = v2.request({"x": X})
    for _ in range(5):  # the bus works: captures are published
        await worker.infer(request)
    await wait_flushed(worker.app)
    assert worker.app.metrics.stats.captured == 5

    os.kill(stoppable_broker.pid, signal.SIGSTOP)
    try:
        latencies = []
        for _ in range(40):
            started = time.perf_counter()
            response = await worker.infer(request)
            latencies.append(time.perf_counter() - started)
            assert response.outputs
        stats = worker.app.metrics.stats
        # At most the queue (5) and the batch the publisher holds are waiting; the rest dropped.
        assert stats.capture_dropped >= 40 - 5 - 5, stats
        assert worker.app.capture.backlog <= 5
        assert max(latencies) < 0.25, f"max latency {max(latencies):.3f}s with the bus stuck"
    finally:
        os.kill(stoppable_broker.pid, signal.SIGCONT)
    # Once the bus answers again, what was still queued is published.
    await wait_flushed(worker.app)
    assert worker.app.metrics.stats.captured > 5


async def test_stopping_with_the_bus_stuck_accounts_for_every_capture(
    stoppable_broker, start_worker, onnx_models, v2, kafka_settings
) -> None:
    worker = await capturing_worker(stoppable_broker, start_worker, onnx_models, kafka_settings)
    worker.app.capture._stop_timeout_s = 0.5
    request = v2.request({"x": X})
    os.kill(stoppable_broker.pid, signal.SIGSTOP)
    try:
        for _ in range(12):
            await worker.infer(request)
        await asyncio.sleep(0.2)  # the publisher holds a batch it cannot send
        await worker.app.capture.stop()
        stats = worker.app.metrics.stats
        # Published, or dropped (queue full, or at stop: queued or in the batch being sent).
        assert stats.captured + stats.capture_dropped == 12, stats
        assert stats.captured == 0
    finally:
        os.kill(stoppable_broker.pid, signal.SIGCONT)


async def test_records_too_large_for_a_capture_are_dropped_and_counted(
    start_worker, onnx_models, v2, unique_name
) -> None:
    worker = await start_worker(
        onnx_models.mlp(),
        namespace=unique_name("capture"),
        capture_percent=100,
        capture_max_payload_bytes=4096,
    )
    await worker.infer(v2.request({"x": X}))  # ~200 bytes: captured
    big = np.zeros((64, 30), np.float32)  # 7.7 KB of input: dropped
    response = await worker.infer(v2.request({"x": big}))
    assert response.outputs
    await wait_flushed(worker.app)
    stats = worker.app.metrics.stats
    assert (stats.captured, stats.capture_dropped) == (1, 1)
