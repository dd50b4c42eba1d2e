"""OpenTelemetry set-up and W3C trace-context propagation over gRPC metadata and Kafka headers.

One call, :func:`setup_telemetry`, in a service's ``main()`` installs the tracer and meter
providers. Library code only uses the OpenTelemetry API (``trace.get_tracer``,
``metrics.get_meter``) and the carriers below, so it works the same whether telemetry is
configured or not.

With no traces exporter (``MLBUS_TELEMETRY_TRACES_EXPORTER=none``, the default) nothing
would ever read a recorded span, so none is recorded: a :class:`PropagatingTracerProvider`
gives every span a fresh id inside the caller's trace (or a new trace, sampled per
``sample_ratio``), so log lines still carry trace ids and outgoing calls and events still
carry the caller's ``traceparent``, at a fraction of the SDK's per-span cost. The SDK
modules are imported only when they are used, which keeps them out of a service's start-up
when it does not export.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from mlbus.core.settings import TelemetrySettings

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor

log = logging.getLogger(__name__)

KafkaHeaders = list[tuple[str, bytes]]

_lock = threading.Lock()
_state: Telemetry | None = None


@dataclass
class Telemetry:
    """What :func:`setup_telemetry` installed; keep it to shut down cleanly."""

    service_name: str
    tracer_provider: trace.TracerProvider
    """An SDK ``TracerProvider`` when spans are exported, else a :class:`PropagatingTracerProvider`."""
    meter_provider: MeterProvider | None
    metrics_port: int | None = None
    _metrics_server: Any = field(default=None, repr=False)

    def shutdown(self) -> None:
        """Flush and stop exporters and the metrics endpoint."""
        try:
            flush = getattr(self.tracer_provider, "force_flush", None)
            if flush is not None:
                flush()
                self.tracer_provider.shutdown()  # type: ignore[attr-defined]
        finally:
            if self.meter_provider is not None:
                self.meter_provider.shutdown()
            if self._metrics_server is not None:
                self._metrics_server.shutdown()
                self._metrics_server.server_close()


def _package_version() -> str:
    try:
        return importlib_metadata.version("mlbus-core")
    except importlib_metadata.PackageNotFoundError:
        return "0+unknown"


def build_resource(service_name: str) -> Resource:
    """Resource attributes for a service; ``OTEL_RESOURCE_ATTRIBUTES`` is merged in by the SDK."""
    from opentelemetry.sdk.resources import Resource

    return Resource.create(
        {
            "service.name": os.environ.get("OTEL_SERVICE_NAME", service_name),
            "service.namespace": "mlbus",
            "service.version": _package_version(),
            "service.instance.id": f"{socket.gethostname()}-{os.getpid()}",
        }
    )


def _span_processor(exporter: str) -> SpanProcessor | None:
    if exporter == "none":
        return None
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    if exporter == "console":
        return BatchSpanProcessor(ConsoleSpanExporter())
    if exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return BatchSpanProcessor(OTLPSpanExporter())
    return None


def _metric_reader(exporter: str) -> MetricReader | None:
    if exporter == "prometheus":
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        return PrometheusMetricReader()
    if exporter == "none":
        return None
    from opentelemetry.sdk.metrics.export import (
        ConsoleMetricExporter,
        PeriodicExportingMetricReader,
    )

    if exporter == "console":
        return PeriodicExportingMetricReader(ConsoleMetricExporter(), export_interval_millis=60000)
    if exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return PeriodicExportingMetricReader(OTLPMetricExporter())
    return None


# --- spans that propagate without recording ---------------------------------------------

_TRACE_ID_LOW = (1 << 64) - 1


class _PropagatingTracer(trace.Tracer):
    """Gives each span a fresh span id inside the parent's trace (same flags and state),
    or a new trace sampled per ``sample_ratio`` (the rule of the SDK's TraceIdRatioBased);
    records nothing."""

    def __init__(self, sample_ratio: float) -> None:
        self._bound = round(sample_ratio * (1 << 64))

    def start_span(
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Any = None,
        links: Any = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        parent = trace.get_current_span(context).get_span_context()
        span_id = random.getrandbits(64) or 1
        if parent.is_valid:
            return NonRecordingSpan(
                SpanContext(
                    parent.trace_id,
                    span_id,
                    is_remote=False,
                    trace_flags=parent.trace_flags,
                    trace_state=parent.trace_state,
                )
            )
        trace_id = random.getrandbits(128) or 1
        sampled = (trace_id & _TRACE_ID_LOW) < self._bound
        flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
        return NonRecordingSpan(SpanContext(trace_id, span_id, is_remote=False, trace_flags=flags))

    @contextmanager
    def start_as_current_span(  # type: ignore[override]
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Any = None,
        links: Any = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[trace.Span]:
        span = self.start_span(name, context)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            yield span
        finally:
            otel_context.detach(token)


class PropagatingTracerProvider(trace.TracerProvider):
    """The tracer provider of a service that exports no spans (see the module docstring)."""

    def __init__(self, sample_ratio: float = 1.0) -> None:
        self._tracer = _PropagatingTracer(sample_ratio)

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: Any = None,
    ) -> trace.Tracer:
        return self._tracer


def setup_telemetry(
    service_name: str,
    settings: TelemetrySettings,
    *,
    metrics_host: str = "127.0.0.1",
    metrics_port: int = 0,
) -> Telemetry:
    """Install tracer and meter providers for this process (idempotent).

    With the prometheus exporter a text endpoint is served on ``metrics_host:metrics_port``
    (0 picks a free port; the chosen one is in the result). A second call returns the
    first call's result: OpenTelemetry providers can be set only once per process.
    """
    global _state
    with _lock:
        if _state is not None:
            return _state
        resource: Resource | None = None
        tracer_provider = _install_tracer_provider(service_name, settings)
        processor = _span_processor(settings.traces_exporter)
        if processor is not None:
            tracer_provider.add_span_processor(processor)  # type: ignore[attr-defined]

        meter_provider: MeterProvider | None = None
        server: Any = None
        port: int | None = None
        reader = _metric_reader(settings.metrics_exporter)
        if reader is not None:
            from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider

            resource = build_resource(service_name)
            # Only OTLP carries exemplars; elsewhere choosing them per measurement (for every
            # sampled span) is a cost with no reader.
            extra: dict[str, Any] = {}
            if settings.metrics_exporter != "otlp":
                extra["exemplar_filter"] = AlwaysOffExemplarFilter()
            meter_provider = MeterProvider(resource=resource, metric_readers=[reader], **extra)
            metrics.set_meter_provider(meter_provider)
            if settings.metrics_exporter == "prometheus":
                from prometheus_client import start_http_server

                server, _thread = start_http_server(metrics_port, addr=metrics_host)
                port = int(server.server_port)
        _state = Telemetry(service_name, tracer_provider, meter_provider, port, server)
        return _state


def _install_tracer_provider(
    service_name: str, settings: TelemetrySettings
) -> trace.TracerProvider:
    current = trace.get_tracer_provider()
    if hasattr(current, "add_span_processor"):
        # Someone (a test harness) installed an SDK provider already: add to it.
        return current
    provider: trace.TracerProvider
    if settings.traces_exporter == "none":
        provider = PropagatingTracerProvider(settings.sample_ratio)
    else:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        provider = TracerProvider(
            resource=build_resource(service_name),
            sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
        )
    trace.set_tracer_provider(provider)
    return provider


def reset_for_tests() -> None:
    """Forget the installed state so a test can call :func:`setup_telemetry` again."""
    global _state
    with _lock:
        if _state is not None and _state._metrics_server is not None:
            _state._metrics_server.shutdown()
            _state._metrics_server.server_close()
        _state = None


# --- carriers -------------------------------------------------------------------------


class _KafkaHeaderSetter(Setter[KafkaHeaders]):
    def set(self, carrier: KafkaHeaders, key: str, value: str) -> None:
        carrier[:] = [(k, v) for k, v in carrier if k != key]
        carrier.append((key, value.encode()))


class _KafkaHeaderGetter(Getter[Sequence[tuple[str, bytes]]]):
    def get(self, carrier: Sequence[tuple[str, bytes]], key: str) -> list[str] | None:
        values = [v.decode("utf-8", "replace") for k, v in carrier if k == key and v is not None]
        return values or None

    def keys(self, carrier: Sequence[tuple[str, bytes]]) -> list[str]:
        return [k for k, _ in carrier]


class _MetadataSetter(Setter[list[tuple[str, str]]]):
    def set(self, carrier: list[tuple[str, str]], key: str, value: str) -> None:
        carrier[:] = [(k, v) for k, v in carrier if k != key]
        carrier.append((key.lower(), value))


class _MetadataGetter(Getter[Iterable[tuple[str, Any]]]):
    def get(self, carrier: Iterable[tuple[str, Any]], key: str) -> list[str] | None:
        values = [v if isinstance(v, str) else bytes(v).decode() for k, v in carrier if k == key]
        return values or None

    def keys(self, carrier: Iterable[tuple[str, Any]]) -> list[str]:
        return [k for k, _ in carrier]


def inject_kafka_headers(headers: KafkaHeaders, ctx: otel_context.Context | None = None) -> None:
    """Write ``traceparent`` (and ``tracestate``/baggage) of ``ctx`` (default: current) into headers."""
    propagate.inject(headers, context=ctx, setter=_KafkaHeaderSetter())


def extract_kafka_context(headers: Sequence[tuple[str, bytes]] | None) -> otel_context.Context:
    """The trace context a Kafka record's headers carry (empty context if none)."""
    return propagate.extract(list(headers or ()), getter=_KafkaHeaderGetter())


def inject_grpc_metadata(
    metadata: list[tuple[str, str]], ctx: otel_context.Context | None = None
) -> None:
    """Write the trace context into outgoing gRPC metadata."""
    propagate.inject(metadata, context=ctx, setter=_MetadataSetter())


def extract_grpc_context(metadata: Iterable[tuple[str, Any]] | None) -> otel_context.Context:
    """The trace context carried by incoming gRPC metadata."""
    return propagate.extract(list(metadata or ()), getter=_MetadataGetter())


def current_trace_ids() -> Mapping[str, str]:
    """Hex trace and span id of the current span, or an empty mapping."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return {}
    return {"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x")}
