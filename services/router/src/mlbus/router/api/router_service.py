"""``mlbus.router.v1.RouterService``: asynchronous invocation, batch transform jobs and the
deployment controller's view, delegated to their services (servicers stay thin)."""

from __future__ import annotations

from typing import Any, Final

from mlbus.core.errors import NotFound
from mlbus.router.api.async_service import AsyncInferenceService
from mlbus.router.controller import DeploymentController
from mlbus.router.transform import TransformService
from mlbus.router.v1 import router_pb2 as rpb
from mlbus.router.v1 import router_pb2_grpc as rpb_grpc

SERVICE_NAME: Final = "mlbus.router.v1.RouterService"


class RouterServicer(rpb_grpc.RouterServiceServicer):
    """The router's own API."""

    def __init__(
        self,
        async_inference: AsyncInferenceService,
        transform: TransformService,
        controller: DeploymentController | None = None,
    ) -> None:
        self.async_inference = async_inference
        self.transform = transform
        self.controller = controller
        # Files of rows given to InvokeAsync run as internal transform jobs.
        async_inference.attach(transform)

    async def InvokeAsync(
        self, request: rpb.InvokeAsyncRequest, context: Any
    ) -> rpb.InvokeAsyncResponse:
        return await self.async_inference.InvokeAsync(request, context)

    async def GetAsyncResult(
        self, request: rpb.GetAsyncResultRequest, context: Any
    ) -> rpb.GetAsyncResultResponse:
        return await self.async_inference.GetAsyncResult(request, context)

    async def CreateTransformJob(
        self, request: rpb.CreateTransformJobRequest, context: Any
    ) -> rpb.CreateTransformJobResponse:
        return rpb.CreateTransformJobResponse(job=await self.transform.create(request.spec))

    async def DescribeTransformJob(
        self, request: rpb.DescribeTransformJobRequest, context: Any
    ) -> rpb.DescribeTransformJobResponse:
        return rpb.DescribeTransformJobResponse(job=self.transform.get(request.job_id))

    async def ListTransformJobs(
        self, request: rpb.ListTransformJobsRequest, context: Any
    ) -> rpb.ListTransformJobsResponse:
        return rpb.ListTransformJobsResponse(jobs=self.transform.list_jobs(request.endpoint))

    async def StopTransformJob(
        self, request: rpb.StopTransformJobRequest, context: Any
    ) -> rpb.StopTransformJobResponse:
        return rpb.StopTransformJobResponse(
            job=await self.transform.stop_job(request.job_id, request.reason)
        )

    async def ListDeployments(
        self, request: rpb.ListDeploymentsRequest, context: Any
    ) -> rpb.ListDeploymentsResponse:
        everything = self.controller.describe() if self.controller is not None else []
        views = everything
        if request.endpoint:
            views = [v for v in everything if v["endpoint"] == request.endpoint]
            if not views:
                known = ", ".join(v["endpoint"] for v in everything) or "(none)"
                raise NotFound(
                    f"endpoint {request.endpoint!r}: this router's controller does not run it; "
                    f"known: {known}"
                )
        return rpb.ListDeploymentsResponse(deployments=[deployment_pb(v) for v in views])


def deployment_pb(view: dict[str, Any]) -> rpb.Deployment:
    """A controller view (``DeploymentController.describe()`` item) as a message."""
    depth = view.get("queue_depth")
    return rpb.Deployment(
        endpoint=view["endpoint"],
        desired_revision=view["desired_revision"],
        applied_revision=view["applied_revision"],
        status=view["status"],
        error=view["error"],
        workers=[
            rpb.DeploymentWorker(
                id=w["id"],
                variant=w["variant"],
                model_group=w["model_group"],
                model_version=w["model_version"],
                shadow=w["shadow"],
                state=w["state"],
                address=w["address"],
                pid=w["pid"],
                outstanding=w["outstanding"],
                restarts=w["restarts"],
                error=w["error"],
            )
            for w in view["workers"]
        ],
        scaling=[
            rpb.VariantScaling(
                variant=s["variant"],
                scale_to_zero_after_seconds=s["scale_to_zero_after_s"],
                instances=s["instances"],
                scaled_to_zero=s["scaled_to_zero"],
                scaling_up=s["scaling_up"],
                scale_ups=s["scale_ups"],
                scale_downs=s["scale_downs"],
            )
            for s in view["scaling"]
        ],
        queue_depth=depth if (depth is not None and view["scaling"]) else -1,
    )
