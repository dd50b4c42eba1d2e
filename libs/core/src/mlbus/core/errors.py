"""Errors that carry their own gRPC status code.

Domain code raises these; one server interceptor (``mlbus.core.rpc.interceptors``)
maps them to gRPC statuses. Anything else that escapes a servicer becomes INTERNAL
and is logged once. Messages say what was wrong and what was expected, e.g.
``input 'x': expected FP32 [-1, 30], got FP64 [2, 29]``.
"""

from __future__ import annotations

from typing import ClassVar

import grpc


class MlbusError(Exception):
    """Base of every error mlbus raises on purpose."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, details: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: Extra machine-readable context (field names, ids); sent as trailing metadata.
        self.details: dict[str, str] = dict(details or {})

    def __str__(self) -> str:
        return self.message


class InvalidArgument(MlbusError):
    """The caller sent something malformed; retrying the same request cannot succeed."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(MlbusError):
    """The named entity does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(MlbusError):
    """An entity with the same identity exists already."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(MlbusError):
    """The system is not in a state in which the operation is allowed."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(MlbusError):
    """The caller is not allowed to do this."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(MlbusError):
    """A quota, concurrency limit or size limit was hit; the caller may retry later."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(MlbusError):
    """A dependency is down or not ready; the caller may retry."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(MlbusError):
    """The work did not finish within its deadline."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


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


#: Every error type services raise on purpose, with its status, for the interceptor and tests.
ERROR_TYPES: tuple[type[MlbusError], ...] = (
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
    DeadlineExceeded,
)

#: Statuses a service never raises on purpose; clients still map them to a class each.
OTHER_STATUS_TYPES: tuple[type[MlbusError], ...] = (
    Cancelled,
    Unknown,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    DataLoss,
    Unauthenticated,
)
