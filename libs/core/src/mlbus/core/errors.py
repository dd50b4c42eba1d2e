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


#: Every error type with its status, for the interceptor and for tests.
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
