"""Where the controller learns what to run: the registry's API at start-up, then its events.

At start the router lists every endpoint from the registry (retrying until the registry
answers), so a router that starts after the events were published — or after the embedded
broker was reset — still deploys everything. Events (``EndpointConfigUpdated``,
``EndpointDeleted``, ``EndpointDegraded``) then keep it current. Both paths are gated by the
configuration revision, so duplicates and reordering between them are harmless.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

import grpc

from mlbus.common.v1 import common_pb2 as cpb
from mlbus.core.messaging import Event
from mlbus.registry.v1 import events_pb2 as ev
from mlbus.registry.v1 import registry_pb2 as rpb
from mlbus.registry.v1 import registry_pb2_grpc as rpb_grpc
from mlbus.router.controller import DeploymentController
from mlbus.router.domain.deployment import EndpointPlan, VariantMode, VariantPlan, WorkerSpec

log = logging.getLogger(__name__)


def _variant(
    endpoint: str, variant: ev.EndpointVariant, *, capture_percent: float, shadow: bool
) -> VariantPlan:
    batching = variant.batching if variant.HasField("batching") else None
    spec = WorkerSpec(
        endpoint=endpoint,
        variant=variant.name,
        model_group=variant.model_group,
        model_version=int(variant.model_version),
        artifact_uri=variant.artifact.uri,
        artifact_sha256=variant.artifact.sha256,
        shadow=shadow,
        max_batch_size=max(int(batching.max_batch_size), 1) if batching else 1,
        max_queue_delay_us=int(batching.max_queue_delay_micros) if batching else 0,
        max_concurrency=int(variant.max_concurrency),
        capture_percent=capture_percent,
    )
    mode = (
        VariantMode.SERVERLESS
        if variant.mode == ev.VARIANT_MODE_SERVERLESS
        else VariantMode.REALTIME
    )
    return VariantPlan(
        spec=spec,
        weight=float(variant.weight),
        instance_count=int(variant.instance_count),
        mode=mode,
        scale_to_zero_after_s=float(max(variant.scale_to_zero_after_seconds, 0)),
    )


def plan_from_config(
    endpoint: str,
    revision: int,
    variants: Iterable[ev.EndpointVariant],
    shadow: ev.ShadowVariant | None,
    data_capture: ev.DataCaptureConfig | None,
) -> EndpointPlan:
    """The plan of one configuration revision (event or API form, same message types)."""
    capture = float(data_capture.sampling_percent) if data_capture is not None else 0.0
    production = tuple(
        _variant(endpoint, v, capture_percent=capture, shadow=False) for v in variants
    )
    shadow_plan = None
    shadow_percent = 0.0
    if shadow is not None and shadow.HasField("variant") and shadow.variant.name:
        shadow_plan = _variant(endpoint, shadow.variant, capture_percent=capture, shadow=True)
        shadow_percent = float(shadow.sampling_percent)
    return EndpointPlan(
        endpoint=endpoint,
        revision=revision,
        variants=production,
        shadow=shadow_plan,
        shadow_percent=shadow_percent,
    )


def plan_from_event(message: ev.EndpointConfigUpdated) -> EndpointPlan:
    """The plan an ``EndpointConfigUpdated`` event asks for."""
    return plan_from_config(
        message.endpoint,
        message.config_revision,
        message.variants,
        message.shadow if message.HasField("shadow") else None,
        message.data_capture if message.HasField("data_capture") else None,
    )


class RegistrySource:
    """Feeds the controller from the registry's API and events."""

    def __init__(
        self,
        controller: DeploymentController,
        channel: grpc.aio.Channel,
        *,
        retry_interval_s: float = 1.0,
    ) -> None:
        self.controller = controller
        self.stub = rpb_grpc.RegistryServiceStub(channel)
        self.channel = channel
        self.retry_interval_s = retry_interval_s
        self._task: asyncio.Task[None] | None = None
        #: Set once the registry's endpoint list was applied.
        self.bootstrapped = asyncio.Event()

    def start(self) -> None:
        """Start the background bootstrap (retries until the registry answers)."""
        self._task = asyncio.create_task(self._bootstrap_until_done(), name="registry-bootstrap")

    async def stop(self) -> None:
        """Stop bootstrapping and close the registry channel."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.channel.close(grace=None)

    async def _bootstrap_until_done(self) -> None:
        attempt = 0
        while True:
            attempt += 1
            try:
                count = await self.bootstrap()
            except grpc.aio.AioRpcError as exc:
                level = (
                    logging.WARNING if attempt in (1, 10) or attempt % 60 == 0 else logging.DEBUG
                )
                log.log(
                    level,
                    "registry not reachable yet; retrying",
                    extra={"attempt": attempt, "code": exc.code().name, "error": exc.details()},
                )
                await asyncio.sleep(self.retry_interval_s)
                continue
            log.info("deployments loaded from the registry", extra={"endpoints": count})
            self.bootstrapped.set()
            return

    async def bootstrap(self) -> int:
        """Submit the current configuration of every live endpoint; returns how many."""
        token = ""
        count = 0
        while True:
            response = await self.stub.ListEndpoints(
                rpb.ListEndpointsRequest(page=cpb.PageRequest(page_size=100, page_token=token)),
                timeout=10.0,
            )
            for endpoint in response.endpoints:
                if endpoint.status == rpb.ENDPOINT_STATUS_DELETED:
                    continue
                config = endpoint.current_config
                plan = plan_from_config(
                    endpoint.name,
                    config.revision,
                    config.variants,
                    config.shadow if config.HasField("shadow") else None,
                    config.data_capture if config.HasField("data_capture") else None,
                )
                if endpoint.status == rpb.ENDPOINT_STATUS_DEGRADED:
                    plan = await self._without_rejected(plan, endpoint.status_reason)
                self.controller.submit(plan)
                count += 1
            token = response.page.next_page_token
            if not token:
                return count

    async def _without_rejected(self, plan: EndpointPlan, reason: str) -> EndpointPlan:
        for vp in plan.all_variants():
            response = await self.stub.GetModelVersion(
                rpb.GetModelVersionRequest(
                    model_group=vp.spec.model_group, version=vp.spec.model_version
                ),
                timeout=10.0,
            )
            if response.model_version.approval_status == cpb.APPROVAL_STATUS_REJECTED:
                plan = plan.without_version(
                    vp.spec.model_group,
                    vp.spec.model_version,
                    reason
                    or f"model {vp.spec.model_group} version {vp.spec.model_version} was rejected",
                )
        return plan

    async def handle(self, event: Event[Any]) -> None:
        """Consumer handler for the registry's endpoint topics."""
        message = event.message
        if isinstance(message, ev.EndpointConfigUpdated):
            plan = plan_from_event(message)
            if self.controller.submit(plan):
                log.info(
                    "endpoint configuration received",
                    extra={"endpoint": plan.endpoint, "revision": plan.revision},
                )
        elif isinstance(message, ev.EndpointDeleted):
            if self.controller.delete(message.endpoint, message.config_revision):
                log.info("endpoint deletion received", extra={"endpoint": message.endpoint})
        elif isinstance(message, ev.EndpointDegraded):
            reason = message.reason or (
                f"model {message.model_group} version {message.model_version} was rejected"
            )
            if self.controller.degrade(
                message.endpoint,
                message.config_revision,
                message.model_group,
                message.model_version,
                reason,
            ):
                log.warning(
                    "endpoint degraded: no longer serving a rejected version",
                    extra={
                        "endpoint": message.endpoint,
                        "model_group": message.model_group,
                        "model_version": message.model_version,
                    },
                )
