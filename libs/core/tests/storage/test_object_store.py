"""One behaviour suite, run against the local store and against S3 (moto in server mode)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import grpc
import pytest

from mlbus.core.errors import AlreadyExists, InvalidArgument, NotFound
from mlbus.core.settings import StorageSettings
from mlbus.core.storage import (
    IntegrityError,
    LocalObjectStore,
    ObjectInfo,
    ObjectRef,
    ObjectStore,
    S3ObjectStore,
    open_object_store,
)
from mlbus.core.storage.s3 import DEFAULT_PART_SIZE

MiB = 1024 * 1024
#: Above the S3 part size: exercises the multipart upload and the server-side copy.
LARGE = 20 * MiB
#: Just above one part: the smallest payload that goes multipart.
ABOVE_PART = DEFAULT_PART_SIZE + 123
S3_PREFIX = "stack-a"


def payload(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def stream(data: bytes, chunk: int = MiB + 7) -> AsyncIterator[bytes]:
    """``data`` in uneven chunks, yielding to the loop between them like a network source."""
    for start in range(0, len(data), chunk):
        await asyncio.sleep(0)
        yield data[start : start + chunk]


async def failing(data: bytes, chunk: int = MiB) -> AsyncIterator[bytes]:
    """Yields ``data``, then fails like a dropped client connection."""
    async for part in stream(data, chunk):
        yield part
    raise ConnectionResetError("producer went away")


@dataclass
class Backend:
    """A store under test plus a look behind its back, to check what it really stored."""

    name: str
    store: ObjectStore
    root: Path | None = None
    s3: Any = None
    bucket: str = ""

    async def leftovers(self) -> list[str]:
        """Temporary files, temporary objects and unfinished multipart uploads."""
        if self.root is not None:
            return sorted(p.name for p in (self.root / ".tmp").iterdir())

        def scan() -> list[str]:
            tmp = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=f"{S3_PREFIX}/.tmp/")
            uploads = self.s3.list_multipart_uploads(Bucket=self.bucket)
            return sorted(
                [f"object {o['Key']}" for o in tmp.get("Contents", [])]
                + [f"upload {u['Key']}" for u in uploads.get("Uploads", [])]
            )

        return await asyncio.to_thread(scan)

    async def corrupt(self, uri: str, data: bytes) -> None:
        """Replace an object's bytes without the store knowing."""
        key = self.store.key_for(uri)
        if self.root is not None:
            (self.root / key).write_bytes(data)
            return
        await asyncio.to_thread(
            self.s3.put_object, Bucket=self.bucket, Key=f"{S3_PREFIX}/{key}", Body=data
        )

    async def multipart_parts(self, uri: str) -> int | None:
        """Number of parts the S3 object was assembled from (0 for a single PUT)."""
        key = self.store.key_for(uri)
        head = await asyncio.to_thread(
            self.s3.head_object, Bucket=self.bucket, Key=f"{S3_PREFIX}/{key}"
        )
        etag: str = head["ETag"].strip('"')
        return int(etag.split("-")[1]) if "-" in etag else 0

    def foreign_uris(self) -> list[str]:
        """URIs this store must refuse: other stores, other schemes, escapes."""
        common = ["http://example.com/x", "s3://other-bucket/x", "file:///etc/passwd", "x", ""]
        if self.root is not None:
            base = self.root.as_uri()
            return [
                *common,
                f"{base}/../escaped",
                f"{base}/a/../../escaped",
                f"{base}-sibling/x",
                f"file://otherhost{self.root}/x",
                f"{base}/x?query=1",
                f"{base}/.tmp/x",
                f"s3://{self.bucket or 'mlbus'}/x",
            ]
        return [
            *common,
            f"s3://{self.bucket}/x",  # outside the store's prefix
            f"s3://{self.bucket}/{S3_PREFIX}/../x",
            f"s3://{self.bucket}/{S3_PREFIX}/a/../../x",
            f"s3://{self.bucket}x/{S3_PREFIX}/x",
            f"s3://{self.bucket}/{S3_PREFIX}/.tmp/x",
            f"file:///{self.bucket}/{S3_PREFIX}/x",
        ]


def _empty_bucket(client: Any, bucket: str) -> None:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys})


@pytest.fixture(params=["local", "s3"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StorageSettings]:
    if request.param == "local":
        yield StorageSettings(type="local", root=tmp_path / "objects")
        return
    endpoint: str = request.getfixturevalue("moto_endpoint")
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    yield StorageSettings(
        type="s3",
        s3_bucket=bucket,
        s3_prefix=S3_PREFIX,
        s3_endpoint_url=endpoint,
        s3_create_bucket=True,
    )


@pytest.fixture
async def backend(settings: StorageSettings) -> AsyncIterator[Backend]:
    store = await open_object_store(settings)
    if isinstance(store, LocalObjectStore):
        assert store.root.is_dir(), "start() creates the root directory"
        yield Backend("local", store, root=store.root)
        await store.aclose()
        return
    assert isinstance(store, S3ObjectStore)
    client = boto3.client(
        "s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region
    )
    # Something outside the store's prefix that it must neither list nor touch.
    client.put_object(Bucket=settings.s3_bucket, Key="elsewhere/x", Body=b"not ours")
    yield Backend("s3", store, s3=client, bucket=settings.s3_bucket)
    await store.aclose()
    assert client.get_object(Bucket=settings.s3_bucket, Key="elsewhere/x")["Body"].read() == (
        b"not ours"
    )
    _empty_bucket(client, settings.s3_bucket)  # moto keeps everything in memory
    client.close()


async def collect(store: ObjectStore, prefix: str = "") -> list[ObjectInfo]:
    return [info async for info in store.list(prefix)]


# -- round trips ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "as_stream"),
    [(0, False), (5, False), (3 * MiB + 1, True), (LARGE, True), (LARGE, False)],
    ids=["empty", "tiny-bytes", "3MiB-stream", "20MiB-stream", "20MiB-bytes"],
)
async def test_put_round_trip(backend: Backend, size: int, as_stream: bool) -> None:
    store = backend.store
    data = payload(size)
    source = stream(data) if as_stream else data
    ref = await store.put("results/run-1/output.bin", source, content_type="application/x-test")

    assert ref == ObjectRef(
        uri=store.uri_for("results/run-1/output.bin"),
        sha256=sha(data),
        size=size,
        content_type="application/x-test",
    )
    assert await store.read_bytes(ref.uri) == data
    chunks = [c async for c in store.get(ref.uri, chunk_size=256 * 1024)]
    assert b"".join(chunks) == data
    assert all(0 < len(c) <= 256 * 1024 for c in chunks)
    assert await store.read_bytes(ref.uri, expected_sha256=ref.sha256) == data

    info = await store.stat(ref.uri)
    assert (info.uri, info.size, info.sha256, info.content_type) == (
        ref.uri,
        size,
        sha(data),
        "application/x-test",
    )
    assert abs(datetime.now(UTC) - info.modified) < timedelta(minutes=5)
    assert await backend.leftovers() == []
    if backend.name == "s3":
        # Payloads above the part size are assembled from parts; smaller ones are one PUT.
        expected_parts = 0 if size < DEFAULT_PART_SIZE else 1
        assert await backend.multipart_parts(ref.uri) == expected_parts


@pytest.mark.parametrize("size", [11, LARGE], ids=["small", "20MiB"])
async def test_put_content_round_trip(backend: Backend, size: int) -> None:
    store = backend.store
    data = payload(size, seed=2)
    ref = await store.put_content(stream(data), content_type="application/onnx")

    digest = hashlib.sha256(data).hexdigest()
    assert ref.sha256 == digest
    assert ref.size == size
    assert ref.content_type == "application/onnx"
    assert ref.uri == store.uri_for(f"sha256/{digest[:2]}/{digest}")
    assert await store.read_bytes(ref.uri, expected_sha256=digest) == data
    info = await store.stat(ref.uri)
    assert (info.size, info.sha256, info.content_type) == (size, digest, "application/onnx")
    assert await backend.leftovers() == []


async def test_uris_name_the_store_and_key(backend: Backend) -> None:
    store = backend.store
    key = "dir/naïve file #1?.bin"
    ref = await store.put(key, b"x")
    assert ref.uri == store.uri_for(key)
    assert store.key_for(ref.uri) == key
    # A prefix's URI, plus a name, is the URI of the object of that name under it.
    assert store.uri_for_prefix("dir/") + "y.bin" == store.uri_for("dir/y.bin")
    assert ref.uri.startswith(store.uri_for_prefix("dir"))
    assert store.uri_for_prefix("dir") == store.uri_for_prefix("dir/")
    assert store.uri_for_prefix("dir/").endswith("/")
    if backend.name == "local":
        assert backend.root is not None
        assert ref.uri.startswith("file:///")
        assert (backend.root / key).read_bytes() == b"x"
    else:
        assert ref.uri == f"s3://{backend.bucket}/{S3_PREFIX}/{key}"
    assert await store.read_bytes(ref.uri) == b"x"


async def test_put_overwrites_whole_object(backend: Backend) -> None:
    store = backend.store
    old, new = payload(LARGE, seed=3), b"short replacement"
    await store.put("model/latest", old)
    ref = await store.put("model/latest", new, content_type="text/plain")
    assert await store.read_bytes(ref.uri) == new
    info = await store.stat(ref.uri)
    assert (info.size, info.sha256, info.content_type) == (len(new), sha(new), "text/plain")


# -- content addressing --------------------------------------------------------------


@pytest.mark.parametrize("size", [1000, ABOVE_PART], ids=["small", "multipart"])
async def test_put_content_dedupes(backend: Backend, size: int) -> None:
    store = backend.store
    data = payload(size, seed=4)
    first = await store.put_content(data, content_type="application/onnx")
    again = await store.put_content(stream(data, chunk=4096 + 1), content_type="application/onnx")
    other = await store.put_content(data + b"!", content_type="application/onnx")

    assert again == first
    assert other.uri != first.uri
    stored = await collect(store, "sha256/")
    assert sorted(i.uri for i in stored) == sorted([first.uri, other.uri])
    assert {i.uri: i.sha256 for i in stored} == {first.uri: sha(data), other.uri: sha(data + b"!")}
    assert await backend.leftovers() == []


async def test_dedupe_reports_the_stored_content_type(backend: Backend) -> None:
    store = backend.store
    first = await store.put_content(b"weights", content_type="application/onnx")
    again = await store.put_content(b"weights", content_type="application/octet-stream")
    assert again == first
    assert again.content_type == "application/onnx"


@pytest.mark.parametrize("size", [1000, ABOVE_PART], ids=["small", "multipart"])
async def test_concurrent_put_content_of_same_content(backend: Backend, size: int) -> None:
    store = backend.store
    data = payload(size, seed=5)
    refs = await asyncio.gather(*(store.put_content(stream(data, chunk=MiB)) for _ in range(10)))

    assert len(set(refs)) == 1
    assert refs[0].sha256 == sha(data)
    assert [i.uri for i in await collect(store)] == [refs[0].uri]
    assert await store.read_bytes(refs[0].uri, expected_sha256=sha(data)) == data
    assert await backend.leftovers() == []


# -- integrity -----------------------------------------------------------------------


async def test_expected_sha256_mismatch_raises_integrity_error(backend: Backend) -> None:
    store = backend.store
    data = payload(3 * MiB, seed=6)
    ref = await store.put("payloads/p1", data)
    wrong = sha(b"something else")

    received = bytearray()
    with pytest.raises(IntegrityError) as caught:
        async for chunk in store.get(ref.uri, expected_sha256=wrong, chunk_size=MiB):
            received += chunk
    # The whole stream was delivered; the error comes at its end.
    assert bytes(received) == data
    assert caught.value.code == grpc.StatusCode.DATA_LOSS
    assert ref.uri in str(caught.value)
    assert wrong in str(caught.value)
    with pytest.raises(IntegrityError):
        await store.read_bytes(ref.uri, expected_sha256=wrong)
    # Upper-case hex is the same checksum.
    assert await store.read_bytes(ref.uri, expected_sha256=ref.sha256.upper()) == data


async def test_corrupted_content_is_detected(backend: Backend) -> None:
    store = backend.store
    ref = await store.put_content(b"model weights v1")
    await backend.corrupt(ref.uri, b"model weights v2")
    with pytest.raises(IntegrityError):
        await store.read_bytes(ref.uri, expected_sha256=ref.sha256)


@pytest.mark.parametrize("bad", ["", "abc", "g" * 64, "a" * 63])
async def test_malformed_expected_sha256_is_invalid(backend: Backend, bad: str) -> None:
    ref = await backend.store.put("x", b"x")
    with pytest.raises(InvalidArgument, match="expected_sha256"):
        await backend.store.read_bytes(ref.uri, expected_sha256=bad)


# -- exactly once --------------------------------------------------------------------


@pytest.mark.parametrize("second_size", [6, ABOVE_PART], ids=["small", "multipart"])
async def test_if_absent_refuses_second_write(backend: Backend, second_size: int) -> None:
    store = backend.store
    first = await store.put("results/req-1", b"first", if_absent=True)
    with pytest.raises(AlreadyExists) as caught:
        await store.put("results/req-1", stream(payload(second_size)), if_absent=True)
    assert first.uri in str(caught.value)
    assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert await store.read_bytes(first.uri) == b"first"
    assert (await store.stat(first.uri)).sha256 == sha(b"first")
    assert await backend.leftovers() == []


@pytest.mark.parametrize("size", [100, ABOVE_PART], ids=["small", "multipart"])
async def test_key_written_during_upload_wins(backend: Backend, size: int) -> None:
    """The writer that commits first wins, even when the other checked before it committed."""
    store = backend.store
    data = payload(size, seed=11)
    paused, resume = asyncio.Event(), asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield data[: size // 2]
        paused.set()
        await resume.wait()
        yield data[size // 2 :]

    late = asyncio.create_task(store.put("results/req-3", slow(), if_absent=True))
    await asyncio.wait_for(paused.wait(), timeout=60)
    winner = await store.put("results/req-3", b"the other writer", if_absent=True)
    resume.set()
    with pytest.raises(AlreadyExists):
        await late
    assert await store.read_bytes(winner.uri) == b"the other writer"
    assert (await store.stat(winner.uri)).sha256 == sha(b"the other writer")
    assert await backend.leftovers() == []


@pytest.mark.parametrize("size", [100, ABOVE_PART], ids=["small", "multipart"])
async def test_concurrent_if_absent_has_exactly_one_winner(backend: Backend, size: int) -> None:
    if backend.name == "s3":
        pytest.skip(
            "moto checks If-None-Match and then writes without a lock, so concurrent "
            "conditional writes can all succeed there (S3 decides atomically); "
            "test_key_written_during_upload_wins covers the S3 path deterministically"
        )
    store = backend.store
    contents = [payload(size, seed=100 + i) for i in range(10)]
    results = await asyncio.gather(
        *(store.put("results/req-2", stream(c), if_absent=True) for c in contents),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, ObjectRef)]
    losers = [r for r in results if not isinstance(r, ObjectRef)]
    assert len(winners) == 1, results
    assert all(isinstance(r, AlreadyExists) for r in losers), losers
    assert await store.read_bytes(winners[0].uri, expected_sha256=winners[0].sha256) in contents
    assert await backend.leftovers() == []


@pytest.mark.parametrize("size", [100, ABOVE_PART], ids=["small", "multipart"])
async def test_content_stored_during_upload_is_reused(backend: Backend, size: int) -> None:
    store = backend.store
    data = payload(size, seed=12)
    paused, resume = asyncio.Event(), asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield data[: size // 2]
        paused.set()
        await resume.wait()
        yield data[size // 2 :]

    late = asyncio.create_task(store.put_content(slow()))
    await asyncio.wait_for(paused.wait(), timeout=60)
    first = await store.put_content(data)
    resume.set()
    assert await late == first
    assert [i.uri for i in await collect(store)] == [first.uri]
    assert await backend.leftovers() == []


# -- missing, delete, list -----------------------------------------------------------


async def test_missing_object_is_not_found(backend: Backend) -> None:
    store = backend.store
    uri = store.uri_for("nothing/here")
    with pytest.raises(NotFound, match="nothing/here"):
        await store.stat(uri)
    with pytest.raises(NotFound):
        await store.read_bytes(uri)
    with pytest.raises(NotFound):
        async for _ in store.get(uri):
            pass
    assert not await store.exists(uri)
    # A "directory" is not an object either.
    await store.put("nothing/here/deeper", b"x")
    assert not await store.exists(uri)
    with pytest.raises(NotFound):
        await store.read_bytes(uri)


async def test_read_range(backend: Backend) -> None:
    store = backend.store
    data = payload(3 * MiB + 5)
    ref = await store.put("ranges/a", data)
    for offset, length in [(0, 10), (MiB - 3, MiB + 7), (len(data) - 4, 100), (len(data) + 9, 5)]:
        assert await store.read_range(ref.uri, offset, length) == data[offset : offset + length]
    assert await store.read_range(ref.uri, 7, 0) == b""
    # The generic fallback (stores that cannot seek) reads the same bytes.
    assert (
        await ObjectStore.read_range(store, ref.uri, MiB - 3, MiB + 7)
        == data[MiB - 3 : 2 * MiB + 4]
    )
    with pytest.raises(NotFound):
        await store.read_range(store.uri_for("ranges/none"), 0, 10)
    with pytest.raises(InvalidArgument):
        await store.read_range(ref.uri, -1, 10)


async def test_delete_is_idempotent(backend: Backend) -> None:
    store = backend.store
    ref = await store.put("tmp-results/a", b"a")
    cas = await store.put_content(b"artifact")
    assert await store.exists(ref.uri)
    await store.delete(ref.uri)
    await store.delete(ref.uri)
    await store.delete(store.uri_for("never/existed"))
    await store.delete(cas.uri)
    assert not await store.exists(ref.uri)
    assert not await store.exists(cas.uri)
    with pytest.raises(NotFound):
        await store.stat(ref.uri)
    assert await collect(store) == []
    # Content deleted can be stored again.
    assert await store.put_content(b"artifact") == cas
    assert await store.read_bytes(cas.uri) == b"artifact"


async def test_list_by_prefix_in_key_order(backend: Backend) -> None:
    store = backend.store
    keys = ["results/b/c", "results/a", "resultsX", "other/d", "k/x", "k-y"]
    for key in keys:
        await store.put(key, key.encode())
    cas = await store.put_content(b"content")

    def uris(infos: list[ObjectInfo]) -> list[str]:
        return [i.uri for i in infos]

    assert uris(await collect(store, "results/")) == [
        store.uri_for("results/a"),
        store.uri_for("results/b/c"),
    ]
    assert uris(await collect(store, "results")) == [
        store.uri_for(k) for k in ["results/a", "results/b/c", "resultsX"]
    ]
    assert uris(await collect(store, "k")) == [store.uri_for("k-y"), store.uri_for("k/x")]
    assert uris(await collect(store, "results/b/")) == [store.uri_for("results/b/c")]
    assert await collect(store, "nope") == []

    everything = await collect(store)
    assert uris(everything) == sorted([store.uri_for(k) for k in keys] + [cas.uri])
    by_uri = {i.uri: i for i in everything}
    assert by_uri[store.uri_for("resultsX")].size == len(b"resultsX")
    assert by_uri[cas.uri].sha256 == cas.sha256
    assert all(i.modified.tzinfo is not None for i in everything)


# -- validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/absolute",
        "a/../b",
        "..",
        "../escape",
        "a\x00b",
        "a//b",
        "a/./b",
        "trailing/",
        "line\nbreak",
        ".tmp/x",
        ".meta/x",
        "x" * 256,
    ],
)
async def test_bad_keys_are_invalid(backend: Backend, key: str) -> None:
    store = backend.store
    with pytest.raises(InvalidArgument, match="key"):
        await store.put(key, b"x")
    with pytest.raises(InvalidArgument):
        store.uri_for(key)
    assert await collect(store) == []


async def test_content_keys_are_written_only_by_put_content(backend: Backend) -> None:
    store = backend.store
    digest = sha(b"real")
    with pytest.raises(InvalidArgument, match="put_content"):
        await store.put(f"sha256/{digest[:2]}/{digest}", b"forged")
    ref = await store.put_content(b"real")
    assert ref.uri == store.uri_for(f"sha256/{digest[:2]}/{digest}")


async def test_foreign_and_escaping_uris_are_invalid(backend: Backend) -> None:
    store = backend.store
    await store.put("x", b"ours")
    for uri in backend.foreign_uris():
        for call in (store.stat, store.exists, store.delete, store.read_bytes):
            with pytest.raises(InvalidArgument) as caught:
                await call(uri)
            assert repr(uri) in str(caught.value), (uri, str(caught.value))
            assert "expected" in str(caught.value)
    with pytest.raises(InvalidArgument):
        await collect(store, "../")
    assert await store.read_bytes(store.uri_for("x")) == b"ours"


async def test_symlink_out_of_root_is_refused(backend: Backend, tmp_path: Path) -> None:
    if backend.root is None:
        pytest.skip("S3 has no symbolic links")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    (backend.root / "link").symlink_to(outside, target_is_directory=True)
    store = backend.store
    with pytest.raises(InvalidArgument, match="symbolic link"):
        await store.read_bytes(store.uri_for("link/secret"))
    with pytest.raises(InvalidArgument, match="symbolic link"):
        await store.stat(store.uri_for("link/secret"))
    with pytest.raises(InvalidArgument, match="symbolic link"):
        await store.put("link/planted", b"x")
    with pytest.raises(InvalidArgument, match="symbolic link"):
        await store.delete(store.uri_for("link/secret"))
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]


# -- atomicity -----------------------------------------------------------------------


@pytest.mark.parametrize("sent", [MiB, LARGE], ids=["before-first-part", "mid-multipart"])
@pytest.mark.parametrize("kind", ["put", "put_content"])
async def test_failed_stream_leaves_nothing(backend: Backend, kind: str, sent: int) -> None:
    store = backend.store
    source = failing(payload(sent, seed=7))
    with pytest.raises(ConnectionResetError):
        if kind == "put":
            await store.put("results/broken", source)
        else:
            await store.put_content(source)
    assert not await store.exists(store.uri_for("results/broken"))
    assert await collect(store) == []
    assert await backend.leftovers() == []


async def test_failed_overwrite_keeps_previous_object(backend: Backend) -> None:
    store = backend.store
    ref = await store.put("model/current", b"version 1")
    with pytest.raises(ConnectionResetError):
        await store.put("model/current", failing(payload(LARGE, seed=8)))
    assert await store.read_bytes(ref.uri, expected_sha256=sha(b"version 1")) == b"version 1"
    assert (await store.stat(ref.uri)).sha256 == sha(b"version 1")
    assert await backend.leftovers() == []


async def test_cancelled_upload_leaves_nothing(backend: Backend) -> None:
    store = backend.store
    halfway = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        async for part in stream(payload(LARGE, seed=9)):
            yield part
        halfway.set()
        await asyncio.Event().wait()  # the producer stalls forever
        yield b""

    task = asyncio.create_task(store.put("results/cancelled", stalls()))
    await asyncio.wait_for(halfway.wait(), timeout=60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not await store.exists(store.uri_for("results/cancelled"))
    assert await backend.leftovers() == []


async def test_local_store_start_removes_stale_temp_files(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    store = await open_object_store(StorageSettings(type="local", root=root))
    stale, fresh = root / ".tmp" / "stale.part", root / ".tmp" / "fresh.part"
    stale.write_bytes(b"left by a crash")
    fresh.write_bytes(b"being written by another process")
    old = datetime.now().timestamp() - 2 * 24 * 3600
    os.utime(stale, (old, old))
    await store.start()
    assert sorted(p.name for p in (root / ".tmp").iterdir()) == ["fresh.part"]
