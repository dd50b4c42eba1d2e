"""Object store in a local directory: the embedded default.

Layout under the root::

    <key>                       named objects, as plain files
    sha256/<ab>/<hex>           content-addressed objects
    .tmp/                       uploads in progress (same file system, so renames are atomic)
    .meta/<key>                 JSON: sha256, size, content type and inode of <key>

A write streams into ``.tmp``, fsyncs, then appears under its key in one step:
``os.replace`` (overwrite) or ``os.link`` (only if absent, which fails when the key exists),
followed by an fsync of the directory. Metadata is written after the object, and carries
the object's inode, so metadata left from an earlier object of the same key is never
mistaken for the current one (``stat`` then reports the checksum as unknown).

Unlike S3, a directory tree cannot hold both ``a`` and ``a/b``; writing the second fails
with FailedPrecondition. Deleting objects leaves empty directories behind (removing them
would race with concurrent writes into them).
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import logging
import os
import stat as stat_mode
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from mlbus.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from mlbus.core.storage.base import (
    DEFAULT_CONTENT_TYPE,
    RESERVED_SEGMENTS,
    BlockingReader,
    Chunks,
    ObjectInfo,
    ObjectRef,
    ObjectStore,
    blocks,
    check_key,
    check_prefix,
    check_uri_key,
    content_key,
    run_blocking,
    sha256_of_content_key,
)

logger = logging.getLogger(__name__)

#: Bytes handed to a worker thread per write; large enough that thread hops are cheap.
WRITE_BLOCK_SIZE = 1024 * 1024
#: Temporary files older than this are left over from a crash and removed at start.
STALE_TEMP_AGE_S = 24 * 3600
_LIST_BATCH = 500


def _write_hashed(fd: int, block: bytes, hasher: hashlib._Hash) -> None:
    hasher.update(block)
    view = memoryview(block)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(fd: int | None, path: Path) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _mtime(st: os.stat_result) -> datetime:
    return datetime.fromtimestamp(st.st_mtime, tz=UTC)


class LocalObjectStore(ObjectStore):
    """Object store in a directory; URIs are ``file:///<root>/<key>``."""

    def __init__(self, root: Path | str) -> None:
        # Resolved once, so URIs are stable and symlink escapes can be checked against it.
        self._root = Path(root).expanduser().resolve()
        self._root_text = str(self._root)
        self._root_uri = self._root.as_uri()
        self._tmp = self._root / ".tmp"
        self._meta = self._root / ".meta"

    @property
    def root(self) -> Path:
        """The store's root directory (absolute, symlinks resolved)."""
        return self._root

    def __repr__(self) -> str:
        return f"LocalObjectStore({self._root_text!r})"

    async def start(self) -> None:
        """Create the root directory and remove temporary files left by a crash."""
        await run_blocking(self._start_sync)

    def _start_sync(self) -> None:
        for directory in (self._root, self._tmp, self._meta):
            directory.mkdir(parents=True, exist_ok=True)
        cutoff = time.time() - STALE_TEMP_AGE_S
        with os.scandir(self._tmp) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)

    # -- keys and URIs -------------------------------------------------------------

    def uri_for(self, key: str) -> str:
        return (self._root / check_key(key)).as_uri()

    def key_for(self, uri: str) -> str:
        expected = f"expected a URI under '{self._root_uri}/'"
        if not isinstance(uri, str) or not uri.startswith("file://"):
            raise InvalidArgument(f"uri {uri!r}: not a file:// URI of this store; {expected}")
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise InvalidArgument(f"uri {uri!r}: not a plain local file URI; {expected}")
        path = unquote(parts.path)
        if not path.startswith(self._root_text + "/"):
            raise InvalidArgument(f"uri {uri!r}: outside this store; {expected}")
        return check_uri_key(path[len(self._root_text) + 1 :], uri, self._root_uri + "/")

    def _inside(self, key: str, uri: str) -> Path:
        """Path of ``key``, refusing one that a symbolic link leads out of the root."""
        path = self._root / key
        real = os.path.realpath(path)
        if not real.startswith(self._root_text + os.sep):
            raise InvalidArgument(
                f"uri {uri!r}: resolves to '{real}' through a symbolic link, outside the "
                f"store root '{self._root_text}'; expected a URI under '{self._root_uri}/'"
            )
        return path

    # -- writing -------------------------------------------------------------------

    def _open_temp(self) -> tuple[int, Path]:
        path = self._tmp / f"{uuid.uuid4().hex}.part"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except FileNotFoundError:
            raise FailedPrecondition(
                f"object store root '{self._root_text}' is not set up; call start() first"
            ) from None
        return fd, path

    async def _write_temp(self, chunks: Chunks) -> tuple[Path, str, int, int]:
        """Stream ``chunks`` to a synced temporary file: (path, sha256, size, inode)."""
        fd, path = await run_blocking(self._open_temp)
        open_fd: int | None = fd
        hasher = hashlib.sha256()
        size = 0
        try:
            async for block in blocks(chunks, WRITE_BLOCK_SIZE):
                await run_blocking(_write_hashed, fd, block, hasher)
                size += len(block)
            await run_blocking(os.fsync, fd)
            inode = os.fstat(fd).st_ino
            os.close(fd)
            open_fd = None
        except BaseException:
            await run_blocking(_discard, open_fd, path)
            raise
        return path, hasher.hexdigest(), size, inode

    def _prepare_parent(self, final: Path, key: str) -> None:
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise FailedPrecondition(
                f"key {key!r}: a leading part of it is an existing object; a local store "
                "cannot hold both 'a' and 'a/b'"
            ) from None
        if final.is_dir():
            raise FailedPrecondition(
                f"key {key!r}: other objects exist under '{key}/'; a local store cannot hold "
                "both 'a' and 'a/b'"
            )

    def _write_meta(self, key: str, meta: dict[str, Any]) -> None:
        path = self._meta / key
        tmp = self._tmp / f"{uuid.uuid4().hex}.meta"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "x", encoding="utf-8") as handle:
                json.dump(meta, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        except OSError as exc:
            # The object itself is committed; without metadata stat reports no checksum.
            logger.warning("could not write metadata for %r: %s", key, exc)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _read_meta(self, key: str, st: os.stat_result) -> dict[str, Any] | None:
        try:
            with open(self._meta / key, encoding="utf-8") as handle:
                meta = json.load(handle)
        except (OSError, ValueError):
            return None
        if (
            isinstance(meta, dict)
            and meta.get("inode") == st.st_ino
            and meta.get("size") == st.st_size
            and isinstance(meta.get("sha256"), str)
            and isinstance(meta.get("content_type"), str)
        ):
            return meta
        return None

    def _commit_content(
        self, tmp: Path, key: str, uri: str, content_type: str, size: int, inode: int
    ) -> str:
        """Link the temp file into place unless present; return the stored content type."""
        try:
            final = self._inside(key, uri)
            self._prepare_parent(final, key)
            try:
                os.link(tmp, final)
            except FileExistsError:
                meta = self._read_meta(key, os.stat(final))
                return str(meta["content_type"]) if meta else content_type
            _fsync_dir(final.parent)
            self._write_meta(
                key,
                {
                    "sha256": key.rsplit("/", 1)[1],
                    "size": size,
                    "content_type": content_type,
                    "inode": inode,
                },
            )
            return content_type
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _commit_named(
        self, tmp: Path, key: str, uri: str, if_absent: bool, meta: dict[str, Any]
    ) -> None:
        try:
            final = self._inside(key, uri)
            self._prepare_parent(final, key)
            if if_absent:
                try:
                    os.link(tmp, final)
                except FileExistsError:
                    raise AlreadyExists(f"object '{uri}' exists already") from None
            else:
                os.replace(tmp, final)
            _fsync_dir(final.parent)
            self._write_meta(key, meta)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    async def put_content(
        self, chunks: Chunks, *, content_type: str = DEFAULT_CONTENT_TYPE
    ) -> ObjectRef:
        tmp, digest, size, inode = await self._write_temp(chunks)
        key = content_key(digest)
        uri = self.uri_for(key)
        stored_type = await run_blocking(
            self._commit_content, tmp, key, uri, content_type, size, inode
        )
        return ObjectRef(uri=uri, sha256=digest, size=size, content_type=stored_type)

    async def put(
        self,
        key: str,
        chunks: Chunks,
        *,
        content_type: str = DEFAULT_CONTENT_TYPE,
        if_absent: bool = False,
    ) -> ObjectRef:
        check_key(key, for_write=True)
        uri = self.uri_for(key)
        # Fails fast before streaming a large payload; os.link still decides races.
        if if_absent and await self.exists(uri):
            raise AlreadyExists(f"object '{uri}' exists already")
        tmp, digest, size, inode = await self._write_temp(chunks)
        meta = {"sha256": digest, "size": size, "content_type": content_type, "inode": inode}
        await run_blocking(self._commit_named, tmp, key, uri, if_absent, meta)
        return ObjectRef(uri=uri, sha256=digest, size=size, content_type=content_type)

    # -- reading -------------------------------------------------------------------

    def _open_sync(self, key: str, uri: str) -> BlockingReader:
        path = self._inside(key, uri)
        try:
            handle = open(path, "rb")  # noqa: SIM115 - closed by ObjectStore.get
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(f"object '{uri}' does not exist") from None
        return handle

    async def _open_reader(self, key: str, uri: str) -> BlockingReader:
        return await run_blocking(self._open_sync, key, uri)

    def _read_range_sync(self, key: str, uri: str, offset: int, length: int) -> bytes:
        path = self._inside(key, uri)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(f"object '{uri}' does not exist") from None
        try:
            parts = []
            while length > 0:
                part = os.pread(fd, length, offset)
                if not part:
                    break
                parts.append(part)
                offset += len(part)
                length -= len(part)
            return parts[0] if len(parts) == 1 else b"".join(parts)
        finally:
            os.close(fd)

    async def read_range(self, uri: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise InvalidArgument(f"range: expected offset, length >= 0, got {offset}, {length}")
        key = self.key_for(uri)
        return await run_blocking(self._read_range_sync, key, uri, offset, length)

    def _stat_sync(self, key: str, uri: str) -> ObjectInfo:
        path = self._inside(key, uri)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"object '{uri}' does not exist") from None
        if not stat_mode.S_ISREG(st.st_mode):
            raise NotFound(f"object '{uri}' does not exist")
        meta = self._read_meta(key, st)
        sha256 = sha256_of_content_key(key) or (str(meta["sha256"]) if meta else None)
        return ObjectInfo(
            uri=uri,
            size=st.st_size,
            sha256=sha256,
            content_type=str(meta["content_type"]) if meta else None,
            modified=_mtime(st),
        )

    async def stat(self, uri: str) -> ObjectInfo:
        key = self.key_for(uri)
        return await run_blocking(self._stat_sync, key, uri)

    def _delete_sync(self, key: str, uri: str) -> None:
        path = self._inside(key, uri)
        for target in (path, self._meta / key):
            with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
                os.unlink(target)

    async def delete(self, uri: str) -> None:
        key = self.key_for(uri)
        await run_blocking(self._delete_sync, key, uri)

    def _walk(self, directory: str, dir_key: str, prefix: str) -> Iterator[ObjectInfo]:
        """Objects under ``directory`` whose key starts with ``prefix``, in key order."""
        try:
            with os.scandir(directory) as scan:
                entries = builtins.list(scan)
        except (FileNotFoundError, NotADirectoryError):
            return
        # Sorting a directory as 'name/' makes the walk yield keys in S3's (code point) order.
        ordered: builtins.list[tuple[str, os.DirEntry[str], bool]] = []
        for entry in entries:
            if not dir_key and entry.name in RESERVED_SEGMENTS:
                continue
            key = f"{dir_key}/{entry.name}" if dir_key else entry.name
            if entry.is_dir(follow_symlinks=False):
                ordered.append((key + "/", entry, True))
            elif entry.is_file(follow_symlinks=False):
                ordered.append((key, entry, False))
        ordered.sort(key=lambda item: item[0])
        for sort_key, entry, is_dir in ordered:
            if is_dir:
                if sort_key.startswith(prefix) or prefix.startswith(sort_key):
                    yield from self._walk(entry.path, sort_key[:-1], prefix)
            elif sort_key.startswith(prefix):
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                yield ObjectInfo(
                    uri=(self._root / sort_key).as_uri(),
                    size=st.st_size,
                    sha256=sha256_of_content_key(sort_key),
                    content_type=None,
                    modified=_mtime(st),
                )

    def _list_batches(self, prefix: str) -> Iterator[builtins.list[ObjectInfo]]:
        dir_key = prefix.rpartition("/")[0]
        start = self._root / dir_key if dir_key else self._root
        if dir_key and not os.path.realpath(start).startswith(self._root_text + os.sep):
            return
        batch: builtins.list[ObjectInfo] = []
        for info in self._walk(str(start), dir_key, prefix):
            batch.append(info)
            if len(batch) >= _LIST_BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        check_prefix(prefix)
        batches = self._list_batches(prefix)
        while True:
            batch = await run_blocking(next, batches, None)
            if batch is None:
                return
            for info in batch:
                yield info
