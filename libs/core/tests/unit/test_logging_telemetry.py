from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from mlbus.core.logging import setup_logging
from mlbus.core.settings import LogSettings
from mlbus.core.telemetry import (
    extract_grpc_context,
    extract_kafka_context,
    inject_grpc_metadata,
    inject_kafka_headers,
)


@pytest.fixture(scope="module")
def tracer() -> trace.Tracer:
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())
    return trace.get_tracer("test")


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    setup_logging("demo", LogSettings(level="INFO", format="json"), stream=stream)
    yield stream
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_json_lines_carry_trace_and_span_ids(tracer: trace.Tracer, log_stream: io.StringIO) -> None:
    with tracer.start_as_current_span("work") as span:
        logging.getLogger("demo.x").info("hello %s", "world", extra={"topic": "t1"})
    entry = json.loads(log_stream.getvalue().splitlines()[-1])
    ctx = span.get_span_context()
    assert entry["message"] == "hello world"
    assert entry["service"] == "demo"
    assert entry["level"] == "INFO"
    assert entry["topic"] == "t1"
    assert entry["trace_id"] == format(ctx.trace_id, "032x")
    assert entry["span_id"] == format(ctx.span_id, "016x")


def test_json_lines_without_span_and_with_exception(log_stream: io.StringIO) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("demo").exception("failed")
    entry = json.loads(log_stream.getvalue().splitlines()[-1])
    assert "trace_id" not in entry
    assert "ValueError: boom" in entry["exception"]


def test_kafka_headers_carry_w3c_context(tracer: trace.Tracer) -> None:
    headers: list[tuple[str, bytes]] = [("ce_id", b"1")]
    with tracer.start_as_current_span("produce") as span:
        inject_kafka_headers(headers)
    assert headers[0] == ("ce_id", b"1")
    traceparent = dict(headers)["traceparent"].decode()
    assert traceparent.split("-")[1] == format(span.get_span_context().trace_id, "032x")
    with tracer.start_as_current_span("consume", context=extract_kafka_context(headers)) as child:
        assert child.get_span_context().trace_id == span.get_span_context().trace_id
        assert child.parent is not None
        assert child.parent.span_id == span.get_span_context().span_id


def test_grpc_metadata_carries_w3c_context(tracer: trace.Tracer) -> None:
    metadata: list[tuple[str, str]] = []
    with tracer.start_as_current_span("call") as span:
        inject_grpc_metadata(metadata)
    ctx = extract_grpc_context(metadata)
    remote = trace.get_current_span(ctx).get_span_context()
    assert remote.trace_id == span.get_span_context().trace_id
    assert remote.is_remote


def test_no_context_extracts_to_invalid_span() -> None:
    assert not trace.get_current_span(extract_kafka_context(None)).get_span_context().is_valid
