"""The object store interface shared by the local and S3 implementations.

Two kinds of object live in a store:

- content-addressed objects (:meth:`ObjectStore.put_content`): model artifacts, datasets;
  the key is ``sha256/<first two hex>/<full hex>``, so equal content is stored once;
- named objects (:meth:`ObjectStore.put`): results, payloads, outputs, under a key the
  caller chooses; ``if_absent=True`` makes the first writer win, which is what makes a
  redelivered request produce no second visible result.

Every write is atomic (a reader sees the whole object or none of it) and streams, so a
payload of any size passes through a bounded amount of memory. Objects are addressed by
URI (``file:///abs/path`` or ``s3://bucket/key``); a store refuses URIs that are not its own.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Protocol, Self, TypeVar

from mlbus.core.errors import DataLoss, InvalidArgument, NotFound

#: What a write accepts: the whole payload, or a stream of chunks of any size.
Chunks = AsyncIterable[bytes] | bytes

DEFAULT_CONTENT_TYPE = "application/octet-stream"
#: Size of the chunks :meth:`ObjectStore.get` yields unless told otherwise.
DEFAULT_CHUNK_SIZE = 1024 * 1024
#: Top-level key segment of content-addressed objects.
CONTENT_PREFIX = "sha256"
#: Top-level key segments a store keeps for itself (temporary uploads, metadata).
RESERVED_SEGMENTS = frozenset({".tmp", ".meta"})
#: Longest key, in UTF-8 bytes (the S3 limit).
MAX_KEY_BYTES = 1024
#: Longest key segment, in UTF-8 bytes (the usual file-name limit), so keys fit both stores.
MAX_SEGMENT_BYTES = 255

_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_T = TypeVar("_T")


class IntegrityError(DataLoss):
    """Stored bytes do not match the checksum they were expected to have."""


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """What a write returns: where the object is and what it holds."""

    uri: str
    sha256: str
    """Lower-case hex SHA-256 of the content."""
    size: int
    content_type: str


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What :meth:`ObjectStore.stat` and :meth:`ObjectStore.list` report about an object."""

    uri: str
    size: int
    sha256: str | None
    """Hex SHA-256 when known: always for content-addressed objects; from ``stat`` for
    objects this store wrote; None from ``list`` for named objects (a request each on S3)."""
    content_type: str | None
    """Content type when known (from ``stat``); None from ``list``."""
    modified: datetime
    """Last modification time, timezone-aware UTC."""


class BlockingReader(Protocol):
    """A blocking byte source, read in a worker thread by :meth:`ObjectStore.get`."""

    def read(self, size: int, /) -> bytes: ...

    def close(self) -> None: ...


def check_key(key: str, *, for_write: bool = False, what: str | None = None) -> str:
    """Return ``key`` if it is a valid object key, else raise InvalidArgument.

    Valid keys are relative ``/``-separated paths that mean the same on a file system and
    on S3: no empty, ``.`` or ``..`` segment, no leading or trailing ``/``, no control
    characters, at most 1024 bytes. The top-level segments ``.tmp`` and ``.meta`` belong to
    the store; ``sha256/`` may be read but only :meth:`ObjectStore.put_content` writes it.
    """
    label = what or f"key {key!r}"
    if not isinstance(key, str):
        raise InvalidArgument(f"{label}: expected a str, got {type(key).__name__}")
    if not key:
        raise InvalidArgument(f"{label}: must not be empty")
    if any(ord(c) < 0x20 or c == "\x7f" for c in key):
        raise InvalidArgument(f"{label}: must not contain NUL or other control characters")
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(f"{label}: must be valid UTF-8 text") from None
    if len(encoded) > MAX_KEY_BYTES:
        raise InvalidArgument(
            f"{label}: {len(encoded)} bytes long, expected at most {MAX_KEY_BYTES}"
        )
    if key.startswith("/"):
        raise InvalidArgument(f"{label}: must be relative (no leading '/')")
    if key.endswith("/"):
        raise InvalidArgument(f"{label}: must name an object, not end with '/'")
    segments = key.split("/")
    for segment in segments:
        if segment == "..":
            raise InvalidArgument(f"{label}: must not contain '..' (it would escape the store)")
        if segment in ("", "."):
            raise InvalidArgument(f"{label}: must not contain empty or '.' segments")
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise InvalidArgument(
                f"{label}: segment longer than {MAX_SEGMENT_BYTES} bytes ({segment[:20]}...)"
            )
    if segments[0] in RESERVED_SEGMENTS:
        raise InvalidArgument(f"{label}: '{segments[0]}/' is reserved for the store itself")
    if for_write and segments[0] == CONTENT_PREFIX:
        raise InvalidArgument(
            f"{label}: '{CONTENT_PREFIX}/' holds content-addressed objects; "
            "write them with put_content"
        )
    return key


def check_uri_key(key: str, uri: str, base_uri: str) -> str:
    """Check the key part of one of a store's URIs; errors name the URI and the expected base."""
    try:
        return check_key(key, what=f"uri {uri!r}")
    except InvalidArgument as exc:
        raise InvalidArgument(f"{exc.message}; expected a URI under '{base_uri}'") from None


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a valid listing prefix ('' or the start of a valid key)."""
    if prefix == "":
        return prefix
    # A prefix may end with '/' or in the middle of a segment; check it as if completed.
    check_key(prefix + "x" if prefix.endswith("/") else prefix, what=f"prefix {prefix!r}")
    return prefix


def check_sha256(value: str, *, what: str = "expected_sha256") -> str:
    """Return the lower-case form of a hex SHA-256, or raise InvalidArgument."""
    if not isinstance(value, str) or not _SHA256_RE.fullmatch(value.lower()):
        raise InvalidArgument(f"{what}: expected 64 hex digits, got {value!r}")
    return value.lower()


def content_key(sha256_hex: str) -> str:
    """Key of the content-addressed object with this SHA-256."""
    return f"{CONTENT_PREFIX}/{sha256_hex[:2]}/{sha256_hex}"


def sha256_of_content_key(key: str) -> str | None:
    """The SHA-256 a content-addressed key names, or None for any other key."""
    parts = key.split("/")
    if (
        len(parts) == 3
        and parts[0] == CONTENT_PREFIX
        and _SHA256_RE.fullmatch(parts[2])
        and parts[1] == parts[2][:2]
    ):
        return parts[2]
    return None


async def blocks(chunks: Chunks, size: int) -> AsyncIterator[bytes]:
    """Re-cut ``chunks`` into blocks of exactly ``size`` bytes (the last may be shorter).

    Holds at most one block plus one incoming chunk in memory. Yields nothing for empty input.
    """
    if isinstance(chunks, bytes | bytearray | memoryview):
        view = memoryview(chunks).cast("B")
        for start in range(0, len(view), size):
            yield bytes(view[start : start + size])
        return
    if not isinstance(chunks, AsyncIterable):
        raise InvalidArgument(
            f"chunks: expected bytes or an async iterable of bytes, got {type(chunks).__name__}"
        )
    buffer = bytearray()
    async for chunk in chunks:
        if not isinstance(chunk, bytes | bytearray | memoryview):
            raise InvalidArgument(f"chunks: expected bytes items, got {type(chunk).__name__}")
        buffer += chunk
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)


async def run_blocking(func: Callable[..., _T], /, *args: object) -> _T:
    """Run blocking ``func`` in a worker thread and wait for it even if cancelled.

    A thread cannot be stopped; if the caller were released while it still runs, the
    caller's cleanup could close a file or abort an upload under it. So on cancellation
    this waits for the thread to finish, then re-raises the cancellation.
    """
    task = asyncio.ensure_future(asyncio.to_thread(func, *args))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            # Its outcome no longer matters; the cancellation re-raised below does.
            with contextlib.suppress(BaseException):
                await task
        raise


def _read_hashed(reader: BlockingReader, size: int, hasher: hashlib._Hash | None) -> bytes:
    data = reader.read(size)
    if hasher is not None and data:
        hasher.update(data)
    return data


class ObjectStore(ABC):
    """An object store: content-addressed and named objects, streamed, written atomically.

    Use as ``async with store:`` or call :meth:`start` / :meth:`aclose`;
    :func:`mlbus.core.storage.open_object_store` returns a started store.
    """

    async def start(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Prepare the store (create the root directory or bucket). Idempotent."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Release connections and threads. Idempotent."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @abstractmethod
    def uri_for(self, key: str) -> str:
        """URI of the object under ``key`` (which need not exist). InvalidArgument for bad keys."""

    def uri_for_prefix(self, prefix: str) -> str:
        """URI of the "directory" of keys under ``prefix`` (with a trailing ``/``), e.g. an
        output location whose objects are written later. InvalidArgument for bad prefixes."""
        return self.uri_for(prefix.rstrip("/") + "/_")[:-1]

    @abstractmethod
    def key_for(self, uri: str) -> str:
        """Key of one of this store's URIs; InvalidArgument for foreign or escaping URIs."""

    @abstractmethod
    async def put_content(
        self, chunks: Chunks, *, content_type: str = DEFAULT_CONTENT_TYPE
    ) -> ObjectRef:
        """Store content under its SHA-256 (``sha256/<ab>/<hex>``); equal content is kept once.

        If the content exists already, nothing is written and the ref describes the stored
        object (with its stored content type).
        """

    @abstractmethod
    async def put(
        self,
        key: str,
        chunks: Chunks,
        *,
        content_type: str = DEFAULT_CONTENT_TYPE,
        if_absent: bool = False,
    ) -> ObjectRef:
        """Store a named object atomically, replacing any previous one.

        With ``if_absent=True`` the write fails with AlreadyExists when ``key`` exists, and
        of concurrent writers exactly one succeeds.
        """

    @abstractmethod
    async def _open_reader(self, key: str, uri: str) -> BlockingReader:
        """Open the object for reading; NotFound if it does not exist."""

    async def get(
        self,
        uri: str,
        *,
        expected_sha256: str | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> AsyncIterator[bytes]:
        """Stream an object's bytes.

        Errors (NotFound, InvalidArgument) are raised on the first iteration. With
        ``expected_sha256`` the content is hashed on the way and IntegrityError is raised
        after the last chunk if it differs, so do not act on the data before the stream ends.
        """
        expected = check_sha256(expected_sha256) if expected_sha256 is not None else None
        if chunk_size <= 0:
            raise InvalidArgument(f"chunk_size: expected a positive number, got {chunk_size}")
        key = self.key_for(uri)
        reader = await self._open_reader(key, uri)
        hasher = hashlib.sha256() if expected is not None else None
        try:
            while True:
                chunk = await run_blocking(_read_hashed, reader, chunk_size, hasher)
                if not chunk:
                    break
                yield chunk
        finally:
            await run_blocking(reader.close)
        if hasher is not None and hasher.hexdigest() != expected:
            raise IntegrityError(
                f"object '{uri}': expected sha256 {expected}, got {hasher.hexdigest()}",
                details={
                    "uri": uri,
                    "expected_sha256": str(expected),
                    "sha256": hasher.hexdigest(),
                },
            )

    async def read_bytes(self, uri: str, *, expected_sha256: str | None = None) -> bytes:
        """The whole object in memory (for small objects); see :meth:`get`."""
        parts: builtins.list[bytes] = []
        async for chunk in self.get(uri, expected_sha256=expected_sha256):
            parts.append(chunk)
        return b"".join(parts)

    async def read_range(self, uri: str, offset: int, length: int) -> bytes:
        """``length`` bytes of an object from byte ``offset`` (fewer at its end; none past
        it). NotFound if it does not exist. Stores that can seek override this streaming
        fallback."""
        if offset < 0 or length < 0:
            raise InvalidArgument(f"range: expected offset, length >= 0, got {offset}, {length}")
        parts: builtins.list[bytes] = []
        seen = 0
        async for chunk in self.get(uri):
            start, stop = max(offset - seen, 0), min(offset + length - seen, len(chunk))
            if start < stop:
                parts.append(chunk[start:stop])
            seen += len(chunk)
            if seen >= offset + length:
                break
        return b"".join(parts)

    @abstractmethod
    async def stat(self, uri: str) -> ObjectInfo:
        """Size, checksum, content type and modification time of an object; NotFound if absent."""

    async def exists(self, uri: str) -> bool:
        """Whether the object exists (InvalidArgument for a foreign URI, like every method)."""
        try:
            await self.stat(uri)
        except NotFound:
            return False
        return True

    @abstractmethod
    async def delete(self, uri: str) -> None:
        """Delete an object; deleting a missing object is not an error."""

    @abstractmethod
    def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Objects whose key starts with ``prefix`` (a plain string prefix, as on S3).

        Yielded in key order; ``sha256`` and ``content_type`` as described on ObjectInfo.
        """
