"""Errors of the inference worker, each with its gRPC status."""

from __future__ import annotations

import grpc

from mlbus.core.errors import FailedPrecondition, InvalidArgument, MlbusError


class InputRejected(InvalidArgument):
    """The inputs passed the signature checks, but the model refused their values."""


class ModelRunFailed(MlbusError):
    """The model failed for a reason that is not the caller's (a server fault)."""

    code = grpc.StatusCode.INTERNAL


class ModelLoadError(FailedPrecondition):
    """The artifact could not be fetched, verified, loaded or warmed up: the worker never
    becomes ready and exits (status 3)."""
