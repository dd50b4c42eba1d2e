"""Job outputs into the object store: model and baseline content-addressed, processing
outputs under the job's output URI (an object-store URI, or a local directory)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from mlbus.core.storage import ObjectStore
from mlbus.trainer.adapters.datasets import local_path

_BLOCK = 1024 * 1024


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    handle = await asyncio.to_thread(path.open, "rb")
    try:
        while block := await asyncio.to_thread(handle.read, _BLOCK):
            yield block
    finally:
        await asyncio.to_thread(handle.close)


class StoreArtifacts:
    """Writes job files into the object store."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    async def put_file(self, path: Path, content_type: str) -> dict[str, Any]:
        """Store ``path`` by content; its reference."""
        ref = await self.store.put_content(_chunks(path), content_type=content_type)
        return {
            "uri": ref.uri,
            "sha256": ref.sha256,
            "size": ref.size,
            "content_type": ref.content_type,
        }

    async def put_output(self, base_uri: str, name: str, path: Path) -> dict[str, Any]:
        """Store ``path`` as ``<base_uri>/<name>``: a local directory, or the object store."""
        local = local_path(base_uri)
        if local is not None and not base_uri.startswith("file://"):
            target = local / name
            await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
            await asyncio.to_thread(shutil.copyfile, path, target)
            size = target.stat().st_size
            return {"uri": target.as_uri(), "sha256": "", "size": size, "content_type": ""}
        key = f"{self.store.key_for(base_uri.rstrip('/') + '/x')[:-2]}/{name}"
        ref = await self.store.put(key, _chunks(path))
        return {
            "uri": ref.uri,
            "sha256": ref.sha256,
            "size": ref.size,
            "content_type": ref.content_type,
        }
