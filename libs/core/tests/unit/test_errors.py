from __future__ import annotations

import grpc

from mlbus.core.errors import ERROR_TYPES, OTHER_STATUS_TYPES, DataLoss
from mlbus.core.storage import IntegrityError


def test_every_failure_status_has_exactly_one_class() -> None:
    classes = (*ERROR_TYPES, *OTHER_STATUS_TYPES)
    codes = [cls.code for cls in classes]
    assert len(codes) == len(set(codes))
    assert set(codes) == set(grpc.StatusCode) - {grpc.StatusCode.OK}


def test_storage_integrity_error_is_data_loss() -> None:
    error = IntegrityError("sha256 mismatch")
    assert isinstance(error, DataLoss)
    assert error.code is grpc.StatusCode.DATA_LOSS
