"""Artifact transfer: uploads hash first and stream in chunks; downloads are verified and
atomic — a corrupt or truncated stream raises DataLoss and leaves nothing at the
destination."""

from __future__ import annotations

import hashlib
import io
import os
import stat
from collections.abc import Iterable
from pathlib import Path

import pytest

from mlbus.common.v1 import common_pb2
from mlbus.registry.v1 import registry_pb2
from mlbus.sdk.errors import DataLoss
from mlbus.sdk.registry import ObjectRef
from mlbus.sdk.registry._artifacts import DownloadSink, UploadSource, resolve_destination

DATA = bytes(range(256)) * 1000  # 256 kB
SHA = hashlib.sha256(DATA).hexdigest()


def stream(
    data: bytes, *, sha256: str = SHA, size: int | None = None, chunk: int = 10_000
) -> list[registry_pb2.DownloadArtifactResponse]:
    header = registry_pb2.DownloadArtifactResponse(
        artifact=common_pb2.ObjectRef(
            uri="file:///objects/x", sha256=sha256, size_bytes=len(DATA) if size is None else size
        )
    )
    chunks = [
        registry_pb2.DownloadArtifactResponse(chunk=data[i : i + chunk])
        for i in range(0, len(data), chunk)
    ]
    return [header, *chunks]


def receive(
    messages: Iterable[registry_pb2.DownloadArtifactResponse], dest: Path | None
) -> bytes | None:
    with DownloadSink(dest, what="churn/1") as sink:
        for message in messages:
            sink.accept(message)
        _, data = sink.finish()
    return data


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_download_writes_the_verified_file(tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "model.onnx"
    seen: list[tuple[int, int | None]] = []
    with DownloadSink(dest, what="churn/1", progress=lambda d, t: seen.append((d, t))) as sink:
        for message in stream(DATA):
            sink.accept(message)
        artifact, data = sink.finish()
    assert data is None
    assert dest.read_bytes() == DATA
    assert artifact == ObjectRef(uri="file:///objects/x", sha256=SHA, size_bytes=len(DATA))
    assert leftovers(dest.parent) == ["model.onnx"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o666 & ~umask  # not mkstemp's private 0600
    assert seen[0] == (0, len(DATA))
    assert seen[-1] == (len(DATA), len(DATA))


def test_download_to_memory() -> None:
    assert receive(stream(DATA), None) == DATA


def test_corrupt_bytes_raise_data_loss_and_leave_no_file(tmp_path: Path) -> None:
    dest = tmp_path / "model.onnx"
    corrupt = bytearray(DATA)
    corrupt[1000] ^= 0xFF
    with pytest.raises(DataLoss, match="corrupt download") as info:
        receive(stream(bytes(corrupt)), dest)
    assert info.value.details["expected"] == SHA
    assert leftovers(tmp_path) == []


def test_truncated_stream_raises_data_loss(tmp_path: Path) -> None:
    dest = tmp_path / "model.onnx"
    with pytest.raises(DataLoss, match=f"received 200000 bytes, expected {len(DATA)}"):
        receive(stream(DATA[:200_000]), dest)
    assert leftovers(tmp_path) == []


def test_an_existing_file_survives_a_failed_download(tmp_path: Path) -> None:
    dest = tmp_path / "model.onnx"
    dest.write_bytes(b"previous model")
    with pytest.raises(DataLoss):
        receive(stream(DATA, sha256="0" * 64), dest)
    assert dest.read_bytes() == b"previous model"
    assert leftovers(tmp_path) == ["model.onnx"]


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([registry_pb2.DownloadArtifactResponse(chunk=b"x")], "bytes arrived before its reference"),
        ([], "ended before the artifact reference"),
        (stream(DATA, sha256=""), "no sha256"),
        (stream(DATA)[:1] * 2, "reference twice"),
    ],
)
def test_protocol_violations(
    tmp_path: Path, messages: list[registry_pb2.DownloadArtifactResponse], message: str
) -> None:
    with pytest.raises(DataLoss, match=message):
        receive(messages, tmp_path / "m.onnx")
    assert leftovers(tmp_path) == []


def test_an_error_inside_the_block_discards(tmp_path: Path) -> None:
    dest = tmp_path / "m.onnx"
    with pytest.raises(KeyboardInterrupt), DownloadSink(dest, what="x") as sink:
        sink.accept(stream(DATA)[0])
        raise KeyboardInterrupt
    assert leftovers(tmp_path) == []


def test_destination_directory_gets_a_default_name(tmp_path: Path) -> None:
    assert resolve_destination(tmp_path, "churn-v3.onnx") == tmp_path / "churn-v3.onnx"
    assert resolve_destination(f"{tmp_path}/new/", "a.onnx") == tmp_path / "new" / "a.onnx"
    assert resolve_destination(tmp_path / "x.onnx", "a.onnx") == tmp_path / "x.onnx"


def read_all(source: UploadSource) -> bytes:
    out = bytearray()
    while chunk := source.read_chunk():
        out += chunk
    return bytes(out)


def test_upload_of_a_file_is_hashed_before_streaming(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(DATA)
    source = UploadSource(path, chunk_size=64 * 1024)
    source.prepare()
    assert (source.expected_sha256, source.total) == (SHA, len(DATA))
    first = source.read_chunk()
    assert len(first) == 64 * 1024
    assert first + read_all(source) == DATA
    assert source.streamed_sha256 == SHA
    source.check_result(ObjectRef(uri="x", sha256=SHA))
    with pytest.raises(DataLoss, match="stored sha256"):
        source.check_result(ObjectRef(uri="x", sha256="0" * 64))
    source.close()


def test_upload_of_bytes_and_of_a_seekable_stream_from_its_position() -> None:
    source = UploadSource(DATA, chunk_size=100_000)
    source.prepare()
    assert source.expected_sha256 == SHA
    assert read_all(source) == DATA

    buffer = io.BytesIO(b"HEAD" + DATA)
    buffer.seek(4)
    from_stream = UploadSource(buffer, chunk_size=100_000)
    from_stream.prepare()
    assert (from_stream.expected_sha256, from_stream.total) == (SHA, len(DATA))
    assert read_all(from_stream) == DATA
    from_stream.close()
    assert not buffer.closed  # the caller's stream stays open


class _Pipe(io.RawIOBase):
    """A non-seekable stream, like a pipe or a socket."""

    def __init__(self, data: bytes) -> None:
        self._inner = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        return self._inner.readinto(buffer)


def test_upload_of_a_non_seekable_stream_is_hashed_on_the_fly() -> None:
    source = UploadSource(io.BufferedReader(_Pipe(DATA)), chunk_size=100_000)
    source.prepare()
    assert (source.expected_sha256, source.total) == ("", None)
    assert read_all(source) == DATA
    assert source.streamed_sha256 == SHA


def test_upload_of_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError, match="not a model file"):
        UploadSource(tmp_path, chunk_size=10).prepare()
