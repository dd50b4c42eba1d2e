"""The worker's asynchronous-request and batch-chunk handlers tell a passing outage of the
object store from a bad request: the first is retried by the consumer (RetryableError),
only the second fails the request or chunk at once."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import pytest

from mlbus.core import async_inference as ai
from mlbus.core.errors import Unavailable
from mlbus.core.messaging import Event, RetryableError, TopicCatalogue
from mlbus.core.messaging.envelope import Envelope
from mlbus.inference.events.async_requests import AsyncRequestHandler
from mlbus.inference.events.batch_chunks import BatchChunkHandler
from mlbus.inference.v2 import grpc_service_pb2 as pb
from mlbus.router.v1 import events_pb2 as rev

CATALOGUE = TopicCatalogue("unit")


class DownStore:
    """An object store answering every call as S3 does during an outage (503 SlowDown)."""

    def __init__(self) -> None:
        self.calls = 0

    def uri_for(self, key: str) -> str:
        return f"s3://bucket/{key}"

    async def _down(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        raise Unavailable("object 's3://bucket/x': object store unavailable: SlowDown")

    exists = read_bytes = read_range = put = _down


def event(message: Any, topic: Any, headers: tuple[tuple[str, bytes], ...] = ()) -> Event[Any]:
    return Event(
        message=message,
        topic=topic,
        key="k",
        raw_key=b"k",
        envelope=Envelope.from_headers(list(headers), fallback_id="unit/0/1"),
        partition=0,
        offset=1,
        timestamp=datetime.now(UTC),
    )


async def test_a_chunk_meeting_a_store_outage_is_retried_not_dead_lettered() -> None:
    store = DownStore()
    handler = BatchChunkHandler(cast(Any, None), cast(Any, store), endpoint="churn")
    chunk = rev.BatchChunkRequested(job_id="job-1", chunk_index=3, endpoint="churn")
    with pytest.raises(RetryableError, match="object store unavailable"):
        await handler.handle(event(chunk, CATALOGUE.batch_chunks("churn")))
    assert store.calls == 1
    assert handler.running == 0


def async_handler(store: DownStore) -> AsyncRequestHandler:
    return AsyncRequestHandler(
        cast(Any, None),
        cast(Any, store),
        cast(Any, None),
        requests=CATALOGUE.async_requests("churn"),
        results=CATALOGUE.async_results("churn"),
        errors=CATALOGUE.async_errors("churn"),
        endpoint="churn",
        variant="a",
        model_version=1,
        default_timeout_s=60,
    )


async def test_an_async_request_meeting_a_store_outage_is_retried_not_failed() -> None:
    store = DownStore()
    handler = async_handler(store)
    request = pb.ModelInferRequest(model_name="churn", id="req-1")
    with pytest.raises(RetryableError, match="object store unavailable"):
        await handler.handle(event(request, CATALOGUE.async_requests("churn")))
    assert handler.failed == 0


async def test_an_outage_reading_claim_checked_input_is_not_blamed_on_the_input() -> None:
    handler = async_handler(DownStore())
    headers = ((ai.H_INPUT_URI, b"s3://bucket/in/req-1.pb"),)
    with pytest.raises(Unavailable, match="object store unavailable"):
        await handler._load_input(pb.ModelInferRequest(), headers)
