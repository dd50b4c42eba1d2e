"""gRPC plumbing every mlbus service uses (grpc.aio): server and channel factories,
interceptors, health-based readiness."""

from mlbus.core.rpc.channel import channel_options, create_channel, wait_for_ready
from mlbus.core.rpc.interceptors import (
    DETAIL_PREFIX,
    AccessLogInterceptor,
    DefaultDeadlineInterceptor,
    ErrorInterceptor,
    TracingClientInterceptor,
    TracingServerInterceptor,
    details_to_metadata,
    error_details,
    per_kind_interceptors,
    rewrap_handler,
)
from mlbus.core.rpc.server import RpcServer, create_server, run_until_signal, server_options

__all__ = [
    "DETAIL_PREFIX",
    "AccessLogInterceptor",
    "DefaultDeadlineInterceptor",
    "ErrorInterceptor",
    "RpcServer",
    "TracingClientInterceptor",
    "TracingServerInterceptor",
    "channel_options",
    "create_channel",
    "create_server",
    "details_to_metadata",
    "error_details",
    "per_kind_interceptors",
    "rewrap_handler",
    "run_until_signal",
    "server_options",
    "wait_for_ready",
]
