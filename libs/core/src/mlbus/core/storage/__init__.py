"""Artifact and payload storage: one interface over a local directory or an S3 bucket.

``store = await open_object_store(settings.storage)`` gives a started store for the
configured backend; see :class:`ObjectStore` for what every backend guarantees.
"""

from __future__ import annotations

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
        return S3ObjectStore.from_settings(settings)
    raise ValueError(f"storage type {settings.type!r}: expected 'local' or 's3'")


async def open_object_store(settings: StorageSettings) -> ObjectStore:
    """The configured store, started (root directory or bucket created).

    ``aclose()`` it when done, or use it as ``async with await open_object_store(...)``.
    """
    store = create_object_store(settings)
    await store.start()
    return store
