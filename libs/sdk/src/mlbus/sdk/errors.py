"""Errors the SDK raises: every gRPC status maps to one :class:`~mlbus.core.errors.MlbusError`
subclass, so callers catch ``NotFound`` or ``FailedPrecondition`` instead of inspecting an
``RpcError``.

All classes live in :mod:`mlbus.core.errors` (one per gRPC status) and are re-exported
here.
"""

from __future__ import annotations

import grpc

from mlbus.core.errors import (
    ERROR_TYPES,
    OTHER_STATUS_TYPES,
    Aborted,
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    MlbusError,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
)
from mlbus.core.rpc.interceptors import error_details

__all__ = [
    "SDK_ERROR_TYPES",
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "MlbusError",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "error_class",
    "from_rpc_error",
]


#: The statuses a service never raises on purpose (defined in :mod:`mlbus.core.errors`).
SDK_ERROR_TYPES = OTHER_STATUS_TYPES

_BY_CODE: dict[grpc.StatusCode, type[MlbusError]] = {
    cls.code: cls for cls in (*ERROR_TYPES, *SDK_ERROR_TYPES)
}


def error_class(code: grpc.StatusCode) -> type[MlbusError]:
    """The error class raised for a gRPC status ``code`` (INTERNAL for OK, which never fails)."""
    return _BY_CODE.get(code, Internal)


#: How gRPC words an UNAVAILABLE it raised itself (the server could not be reached), as
#: opposed to one a server answered with.
_TRANSPORT = (
    "failed to connect",
    "connections to all backends failing",
    "dns resolution failed",
    "errors resolving",
    "socket closed",
    "connection reset",
    "connection refused",
    "broken pipe",
    "goaway",
)


def _unreachable(message: str) -> bool:
    text = message.lower()
    return not text or any(marker in text for marker in _TRANSPORT)


def from_rpc_error(
    exc: grpc.RpcError,
    *,
    target: str,
    service: str = "registry",
    timeout: float | None = None,
) -> MlbusError:
    """The :class:`MlbusError` for a failed call: the server's message and its ``mlbus-*``
    trailing-metadata details, plus ``target`` (and a hint for UNAVAILABLE and deadlines,
    which are about reaching the server rather than about the request)."""
    # grpc.aio raises AioRpcError, the sync stack an RpcError that is also a grpc.Call.
    if isinstance(exc, grpc.aio.AioRpcError | grpc.Call):
        code = exc.code()
        message = exc.details() or ""
        details = error_details(exc.trailing_metadata())
    else:
        code, message, details = grpc.StatusCode.UNKNOWN, str(exc), {}
    details.setdefault("target", target)
    if code is grpc.StatusCode.UNAVAILABLE and _unreachable(message):
        reason = f" ({message})" if message else ""
        message = (
            f"{service} at {target} is unavailable{reason}; "
            f"is the {service} running? (`mlbus up` starts a local stack)"
        )
    elif code is grpc.StatusCode.UNAVAILABLE:
        # The server answered (e.g. an endpoint still deploying): its message says why.
        message = f"{service} at {target}: {message}"
    elif code is grpc.StatusCode.DEADLINE_EXCEEDED:
        within = f" within {timeout:g} s" if timeout is not None else " in time"
        message = f"{service} at {target} did not answer{within} ({message or 'deadline exceeded'})"
    elif not message:
        message = f"{service} at {target} failed with {code.name}"
    return error_class(code)(message, details=details)
