"""Artifact and payload storage: one interface over a local directory or an S3 bucket.

``store = await open_object_store(settings.storage)`` gives a started store for the
configured backend; see :class:`ObjectStore` for what every backend guarantees.

The S3 backend (boto3, a few hundred milliseconds and ~15 MB to import) is imported only
when it is used: by ``create_object_store`` for ``type="s3"`` or by naming
``S3ObjectStore``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlbus.core.settings import StorageSettings
from mlbus.core.storage.base import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_CONTENT_TYPE,
    Chunks,
    IntegrityError,
    ObjectInfo,
    ObjectRef,
    ObjectStore,
)
from mlbus.core.storage.local import LocalObjectStore

if TYPE_CHECKING:
    from mlbus.core.storage.s3 import S3ObjectStore

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_CONTENT_TYPE",
    "Chunks",
    "IntegrityError",
    "LocalObjectStore",
    "ObjectInfo",
    "ObjectRef",
    "ObjectStore",
    "S3ObjectStore",
    "create_object_store",
    "open_object_store",
]


def create_object_store(settings: StorageSettings) -> ObjectStore:
    """The store ``settings.type`` names, not yet started (no IO happens here)."""
    if settings.type == "local":
        return LocalObjectStore(settings.root)
    if settings.type == "s3":
        from mlbus.core.storage.s3 import S3ObjectStore

        return S3ObjectStore.from_settings(settings)
    raise ValueError(f"storage type {settings.type!r}: expected 'local' or 's3'")


async def open_object_store(settings: StorageSettings) -> ObjectStore:
    """The configured store, started (root directory or bucket created).

    ``aclose()`` it when done, or use it as ``async with await open_object_store(...)``.
    """
    store = create_object_store(settings)
    await store.start()
    return store


def __getattr__(name: str) -> Any:
    if name == "S3ObjectStore":
        from mlbus.core.storage.s3 import S3ObjectStore

        return S3ObjectStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
