"""A job's checkpoint directory, mirrored in the object store under
``trainer-checkpoints/<job id>/`` so that a re-run of the job (after a trainer crash or
shutdown, on any replica sharing the store) starts with the files the last attempt left.

Files are copied whole when their size or modification time changed since the last copy;
files deleted locally are deleted from the store. Names starting with ``.`` or ending in
``.tmp`` are not copied: write a checkpoint to such a name and rename it, so a copy never
catches a file half-written.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

from mlbus.core.storage import ObjectStore

PREFIX = "trainer-checkpoints"
_BLOCK = 1024 * 1024


def _skipped(relative: str) -> bool:
    name = relative.rsplit("/", 1)[-1]
    return name.startswith(".") or name.endswith(".tmp")


def _scan(root: Path) -> dict[str, tuple[int, int]]:
    """Relative path → (size, mtime in ns) of the files under ``root`` to copy."""
    found: dict[str, tuple[int, int]] = {}
    if not root.is_dir():
        return found
    for directory, _, files in os.walk(root):
        for name in files:
            path = Path(directory) / name
            relative = path.relative_to(root).as_posix()
            if _skipped(relative):
                continue
            try:
                info = path.stat()
            except FileNotFoundError:
                continue
            found[relative] = (info.st_size, info.st_mtime_ns)
    return found


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    handle = await asyncio.to_thread(path.open, "rb")
    try:
        while block := await asyncio.to_thread(handle.read, _BLOCK):
            yield block
    finally:
        await asyncio.to_thread(handle.close)


class CheckpointMirror:
    """One job's local checkpoint directory and its copy in the store."""

    def __init__(self, store: ObjectStore, job_id: str, local: Path) -> None:
        self.store = store
        self.local = local
        self.prefix = f"{PREFIX}/{job_id}/"
        self._copied: dict[str, tuple[int, int]] = {}

    @property
    def uri(self) -> str:
        """Where the copy is (the store's URI of the prefix)."""
        return self.store.uri_for_prefix(self.prefix)

    async def restore(self) -> int:
        """Create the local directory with the stored files in it; how many there were."""
        await asyncio.to_thread(self.local.mkdir, parents=True, exist_ok=True)
        count = 0
        async for info in self.store.list(self.prefix):
            relative = self.store.key_for(info.uri)[len(self.prefix) :]
            target = self.local / relative
            await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
            handle = await asyncio.to_thread(target.open, "wb")
            try:
                async for chunk in self.store.get(info.uri):
                    await asyncio.to_thread(handle.write, chunk)
            finally:
                await asyncio.to_thread(handle.close)
            count += 1
        self._copied = await asyncio.to_thread(_scan, self.local)
        return count

    async def sync(self) -> int:
        """Copy what changed since the last sync; how many files were written or deleted."""
        current = await asyncio.to_thread(_scan, self.local)
        changes = 0
        for relative, signature in current.items():
            if self._copied.get(relative) == signature:
                continue
            try:
                await self.store.put(self.prefix + relative, _chunks(self.local / relative))
            except FileNotFoundError:
                continue  # deleted since the scan: the next sync deletes its copy
            self._copied[relative] = signature
            changes += 1
        for relative in sorted(set(self._copied) - set(current)):
            await self.store.delete(self.store.uri_for(self.prefix + relative))
            del self._copied[relative]
            changes += 1
        return changes


class StoreCheckpoints:
    """Checkpoint mirrors of jobs in one object store."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def mirror(self, job_id: str, local: Path) -> CheckpointMirror:
        """The mirror of ``job_id``'s checkpoints in ``local``."""
        return CheckpointMirror(self.store, job_id, local)

    async def discard(self, job_id: str) -> None:
        """Delete the stored checkpoints of a job that has ended."""
        prefix = f"{PREFIX}/{job_id}/"
        uris = [info.uri async for info in self.store.list(prefix)]
        for uri in uris:
            await self.store.delete(uri)
