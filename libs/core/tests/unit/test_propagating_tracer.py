"""Without a traces exporter: spans propagate the trace context and record nothing; the SDK
and boto3 stay unimported until used."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from mlbus.core.telemetry import (
    PropagatingTracerProvider,
    extract_grpc_context,
    inject_grpc_metadata,
)

PARENT = SpanContext(
    trace_id=0x0AF7651916CD43DD8448EB211C80319C,
    span_id=0xB7AD6B7169203331,
    is_remote=True,
    trace_flags=TraceFlags(TraceFlags.SAMPLED),
)


def test_a_span_continues_the_callers_trace_with_a_span_id_of_its_own() -> None:
    tracer = PropagatingTracerProvider().get_tracer("test")
    parent = trace.set_span_in_context(NonRecordingSpan(PARENT))
    with tracer.start_as_current_span("server", context=parent) as span:
        ctx = span.get_span_context()
        assert trace.get_current_span() is span
        outgoing: list[tuple[str, str]] = []
        inject_grpc_metadata(outgoing)
    assert not span.is_recording()
    assert ctx.trace_id == PARENT.trace_id
    assert ctx.span_id not in (0, PARENT.span_id)
    assert ctx.trace_flags.sampled
    assert not ctx.is_remote
    # Downstream sees this span as the parent, in the same trace.
    remote = trace.get_current_span(extract_grpc_context(outgoing)).get_span_context()
    assert (remote.trace_id, remote.span_id) == (ctx.trace_id, ctx.span_id)
    assert trace.get_current_span() is not span  # detached on exit
    child = tracer.start_span("child", context=trace.set_span_in_context(span))
    assert child.get_span_context().trace_id == PARENT.trace_id
    unsampled = SpanContext(PARENT.trace_id, PARENT.span_id, True, TraceFlags(0))
    kept = tracer.start_span("x", context=trace.set_span_in_context(NonRecordingSpan(unsampled)))
    assert not kept.get_span_context().trace_flags.sampled  # the caller's decision stands


def test_new_traces_are_sampled_per_ratio() -> None:
    for ratio, expected in ((1.0, 200), (0.0, 0)):
        tracer = PropagatingTracerProvider(ratio).get_tracer("test")
        spans = [tracer.start_span("root") for _ in range(200)]
        assert len({s.get_span_context().trace_id for s in spans}) == 200
        assert sum(s.get_span_context().trace_flags.sampled for s in spans) == expected
    tracer = PropagatingTracerProvider(0.5).get_tracer("test")
    sampled = sum(
        tracer.start_span("root").get_span_context().trace_flags.sampled for _ in range(2000)
    )
    assert 800 < sampled < 1200


def test_setup_without_exporters_imports_neither_the_trace_sdk_nor_boto3() -> None:
    script = textwrap.dedent(
        """
        import sys
        from opentelemetry import trace
        from mlbus.core.settings import TelemetrySettings
        from mlbus.core.telemetry import PropagatingTracerProvider, setup_telemetry
        import mlbus.core.storage

        telemetry = setup_telemetry("t", TelemetrySettings(metrics_exporter="none"))
        assert isinstance(trace.get_tracer_provider(), PropagatingTracerProvider)
        assert telemetry.meter_provider is None
        telemetry.shutdown()
        loaded = [m for m in ("opentelemetry.sdk.trace", "boto3", "botocore") if m in sys.modules]
        assert not loaded, loaded
        assert mlbus.core.storage.S3ObjectStore.__name__ == "S3ObjectStore"  # on first use
        assert "boto3" in sys.modules
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
