"""gRPC metadata carries the trace context exactly as OpenTelemetry's W3C propagators would
write and read it, whichever path (the direct one for a plain traceparent, or the
propagators) handles a case."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.propagators.textmap import DefaultGetter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from mlbus.core.telemetry import extract_grpc_context, inject_grpc_metadata

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
SPAN_ID = 0xB7AD6B7169203331


def context_with(
    flags: int = TraceFlags.SAMPLED,
    state: TraceState | None = None,
    items: dict[str, str] | None = None,
) -> otel_context.Context:
    span = NonRecordingSpan(
        SpanContext(
            TRACE_ID, SPAN_ID, is_remote=False, trace_flags=TraceFlags(flags), trace_state=state
        )
    )
    ctx = trace.set_span_in_context(span)
    for key, value in (items or {}).items():
        ctx = baggage.set_baggage(key, value, context=ctx)
    return ctx


def reference_inject(ctx: otel_context.Context) -> dict[str, str]:
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=ctx)
    return carrier


@pytest.mark.parametrize(
    "ctx",
    [
        context_with(),
        context_with(flags=TraceFlags.DEFAULT),
        context_with(state=TraceState([("vendor", "v1")])),
        context_with(items={"tenant": "acme"}),
        otel_context.Context(),
        baggage.set_baggage("only", "baggage", context=otel_context.Context()),
    ],
    ids=["sampled", "not-sampled", "tracestate", "baggage", "no-span", "baggage-only"],
)
def test_injected_metadata_is_what_the_propagators_write(ctx: otel_context.Context) -> None:
    metadata: list[tuple[str, str]] = [("x-other", "kept"), ("traceparent", "00-stale")]
    inject_grpc_metadata(metadata, ctx)
    expected = reference_inject(ctx)
    carried = dict(metadata)
    assert carried.pop("x-other") == "kept"
    if "traceparent" not in expected:
        carried.pop("traceparent", None)  # nothing to replace the caller's own header with
    assert carried == expected


def span_context_of(ctx: otel_context.Context) -> SpanContext:
    return trace.get_current_span(ctx).get_span_context()


@pytest.mark.parametrize(
    "headers",
    [
        [("traceparent", f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-01")],
        [("traceparent", f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-00")],
        [("traceparent", f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-01".encode())],
        [("traceparent", f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-01"), ("tracestate", "v=1")],
        [("traceparent", f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-01"), ("baggage", "k=v")],
        [("traceparent", f"00-{TRACE_ID:032X}-{SPAN_ID:016x}-01")],  # upper case
        [("traceparent", f"ff-{TRACE_ID:032x}-{SPAN_ID:016x}-01")],  # forbidden version
        [("traceparent", f"01-{TRACE_ID:032x}-{SPAN_ID:016x}-01-future")],  # newer version
        [("traceparent", f"00-{0:032x}-{SPAN_ID:016x}-01")],  # zero trace id
        [("traceparent", f"00-{TRACE_ID:032x}-{0:016x}-01")],  # zero span id
        [("traceparent", f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-0g")],
        [("traceparent", "garbage")],
        [("x-other", "1")],
        [],
    ],
)
def test_extracted_context_is_what_the_propagators_read(headers: list[tuple[str, Any]]) -> None:
    ours = extract_grpc_context(headers)
    carrier = {k: v if isinstance(v, str) else v.decode() for k, v in headers}
    reference = propagate.extract(carrier, getter=DefaultGetter())
    assert span_context_of(ours) == span_context_of(reference)
    assert span_context_of(ours).trace_state == span_context_of(reference).trace_state
    assert baggage.get_all(ours) == baggage.get_all(reference)


def test_the_direct_path_is_taken_with_the_default_propagators() -> None:
    from mlbus.core import telemetry

    assert telemetry._uses_default_propagators()
