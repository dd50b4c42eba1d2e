"""Artifact bytes in and out, with SHA-256 checked end to end.

:class:`UploadSource` reads what :meth:`RegistryClient.register` streams: for a file or a
seekable stream it hashes everything first, so the header can carry ``expected_sha256`` and
the registry verifies the upload before storing anything. :class:`DownloadSink` receives a
DownloadArtifact stream and writes it atomically (temporary file + rename), so a truncated
or corrupt download never leaves a file behind.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, BinaryIO, TypeAlias

from mlbus.registry.v1 import registry_pb2
from mlbus.sdk.errors import DataLoss
from mlbus.sdk.registry.models import ObjectRef

#: Called as bytes move: ``progress(done_bytes, total_bytes_or_None)``.
Progress: TypeAlias = Callable[[int, int | None], None]

#: What :meth:`RegistryClient.register` accepts: a path, the bytes, or a binary stream.
ArtifactSource: TypeAlias = "str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO"


class UploadSource:
    """The bytes of one upload, read in chunks; hashes as it goes.

    Call :meth:`prepare` first (it opens a path and hashes files and seekable streams),
    then :meth:`read_chunk` until it returns ``b""``, then :meth:`close`.
    """

    def __init__(self, source: ArtifactSource, chunk_size: int) -> None:
        self._source = source
        self._chunk_size = chunk_size
        self._stream: IO[bytes] | None = None
        self._owns_stream = False
        self._hash = hashlib.sha256()
        #: SHA-256 known before streaming ("" for a non-seekable stream).
        self.expected_sha256 = ""
        #: Total size when known before streaming.
        self.total: int | None = None
        #: Bytes handed out by :meth:`read_chunk` so far.
        self.sent = 0
        #: Where the bytes come from, for messages.
        self.name = "<bytes>"

    def prepare(self) -> None:
        """Open the source and, where possible, hash it in a first pass."""
        source = self._source
        if isinstance(source, bytes | bytearray | memoryview):
            data = bytes(source)
            self._stream = io.BytesIO(data)
            self.expected_sha256 = hashlib.sha256(data).hexdigest()
            self.total = len(data)
            return
        if isinstance(source, str | os.PathLike):
            path = Path(source)
            self.name = str(path)
            if path.is_dir():
                raise IsADirectoryError(f"{path} is a directory, not a model file")
            self._stream = path.open("rb")
            self._owns_stream = True
        else:
            self._stream = source
            self.name = str(getattr(source, "name", "<stream>"))
        stream = self._stream
        if stream.seekable():
            start = stream.tell()
            digest = hashlib.sha256()
            size = 0
            while block := stream.read(self._chunk_size):
                digest.update(block)
                size += len(block)
            stream.seek(start)
            self.expected_sha256 = digest.hexdigest()
            self.total = size

    def read_chunk(self) -> bytes:
        """The next chunk; ``b""`` at the end."""
        if self._stream is None:
            raise RuntimeError("UploadSource.prepare() was not called")
        chunk = self._stream.read(self._chunk_size)
        if chunk:
            self._hash.update(chunk)
            self.sent += len(chunk)
        return chunk

    @property
    def streamed_sha256(self) -> str:
        """SHA-256 of what :meth:`read_chunk` handed out."""
        return self._hash.hexdigest()

    def check_result(self, artifact: ObjectRef | None) -> None:
        """Raise :class:`DataLoss` when the stored artifact is not what was sent."""
        if artifact is None or not artifact.sha256:
            return
        if artifact.sha256 != self.streamed_sha256:
            raise DataLoss(
                f"the registry stored sha256 {artifact.sha256} but {self.name} streamed "
                f"{self.streamed_sha256}",
                details={"expected": self.streamed_sha256, "actual": artifact.sha256},
            )

    def close(self) -> None:
        """Close the file this source opened (a caller's stream stays open)."""
        if self._owns_stream and self._stream is not None:
            self._stream.close()


def default_file_name(group: str, version: int | None, alias: str | None) -> str:
    """``churn-v3.onnx`` / ``churn-production.onnx``: a download's name inside a directory."""
    return f"{group}-v{version}.onnx" if version is not None else f"{group}-{alias}.onnx"


def resolve_destination(dest: str | os.PathLike[str], default_name: str) -> Path:
    """The file a download writes: ``dest`` itself, or ``dest/default_name`` when ``dest``
    is an existing directory (or ends with a path separator)."""
    text = os.fspath(dest)
    path = Path(text)
    if path.is_dir() or text.endswith(("/", os.sep)):
        return path / default_name
    return path


def _umask() -> int:
    """The process umask (reading it means setting it; set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class DownloadSink:
    """Receives one DownloadArtifact stream: the artifact reference first, then chunks.

    Writes into a temporary file beside ``dest`` (or into memory when ``dest`` is None);
    :meth:`finish` checks size and SHA-256 against the reference and renames the file into
    place; :meth:`discard` removes what was written. Use as a context manager so a failure
    always discards.
    """

    def __init__(self, dest: Path | None, *, what: str, progress: Progress | None = None) -> None:
        self.dest = dest
        self.what = what
        self._progress = progress
        self._hash = hashlib.sha256()
        self._received = 0
        self._artifact: ObjectRef | None = None
        self._buffer = io.BytesIO() if dest is None else None
        self._file: BinaryIO | None = None
        self._temp: Path | None = None

    def __enter__(self) -> DownloadSink:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.discard()

    def accept(self, message: registry_pb2.DownloadArtifactResponse) -> None:
        """Take the next stream message."""
        part = message.WhichOneof("part")
        if part == "artifact":
            if self._artifact is not None:
                raise DataLoss(f"{self.what}: the registry sent the artifact reference twice")
            ref = message.artifact
            if not ref.sha256:
                raise DataLoss(f"{self.what}: the registry sent no sha256; cannot verify")
            self._artifact = ObjectRef(
                uri=ref.uri,
                sha256=ref.sha256.lower(),
                size_bytes=ref.size_bytes,
                content_type=ref.content_type,
            )
            self._open()
            self._report()
        elif part == "chunk":
            if self._artifact is None:
                raise DataLoss(f"{self.what}: artifact bytes arrived before its reference")
            self._write(message.chunk)
        else:
            raise DataLoss(f"{self.what}: an empty message in the download stream")

    def _open(self) -> None:
        if self.dest is None:
            return
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(
            dir=self.dest.parent, prefix=f".{self.dest.name}.", suffix=".part"
        )
        self._temp = Path(name)
        self._file = os.fdopen(fd, "wb")

    def _write(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self._received += len(chunk)
        if self._file is not None:
            self._file.write(chunk)
        elif self._buffer is not None:
            self._buffer.write(chunk)
        self._report()

    def _report(self) -> None:
        if self._progress is not None and self._artifact is not None:
            self._progress(self._received, self._artifact.size_bytes or None)

    def finish(self) -> tuple[ObjectRef, bytes | None]:
        """Verify and commit; returns the reference and, for a memory sink, the bytes."""
        artifact = self._artifact
        if artifact is None:
            raise DataLoss(f"{self.what}: the download stream ended before the artifact reference")
        actual = self._hash.hexdigest()
        if artifact.size_bytes and self._received != artifact.size_bytes:
            raise DataLoss(
                f"{self.what}: received {self._received} bytes, expected {artifact.size_bytes} "
                "(truncated or corrupt download)",
                details={"expected_size": str(artifact.size_bytes), "size": str(self._received)},
            )
        if actual != artifact.sha256:
            raise DataLoss(
                f"{self.what}: sha256 of the downloaded bytes is {actual}, expected "
                f"{artifact.sha256} (corrupt download)",
                details={"expected": artifact.sha256, "actual": actual},
            )
        if self._file is not None and self._temp is not None and self.dest is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            # mkstemp makes the file private (0600); give it what a plain open() would.
            os.fchmod(self._file.fileno(), 0o666 & ~_umask())
            self._file.close()
            self._file = None
            os.replace(self._temp, self.dest)
            self._temp = None
            return artifact, None
        data = self._buffer.getvalue() if self._buffer is not None else b""
        return artifact, data

    def discard(self) -> None:
        """Remove the partial file (nothing is left at ``dest``)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._temp is not None:
            self._temp.unlink(missing_ok=True)
            self._temp = None
