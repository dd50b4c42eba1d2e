"""``mlbus.router.v1.RouterService``: asynchronous invocation and batch transform jobs,
delegated to their services (servicers stay thin)."""

from __future__ import annotations

from typing import Any, Final

from mlbus.router.api.async_service import AsyncInferenceService
from mlbus.router.transform import TransformService
from mlbus.router.v1 import router_pb2 as rpb
from mlbus.router.v1 import router_pb2_grpc as rpb_grpc

SERVICE_NAME: Final = "mlbus.router.v1.RouterService"


class RouterServicer(rpb_grpc.RouterServiceServicer):
    """The router's own API."""

    def __init__(self, async_inference: AsyncInferenceService, transform: TransformService) -> None:
        self.async_inference = async_inference
        self.transform = transform
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
