"""The asyncio registry client (grpc.aio), for services such as the trainer.

Same operations, arguments and results as :class:`~mlbus.sdk.registry.RegistryClient`;
list methods return async iterators. Create it inside a running event loop:

>>> async with AsyncRegistryClient("127.0.0.1:50052", actor="service:trainer") as registry:
...     version = await registry.register(path, group="churn", create_group=True)
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc

from mlbus.core.rpc.channel import create_channel, wait_for_ready
from mlbus.core.settings import GrpcSettings
from mlbus.registry.v1 import registry_pb2, registry_pb2_grpc
from mlbus.sdk.defaults import default_actor, default_registry
from mlbus.sdk.errors import MlbusError, from_rpc_error
from mlbus.sdk.registry import _ops as ops
from mlbus.sdk.registry._artifacts import (
    ArtifactSource,
    DownloadSink,
    Progress,
    UploadSource,
    default_file_name,
    resolve_destination,
)
from mlbus.sdk.registry.client import actor_metadata
from mlbus.sdk.registry.models import (
    AliasResult,
    AuditEntry,
    DataCaptureConfig,
    DownloadResult,
    Endpoint,
    EndpointConfig,
    EndpointSpec,
    EndpointVariant,
    Lineage,
    ModelCard,
    ModelGroup,
    ModelVersion,
    ObjectRef,
    RejectResult,
    ShadowVariant,
)

T = TypeVar("T")


class AsyncRegistryClient:
    """asyncio client of the model registry; see :class:`RegistryClient` for the
    operations. The channel comes from :func:`mlbus.core.rpc.create_channel` (mlbus options,
    client tracing); every call still carries this client's deadline."""

    def __init__(
        self,
        target: str | None = None,
        *,
        actor: str | None = None,
        timeout: float = 30.0,
        transfer_timeout: float = 3600.0,
        settings: GrpcSettings | None = None,
    ) -> None:
        self.target = target or default_registry()
        self.actor = actor or default_actor()
        self.timeout = timeout
        self.transfer_timeout = transfer_timeout
        self._channel = create_channel(self.target, settings or GrpcSettings())
        self._stub = registry_pb2_grpc.RegistryServiceStub(self._channel)

    # --- plumbing ----------------------------------------------------------------------

    async def __aenter__(self) -> AsyncRegistryClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close(grace=None)

    def __repr__(self) -> str:
        return f"AsyncRegistryClient(target={self.target!r}, actor={self.actor!r})"

    def _error(self, exc: grpc.RpcError, timeout: float) -> MlbusError:
        return from_rpc_error(exc, target=self.target, timeout=timeout)

    async def _call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        deadline = timeout or self.timeout
        try:
            return await getattr(self._stub, method)(
                request, timeout=deadline, metadata=actor_metadata(self.actor)
            )
        except grpc.RpcError as exc:
            raise self._error(exc, deadline) from None

    async def _unary(self, op: ops.Unary[T]) -> T:
        return op.convert(await self._call(op.method, op.request))

    async def _pages(self, op: ops.Paged[T], limit: int | None) -> AsyncIterator[T]:
        token = ""
        count = 0
        while True:
            response = await self._call(op.method, op.request(token))
            for item in op.items(response):
                if limit is not None and count >= limit:
                    return
                count += 1
                yield item
            token = ops.next_token(response, token, op.method)
            if not token or (limit is not None and count >= limit):
                return

    async def wait_for_ready(self, timeout: float = 10.0) -> None:
        """Wait until the registry's health check says SERVING; :class:`Unavailable` after
        ``timeout`` seconds."""
        await wait_for_ready(self._channel, timeout)

    # --- model groups ------------------------------------------------------------------

    async def create_group(
        self, name: str, *, description: str = "", tags: Mapping[str, object] | None = None
    ) -> ModelGroup:
        """See :meth:`RegistryClient.create_group`."""
        return await self._unary(ops.create_group(name, description, tags, self.actor))

    async def get_group(self, name: str) -> ModelGroup:
        """See :meth:`RegistryClient.get_group`."""
        return await self._unary(ops.get_group(name))

    def list_groups(
        self,
        *,
        prefix: str = "",
        tags: Mapping[str, object] | None = None,
        page_size: int = 0,
        limit: int | None = None,
    ) -> AsyncIterator[ModelGroup]:
        """See :meth:`RegistryClient.list_groups`."""
        return self._pages(ops.list_groups(prefix, tags, page_size), limit)

    async def update_group(
        self,
        name: str,
        *,
        description: str | None = None,
        set_tags: Mapping[str, object] | None = None,
        remove_tags: Sequence[str] = (),
    ) -> ModelGroup:
        """See :meth:`RegistryClient.update_group`."""
        return await self._unary(
            ops.update_group(name, description, set_tags, remove_tags, self.actor)
        )

    # --- model versions ----------------------------------------------------------------

    async def register(
        self,
        source: ArtifactSource | None = None,
        *,
        group: str,
        artifact_uri: str = "",
        expected_sha256: str = "",
        metrics: Mapping[str, float] | None = None,
        hyperparameters: Mapping[str, object] | None = None,
        lineage: Lineage | Mapping[str, Any] | None = None,
        model_card: ModelCard | Mapping[str, Any] | None = None,
        tags: Mapping[str, object] | None = None,
        description: str = "",
        baseline: ObjectRef | Mapping[str, Any] | None = None,
        request_id: str = "",
        create_group: bool = False,
        progress: Progress | None = None,
        timeout: float | None = None,
    ) -> ModelVersion:
        """See :meth:`RegistryClient.register`; file reads run in a worker thread."""
        if (source is None) == (not artifact_uri):
            raise ValueError("give either a source (path, bytes or stream) or artifact_uri=")
        header_args: dict[str, Any] = {
            "group": group,
            "artifact_uri": artifact_uri,
            "metrics": metrics,
            "hyperparameters": hyperparameters,
            "lineage": lineage,
            "model_card": model_card,
            "tags": tags,
            "description": description,
            "baseline": baseline,
            "request_id": request_id,
            "create_group": create_group,
            "actor": self.actor,
        }
        deadline = timeout or self.transfer_timeout
        if source is None:
            header = ops.register_header(expected_sha256=expected_sha256, **header_args)
            response = await self._call("RegisterModelVersion", _one(header), deadline)
            return ops.registered_version(response)

        upload = UploadSource(source, ops.CHUNK_SIZE)
        await asyncio.to_thread(upload.prepare)
        try:
            header = ops.register_header(
                expected_sha256=expected_sha256 or upload.expected_sha256, **header_args
            )
            failure: list[BaseException] = []

            async def messages() -> AsyncIterator[registry_pb2.RegisterModelVersionRequest]:
                yield header
                try:
                    if progress is not None:
                        progress(0, upload.total)
                    while chunk := await asyncio.to_thread(upload.read_chunk):
                        yield ops.chunk_message(chunk)
                        if progress is not None:
                            progress(upload.sent, upload.total)
                except Exception as exc:
                    failure.append(exc)
                    raise

            try:
                response = await self._call("RegisterModelVersion", messages(), deadline)
            except MlbusError:
                if failure:
                    raise failure[0] from None
                raise
        finally:
            upload.close()
        version = ops.registered_version(response)
        upload.check_result(version.artifact)
        return version

    async def get_version(
        self, group: str, version: int | None = None, *, alias: str | None = None
    ) -> ModelVersion:
        """See :meth:`RegistryClient.get_version`."""
        return await self._unary(ops.get_version(group, version, alias))

    def list_versions(
        self,
        group: str,
        *,
        status: str | None = None,
        page_size: int = 0,
        limit: int | None = None,
    ) -> AsyncIterator[ModelVersion]:
        """See :meth:`RegistryClient.list_versions`."""
        return self._pages(ops.list_versions(group, status, page_size), limit)

    async def update_version(
        self,
        group: str,
        version: int,
        *,
        description: str | None = None,
        set_metrics: Mapping[str, float] | None = None,
        set_tags: Mapping[str, object] | None = None,
        remove_tags: Sequence[str] = (),
        model_card: ModelCard | Mapping[str, Any] | None = None,
    ) -> ModelVersion:
        """See :meth:`RegistryClient.update_version`."""
        return await self._unary(
            ops.update_version(
                group,
                version,
                description=description,
                set_metrics=set_metrics,
                set_tags=set_tags,
                remove_tags=remove_tags,
                model_card=model_card,
                actor=self.actor,
            )
        )

    async def download(
        self,
        group: str,
        version: int | None = None,
        *,
        alias: str | None = None,
        dest: str | os.PathLike[str] = ".",
        progress: Progress | None = None,
        timeout: float | None = None,
    ) -> DownloadResult:
        """See :meth:`RegistryClient.download`; file writes run in a worker thread."""
        path = resolve_destination(dest, default_file_name(group, version, alias))
        request = ops.download_request(group, version, alias)
        artifact, _ = await self._download(request, path, progress, timeout)
        return DownloadResult(path=path, artifact=artifact)

    async def read_artifact(
        self,
        group: str,
        version: int | None = None,
        *,
        alias: str | None = None,
        timeout: float | None = None,
    ) -> bytes:
        """See :meth:`RegistryClient.read_artifact`."""
        request = ops.download_request(group, version, alias)
        _, data = await self._download(request, None, None, timeout)
        return data or b""

    async def _download(
        self,
        request: registry_pb2.DownloadArtifactRequest,
        path: Path | None,
        progress: Progress | None,
        timeout: float | None,
    ) -> tuple[ObjectRef, bytes | None]:
        deadline = timeout or self.transfer_timeout
        with DownloadSink(path, what=ops.describe_selector(request), progress=progress) as sink:
            call = self._stub.DownloadArtifact(
                request, timeout=deadline, metadata=actor_metadata(self.actor)
            )
            try:
                async for message in call:
                    if path is None:
                        sink.accept(message)
                    else:
                        await asyncio.to_thread(sink.accept, message)
            except grpc.RpcError as exc:
                raise self._error(exc, deadline) from None
            except BaseException:
                call.cancel()
                raise
            return await asyncio.to_thread(sink.finish)

    # --- governance --------------------------------------------------------------------

    async def approve(self, group: str, version: int, *, reason: str = "") -> ModelVersion:
        """See :meth:`RegistryClient.approve`."""
        return await self._unary(ops.approve(group, version, reason, self.actor))

    async def reject(
        self, group: str, version: int, *, reason: str, force: bool = False
    ) -> RejectResult:
        """See :meth:`RegistryClient.reject`."""
        return await self._unary(ops.reject(group, version, reason, force, self.actor))

    async def set_alias(
        self, group: str, alias: str, version: int, *, reason: str = ""
    ) -> AliasResult:
        """See :meth:`RegistryClient.set_alias`."""
        return await self._unary(ops.set_alias(group, alias, version, reason, self.actor))

    async def delete_alias(self, group: str, alias: str, *, reason: str = "") -> None:
        """See :meth:`RegistryClient.delete_alias`."""
        await self._unary(ops.delete_alias(group, alias, reason, self.actor))

    def audit(
        self,
        *,
        entity_type: str = "",
        prefix: str = "",
        page_size: int = 0,
        limit: int | None = None,
    ) -> AsyncIterator[AuditEntry]:
        """See :meth:`RegistryClient.audit`."""
        return self._pages(ops.audit(entity_type, prefix, page_size), limit)

    # --- endpoints ---------------------------------------------------------------------

    async def create_endpoint(
        self,
        name: str,
        variants: Iterable[EndpointVariant | Mapping[str, Any]] | EndpointSpec,
        *,
        shadow: ShadowVariant | Mapping[str, Any] | None = None,
        data_capture: DataCaptureConfig | float | None = None,
        description: str = "",
    ) -> Endpoint:
        """See :meth:`RegistryClient.create_endpoint`."""
        spec = ops.endpoint_spec(variants, shadow, data_capture, description)
        return await self._unary(ops.create_endpoint(name, spec, self.actor))

    async def update_endpoint(
        self,
        name: str,
        variants: Iterable[EndpointVariant | Mapping[str, Any]] | EndpointSpec,
        *,
        shadow: ShadowVariant | Mapping[str, Any] | None = None,
        data_capture: DataCaptureConfig | float | None = None,
        description: str = "",
        expected_revision: int = 0,
    ) -> Endpoint:
        """See :meth:`RegistryClient.update_endpoint`."""
        spec = ops.endpoint_spec(variants, shadow, data_capture, description)
        return await self._unary(ops.update_endpoint(name, spec, expected_revision, self.actor))

    async def get_endpoint(self, name: str) -> Endpoint:
        """See :meth:`RegistryClient.get_endpoint`."""
        return await self._unary(ops.get_endpoint(name))

    def list_endpoints(
        self, *, include_deleted: bool = False, page_size: int = 0, limit: int | None = None
    ) -> AsyncIterator[Endpoint]:
        """See :meth:`RegistryClient.list_endpoints`."""
        return self._pages(ops.list_endpoints(include_deleted, page_size), limit)

    def endpoint_history(
        self, name: str, *, page_size: int = 0, limit: int | None = None
    ) -> AsyncIterator[EndpointConfig]:
        """See :meth:`RegistryClient.endpoint_history`."""
        return self._pages(ops.endpoint_history(name, page_size), limit)

    async def rollback_endpoint(self, name: str, to_revision: int, *, reason: str = "") -> Endpoint:
        """See :meth:`RegistryClient.rollback_endpoint`."""
        return await self._unary(ops.rollback_endpoint(name, to_revision, reason, self.actor))

    async def delete_endpoint(self, name: str) -> None:
        """See :meth:`RegistryClient.delete_endpoint`."""
        await self._unary(ops.delete_endpoint(name, self.actor))


async def _one(message: T) -> AsyncIterator[T]:
    yield message
