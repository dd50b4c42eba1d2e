"""``mlbus.registry.v1.RegistryService``: converts requests, calls the use cases, converts
back. Errors are :class:`~mlbus.core.errors.MlbusError` subclasses raised by the domain;
the server's interceptor maps them to gRPC statuses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final, TypeAlias

import grpc

from mlbus.common.v1 import common_pb2
from mlbus.core.errors import InvalidArgument
from mlbus.registry.api import converters as cv
from mlbus.registry.domain.registry import Registry
from mlbus.registry.domain.rules import check_actor
from mlbus.registry.v1 import registry_pb2 as pb
from mlbus.registry.v1 import registry_pb2_grpc

#: Full name of the service, for health and reflection.
SERVICE_NAME: Final = "mlbus.registry.v1.RegistryService"
#: Metadata naming the actor when a request's ``actor`` field is empty.
ACTOR_METADATA: Final = "x-mlbus-actor"

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


def resolve_actor(actor: common_pb2.Actor, context: Context) -> str:
    """The request's actor, else the ``x-mlbus-actor`` metadata; INVALID_ARGUMENT if neither."""
    name = actor.name
    if not name.strip():
        for key, value in context.invocation_metadata() or ():
            if key == ACTOR_METADATA:
                name = value.decode() if isinstance(value, bytes) else value
    return check_actor(name)


def _selector(request: pb.GetModelVersionRequest | pb.DownloadArtifactRequest) -> dict[str, Any]:
    which = request.WhichOneof("selector")
    if which == "version":
        return {"version": request.version}
    if which == "alias":
        return {"alias": request.alias}
    return {}


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    """The registry's gRPC service over :class:`~mlbus.registry.domain.registry.Registry`."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    # -- model groups -----------------------------------------------------------------

    async def CreateModelGroup(
        self, request: pb.CreateModelGroupRequest, context: Context
    ) -> pb.CreateModelGroupResponse:
        actor = resolve_actor(request.actor, context)
        group = await self._registry.create_group(
            request.name, description=request.description, tags=dict(request.tags), actor=actor
        )
        return pb.CreateModelGroupResponse(model_group=cv.group_to_pb(group))

    async def GetModelGroup(
        self, request: pb.GetModelGroupRequest, context: Context
    ) -> pb.GetModelGroupResponse:
        group = await self._registry.get_group(request.name)
        return pb.GetModelGroupResponse(model_group=cv.group_to_pb(group))

    async def ListModelGroups(
        self, request: pb.ListModelGroupsRequest, context: Context
    ) -> pb.ListModelGroupsResponse:
        page = await self._registry.list_groups(
            cv.page_to_domain(request.page),
            name_prefix=request.name_prefix,
            tags=dict(request.tags),
        )
        return pb.ListModelGroupsResponse(
            model_groups=[cv.group_to_pb(g) for g in page.items],
            page=cv.page_to_pb(page.next_token),
        )

    async def UpdateModelGroup(
        self, request: pb.UpdateModelGroupRequest, context: Context
    ) -> pb.UpdateModelGroupResponse:
        actor = resolve_actor(request.actor, context)
        group = await self._registry.update_group(
            request.name,
            description=request.description if request.HasField("description") else None,
            set_tags=dict(request.set_tags),
            remove_tags=list(request.remove_tags),
            actor=actor,
        )
        return pb.UpdateModelGroupResponse(model_group=cv.group_to_pb(group))

    # -- model versions ---------------------------------------------------------------

    async def RegisterModelVersion(
        self, request_iterator: AsyncIterator[pb.RegisterModelVersionRequest], context: Context
    ) -> pb.RegisterModelVersionResponse:
        messages = aiter(request_iterator)
        try:
            first = await anext(messages)
        except StopAsyncIteration:
            raise InvalidArgument(
                "header: the stream is empty; expected a header first, then the artifact in chunks",
                details={"field": "header"},
            ) from None
        if first.WhichOneof("part") != "header":
            raise InvalidArgument(
                "header: the first message must be the header, got a chunk",
                details={"field": "header"},
            )
        header = first.header
        command = cv.register_to_domain(header, resolve_actor(header.actor, context))

        async def chunks() -> AsyncIterator[bytes]:
            index = 0
            async for message in messages:
                index += 1
                if message.WhichOneof("part") == "header":
                    raise InvalidArgument(
                        f"header: message {index} is a second header; only the first "
                        "message may be one",
                        details={"field": "header"},
                    )
                yield message.chunk

        version = await self._registry.register_version(command, chunks())
        return pb.RegisterModelVersionResponse(model_version=cv.version_to_pb(version))

    async def GetModelVersion(
        self, request: pb.GetModelVersionRequest, context: Context
    ) -> pb.GetModelVersionResponse:
        version = await self._registry.get_version(request.model_group, **_selector(request))
        return pb.GetModelVersionResponse(model_version=cv.version_to_pb(version))

    async def ListModelVersions(
        self, request: pb.ListModelVersionsRequest, context: Context
    ) -> pb.ListModelVersionsResponse:
        page = await self._registry.list_versions(
            request.model_group,
            cv.page_to_domain(request.page),
            status=cv.approval_status_to_domain(request.approval_status),
        )
        return pb.ListModelVersionsResponse(
            model_versions=[cv.version_to_pb(v) for v in page.items],
            page=cv.page_to_pb(page.next_token),
        )

    async def UpdateModelVersion(
        self, request: pb.UpdateModelVersionRequest, context: Context
    ) -> pb.UpdateModelVersionResponse:
        actor = resolve_actor(request.actor, context)
        version = await self._registry.update_version(
            request.model_group,
            request.version,
            cv.version_changes_to_domain(request),
            actor=actor,
        )
        return pb.UpdateModelVersionResponse(model_version=cv.version_to_pb(version))

    async def DownloadArtifact(
        self, request: pb.DownloadArtifactRequest, context: Context
    ) -> AsyncIterator[pb.DownloadArtifactResponse]:
        artifact, stream = await self._registry.open_artifact(
            request.model_group, **_selector(request)
        )
        yield pb.DownloadArtifactResponse(artifact=cv.artifact_to_pb(artifact))
        async for chunk in stream:
            yield pb.DownloadArtifactResponse(chunk=chunk)

    # -- governance -------------------------------------------------------------------

    async def ApproveModelVersion(
        self, request: pb.ApproveModelVersionRequest, context: Context
    ) -> pb.ApproveModelVersionResponse:
        actor = resolve_actor(request.actor, context)
        version = await self._registry.approve(
            request.model_group, request.version, actor=actor, reason=request.reason
        )
        return pb.ApproveModelVersionResponse(model_version=cv.version_to_pb(version))

    async def RejectModelVersion(
        self, request: pb.RejectModelVersionRequest, context: Context
    ) -> pb.RejectModelVersionResponse:
        actor = resolve_actor(request.actor, context)
        version, degraded = await self._registry.reject(
            request.model_group,
            request.version,
            actor=actor,
            reason=request.reason,
            force=request.force,
        )
        return pb.RejectModelVersionResponse(
            model_version=cv.version_to_pb(version), degraded_endpoints=degraded
        )

    async def SetAlias(self, request: pb.SetAliasRequest, context: Context) -> pb.SetAliasResponse:
        actor = resolve_actor(request.actor, context)
        version, previous = await self._registry.set_alias(
            request.model_group, request.alias, request.version, actor=actor, reason=request.reason
        )
        return pb.SetAliasResponse(
            model_version=cv.version_to_pb(version), previous_version=previous
        )

    async def DeleteAlias(
        self, request: pb.DeleteAliasRequest, context: Context
    ) -> pb.DeleteAliasResponse:
        actor = resolve_actor(request.actor, context)
        await self._registry.delete_alias(
            request.model_group, request.alias, actor=actor, reason=request.reason
        )
        return pb.DeleteAliasResponse()

    async def ListAuditEntries(
        self, request: pb.ListAuditEntriesRequest, context: Context
    ) -> pb.ListAuditEntriesResponse:
        page = await self._registry.list_audit(
            cv.page_to_domain(request.page),
            entity_type=request.entity_type,
            entity_id_prefix=request.entity_id_prefix,
        )
        return pb.ListAuditEntriesResponse(
            entries=[cv.audit_to_pb(e) for e in page.items], page=cv.page_to_pb(page.next_token)
        )

    # -- endpoints --------------------------------------------------------------------

    async def CreateEndpoint(
        self, request: pb.CreateEndpointRequest, context: Context
    ) -> pb.CreateEndpointResponse:
        actor = resolve_actor(request.actor, context)
        endpoint = await self._registry.create_endpoint(
            request.name, cv.spec_to_domain(request.config), actor=actor
        )
        return pb.CreateEndpointResponse(endpoint=cv.endpoint_to_pb(endpoint))

    async def UpdateEndpoint(
        self, request: pb.UpdateEndpointRequest, context: Context
    ) -> pb.UpdateEndpointResponse:
        actor = resolve_actor(request.actor, context)
        endpoint = await self._registry.update_endpoint(
            request.name,
            cv.spec_to_domain(request.config),
            actor=actor,
            expected_revision=request.expected_revision,
        )
        return pb.UpdateEndpointResponse(endpoint=cv.endpoint_to_pb(endpoint))

    async def GetEndpoint(
        self, request: pb.GetEndpointRequest, context: Context
    ) -> pb.GetEndpointResponse:
        endpoint = await self._registry.get_endpoint(request.name)
        return pb.GetEndpointResponse(endpoint=cv.endpoint_to_pb(endpoint))

    async def ListEndpoints(
        self, request: pb.ListEndpointsRequest, context: Context
    ) -> pb.ListEndpointsResponse:
        page = await self._registry.list_endpoints(
            cv.page_to_domain(request.page), include_deleted=request.include_deleted
        )
        return pb.ListEndpointsResponse(
            endpoints=[cv.endpoint_to_pb(e) for e in page.items],
            page=cv.page_to_pb(page.next_token),
        )

    async def ListEndpointConfigs(
        self, request: pb.ListEndpointConfigsRequest, context: Context
    ) -> pb.ListEndpointConfigsResponse:
        page = await self._registry.list_endpoint_configs(
            request.name, cv.page_to_domain(request.page)
        )
        return pb.ListEndpointConfigsResponse(
            configs=[cv.config_to_pb(c) for c in page.items], page=cv.page_to_pb(page.next_token)
        )

    async def RollbackEndpoint(
        self, request: pb.RollbackEndpointRequest, context: Context
    ) -> pb.RollbackEndpointResponse:
        actor = resolve_actor(request.actor, context)
        endpoint = await self._registry.rollback_endpoint(
            request.name, request.to_revision, actor=actor, reason=request.reason
        )
        return pb.RollbackEndpointResponse(endpoint=cv.endpoint_to_pb(endpoint))

    async def DeleteEndpoint(
        self, request: pb.DeleteEndpointRequest, context: Context
    ) -> pb.DeleteEndpointResponse:
        actor = resolve_actor(request.actor, context)
        await self._registry.delete_endpoint(request.name, actor=actor)
        return pb.DeleteEndpointResponse()
