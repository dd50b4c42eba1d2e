"""Uploads wait in a local directory while they are hashed, size-limited and validated;
only a valid artifact is copied into the (content-addressed) object store.

So a corrupt, cut-off or oversized upload never reaches the shared store, and nothing has
to be deleted from it afterwards (content-addressed objects may be shared by other
versions or services, which makes deleting them racy).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import BinaryIO, Final

from mlbus.core.errors import ResourceExhausted
from mlbus.core.storage.base import blocks, run_blocking
from mlbus.registry.ports import StagedArtifact, StagingArea

#: Staged files older than this were left by a crash and are removed at start-up.
STALE_AGE_S: Final = 24 * 3600
PREFIX: Final = "upload-"


def _write_all(fd: int, block: bytes, hasher: hashlib._Hash) -> None:
    hasher.update(block)
    view = memoryview(block)
    while view:
        view = view[os.write(fd, view) :]


def _open_for_reading(path: Path) -> BinaryIO:
    return open(path, "rb")


def _create(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)


def _discard(fd: int | None, path: Path) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
    _unlink_quietly(path)


def _unlink_quietly(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class LocalStagedArtifact(StagedArtifact):
    """A staged upload on local disk."""

    def __init__(self, path: Path, sha256: str, size: int, block_size: int) -> None:
        self.path = path
        self.sha256 = sha256
        self.size = size
        self._block_size = block_size

    async def chunks(self) -> AsyncIterator[bytes]:
        """The staged bytes in blocks."""
        # Opened inline: a cancelled await here would leak the handle.
        handle = _open_for_reading(self.path)
        try:
            while True:
                block: bytes = await run_blocking(handle.read, self._block_size)
                if not block:
                    return
                yield block
        finally:
            await run_blocking(handle.close)

    async def discard(self) -> None:
        """Remove the staged file (the inspector removes its own light copy)."""
        await run_blocking(_unlink_quietly, self.path)


class LocalStagingArea(StagingArea):
    """Staging in ``directory`` (created at :meth:`start`; must have room for the largest
    concurrent uploads)."""

    def __init__(self, directory: Path, *, block_size: int = 1024 * 1024) -> None:
        self.directory = directory
        self._block_size = block_size

    async def start(self) -> None:
        """Create the directory and remove files left by a crash."""
        await run_blocking(self._start_sync)

    def _start_sync(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        cutoff = time.time() - STALE_AGE_S
        for entry in self.directory.glob(f"{PREFIX}*"):
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime < cutoff:
                    entry.unlink()

    async def stage(self, chunks: AsyncIterable[bytes], *, max_bytes: int) -> LocalStagedArtifact:
        """Write ``chunks`` to a new file while hashing; ResourceExhausted once more than
        ``max_bytes`` arrive. The file is removed if this fails or is cancelled."""
        path = self.directory / f"{PREFIX}{uuid.uuid4().hex}.onnx"
        # Opened inline (a quick local syscall): an await here could be cancelled after the
        # file exists and before the clean-up below owns it.
        fd = _create(path)
        hasher = hashlib.sha256()
        size = 0
        closed = False
        try:
            async for block in blocks(chunks, self._block_size):
                size += len(block)
                if size > max_bytes:
                    raise ResourceExhausted(
                        f"artifact: larger than the limit of {max_bytes} bytes "
                        "(REGISTRY_MAX_ARTIFACT_BYTES)",
                        details={"limit_bytes": str(max_bytes)},
                    )
                await run_blocking(_write_all, fd, block, hasher)
            try:
                await run_blocking(os.close, fd)
            finally:
                # run_blocking lets the close finish even when cancelled: the fd is gone.
                closed = True
        except BaseException:
            # One blocking call, which run_blocking completes even if this task is
            # cancelled again meanwhile (gRPC may cancel a handler more than once).
            await run_blocking(_discard, None if closed else fd, path)
            raise
        return LocalStagedArtifact(path, hasher.hexdigest(), size, self._block_size)
