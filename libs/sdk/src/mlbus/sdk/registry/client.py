"""The synchronous registry client: what notebooks and scripts use.

>>> from mlbus.sdk.registry import RegistryClient
>>> with RegistryClient() as registry:
...     v = registry.register("model.onnx", group="churn", metrics={"auc": 0.91})
...     registry.get_version("churn", v.version).approval_status
'PENDING_MANUAL_APPROVAL'
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mlbus.core.rpc.channel import channel_options
from mlbus.core.settings import GrpcSettings
from mlbus.core.telemetry import inject_grpc_metadata
from mlbus.registry.v1 import registry_pb2, registry_pb2_grpc
from mlbus.sdk.defaults import default_actor, default_registry
from mlbus.sdk.errors import MlbusError, Unavailable, from_rpc_error
from mlbus.sdk.registry import _ops as ops
from mlbus.sdk.registry._artifacts import (
    ArtifactSource,
    DownloadSink,
    Progress,
    UploadSource,
    default_file_name,
    resolve_destination,
)
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

#: Metadata key the registry reads the actor from when a request carries none.
ACTOR_METADATA_KEY = "x-mlbus-actor"


def actor_metadata(actor: str) -> list[tuple[str, str]]:
    """``x-mlbus-actor`` metadata (when the name is valid as a header value)."""
    if actor.isascii() and actor.isprintable():
        return [(ACTOR_METADATA_KEY, actor)]
    return []


class RegistryClient:
    """Synchronous client of the model registry (``mlbus.registry.v1.RegistryService``).

    ``target`` defaults to ``$MLBUS_REGISTRY`` or ``127.0.0.1:50052``; ``actor`` (recorded
    in the audit log for every change) to ``$MLBUS_ACTOR`` or the OS user. Every call has a
    deadline: ``timeout`` seconds, or ``transfer_timeout`` for artifact uploads and
    downloads. Failures raise the :mod:`mlbus.sdk.errors` class of their gRPC status
    (``NotFound``, ``FailedPrecondition``, ``Unavailable``, ...) with the server's message.

    Use it as a context manager, or call :meth:`close`.
    """

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
        self._settings = settings or GrpcSettings()
        self._channel = grpc.insecure_channel(self.target, options=channel_options(self._settings))
        self._stub = registry_pb2_grpc.RegistryServiceStub(self._channel)

    # --- plumbing ----------------------------------------------------------------------

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __repr__(self) -> str:
        return f"RegistryClient(target={self.target!r}, actor={self.actor!r})"

    def _metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        metadata = actor_metadata(self.actor)
        # The sync stack has no tracing interceptor: carry the caller's trace context here.
        inject_grpc_metadata(metadata)
        return tuple(metadata)

    def _error(self, exc: grpc.RpcError, timeout: float) -> MlbusError:
        return from_rpc_error(exc, target=self.target, timeout=timeout)

    def _call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        deadline = timeout or self.timeout
        try:
            return getattr(self._stub, method)(request, timeout=deadline, metadata=self._metadata())
        except grpc.RpcError as exc:
            raise self._error(exc, deadline) from None

    def _unary(self, op: ops.Unary[T]) -> T:
        return op.convert(self._call(op.method, op.request))

    def _pages(self, op: ops.Paged[T], limit: int | None) -> Iterator[T]:
        token = ""
        count = 0
        while True:
            response = self._call(op.method, op.request(token))
            for item in op.items(response):
                if limit is not None and count >= limit:
                    return
                count += 1
                yield item
            token = ops.next_token(response, token, op.method)
            if not token or (limit is not None and count >= limit):
                return

    def wait_for_ready(self, timeout: float = 10.0) -> None:
        """Block until the registry answers its health check SERVING; raise
        :class:`Unavailable` after ``timeout`` seconds."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            response = stub.Check(
                health_pb2.HealthCheckRequest(), timeout=timeout, wait_for_ready=True
            )
        except grpc.RpcError as exc:
            raise self._error(exc, timeout) from None
        if response.status != health_pb2.HealthCheckResponse.SERVING:
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
            raise Unavailable(f"registry at {self.target} is {status}")

    # --- model groups ------------------------------------------------------------------

    def create_group(
        self, name: str, *, description: str = "", tags: Mapping[str, object] | None = None
    ) -> ModelGroup:
        """Create a model group (lower-case letters, digits and '-'; starts with a letter)."""
        return self._unary(ops.create_group(name, description, tags, self.actor))

    def get_group(self, name: str) -> ModelGroup:
        """The model group ``name``; :class:`NotFound` if there is none."""
        return self._unary(ops.get_group(name))

    def list_groups(
        self,
        *,
        prefix: str = "",
        tags: Mapping[str, object] | None = None,
        page_size: int = 0,
        limit: int | None = None,
    ) -> Iterator[ModelGroup]:
        """Model groups, optionally only those whose name starts with ``prefix`` and having
        all ``tags``; fetches further pages as you iterate (``page_size`` 0 = server default)."""
        return self._pages(ops.list_groups(prefix, tags, page_size), limit)

    def update_group(
        self,
        name: str,
        *,
        description: str | None = None,
        set_tags: Mapping[str, object] | None = None,
        remove_tags: Sequence[str] = (),
    ) -> ModelGroup:
        """Change a group's description (when given) and tags."""
        return self._unary(ops.update_group(name, description, set_tags, remove_tags, self.actor))

    # --- model versions ----------------------------------------------------------------

    def register(
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
        """Register a new version of ``group`` from an ONNX model.

        ``source`` is a file path, the model's bytes or a binary stream; it is streamed in
        1 MiB chunks. For a file, bytes or a seekable stream the SHA-256 is computed first
        and sent ahead, so the registry verifies the upload end to end before storing it.
        Alternatively pass ``artifact_uri`` (an object already in the store) and no source.
        ``request_id`` makes a retried registration return the first result instead of a
        second version; ``create_group`` creates a missing group. ``progress(sent, total)``
        is called as chunks go out. The new version is ``PENDING_MANUAL_APPROVAL``.
        """
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
            response = self._call("RegisterModelVersion", iter([header]), deadline)
            return ops.registered_version(response)

        upload = UploadSource(source, ops.CHUNK_SIZE)
        upload.prepare()
        try:
            header = ops.register_header(
                expected_sha256=expected_sha256 or upload.expected_sha256, **header_args
            )
            failure: list[BaseException] = []

            def messages() -> Iterator[registry_pb2.RegisterModelVersionRequest]:
                yield header
                try:
                    if progress is not None:
                        progress(0, upload.total)
                    while chunk := upload.read_chunk():
                        yield ops.chunk_message(chunk)
                        if progress is not None:
                            progress(upload.sent, upload.total)
                except Exception as exc:
                    # grpc swallows errors of the request iterator into a CANCELLED call;
                    # keep ours (e.g. a read error) to raise instead.
                    failure.append(exc)
                    raise

            try:
                response = self._call("RegisterModelVersion", messages(), deadline)
            except MlbusError:
                if failure:
                    raise failure[0] from None
                raise
        finally:
            upload.close()
        version = ops.registered_version(response)
        upload.check_result(version.artifact)
        return version

    def get_version(
        self, group: str, version: int | None = None, *, alias: str | None = None
    ) -> ModelVersion:
        """Version ``version`` of ``group``, or the one ``alias`` points at."""
        return self._unary(ops.get_version(group, version, alias))

    def list_versions(
        self,
        group: str,
        *,
        status: str | None = None,
        page_size: int = 0,
        limit: int | None = None,
    ) -> Iterator[ModelVersion]:
        """Versions of ``group``, newest first; ``status`` filters ("approved", "pending",
        "rejected"). Fetches further pages as you iterate."""
        return self._pages(ops.list_versions(group, status, page_size), limit)

    def update_version(
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
        """Change a version's description, metrics, tags or model card (only what is given)."""
        return self._unary(
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

    def download(
        self,
        group: str,
        version: int | None = None,
        *,
        alias: str | None = None,
        dest: str | os.PathLike[str] = ".",
        progress: Progress | None = None,
        timeout: float | None = None,
    ) -> DownloadResult:
        """Download a version's artifact to ``dest`` (a file, or a directory to put
        ``<group>-v<version>.onnx`` in), checking size and SHA-256 end to end. The file is
        written atomically: on any failure (including :class:`DataLoss` for a corrupt
        download) nothing is left at ``dest``."""
        path = resolve_destination(dest, default_file_name(group, version, alias))
        request = ops.download_request(group, version, alias)
        artifact, _ = self._download(request, path, progress, timeout)
        return DownloadResult(path=path, artifact=artifact)

    def read_artifact(
        self,
        group: str,
        version: int | None = None,
        *,
        alias: str | None = None,
        timeout: float | None = None,
    ) -> bytes:
        """A version's artifact bytes in memory (verified), e.g. for
        ``onnxruntime.InferenceSession(data)``."""
        request = ops.download_request(group, version, alias)
        _, data = self._download(request, None, None, timeout)
        return data or b""

    def _download(
        self,
        request: registry_pb2.DownloadArtifactRequest,
        path: Path | None,
        progress: Progress | None,
        timeout: float | None,
    ) -> tuple[ObjectRef, bytes | None]:
        deadline = timeout or self.transfer_timeout
        with DownloadSink(path, what=ops.describe_selector(request), progress=progress) as sink:
            call = self._stub.DownloadArtifact(request, timeout=deadline, metadata=self._metadata())
            try:
                for message in call:
                    sink.accept(message)
            except grpc.RpcError as exc:
                raise self._error(exc, deadline) from None
            except BaseException:
                # Stop the server streaming the rest of an artifact we will not keep.
                call.cancel()  # type: ignore[no-untyped-call]
                raise
            return sink.finish()

    # --- governance --------------------------------------------------------------------

    def approve(self, group: str, version: int, *, reason: str = "") -> ModelVersion:
        """Approve a version (the approver may not be its registrant unless policy allows)."""
        return self._unary(ops.approve(group, version, reason, self.actor))

    def reject(self, group: str, version: int, *, reason: str, force: bool = False) -> RejectResult:
        """Reject a version (also withdraws an approval). Refused with
        :class:`FailedPrecondition` while live endpoints serve it, unless ``force``; then
        those endpoints become DEGRADED and are listed in the result."""
        return self._unary(ops.reject(group, version, reason, force, self.actor))

    def set_alias(self, group: str, alias: str, version: int, *, reason: str = "") -> AliasResult:
        """Point ``alias`` (e.g. ``production``) of ``group`` at ``version``."""
        return self._unary(ops.set_alias(group, alias, version, reason, self.actor))

    def delete_alias(self, group: str, alias: str, *, reason: str = "") -> None:
        """Remove an alias."""
        self._unary(ops.delete_alias(group, alias, reason, self.actor))

    def audit(
        self,
        *,
        entity_type: str = "",
        prefix: str = "",
        page_size: int = 0,
        limit: int | None = None,
    ) -> Iterator[AuditEntry]:
        """The audit log, oldest first; optionally one ``entity_type`` ("model_group",
        "model_version", "alias", "endpoint") and entity ids starting with ``prefix``
        (e.g. "churn/")."""
        return self._pages(ops.audit(entity_type, prefix, page_size), limit)

    # --- endpoints ---------------------------------------------------------------------

    def create_endpoint(
        self,
        name: str,
        variants: Iterable[EndpointVariant | Mapping[str, Any]] | EndpointSpec,
        *,
        shadow: ShadowVariant | Mapping[str, Any] | None = None,
        data_capture: DataCaptureConfig | float | None = None,
        description: str = "",
    ) -> Endpoint:
        """Create an endpoint serving ``variants`` (models or mappings of their fields, or a
        whole :class:`EndpointSpec`); every version must be APPROVED, else
        :class:`FailedPrecondition`. ``data_capture`` may be a percentage."""
        spec = ops.endpoint_spec(variants, shadow, data_capture, description)
        return self._unary(ops.create_endpoint(name, spec, self.actor))

    def update_endpoint(
        self,
        name: str,
        variants: Iterable[EndpointVariant | Mapping[str, Any]] | EndpointSpec,
        *,
        shadow: ShadowVariant | Mapping[str, Any] | None = None,
        data_capture: DataCaptureConfig | float | None = None,
        description: str = "",
        expected_revision: int = 0,
    ) -> Endpoint:
        """Replace an endpoint's configuration (a new revision). With ``expected_revision``
        the update fails with :class:`FailedPrecondition` unless that is the current one."""
        spec = ops.endpoint_spec(variants, shadow, data_capture, description)
        return self._unary(ops.update_endpoint(name, spec, expected_revision, self.actor))

    def get_endpoint(self, name: str) -> Endpoint:
        """An endpoint with its configuration in force."""
        return self._unary(ops.get_endpoint(name))

    def list_endpoints(
        self, *, include_deleted: bool = False, page_size: int = 0, limit: int | None = None
    ) -> Iterator[Endpoint]:
        """Endpoints (deleted ones too with ``include_deleted``)."""
        return self._pages(ops.list_endpoints(include_deleted, page_size), limit)

    def endpoint_history(
        self, name: str, *, page_size: int = 0, limit: int | None = None
    ) -> Iterator[EndpointConfig]:
        """Every configuration revision of an endpoint, newest first."""
        return self._pages(ops.endpoint_history(name, page_size), limit)

    def rollback_endpoint(self, name: str, to_revision: int, *, reason: str = "") -> Endpoint:
        """Make revision ``to_revision``'s configuration current again, as a new revision
        (its versions must still be APPROVED)."""
        return self._unary(ops.rollback_endpoint(name, to_revision, reason, self.actor))

    def delete_endpoint(self, name: str) -> None:
        """Delete an endpoint (kept, DELETED, for history)."""
        self._unary(ops.delete_endpoint(name, self.actor))
