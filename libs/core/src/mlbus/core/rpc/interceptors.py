"""gRPC interceptors (grpc.aio): error mapping, tracing and access logs on servers;
default deadline and tracing on clients.

Server interceptors wrap the method handler's behaviour, for all four RPC kinds, so
they run inside the call (for streaming responses, around the whole stream). Order on
a server, outermost first: tracing (the span is current while everything else runs, so
logs and outgoing calls carry the trace id), access log, errors, then any extras.

:func:`instrument_handler` does what those three interceptors do, in the same order, to
one method handler, once, when it is registered: grpc.aio runs server interceptors as a
chain of coroutines on *every* call (each re-wrapping the handler), which costs more per
call than many handlers do. :func:`~mlbus.core.rpc.create_server` registers services that
way; the interceptor classes remain for servers that need interceptors of their own.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import time
import uuid
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
)
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from mlbus.core.errors import MlbusError
from mlbus.core.telemetry import current_trace_ids, extract_grpc_context, inject_grpc_metadata

log = logging.getLogger(__name__)
#: One DEBUG line per served call; raise this logger's level to silence it.
access_log = logging.getLogger("mlbus.core.rpc.access")

_TRACER_NAME = "mlbus.core.rpc"

#: Prefix of the trailing-metadata keys that carry :attr:`MlbusError.details`.
DETAIL_PREFIX = "mlbus-"

#: Probes and tooling: neither traced nor access-logged by default, or every
#: readiness probe would be a trace.
HEALTH_SERVICE = "grpc.health.v1.Health"
UNTRACED_SERVICES: frozenset[str] = frozenset(
    {
        HEALTH_SERVICE,
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
        # The router's long-lived stream to a worker: each request on it gets a span of
        # its own (mlbus.inference.api.stream), the stream none.
        "mlbus.inference.v1.WorkerStreamService",
    }
)

# Server statuses that mean the server failed (OpenTelemetry RPC semantic conventions);
# the others (NOT_FOUND, INVALID_ARGUMENT, ...) are the caller's problem and leave the
# server span's status unset. Client spans are errors on any non-OK status.
_SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)

ServicerContext: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
UnaryBehavior: TypeAlias = Callable[[Any, ServicerContext], Awaitable[Any]]
StreamBehavior: TypeAlias = Callable[[Any, ServicerContext], AsyncIterator[Any]]
Continuation: TypeAlias = (
    "Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]]"
)
MetadataPairs: TypeAlias = tuple[tuple[str, str | bytes], ...]


# grpc-stubs make these generic; the runtime classes are not subscriptable.
if TYPE_CHECKING:
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
    _UnaryUnaryClientInterceptor = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStreamClientInterceptor = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    _StreamUnaryClientInterceptor = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    _StreamStreamClientInterceptor = grpc.aio.StreamStreamClientInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor
    _UnaryUnaryClientInterceptor = grpc.aio.UnaryUnaryClientInterceptor
    _UnaryStreamClientInterceptor = grpc.aio.UnaryStreamClientInterceptor
    _StreamUnaryClientInterceptor = grpc.aio.StreamUnaryClientInterceptor
    _StreamStreamClientInterceptor = grpc.aio.StreamStreamClientInterceptor


# --- helpers ---------------------------------------------------------------------------


def split_method(full_method: str | bytes) -> tuple[str, str]:
    """``/pkg.Service/Method`` → (``pkg.Service``, ``Method``)."""
    text = full_method.decode() if isinstance(full_method, bytes) else full_method
    service, _, method = text.lstrip("/").rpartition("/")
    return service, method


_BAD_KEY_CHARS = re.compile(r"[^0-9a-z_.-]")


def details_to_metadata(details: Mapping[str, str]) -> MetadataPairs:
    """Encode error details as trailing metadata: key ``mlbus-<key>``.

    Keys are lower-cased and characters gRPC does not allow become ``-``. A value that is
    not printable ASCII travels UTF-8 encoded under ``mlbus-<key>-bin``.
    """
    pairs: list[tuple[str, str | bytes]] = []
    for raw_key, raw_value in details.items():
        key = DETAIL_PREFIX + _BAD_KEY_CHARS.sub("-", str(raw_key).lower())
        value = str(raw_value)
        if key.endswith("-bin"):
            pairs.append((key, value.encode()))
        elif value.isascii() and value.isprintable():
            pairs.append((key, value))
        else:
            pairs.append((f"{key}-bin", value.encode()))
    return tuple(pairs)


def error_details(metadata: Iterable[Any] | None) -> dict[str, str]:
    """The error details in a call's trailing metadata, e.g.
    ``error_details(exc.trailing_metadata())`` for an ``AioRpcError`` (key-value pairs)."""
    details: dict[str, str] = {}
    for key, value in metadata or ():
        if not key.startswith(DETAIL_PREFIX):
            continue
        name = key[len(DETAIL_PREFIX) :]
        if isinstance(value, bytes):
            name = name.removesuffix("-bin")
            details[name] = value.decode("utf-8", "replace")
        else:
            details[name] = value
    return details


def _as_unary(behavior: Callable[..., Any]) -> UnaryBehavior:
    if inspect.iscoroutinefunction(behavior):
        return behavior

    # Sync handlers (e.g. generated base classes raising NotImplementedError) run on
    # the loop once wrapped; mlbus servicers are async.
    async def call(request: Any, context: ServicerContext) -> Any:
        result = behavior(request, context)
        if inspect.isawaitable(result):
            result = await result
        return result

    return call


def _as_stream(behavior: Callable[..., Any]) -> StreamBehavior:
    if inspect.isasyncgenfunction(behavior):
        return behavior

    async def call(request: Any, context: ServicerContext) -> AsyncIterator[Any]:
        result = behavior(request, context)
        if inspect.isawaitable(result):
            # A coroutine using context.write(): it sends its own messages.
            result = await result
        if result is None:
            return
        if isinstance(result, AsyncIterable):
            async for response in result:
                yield response
        else:
            for response in result:
                yield response

    return call


def rewrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any],
    wrap_unary: Callable[[UnaryBehavior], UnaryBehavior],
    wrap_stream: Callable[[StreamBehavior], StreamBehavior],
) -> grpc.RpcMethodHandler[Any, Any]:
    """A copy of ``handler`` whose behaviour is wrapped; unary responses by ``wrap_unary``,
    streaming responses by ``wrap_stream``. (De)serializers are kept."""
    deserializer = handler.request_deserializer
    serializer = handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            wrap_unary(_as_unary(handler.unary_unary)),
            request_deserializer=deserializer,
            response_serializer=serializer,
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            wrap_stream(_as_stream(handler.unary_stream)),
            request_deserializer=deserializer,
            response_serializer=serializer,
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            wrap_unary(_as_unary(handler.stream_unary)),
            request_deserializer=deserializer,
            response_serializer=serializer,
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            wrap_stream(_as_stream(handler.stream_stream)),
            request_deserializer=deserializer,
            response_serializer=serializer,
        )
    return handler


def _status_after(exc: BaseException | None, context: ServicerContext) -> grpc.StatusCode:
    """The status the client will see once the behaviour returned or raised ``exc``."""
    if exc is None or isinstance(exc, grpc.aio.AbortError):
        code: grpc.StatusCode | None = context.code()
        return code or (grpc.StatusCode.OK if exc is None else grpc.StatusCode.UNKNOWN)
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


class _AroundServerInterceptor(_ServerInterceptor):
    """Runs a sync context manager around every call of the selected methods."""

    def __init__(self, exclude_services: Iterable[str] = UNTRACED_SERVICES) -> None:
        self._exclude = frozenset(exclude_services)

    def _enabled(self) -> bool:
        return True

    def _around(
        self, method: str, details: grpc.HandlerCallDetails, context: ServicerContext
    ) -> Any:
        raise NotImplementedError

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or not self._enabled() or split_method(method)[0] in self._exclude:
            return handler
        around = self._around

        def wrap_unary(behavior: UnaryBehavior) -> UnaryBehavior:
            async def unary(request: Any, context: ServicerContext) -> Any:
                with around(method, handler_call_details, context):
                    return await behavior(request, context)

            return unary

        def wrap_stream(behavior: StreamBehavior) -> StreamBehavior:
            async def stream(request: Any, context: ServicerContext) -> AsyncIterator[Any]:
                with around(method, handler_call_details, context):
                    async for response in behavior(request, context):
                        yield response

            return stream

        return rewrap_handler(handler, wrap_unary, wrap_stream)


# --- server: errors --------------------------------------------------------------------


class ErrorInterceptor(_ServerInterceptor):
    """Maps exceptions escaping a servicer to gRPC statuses, once, for every service.

    :class:`MlbusError` → its ``code`` and ``message``, ``details`` as ``mlbus-*`` trailing
    metadata. ``NotImplementedError`` (generated base classes) → UNIMPLEMENTED. Anything
    else → INTERNAL "internal error; trace id <id>", logged once with its traceback; the
    client never sees the exception text. grpc's own abort and cancellation pass through.
    """

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method

        def wrap_unary(behavior: UnaryBehavior) -> UnaryBehavior:
            async def unary(request: Any, context: ServicerContext) -> Any:
                try:
                    return await behavior(request, context)
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await _abort_for(exc, method, context)

            return unary

        def wrap_stream(behavior: StreamBehavior) -> StreamBehavior:
            async def stream(request: Any, context: ServicerContext) -> AsyncIterator[Any]:
                try:
                    async for response in behavior(request, context):
                        yield response
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await _abort_for(exc, method, context)

            return stream

        return rewrap_handler(handler, wrap_unary, wrap_stream)


async def _abort_for(exc: Exception, method: str, context: ServicerContext) -> NoReturn:
    if isinstance(exc, MlbusError):
        if exc.code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
            # Raised on purpose, but still a server fault an operator should see.
            log.error(
                "%s failed: %s", method, exc.message, exc_info=exc, extra={"rpc_method": method}
            )
        await context.abort(exc.code, exc.message, details_to_metadata(exc.details))
    elif isinstance(exc, NotImplementedError):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"method {method} is not implemented")
    else:
        ids = current_trace_ids()
        extra = {"rpc_method": method}
        if "trace_id" in ids:
            reference = f"trace id {ids['trace_id']}"
        else:
            # No trace to point at: an id that appears in the log line and the message.
            extra["error_id"] = uuid.uuid4().hex
            reference = f"error id {extra['error_id']}"
        trace.get_current_span().record_exception(exc)
        log.error(
            "unhandled %s in %s (%s)",
            type(exc).__name__,
            method,
            reference,
            exc_info=exc,
            extra=extra,
        )
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error; {reference}")


# --- server: tracing and access log ----------------------------------------------------


class TracingServerInterceptor(_AroundServerInterceptor):
    """Runs each call in a SERVER span ``<package.Service>/<Method>`` continuing the
    caller's W3C trace context; the span is current while the servicer runs."""

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        exclude_services: Iterable[str] = UNTRACED_SERVICES,
    ) -> None:
        super().__init__(exclude_services)
        self._tracer = trace.get_tracer(_TRACER_NAME, tracer_provider=tracer_provider)

    @contextmanager
    def _around(
        self, method: str, details: grpc.HandlerCallDetails, context: ServicerContext
    ) -> Iterator[None]:
        service, name = split_method(method)
        parent = extract_grpc_context(details.invocation_metadata)
        with self._tracer.start_as_current_span(
            f"{service}/{name}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield
            except BaseException as exc:
                _end_server_span(span, _status_after(exc, context), exc)
                raise
            _end_server_span(span, _status_after(None, context), None)


def _end_server_span(span: Span, code: grpc.StatusCode, exc: BaseException | None) -> None:
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in _SERVER_FAULTS:
        span.set_status(Status(StatusCode.ERROR, code.name))
    if exc is not None and not isinstance(
        exc, grpc.aio.AbortError | asyncio.CancelledError | GeneratorExit
    ):
        span.record_exception(exc)


class AccessLogInterceptor(_AroundServerInterceptor):
    """One DEBUG line per call on ``mlbus.core.rpc.access``: method, status, duration.

    Costs nothing when that logger is not enabled for DEBUG.
    """

    def _enabled(self) -> bool:
        return access_log.isEnabledFor(logging.DEBUG)

    @contextmanager
    def _around(
        self, method: str, details: grpc.HandlerCallDetails, context: ServicerContext
    ) -> Iterator[None]:
        started = time.perf_counter()
        failure: BaseException | None = None
        try:
            yield
        except BaseException as exc:
            failure = exc
            raise
        finally:
            code = _status_after(failure, context)
            duration_ms = round((time.perf_counter() - started) * 1000, 3)
            access_log.debug(
                "%s %s %.1f ms",
                method,
                code.name,
                duration_ms,
                extra={"rpc_method": method, "grpc_status": code.name, "duration_ms": duration_ms},
            )


# --- server: all three, applied once per method handler --------------------------------

_EMPTY_CONTEXT = otel_context.Context()


def _propagation_keys() -> frozenset[str]:
    # The global propagator's header names (traceparent, tracestate, baggage by default).
    return frozenset(propagate.get_global_textmap().fields)


def instrument_handler(
    handler: grpc.RpcMethodHandler[Any, Any],
    method: str,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    exclude_services: Iterable[str] = UNTRACED_SERVICES,
) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` of ``method`` (``/pkg.Service/Method``) with tracing, access log and error
    mapping, as :class:`TracingServerInterceptor`, :class:`AccessLogInterceptor` and
    :class:`ErrorInterceptor` would add them (in that order), decided once instead of on
    every call. Services in ``exclude_services`` get error mapping only."""
    service, name = split_method(method)
    instrumented = service not in frozenset(exclude_services)
    tracer = trace.get_tracer(_TRACER_NAME, tracer_provider=tracer_provider)
    span_name = f"{service}/{name}"
    attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
    keys: frozenset[str] | None = None

    def start(context: ServicerContext) -> tuple[Span, object, float | None]:
        nonlocal keys
        if keys is None:
            keys = _propagation_keys()
        metadata = context.invocation_metadata()
        parent = _EMPTY_CONTEXT
        if metadata and any(key in keys for key, _ in metadata):
            parent = extract_grpc_context(metadata)
        span = tracer.start_span(
            span_name,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        started = time.perf_counter() if access_log.isEnabledFor(logging.DEBUG) else None
        return span, token, started

    def finish(
        span: Span,
        token: object,
        started: float | None,
        failure: BaseException | None,
        context: ServicerContext,
    ) -> None:
        try:
            code = _status_after(failure, context)
            if span.is_recording():
                _end_server_span(span, code, failure)
            span.end()
            if started is not None:
                duration_ms = round((time.perf_counter() - started) * 1000, 3)
                access_log.debug(
                    "%s %s %.1f ms",
                    method,
                    code.name,
                    duration_ms,
                    extra={
                        "rpc_method": method,
                        "grpc_status": code.name,
                        "duration_ms": duration_ms,
                    },
                )
        finally:
            otel_context.detach(token)  # type: ignore[arg-type]

    def wrap_unary(behavior: UnaryBehavior) -> UnaryBehavior:
        async def errors_only(request: Any, context: ServicerContext) -> Any:
            try:
                return await behavior(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await _abort_for(exc, method, context)

        if not instrumented:
            return errors_only

        async def unary(request: Any, context: ServicerContext) -> Any:
            span, token, started = start(context)
            failure: BaseException | None = None
            try:
                try:
                    return await behavior(request, context)
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await _abort_for(exc, method, context)
            except BaseException as exc:
                failure = exc
                raise
            finally:
                finish(span, token, started, failure, context)

        return unary

    def wrap_stream(behavior: StreamBehavior) -> StreamBehavior:
        async def errors_only(request: Any, context: ServicerContext) -> AsyncIterator[Any]:
            try:
                async for response in behavior(request, context):
                    yield response
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await _abort_for(exc, method, context)

        if not instrumented:
            return errors_only

        async def stream(request: Any, context: ServicerContext) -> AsyncIterator[Any]:
            span, token, started = start(context)
            failure: BaseException | None = None
            try:
                try:
                    async for response in behavior(request, context):
                        yield response
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await _abort_for(exc, method, context)
            except BaseException as exc:
                failure = exc
                raise
            finally:
                finish(span, token, started, failure, context)

        return stream

    return rewrap_handler(handler, wrap_unary, wrap_stream)


# --- client ----------------------------------------------------------------------------


def _with_details(
    details: grpc.aio.ClientCallDetails,
    *,
    timeout: float | None = None,
    metadata: grpc.aio.Metadata | None = None,
) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails(
        details.method,
        details.timeout if timeout is None else timeout,
        details.metadata if metadata is None else metadata,
        details.credentials,
        details.wait_for_ready,
    )


class _AllKindsClientInterceptor(
    _UnaryUnaryClientInterceptor,
    _UnaryStreamClientInterceptor,
    _StreamUnaryClientInterceptor,
    _StreamStreamClientInterceptor,
):
    """Same treatment for the four call kinds; subclasses implement :meth:`_intercept`.

    ``_intercept`` returns the call object unchanged, so callers keep the full call API
    (metadata, code, ``read``/``write``).

    grpc.aio files an interceptor under the *first* kind it implements only (an
    ``if/elif`` chain), so pass these to a channel through :func:`per_kind_interceptors`,
    as :func:`~mlbus.core.rpc.create_channel` does.
    """

    async def _intercept(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        raise NotImplementedError

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return await self._intercept(continuation, client_call_details, request)

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return await self._intercept(continuation, client_call_details, request)

    async def intercept_stream_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await self._intercept(continuation, client_call_details, request_iterator)

    async def intercept_stream_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await self._intercept(continuation, client_call_details, request_iterator)


class DefaultDeadlineInterceptor(_AllKindsClientInterceptor):
    """Gives every call without a timeout the default one, so no call waits forever.

    Long-lived streams must pass an explicit (large) timeout.
    """

    def __init__(self, default_timeout_s: float) -> None:
        if default_timeout_s <= 0:
            raise ValueError(f"default_timeout_s must be > 0, got {default_timeout_s}")
        self.default_timeout_s = default_timeout_s

    async def _intercept(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        if details.timeout is None:
            details = _with_details(details, timeout=self.default_timeout_s)
        return await continuation(details, request)


class TracingClientInterceptor(_AllKindsClientInterceptor):
    """A CLIENT span per call, child of the current span, with its context injected
    into the outgoing metadata (``traceparent``); ends when the call completes."""

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        exclude_services: Iterable[str] = UNTRACED_SERVICES,
    ) -> None:
        self._tracer = trace.get_tracer(_TRACER_NAME, tracer_provider=tracer_provider)
        self._exclude = frozenset(exclude_services)
        # Strong references to the short tasks that read a finished call's status.
        self._finishing: set[asyncio.Task[None]] = set()

    async def _intercept(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        service, name = split_method(details.method)
        if service in self._exclude:
            return await continuation(details, request)
        span = self._tracer.start_span(
            f"{service}/{name}",
            kind=SpanKind.CLIENT,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
        )
        carrier: list[tuple[str, str]] = []
        inject_grpc_metadata(carrier, trace.set_span_in_context(span))
        injected = {key for key, _ in carrier}
        metadata = grpc.aio.Metadata(
            *[(k, v) for k, v in (details.metadata or ()) if k not in injected], *carrier
        )
        try:
            call = await continuation(_with_details(details, metadata=metadata), request)
        except BaseException as exc:
            code = exc.code() if isinstance(exc, grpc.RpcError) else grpc.StatusCode.UNKNOWN
            _end_client_span(span, code, str(exc))
            raise
        # The status of a finished call is only available through coroutines, and done
        # callbacks are synchronous: read it in a task that finishes at once.
        call.add_done_callback(lambda done: self._schedule_end(done, span))
        return call

    def _schedule_end(self, call: Any, span: Span) -> None:
        task = asyncio.get_running_loop().create_task(self._end(call, span))
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    @staticmethod
    async def _end(call: Any, span: Span) -> None:
        try:
            code: grpc.StatusCode = await call.code()
            message: str = await call.details() or ""
        except asyncio.CancelledError:
            code, message = grpc.StatusCode.CANCELLED, "cancelled"
        _end_client_span(span, code, message)


def _end_client_span(span: Span, code: grpc.StatusCode, message: str) -> None:
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code is not grpc.StatusCode.OK:
        span.set_status(Status(StatusCode.ERROR, f"{code.name}: {message}"))
    span.end()


# --- one interceptor per call kind -----------------------------------------------------


class _UnaryUnaryPart(_UnaryUnaryClientInterceptor):
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return await self.inner.intercept_unary_unary(continuation, client_call_details, request)


class _UnaryStreamPart(_UnaryStreamClientInterceptor):
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return await self.inner.intercept_unary_stream(continuation, client_call_details, request)


class _StreamUnaryPart(_StreamUnaryClientInterceptor):
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def intercept_stream_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await self.inner.intercept_stream_unary(
            continuation, client_call_details, request_iterator
        )


class _StreamStreamPart(_StreamStreamClientInterceptor):
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def intercept_stream_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await self.inner.intercept_stream_stream(
            continuation, client_call_details, request_iterator
        )


_KIND_PARTS: tuple[tuple[type, type], ...] = (
    (grpc.aio.UnaryUnaryClientInterceptor, _UnaryUnaryPart),
    (grpc.aio.UnaryStreamClientInterceptor, _UnaryStreamPart),
    (grpc.aio.StreamUnaryClientInterceptor, _StreamUnaryPart),
    (grpc.aio.StreamStreamClientInterceptor, _StreamStreamPart),
)


def per_kind_interceptors(interceptors: Iterable[Any]) -> list[Any]:
    """Split interceptors that handle several call kinds into one object per kind.

    grpc.aio's channel puts an interceptor in the list of the first kind it implements
    and no other, so an all-kinds interceptor would silently skip streaming calls. The
    order of the interceptors is kept within each kind.
    """
    parts: list[Any] = []
    for interceptor in interceptors:
        kinds = [part for base, part in _KIND_PARTS if isinstance(interceptor, base)]
        if len(kinds) <= 1:
            parts.append(interceptor)
        else:
            parts.extend(part(interceptor) for part in kinds)
    return parts
