"""Every registry operation once, independent of the transport: the RPC it calls, the
request it sends and how the response becomes a model. :class:`RegistryClient` (sync) and
:class:`AsyncRegistryClient` run these, so both speak exactly the same API."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from mlbus.common.v1 import common_pb2
from mlbus.registry.v1 import registry_pb2
from mlbus.sdk.errors import Internal
from mlbus.sdk.registry import converters as conv
from mlbus.sdk.registry.models import (
    AliasResult,
    ApprovalStatus,
    AuditEntry,
    DataCaptureConfig,
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
    normalize_approval_status,
)

T = TypeVar("T")

#: Artifact bytes per message, up and down.
CHUNK_SIZE = 1024 * 1024


@dataclass(frozen=True)
class Unary(Generic[T]):
    """One unary call: stub attribute, request, and the response → result conversion."""

    method: str
    request: Any
    convert: Callable[[Any], T]


@dataclass(frozen=True)
class Paged(Generic[T]):
    """A list call iterated page by page until the server returns no next token."""

    method: str
    request: Callable[[str], Any]  # page token → request
    items: Callable[[Any], Iterable[T]]


def _page(page_size: int, token: str) -> common_pb2.PageRequest:
    return common_pb2.PageRequest(page_size=page_size, page_token=token)


def _selector(version: int | None, alias: str | None) -> dict[str, Any]:
    """The ``version``/``alias`` oneof of Get/Download requests: exactly one of them."""
    if (version is None) == (alias is None):
        raise ValueError("give exactly one of version= or alias=")
    if version is not None:
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"version must be an integer >= 1, got {version!r}")
        return {"version": version}
    return {"alias": alias}


def _as_model(value: Any, cls: type[T]) -> T:
    """A model instance from an instance or a mapping of its fields."""
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        return cls.model_validate(value)  # type: ignore[attr-defined, no-any-return]
    raise TypeError(f"expected {cls.__name__} or a mapping, got {type(value).__name__}")


# --- model groups ----------------------------------------------------------------------


def create_group(
    name: str, description: str, tags: Mapping[str, object] | None, actor: str
) -> Unary[ModelGroup]:
    """CreateModelGroup."""
    request = registry_pb2.CreateModelGroupRequest(
        name=name,
        description=description,
        tags=conv.str_map(tags),
        actor=conv.actor_to_pb(actor),
    )
    return Unary("CreateModelGroup", request, lambda r: conv.model_group_to_model(r.model_group))


def get_group(name: str) -> Unary[ModelGroup]:
    """GetModelGroup."""
    return Unary(
        "GetModelGroup",
        registry_pb2.GetModelGroupRequest(name=name),
        lambda r: conv.model_group_to_model(r.model_group),
    )


def list_groups(
    name_prefix: str, tags: Mapping[str, object] | None, page_size: int
) -> Paged[ModelGroup]:
    """ListModelGroups."""
    str_tags = conv.str_map(tags)
    return Paged(
        "ListModelGroups",
        lambda token: registry_pb2.ListModelGroupsRequest(
            page=_page(page_size, token), name_prefix=name_prefix, tags=str_tags
        ),
        lambda r: (conv.model_group_to_model(g) for g in r.model_groups),
    )


def update_group(
    name: str,
    description: str | None,
    set_tags: Mapping[str, object] | None,
    remove_tags: Sequence[str],
    actor: str,
) -> Unary[ModelGroup]:
    """UpdateModelGroup."""
    request = registry_pb2.UpdateModelGroupRequest(
        name=name,
        set_tags=conv.str_map(set_tags),
        remove_tags=list(remove_tags),
        actor=conv.actor_to_pb(actor),
    )
    if description is not None:
        request.description = description
    return Unary("UpdateModelGroup", request, lambda r: conv.model_group_to_model(r.model_group))


# --- model versions --------------------------------------------------------------------


def register_header(
    *,
    group: str,
    artifact_uri: str,
    expected_sha256: str,
    metrics: Mapping[str, float] | None,
    hyperparameters: Mapping[str, object] | None,
    lineage: Lineage | Mapping[str, Any] | None,
    model_card: ModelCard | Mapping[str, Any] | None,
    tags: Mapping[str, object] | None,
    description: str,
    baseline: ObjectRef | Mapping[str, Any] | None,
    request_id: str,
    create_group: bool,
    actor: str,
) -> registry_pb2.RegisterModelVersionRequest:
    """The first message of a RegisterModelVersion stream."""
    header = registry_pb2.RegisterModelVersionHeader(
        model_group=group,
        artifact_uri=artifact_uri,
        expected_sha256=expected_sha256,
        metrics=conv.float_map(metrics),
        hyperparameters=conv.str_map(hyperparameters),
        tags=conv.str_map(tags),
        description=description,
        actor=conv.actor_to_pb(actor),
        request_id=request_id,
        create_group=create_group,
    )
    if lineage is not None:
        header.lineage.CopyFrom(conv.lineage_to_pb(_as_model(lineage, Lineage)))
    if model_card is not None:
        header.model_card.CopyFrom(conv.model_card_to_pb(_as_model(model_card, ModelCard)))
    if baseline is not None:
        header.baseline.CopyFrom(conv.object_ref_to_pb(_as_model(baseline, ObjectRef)))
    return registry_pb2.RegisterModelVersionRequest(header=header)


def chunk_message(chunk: bytes) -> registry_pb2.RegisterModelVersionRequest:
    """One artifact chunk of a RegisterModelVersion stream."""
    return registry_pb2.RegisterModelVersionRequest(chunk=chunk)


def registered_version(response: registry_pb2.RegisterModelVersionResponse) -> ModelVersion:
    """The version a RegisterModelVersion call created."""
    return conv.model_version_to_model(response.model_version)


def get_version(group: str, version: int | None, alias: str | None) -> Unary[ModelVersion]:
    """GetModelVersion (by number or alias)."""
    request = registry_pb2.GetModelVersionRequest(model_group=group, **_selector(version, alias))
    return Unary("GetModelVersion", request, lambda r: conv.model_version_to_model(r.model_version))


def list_versions(group: str, status: str | None, page_size: int) -> Paged[ModelVersion]:
    """ListModelVersions (newest first)."""
    wanted: ApprovalStatus | None = normalize_approval_status(status) if status else None
    pb_status = conv.approval_status_to_pb(wanted)
    return Paged(
        "ListModelVersions",
        lambda token: registry_pb2.ListModelVersionsRequest(
            model_group=group, page=_page(page_size, token), approval_status=pb_status
        ),
        lambda r: (conv.model_version_to_model(v) for v in r.model_versions),
    )


def update_version(
    group: str,
    version: int,
    *,
    description: str | None,
    set_metrics: Mapping[str, float] | None,
    set_tags: Mapping[str, object] | None,
    remove_tags: Sequence[str],
    model_card: ModelCard | Mapping[str, Any] | None,
    actor: str,
) -> Unary[ModelVersion]:
    """UpdateModelVersion."""
    request = registry_pb2.UpdateModelVersionRequest(
        model_group=group,
        version=version,
        set_metrics=conv.float_map(set_metrics),
        set_tags=conv.str_map(set_tags),
        remove_tags=list(remove_tags),
        actor=conv.actor_to_pb(actor),
    )
    if description is not None:
        request.description = description
    if model_card is not None:
        request.model_card.CopyFrom(conv.model_card_to_pb(_as_model(model_card, ModelCard)))
    return Unary(
        "UpdateModelVersion", request, lambda r: conv.model_version_to_model(r.model_version)
    )


def download_request(
    group: str, version: int | None, alias: str | None
) -> registry_pb2.DownloadArtifactRequest:
    """The request of a DownloadArtifact stream."""
    return registry_pb2.DownloadArtifactRequest(model_group=group, **_selector(version, alias))


def describe_selector(request: registry_pb2.DownloadArtifactRequest) -> str:
    """``churn/3`` or ``churn@production``: what a download is of, for messages."""
    if request.WhichOneof("selector") == "alias":
        return f"{request.model_group}@{request.alias}"
    return f"{request.model_group}/{request.version}"


# --- governance ------------------------------------------------------------------------


def approve(group: str, version: int, reason: str, actor: str) -> Unary[ModelVersion]:
    """ApproveModelVersion."""
    request = registry_pb2.ApproveModelVersionRequest(
        model_group=group, version=version, reason=reason, actor=conv.actor_to_pb(actor)
    )
    return Unary(
        "ApproveModelVersion", request, lambda r: conv.model_version_to_model(r.model_version)
    )


def reject(group: str, version: int, reason: str, force: bool, actor: str) -> Unary[RejectResult]:
    """RejectModelVersion."""
    request = registry_pb2.RejectModelVersionRequest(
        model_group=group,
        version=version,
        reason=reason,
        force=force,
        actor=conv.actor_to_pb(actor),
    )
    return Unary("RejectModelVersion", request, conv.reject_result_to_model)


def set_alias(group: str, alias: str, version: int, reason: str, actor: str) -> Unary[AliasResult]:
    """SetAlias."""
    request = registry_pb2.SetAliasRequest(
        model_group=group,
        alias=alias,
        version=version,
        reason=reason,
        actor=conv.actor_to_pb(actor),
    )
    return Unary("SetAlias", request, lambda r: conv.alias_result_to_model(alias, r))


def delete_alias(group: str, alias: str, reason: str, actor: str) -> Unary[None]:
    """DeleteAlias."""
    request = registry_pb2.DeleteAliasRequest(
        model_group=group, alias=alias, reason=reason, actor=conv.actor_to_pb(actor)
    )
    return Unary("DeleteAlias", request, lambda r: None)


def audit(entity_type: str, prefix: str, page_size: int) -> Paged[AuditEntry]:
    """ListAuditEntries (oldest first)."""
    return Paged(
        "ListAuditEntries",
        lambda token: registry_pb2.ListAuditEntriesRequest(
            page=_page(page_size, token), entity_type=entity_type, entity_id_prefix=prefix
        ),
        lambda r: (conv.audit_entry_to_model(e) for e in r.entries),
    )


# --- endpoints -------------------------------------------------------------------------


def endpoint_spec(
    variants: Iterable[EndpointVariant | Mapping[str, Any]] | EndpointSpec,
    shadow: ShadowVariant | Mapping[str, Any] | None,
    data_capture: DataCaptureConfig | float | None,
    description: str,
) -> EndpointSpec:
    """An :class:`EndpointSpec` from the clients' arguments (a spec passes through, and
    then must come alone)."""
    if isinstance(variants, EndpointSpec):
        if shadow is not None or data_capture is not None or description:
            raise ValueError(
                "pass a whole EndpointSpec, or variants with shadow=/data_capture=/"
                "description=, not both"
            )
        return variants
    if isinstance(data_capture, int | float):
        data_capture = DataCaptureConfig(sampling_percent=float(data_capture))
    return EndpointSpec(
        variants=tuple(_as_model(v, EndpointVariant) for v in variants),
        shadow=_as_model(shadow, ShadowVariant) if shadow is not None else None,
        data_capture=data_capture,
        description=description,
    )


def create_endpoint(name: str, spec: EndpointSpec, actor: str) -> Unary[Endpoint]:
    """CreateEndpoint."""
    request = registry_pb2.CreateEndpointRequest(
        name=name, config=conv.endpoint_spec_to_pb(spec), actor=conv.actor_to_pb(actor)
    )
    return Unary("CreateEndpoint", request, lambda r: conv.endpoint_to_model(r.endpoint))


def update_endpoint(
    name: str, spec: EndpointSpec, expected_revision: int, actor: str
) -> Unary[Endpoint]:
    """UpdateEndpoint (optimistic concurrency when ``expected_revision`` > 0)."""
    request = registry_pb2.UpdateEndpointRequest(
        name=name,
        config=conv.endpoint_spec_to_pb(spec),
        actor=conv.actor_to_pb(actor),
        expected_revision=expected_revision,
    )
    return Unary("UpdateEndpoint", request, lambda r: conv.endpoint_to_model(r.endpoint))


def get_endpoint(name: str) -> Unary[Endpoint]:
    """GetEndpoint."""
    return Unary(
        "GetEndpoint",
        registry_pb2.GetEndpointRequest(name=name),
        lambda r: conv.endpoint_to_model(r.endpoint),
    )


def list_endpoints(include_deleted: bool, page_size: int) -> Paged[Endpoint]:
    """ListEndpoints."""
    return Paged(
        "ListEndpoints",
        lambda token: registry_pb2.ListEndpointsRequest(
            page=_page(page_size, token), include_deleted=include_deleted
        ),
        lambda r: (conv.endpoint_to_model(e) for e in r.endpoints),
    )


def endpoint_history(name: str, page_size: int) -> Paged[EndpointConfig]:
    """ListEndpointConfigs (newest first)."""
    return Paged(
        "ListEndpointConfigs",
        lambda token: registry_pb2.ListEndpointConfigsRequest(
            name=name, page=_page(page_size, token)
        ),
        lambda r: (conv.endpoint_config_to_model(c) for c in r.configs),
    )


def rollback_endpoint(name: str, to_revision: int, reason: str, actor: str) -> Unary[Endpoint]:
    """RollbackEndpoint."""
    request = registry_pb2.RollbackEndpointRequest(
        name=name, to_revision=to_revision, reason=reason, actor=conv.actor_to_pb(actor)
    )
    return Unary("RollbackEndpoint", request, lambda r: conv.endpoint_to_model(r.endpoint))


def delete_endpoint(name: str, actor: str) -> Unary[None]:
    """DeleteEndpoint."""
    request = registry_pb2.DeleteEndpointRequest(name=name, actor=conv.actor_to_pb(actor))
    return Unary("DeleteEndpoint", request, lambda r: None)


def next_token(response: Any, previous: str, method: str) -> str:
    """The next page token of a list response; guards against a server repeating a token
    (which would make the iteration endless)."""
    token: str = response.page.next_page_token
    if token and token == previous:
        raise Internal(f"{method}: the server returned the same page token twice")
    return token
