"""Object store on S3 or an S3-compatible service (MinIO, Ceph, ...), over boto3.

boto3 blocks, so every call runs in a worker thread; the event loop only moves bytes.

How writes stay atomic and carry their checksum:

- payloads below the part size are hashed in memory, then sent with one ``PutObject``
  carrying ``x-amz-meta-sha256`` (and ``x-amz-checksum-sha256``, so S3 verifies the bytes);
- larger payloads stream as a multipart upload to ``<prefix>.tmp/<uuid>`` while being
  hashed (the SHA-256, and for content-addressed objects the key, are known only at the
  end, and S3 metadata is fixed when an upload starts), then a server-side multipart copy
  (``UploadPartCopy``) creates the final object with its metadata. Either way the object
  appears whole when the last request completes, and a failure aborts what was started.
  With 8 MiB parts and S3's 10,000-part limit, one object can hold up to ~78 GiB.

Only-if-absent writes (``put(..., if_absent=True)`` and content-addressed writes) send
``If-None-Match: *`` on ``PutObject`` / ``CompleteMultipartUpload``, so S3 itself decides
which of several concurrent writers wins: no check-then-write race. A 409
``ConditionalRequestConflict`` (concurrent conditional writes) is retried.

A process that dies mid-upload leaves an incomplete multipart upload or a ``.tmp/`` object;
give the bucket a lifecycle rule that aborts incomplete multipart uploads and expires
``<prefix>.tmp/`` after a day.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from mlbus.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    MlbusError,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from mlbus.core.settings import StorageSettings
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

if TYPE_CHECKING:
    from botocore.response import StreamingBody
    from types_boto3_s3.client import S3Client
    from types_boto3_s3.type_defs import CompletedPartTypeDef, HeadObjectOutputTypeDef

logger = logging.getLogger(__name__)

#: Smallest part S3 accepts (except the last one).
MIN_PART_SIZE = 5 * 1024 * 1024
#: Default multipart part size; payloads below it are sent in one PutObject.
DEFAULT_PART_SIZE = 8 * 1024 * 1024
#: Range copied per UploadPartCopy request when the final object is assembled.
COPY_PART_SIZE = 512 * 1024 * 1024
#: Attempts at a conditional write that S3 answers with 409 ConditionalRequestConflict.
CONFLICT_ATTEMPTS = 5
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _is_not_found(exc: ClientError) -> bool:
    return _error_code(exc) in _NOT_FOUND_CODES or _status(exc) == 404


def _is_precondition_failed(exc: ClientError) -> bool:
    return _error_code(exc) == "PreconditionFailed" or _status(exc) == 412


def _is_conflict(exc: ClientError) -> bool:
    return _error_code(exc) == "ConditionalRequestConflict" or _status(exc) == 409


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Reader:
    """A get_object body whose transport errors surface as Unavailable."""

    def __init__(self, body: StreamingBody, uri: str) -> None:
        self._body = body
        self._uri = uri

    def read(self, size: int, /) -> bytes:
        try:
            return self._body.read(size)
        except BotoCoreError as exc:
            raise Unavailable(f"object '{self._uri}': download interrupted: {exc}") from exc

    def close(self) -> None:
        self._body.close()


class S3ObjectStore(ObjectStore):
    """Object store in an S3 bucket; URIs are ``s3://<bucket>/<prefix><key>``.

    Credentials come from boto3's usual chain (environment, shared config, instance role).
    """

    def __init__(
        self,
        *,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        create_bucket: bool = True,
        part_size: int = DEFAULT_PART_SIZE,
        max_pool_connections: int = 32,
    ) -> None:
        if not bucket or "/" in bucket:
            raise InvalidArgument(f"s3 bucket {bucket!r}: expected a bucket name without '/'")
        if part_size < MIN_PART_SIZE:
            raise InvalidArgument(
                f"part_size: expected at least {MIN_PART_SIZE} bytes, got {part_size}"
            )
        stripped = prefix.strip("/")
        if stripped:
            check_key(stripped, what=f"s3 prefix {prefix!r}")
        self._bucket = bucket
        self._prefix = f"{stripped}/" if stripped else ""
        self._endpoint_url = endpoint_url
        self._region = region
        self._create_bucket = create_bucket
        self._part_size = part_size
        self._max_pool_connections = max_pool_connections
        self._base_uri = f"s3://{bucket}/{self._prefix}"
        self._client_: S3Client | None = None

    @classmethod
    def from_settings(cls, settings: StorageSettings, **options: Any) -> S3ObjectStore:
        """A store configured from ``MLBUS_STORAGE_S3_*`` settings (not started)."""
        return cls(
            bucket=settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            create_bucket=settings.s3_create_bucket,
            **options,
        )

    def __repr__(self) -> str:
        return f"S3ObjectStore({self._base_uri!r})"

    @property
    def bucket(self) -> str:
        """The bucket this store writes to."""
        return self._bucket

    @property
    def part_size(self) -> int:
        """Multipart part size; smaller payloads are written with one request."""
        return self._part_size

    @property
    def client(self) -> S3Client:
        """The boto3 client (thread-safe); FailedPrecondition before :meth:`start`."""
        if self._client_ is None:
            raise FailedPrecondition(f"{self!r} is not started; call start() first")
        return self._client_

    # -- lifecycle -----------------------------------------------------------------

    def _make_client(self) -> S3Client:
        config = Config(
            region_name=self._region,
            max_pool_connections=self._max_pool_connections,
            retries={"mode": "standard", "max_attempts": 5},
            # S3-compatible services are usually reached by path, not bucket subdomain.
            s3={"addressing_style": "path"} if self._endpoint_url else None,
        )
        session = boto3.session.Session()
        return session.client(
            "s3", endpoint_url=self._endpoint_url, region_name=self._region, config=config
        )

    def _start_sync(self) -> None:
        client = self._make_client()
        try:
            if self._create_bucket:
                self._ensure_bucket(client)
        except BaseException:
            client.close()
            raise
        self._client_ = client

    def _ensure_bucket(self, client: S3Client) -> None:
        uri = f"s3://{self._bucket}"
        with self._errors(uri):
            try:
                client.head_bucket(Bucket=self._bucket)
                return
            except ClientError as exc:
                if not _is_not_found(exc) and _error_code(exc) != "NoSuchBucket":
                    raise
            try:
                if self._region == "us-east-1":
                    client.create_bucket(Bucket=self._bucket)
                else:
                    client.create_bucket(
                        Bucket=self._bucket,
                        CreateBucketConfiguration={"LocationConstraint": self._region},  # type: ignore[typeddict-item]
                    )
                logger.info("created bucket %s", self._bucket)
            except ClientError as exc:
                if _error_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    async def start(self) -> None:
        """Create the boto3 client, and the bucket when missing and ``create_bucket`` is set."""
        if self._client_ is None:
            await run_blocking(self._start_sync)

    async def aclose(self) -> None:
        """Close the client's connections."""
        client, self._client_ = self._client_, None
        if client is not None:
            await run_blocking(client.close)

    # -- keys, URIs, errors --------------------------------------------------------

    def uri_for(self, key: str) -> str:
        return self._base_uri + check_key(key)

    def key_for(self, uri: str) -> str:
        if not isinstance(uri, str) or not uri.startswith(self._base_uri):
            raise InvalidArgument(
                f"uri {uri!r}: not an object of this store; expected a URI under '{self._base_uri}'"
            )
        return check_uri_key(uri[len(self._base_uri) :], uri, self._base_uri)

    def _full(self, key: str) -> str:
        return self._prefix + key

    def _translate(self, exc: Exception, uri: str) -> MlbusError | None:
        if isinstance(exc, ClientError):
            code, status = _error_code(exc), _status(exc)
            message = exc.response.get("Error", {}).get("Message", "") or code
            if code == "NoSuchBucket":
                return FailedPrecondition(
                    f"object '{uri}': bucket '{self._bucket}' does not exist; create it or set "
                    "MLBUS_STORAGE_S3_CREATE_BUCKET=true"
                )
            if _is_not_found(exc):
                return NotFound(f"object '{uri}' does not exist")
            if code in ("AccessDenied", "Forbidden", "403") or status == 403:
                return PermissionDenied(
                    f"object '{uri}': access denied by the object store: {message}"
                )
            if status >= 500 or code in ("SlowDown", "ServiceUnavailable", "InternalError"):
                return Unavailable(f"object '{uri}': object store unavailable: {message}")
            return None
        if isinstance(exc, BotoCoreError):
            return Unavailable(f"object '{uri}': object store unreachable: {exc}")
        return None

    @contextlib.contextmanager
    def _errors(self, uri: str) -> Iterator[None]:
        """Turn boto errors into mlbus errors where one fits; others pass unchanged."""
        try:
            yield
        except (ClientError, BotoCoreError) as exc:
            error = self._translate(exc, uri)
            if error is None:
                raise
            raise error from exc

    # -- writing -------------------------------------------------------------------

    @staticmethod
    def _conditional(call: Callable[[], object]) -> bool:
        """Run a write that may carry If-None-Match: True if written, False if the key existed."""
        for attempt in range(CONFLICT_ATTEMPTS):
            try:
                call()
                return True
            except ClientError as exc:
                if _is_precondition_failed(exc):
                    return False
                if not _is_conflict(exc) or attempt == CONFLICT_ATTEMPTS - 1:
                    raise
                time.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    def _head(self, key: str, uri: str) -> HeadObjectOutputTypeDef | None:
        with self._errors(uri):
            try:
                return self.client.head_object(Bucket=self._bucket, Key=self._full(key))
            except ClientError as exc:
                if _is_not_found(exc):
                    return None
                raise

    def _put_single(
        self, key: str, uri: str, data: bytes, digest: str, content_type: str, if_absent: bool
    ) -> bool:
        checksum = base64.b64encode(bytes.fromhex(digest)).decode("ascii")

        def call() -> object:
            if if_absent:
                return self.client.put_object(
                    Bucket=self._bucket,
                    Key=self._full(key),
                    Body=data,
                    ContentType=content_type,
                    Metadata={"sha256": digest},
                    ChecksumSHA256=checksum,
                    IfNoneMatch="*",
                )
            return self.client.put_object(
                Bucket=self._bucket,
                Key=self._full(key),
                Body=data,
                ContentType=content_type,
                Metadata={"sha256": digest},
                ChecksumSHA256=checksum,
            )

        with self._errors(uri):
            return self._conditional(call)

    def _upload_part(
        self,
        tmp_key: str,
        upload_id: str,
        number: int,
        block: bytes,
        hasher: hashlib._Hash,
        uri: str,
    ) -> CompletedPartTypeDef:
        hasher.update(block)
        with self._errors(uri):
            response = self.client.upload_part(
                Bucket=self._bucket, Key=tmp_key, UploadId=upload_id, PartNumber=number, Body=block
            )
        return {"PartNumber": number, "ETag": response["ETag"]}

    def _abort(self, full_key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(
                Bucket=self._bucket, Key=full_key, UploadId=upload_id
            )
        except (ClientError, BotoCoreError) as exc:
            logger.warning("could not abort multipart upload of %s: %s", full_key, exc)

    def _delete_quietly(self, full_key: str) -> None:
        try:
            self.client.delete_object(Bucket=self._bucket, Key=full_key)
        except (ClientError, BotoCoreError) as exc:
            logger.warning("could not delete temporary object %s: %s", full_key, exc)

    async def _upload_temp(self, parts: AsyncIterator[bytes], uri: str) -> tuple[str, str, int]:
        """Multipart-upload ``parts`` to a temporary key: (full temp key, sha256, size).

        One part uploads while the next is read from the caller, so at most two parts are
        in memory. On any failure the upload is aborted once no part is in flight.
        """
        tmp_key = f"{self._prefix}.tmp/{uuid.uuid4().hex}"
        with self._errors(uri):
            created = await run_blocking(
                lambda: self.client.create_multipart_upload(Bucket=self._bucket, Key=tmp_key)
            )
        upload_id = created["UploadId"]
        hasher = hashlib.sha256()
        completed: builtins.list[CompletedPartTypeDef] = []
        in_flight: asyncio.Future[CompletedPartTypeDef] | None = None
        size = 0
        try:
            number = 0
            async for block in parts:
                if in_flight is not None:
                    completed.append(await in_flight)
                number += 1
                size += len(block)
                in_flight = asyncio.ensure_future(
                    run_blocking(self._upload_part, tmp_key, upload_id, number, block, hasher, uri)
                )
            if in_flight is not None:
                completed.append(await in_flight)
                in_flight = None
            with self._errors(uri):
                await run_blocking(
                    lambda: self.client.complete_multipart_upload(
                        Bucket=self._bucket,
                        Key=tmp_key,
                        UploadId=upload_id,
                        MultipartUpload={"Parts": completed},
                    )
                )
        except BaseException:
            if in_flight is not None:
                # A part still uploading after the abort could be kept (and billed).
                with contextlib.suppress(BaseException):
                    await in_flight
            await run_blocking(self._abort, tmp_key, upload_id)
            raise
        return tmp_key, hasher.hexdigest(), size

    def _copy_from_temp(
        self,
        tmp_key: str,
        size: int,
        key: str,
        uri: str,
        digest: str,
        content_type: str,
        if_absent: bool,
    ) -> bool:
        """Assemble ``key`` from the temporary object by server-side copy; False if it existed."""
        full = self._full(key)
        with self._errors(uri):
            upload_id = self.client.create_multipart_upload(
                Bucket=self._bucket, Key=full, ContentType=content_type, Metadata={"sha256": digest}
            )["UploadId"]
            try:
                parts: builtins.list[CompletedPartTypeDef] = []
                for number, start in enumerate(range(0, size, COPY_PART_SIZE), start=1):
                    end = min(start + COPY_PART_SIZE, size) - 1
                    response = self.client.upload_part_copy(
                        Bucket=self._bucket,
                        Key=full,
                        UploadId=upload_id,
                        PartNumber=number,
                        CopySource={"Bucket": self._bucket, "Key": tmp_key},
                        CopySourceRange=f"bytes={start}-{end}",
                    )
                    parts.append({"PartNumber": number, "ETag": response["CopyPartResult"]["ETag"]})

                def complete() -> object:
                    if if_absent:
                        return self.client.complete_multipart_upload(
                            Bucket=self._bucket,
                            Key=full,
                            UploadId=upload_id,
                            MultipartUpload={"Parts": parts},
                            IfNoneMatch="*",
                        )
                    return self.client.complete_multipart_upload(
                        Bucket=self._bucket,
                        Key=full,
                        UploadId=upload_id,
                        MultipartUpload={"Parts": parts},
                    )

                written = self._conditional(complete)
            except BaseException:
                self._abort(full, upload_id)
                raise
            if not written:
                self._abort(full, upload_id)
            return written

    async def _write(
        self,
        chunks: Chunks,
        *,
        key: str | None,
        content_type: str,
        if_absent: bool,
    ) -> tuple[str, str, int, bool]:
        """Write ``chunks`` under ``key`` (or its content key): (key, sha256, size, written)."""
        parts = blocks(chunks, self._part_size).__aiter__()
        first = await anext(parts, None)
        second = None if first is None else await anext(parts, None)
        if first is None or second is None:
            data = first or b""
            digest = await run_blocking(_sha256_hex, data)
            target = key or content_key(digest)
            uri = self.uri_for(target)
            if key is None and await run_blocking(self._head, target, uri) is not None:
                return target, digest, len(data), False
            written = await run_blocking(
                self._put_single, target, uri, data, digest, content_type, if_absent
            )
            return target, digest, len(data), written

        leading = [first, second]

        async def all_parts() -> AsyncIterator[bytes]:
            while leading:
                # Popped, so the first parts are not held in memory for the whole upload.
                yield leading.pop(0)
            async for part in parts:
                yield part

        label = self.uri_for(key) if key is not None else f"{self._base_uri}.tmp/"
        tmp_key, digest, size = await self._upload_temp(all_parts(), label)
        try:
            target = key or content_key(digest)
            uri = self.uri_for(target)
            if key is None and await run_blocking(self._head, target, uri) is not None:
                return target, digest, size, False
            written = await run_blocking(
                self._copy_from_temp, tmp_key, size, target, uri, digest, content_type, if_absent
            )
            return target, digest, size, written
        finally:
            await run_blocking(self._delete_quietly, tmp_key)

    async def _stored_content_type(self, key: str, uri: str, default: str) -> str:
        head = await run_blocking(self._head, key, uri)
        return head.get("ContentType", default) if head is not None else default

    async def put_content(
        self, chunks: Chunks, *, content_type: str = DEFAULT_CONTENT_TYPE
    ) -> ObjectRef:
        key, digest, size, written = await self._write(
            chunks, key=None, content_type=content_type, if_absent=True
        )
        uri = self.uri_for(key)
        if not written:
            content_type = await self._stored_content_type(key, uri, content_type)
        return ObjectRef(uri=uri, sha256=digest, size=size, content_type=content_type)

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
        # Fails fast before streaming a large payload; If-None-Match still decides races.
        if if_absent and await run_blocking(self._head, key, uri) is not None:
            raise AlreadyExists(f"object '{uri}' exists already")
        _, digest, size, written = await self._write(
            chunks, key=key, content_type=content_type, if_absent=if_absent
        )
        if not written:
            raise AlreadyExists(f"object '{uri}' exists already")
        return ObjectRef(uri=uri, sha256=digest, size=size, content_type=content_type)

    # -- reading -------------------------------------------------------------------

    def _open_sync(self, key: str, uri: str) -> BlockingReader:
        with self._errors(uri):
            response = self.client.get_object(Bucket=self._bucket, Key=self._full(key))
        return _Reader(response["Body"], uri)

    async def _open_reader(self, key: str, uri: str) -> BlockingReader:
        return await run_blocking(self._open_sync, key, uri)

    def _read_range_sync(self, key: str, uri: str, offset: int, length: int) -> bytes:
        try:
            with self._errors(uri):
                response = self.client.get_object(
                    Bucket=self._bucket,
                    Key=self._full(key),
                    Range=f"bytes={offset}-{offset + length - 1}",
                )
        except ClientError as exc:
            if _status(exc) == 416:  # the range starts past the end
                return b""
            raise
        reader = _Reader(response["Body"], uri)
        try:
            return reader.read(length)
        finally:
            reader.close()

    async def read_range(self, uri: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise InvalidArgument(f"range: expected offset, length >= 0, got {offset}, {length}")
        key = self.key_for(uri)
        if length == 0:
            await self.stat(uri)  # NotFound as for any other length
            return b""
        return await run_blocking(self._read_range_sync, key, uri, offset, length)

    async def stat(self, uri: str) -> ObjectInfo:
        key = self.key_for(uri)
        head = await run_blocking(self._head, key, uri)
        if head is None:
            raise NotFound(f"object '{uri}' does not exist")
        return ObjectInfo(
            uri=uri,
            size=head["ContentLength"],
            sha256=sha256_of_content_key(key) or head.get("Metadata", {}).get("sha256"),
            content_type=head.get("ContentType"),
            modified=head["LastModified"].astimezone(UTC),
        )

    def _delete_sync(self, key: str, uri: str) -> None:
        with self._errors(uri):
            self.client.delete_object(Bucket=self._bucket, Key=self._full(key))

    async def delete(self, uri: str) -> None:
        key = self.key_for(uri)
        await run_blocking(self._delete_sync, key, uri)

    def _list_pages(self, prefix: str) -> Iterator[builtins.list[ObjectInfo]]:
        paginator = self.client.get_paginator("list_objects_v2")
        skip = len(self._prefix)
        with self._errors(self._base_uri + prefix):
            for page in paginator.paginate(Bucket=self._bucket, Prefix=self._prefix + prefix):
                batch: builtins.list[ObjectInfo] = []
                for item in page.get("Contents", []):
                    key = item["Key"][skip:]
                    if key.split("/", 1)[0] in RESERVED_SEGMENTS:
                        continue
                    batch.append(
                        ObjectInfo(
                            uri=self._base_uri + key,
                            size=item["Size"],
                            sha256=sha256_of_content_key(key),
                            content_type=None,
                            modified=item["LastModified"].astimezone(UTC),
                        )
                    )
                yield batch

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        check_prefix(prefix)
        pages = self._list_pages(prefix)
        while True:
            batch = await run_blocking(next, pages, None)
            if batch is None:
                return
            for info in batch:
                yield info
