"""The router's hop: ModelInfer requests multiplexed on ``WorkerStreamService/Infer``."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from mlbus.core.rpc import error_details
from mlbus.inference.v1 import worker_pb2 as wpb
from mlbus.inference.v2 import grpc_service_pb2 as pb

pytestmark = pytest.mark.asyncio

X = np.arange(8, dtype=np.float32).reshape(2, 4) - 3.5


def open_stream(channel: grpc.aio.Channel) -> grpc.aio.StreamStreamCall:
    return channel.stream_stream(
        "/mlbus.inference.v1.WorkerStreamService/Infer",
        request_serializer=wpb.StreamInferRequests.SerializeToString,
        response_deserializer=wpb.StreamInferResponses.FromString,
    )()


async def answers(
    call: grpc.aio.StreamStreamCall, count: int
) -> dict[int, wpb.StreamInferResponse]:
    got: dict[int, wpb.StreamInferResponse] = {}
    while len(got) < count:
        batch = await asyncio.wait_for(call.read(), 10)
        assert batch is not grpc.aio.EOF
        for reply in batch.responses:
            assert reply.sequence not in got, "answered twice"
            got[reply.sequence] = reply
    return got


async def test_many_requests_per_message_each_answered_with_its_own_status(
    start_worker, onnx_models, v2
) -> None:
    worker = await start_worker(onnx_models.mixed())
    call = open_stream(worker.running.channel)
    good = v2.request(
        {"x": X, "i": np.array([[1, 2], [3, 4]]), "s": np.array([b"a", b"b"], dtype=object)}
    )
    other = pb.ModelInferRequest()
    other.CopyFrom(good)
    other.model_name = "other"
    batch = wpb.StreamInferRequests()
    for sequence in range(1, 21):
        batch.requests.add(sequence=sequence, request=good.SerializeToString(), timeout_seconds=10)
    batch.requests.add(sequence=21, request=b"\xff\xff not protobuf", timeout_seconds=10)
    batch.requests.add(sequence=22, request=other.SerializeToString(), timeout_seconds=10)
    await call.write(batch)
    # A second message on the same stream while the first is being answered.
    await call.write(
        wpb.StreamInferRequests(
            requests=[wpb.StreamInferRequest(sequence=23, request=good.SerializeToString())]
        )
    )
    got = await answers(call, 23)
    for sequence in [*range(1, 21), 23]:
        reply = got[sequence]
        assert reply.code == 0, reply.message
        response = pb.ModelInferResponse.FromString(reply.response)
        assert v2.outputs(response)["y"].tolist() == (X * 2).tolist()
    assert got[21].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "not a valid inference.ModelInferRequest" in got[21].message
    assert got[22].code == grpc.StatusCode.NOT_FOUND.value[0]
    assert got[22].message == "model 'other' is not served here; this worker serves 'm'"
    trailers = [(k, v.decode()) for k, v in got[22].trailers.items()]
    assert error_details(trailers) == {"model": "other"}
    # The stream stays usable after errors, and ends cleanly when the sender closes.
    await call.write(
        wpb.StreamInferRequests(
            requests=[wpb.StreamInferRequest(sequence=24, request=good.SerializeToString())]
        )
    )
    assert (await answers(call, 1))[24].code == 0
    await call.done_writing()
    assert await asyncio.wait_for(call.read(), 10) is grpc.aio.EOF
    assert await call.code() is grpc.StatusCode.OK


async def test_an_expired_deadline_answers_deadline_exceeded(start_worker, onnx_models, v2) -> None:
    worker = await start_worker(onnx_models.mixed())
    call = open_stream(worker.running.channel)
    good = v2.request(
        {"x": X, "i": np.array([[1, 2], [3, 4]]), "s": np.array([b"a", b"b"], dtype=object)}
    )
    await call.write(
        wpb.StreamInferRequests(
            requests=[
                wpb.StreamInferRequest(
                    sequence=1, request=good.SerializeToString(), timeout_seconds=1e-9
                )
            ]
        )
    )
    reply = (await answers(call, 1))[1]
    assert reply.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    call.cancel()


async def test_a_request_waiting_past_its_deadline_is_answered_then_and_alone(
    start_worker, onnx_models, v2
) -> None:
    # The batcher holds requests for 0.4 s: the first has 0.1 s, the others plenty.
    worker = await start_worker(onnx_models.mlp(), max_batch_size=8, max_queue_delay_us=400_000)
    call = open_stream(worker.running.channel)
    x = np.ones((1, 30), np.float32)
    batch = wpb.StreamInferRequests()
    for sequence, timeout in [(1, 0.1), (2, 10.0), (3, 10.0), (4, 10.0)]:
        request = v2.request({"x": x * sequence}).SerializeToString()
        batch.requests.add(sequence=sequence, request=request, timeout_seconds=timeout)
    loop = asyncio.get_running_loop()
    sent = loop.time()
    await call.write(batch)
    first = await asyncio.wait_for(call.read(), 10)
    assert [r.sequence for r in first.responses] == [1]
    assert first.responses[0].code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert loop.time() - sent < 0.35, "answered when the batch ran, not at its deadline"
    rest = await answers(call, 3)
    assert sorted(rest) == [2, 3, 4]
    assert all(reply.code == 0 for reply in rest.values()), rest
    # The expired request was not run with the others.
    assert worker.app.metrics.stats.session_rows == 3
    call.cancel()
