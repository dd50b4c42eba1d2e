"""Errors the SDK raises: every gRPC status maps to one :class:`~mlbus.core.errors.MlbusError`
subclass, so callers catch ``NotFound`` or ``FailedPrecondition`` instead of inspecting an
``RpcError``.

The subclasses that services raise on purpose live in :mod:`mlbus.core.errors` and are
re-exported here; the statuses a service never raises on purpose (INTERNAL, UNIMPLEMENTED,
...) get a class of their own below.
"""

from __future__ import annotations

import grpc

from mlbus.core.errors import (
    ERROR_TYPES,
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    MlbusError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
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


class Cancelled(MlbusError):
    """The call was cancelled (by the caller, or the server going away mid-call)."""

    code = grpc.StatusCode.CANCELLED


class Unknown(MlbusError):
    """The server failed without saying how (UNKNOWN)."""

    code = grpc.StatusCode.UNKNOWN


class Aborted(MlbusError):
    """The operation was aborted by a concurrent one; retrying may succeed."""

    code = grpc.StatusCode.ABORTED


class OutOfRange(MlbusError):
    """A value was past the valid range (e.g. a page token past the end)."""

    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(MlbusError):
    """The server does not implement this call (an older or newer server)."""

    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(MlbusError):
    """The server hit a bug; its message names a trace or error id to look up in its log."""

    code = grpc.StatusCode.INTERNAL


class DataLoss(MlbusError):
    """Data was lost or corrupted, e.g. a download whose SHA-256 does not match."""

    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(MlbusError):
    """The caller did not prove who it is."""

    code = grpc.StatusCode.UNAUTHENTICATED


#: The classes this module adds to :data:`mlbus.core.errors.ERROR_TYPES`.
SDK_ERROR_TYPES: tuple[type[MlbusError], ...] = (
    Cancelled,
    Unknown,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    DataLoss,
    Unauthenticated,
)

_BY_CODE: dict[grpc.StatusCode, type[MlbusError]] = {
    cls.code: cls for cls in (*ERROR_TYPES, *SDK_ERROR_TYPES)
}


def error_class(code: grpc.StatusCode) -> type[MlbusError]:
    """The error class raised for a gRPC status ``code`` (INTERNAL for OK, which never fails)."""
    return _BY_CODE.get(code, Internal)


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
    if code is grpc.StatusCode.UNAVAILABLE:
        reason = f" ({message})" if message else ""
        message = (
            f"{service} at {target} is unavailable{reason}; "
            f"is the {service} running? (`mlbus up` starts a local stack)"
        )
    elif code is grpc.StatusCode.DEADLINE_EXCEEDED:
        within = f" within {timeout:g} s" if timeout is not None else " in time"
        message = f"{service} at {target} did not answer{within} ({message or 'deadline exceeded'})"
    elif not message:
        message = f"{service} at {target} failed with {code.name}"
    return error_class(code)(message, details=details)
