"""The one way mlbus builds a gRPC server: interceptors, limits, health and reflection.

Tracing, access log and error mapping are applied to each method handler once, when its
service is registered (:func:`~mlbus.core.rpc.interceptors.instrument_handler`), rather than
by grpc.aio server interceptors, which run as a chain of coroutines on every call. Servers
given ``extra_interceptors`` use the interceptor chain for all of them, so the extras still
run inside tracing and error mapping.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeAlias, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mlbus.core.rpc.interceptors import (
    AccessLogInterceptor,
    ErrorInterceptor,
    TracingServerInterceptor,
    instrument_handler,
)
from mlbus.core.settings import GrpcSettings

log = logging.getLogger(__name__)

S = TypeVar("S")

#: Registers a servicer on a server, like the generated ``add_FooServicer_to_server``.
RegisterFn = Callable[[S, grpc.aio.Server], None]
#: What :func:`run_until_signal` calls after the server stopped; may be async.
ShutdownCallback = Callable[[], Awaitable[Any] | Any]

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def server_options(settings: GrpcSettings) -> list[tuple[str, int]]:
    """Channel arguments of every mlbus server."""
    return [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", settings.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", settings.keepalive_timeout_ms),
        # Accept the keepalive pings our own clients send (same settings); the default
        # policy answers pings more often than every 5 min with GOAWAY "too_many_pings".
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", settings.keepalive_time_ms),
        ("grpc.http2.max_pings_without_data", 0),
        # Never share a port with another process: a second server must fail to bind.
        ("grpc.so_reuseport", 0),
    ]


#: Wraps one method handler (``handler, "/pkg.Service/Method"``) at registration.
HandlerWrapper: TypeAlias = (
    "Callable[[grpc.RpcMethodHandler[Any, Any], str], grpc.RpcMethodHandler[Any, Any]]"
)


class _WrappedGenericHandler(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """A generic handler whose method handlers come out wrapped (once per handler)."""

    def __init__(self, inner: grpc.GenericRpcHandler[Any, Any], wrap: HandlerWrapper) -> None:
        self._inner = inner
        self._wrap = wrap
        self._wrapped: dict[str, tuple[Any, grpc.RpcMethodHandler[Any, Any]]] = {}

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def service_name(self) -> str | None:
        """The inner handler's service name, when it has one."""
        name = getattr(self._inner, "service_name", None)
        return str(name()) if name is not None else None


class _WrappingRegistrar:
    """What a generated ``add_FooServicer_to_server`` sees as the server: it forwards the
    registration with every method handler wrapped."""

    def __init__(self, server: grpc.aio.Server, wrap: HandlerWrapper) -> None:
        self._server = server
        self._wrap = wrap

    def add_generic_rpc_handlers(
        self, generic_rpc_handlers: Sequence[grpc.GenericRpcHandler[Any, Any]]
    ) -> None:
        self._server.add_generic_rpc_handlers(
            [_WrappedGenericHandler(h, self._wrap) for h in generic_rpc_handlers]
        )

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        wrapped = {
            name: self._wrap(handler, f"/{service_name}/{name}")
            for name, handler in method_handlers.items()
        }
        self._server.add_registered_method_handlers(service_name, wrapped)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


def _host_port(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


class RpcServer:
    """A grpc.aio server with mlbus interceptors, health and reflection.

    Register services with :meth:`add_service` (or :meth:`add_generic_handler`) before
    :meth:`start`; their names go to health (SERVING once started) and reflection. With
    ``wrap_handler``, each of their method handlers is wrapped by it once, at registration.
    """

    def __init__(
        self,
        *,
        service_name: str,
        settings: GrpcSettings,
        host: str,
        port: int,
        interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]],
        wrap_handler: HandlerWrapper | None = None,
    ) -> None:
        self.service_name = service_name
        self.settings = settings
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._wrap_handler = wrap_handler
        self._server = grpc.aio.server(
            interceptors=list(interceptors) or None, options=server_options(settings)
        )
        # grpc-stubs lack the public `health.aio` alias of the asyncio servicer.
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        self._services: list[str] = []
        self._stopping: asyncio.Task[None] | None = None

    @property
    def server(self) -> grpc.aio.Server:
        """The underlying grpc.aio server (for what this class does not cover)."""
        return self._server

    @property
    def services(self) -> tuple[str, ...]:
        """Full names of the registered application services."""
        return tuple(self._services)

    def _check_not_started(self) -> None:
        if self._port is not None:
            raise RuntimeError("services must be added before the server starts")

    def add_service(self, register_fn: RegisterFn[S], servicer: S, service_full_name: str) -> None:
        """Register ``servicer`` with the generated ``register_fn`` under ``service_full_name``
        (e.g. ``mlbus.registry.v1.RegistryService``) for health and reflection."""
        self._check_not_started()
        target: Any = self._server
        if self._wrap_handler is not None:
            target = _WrappingRegistrar(self._server, self._wrap_handler)
        register_fn(servicer, target)
        self._services.append(service_full_name)

    def add_generic_handler(
        self, handler: grpc.GenericRpcHandler[Any, Any], service_full_name: str | None = None
    ) -> None:
        """Register a generic handler, e.g. ``grpc.method_handlers_generic_handler(...)``;
        the name defaults to the handler's ``service_name()``."""
        self._check_not_started()
        name = service_full_name
        if name is None:
            service_name = getattr(handler, "service_name", None)
            if service_name is None:
                raise ValueError("service_full_name is required for this handler")
            name = str(service_name())
        if self._wrap_handler is not None:
            handler = _WrappedGenericHandler(handler, self._wrap_handler)
        self._server.add_generic_rpc_handlers((handler,))
        self._services.append(name)

    async def start(self, *, serving: bool = True) -> int:
        """Bind ``host:port`` (port 0 picks a free one), start, and return the bound port.

        Health of every registered service and of the server ("") is then SERVING, or
        NOT_SERVING with ``serving=False`` (e.g. until a model is warm; see :meth:`set_serving`).
        """
        self._check_not_started()
        reflection.enable_server_reflection(
            [*self._services, health.SERVICE_NAME, reflection.SERVICE_NAME], self._server
        )
        address = _host_port(self.host, self._requested_port)
        try:
            port = self._server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"gRPC server {self.service_name} cannot bind {address}: {exc}") from exc
        if port == 0:  # older grpc reported a failed bind this way
            raise OSError(f"gRPC server {self.service_name} cannot bind {address}")
        await self._server.start()
        self._port = port
        await self.set_serving(serving)
        log.info(
            "gRPC server %s listening on %s",
            self.service_name,
            self.address,
            extra={"grpc_port": port, "services": list(self._services)},
        )
        return port

    @property
    def port(self) -> int:
        """The bound port; only after :meth:`start`."""
        if self._port is None:
            raise RuntimeError("the server has not been started")
        return self._port

    @property
    def address(self) -> str:
        """``host:port`` to dial, after :meth:`start`."""
        return _host_port(self.host, self.port)

    async def set_serving(self, serving: bool) -> None:
        """Report every registered service and the server as (NOT_)SERVING.

        Ignored once :meth:`stop` began: a stopping server stays NOT_SERVING.
        """
        status = _SERVING if serving else _NOT_SERVING
        for name in ("", *self._services):
            await self._health.set(name, status)

    async def stop(self, grace: float | None = None) -> None:
        """Stop gracefully: health goes NOT_SERVING first, then new calls are refused and
        in-flight ones get ``grace`` seconds (default: settings) before being cancelled.

        Health ``Watch`` streams are in-flight calls too: they receive NOT_SERVING, and a
        watcher that does not hang up then holds the stop for the full grace period.
        Safe to call more than once; later calls wait for the first.
        """
        if self._stopping is None:
            grace_s = self.settings.shutdown_grace_s if grace is None else grace
            self._stopping = asyncio.ensure_future(self._stop(grace_s))
        await asyncio.shield(self._stopping)

    async def _stop(self, grace: float) -> None:
        log.info("gRPC server %s stopping (grace %.1f s)", self.service_name, grace)
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace)
        log.info("gRPC server %s stopped", self.service_name)

    async def wait_for_termination(self) -> None:
        """Return once the server has stopped. Safe to cancel."""
        # grpc awaits its shutdown future directly: cancelling that wait would cancel the
        # future and break a later stop(). Shield it.
        await asyncio.shield(self._server.wait_for_termination())


def create_server(
    *,
    service_name: str,
    settings: GrpcSettings,
    host: str,
    port: int,
    extra_interceptors: Iterable[grpc.aio.ServerInterceptor[Any, Any]] = (),
) -> RpcServer:
    """Build an :class:`RpcServer` with tracing, access log and error mapping.

    ``extra_interceptors`` run inside those (traced, and an :class:`MlbusError` they raise
    from the wrapped behaviour is mapped to its status); without them, the three are applied
    to each method handler at registration instead of as interceptors (see the module doc).
    """
    extras = list(extra_interceptors)
    if not extras:
        return RpcServer(
            service_name=service_name,
            settings=settings,
            host=host,
            port=port,
            interceptors=(),
            wrap_handler=instrument_handler,
        )
    interceptors: list[grpc.aio.ServerInterceptor[Any, Any]] = [
        TracingServerInterceptor(),
        AccessLogInterceptor(),
        ErrorInterceptor(),
        *extras,
    ]
    return RpcServer(
        service_name=service_name,
        settings=settings,
        host=host,
        port=port,
        interceptors=interceptors,
    )


async def run_until_signal(
    server: RpcServer,
    *,
    on_shutdown: Iterable[ShutdownCallback] = (),
    grace: float | None = None,
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
) -> signal.Signals | None:
    """Serve until SIGTERM/SIGINT (or until the server stops by itself), then stop
    gracefully and run ``on_shutdown`` callbacks in order. Returns the signal received.

    A failing callback is logged and does not keep the others from running.
    """
    loop = asyncio.get_running_loop()
    received: list[signal.Signals] = []
    stop_requested = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig)
        stop_requested.set()

    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    waiters = [
        asyncio.ensure_future(stop_requested.wait()),
        asyncio.ensure_future(server.wait_for_termination()),
    ]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        for waiter in waiters:
            waiter.cancel()
    sig_received = received[0] if received else None
    log.info(
        "%s: shutting down%s",
        server.service_name,
        f" on {sig_received.name}" if sig_received else "",
    )
    try:
        await server.stop(grace)
    finally:
        for callback in on_shutdown:
            try:
                result = callback()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("shutdown callback %r failed", callback)
    return sig_received
