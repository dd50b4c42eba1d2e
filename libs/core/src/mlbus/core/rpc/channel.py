"""The one way mlbus opens a gRPC channel, and a readiness wait on the health service."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Iterable
from typing import Any, TypeAlias

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mlbus.core.errors import Unavailable
from mlbus.core.rpc.interceptors import (
    DefaultDeadlineInterceptor,
    TracingClientInterceptor,
    per_kind_interceptors,
)
from mlbus.core.settings import GrpcSettings

# Targets of channels made here, to name them in errors (grpc.aio.Channel does not say).
_targets: weakref.WeakKeyDictionary[grpc.aio.Channel, str] = weakref.WeakKeyDictionary()

_SERVING = health_pb2.HealthCheckResponse.SERVING

#: Any grpc.aio client interceptor (grpc-stubs type the channel's parameter as "cast me").
ClientInterceptor: TypeAlias = (
    "grpc.aio.UnaryUnaryClientInterceptor[Any, Any]"
    " | grpc.aio.UnaryStreamClientInterceptor[Any, Any]"
    " | grpc.aio.StreamUnaryClientInterceptor[Any, Any]"
    " | grpc.aio.StreamStreamClientInterceptor[Any, Any]"
)


def channel_options(settings: GrpcSettings) -> list[tuple[str, int]]:
    """Channel arguments of every mlbus client."""
    return [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", settings.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", settings.keepalive_timeout_ms),
        ("grpc.enable_retries", 1),
        # Peers are services that restart (deploys, scale from zero): reconnect within
        # seconds instead of gRPC's default backoff of up to 120 s.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 5000),
    ]


def create_channel(
    target: str,
    settings: GrpcSettings,
    *,
    interceptors: Iterable[ClientInterceptor] = (),
) -> grpc.aio.Channel:
    """An insecure grpc.aio channel to ``target`` (``host:port``) with mlbus options, the
    default deadline and client tracing; ``interceptors`` run inside those."""
    chain: list[ClientInterceptor] = [
        DefaultDeadlineInterceptor(settings.default_deadline_s),
        TracingClientInterceptor(),
        *interceptors,
    ]
    channel = grpc.aio.insecure_channel(
        target, options=channel_options(settings), interceptors=per_kind_interceptors(chain)
    )
    _targets[channel] = target
    return channel


async def wait_for_ready(
    channel: grpc.aio.Channel,
    timeout: float,
    service: str = "",
) -> None:
    """Poll the health service until ``service`` ("" = the whole server) is SERVING.

    Raises :class:`~mlbus.core.errors.Unavailable` naming the target and the last status
    seen when that does not happen within ``timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service=service)
    last = "no answer"
    pause = 0.02
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        try:
            # wait_for_ready: queue while the channel (re)connects instead of failing fast.
            response = await stub.Check(request, timeout=remaining, wait_for_ready=True)
        except grpc.aio.AioRpcError as exc:
            last = f"{exc.code().name}: {exc.details()}"
            if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                break
        else:
            if response.status == _SERVING:
                return
            last = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        await asyncio.sleep(min(pause, max(0.0, deadline - loop.time())))
        pause = min(pause * 2, 0.5)
    target = _targets.get(channel, "<unknown target>")
    what = f"service {service!r}" if service else "server"
    raise Unavailable(
        f"{target}: {what} not SERVING after {timeout:g} s (last status: {last})",
        details={"target": target, "service": service, "last_status": last},
    )
