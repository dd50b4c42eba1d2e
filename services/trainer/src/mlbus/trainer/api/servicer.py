"""``mlbus.trainer.v1.TrainerService``: thin; convert, call the use case, convert back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

import grpc

from mlbus.core.errors import InvalidArgument
from mlbus.trainer.api import converters as conv
from mlbus.trainer.domain.service import Listing, TrainerService
from mlbus.trainer.v1 import trainer_pb2 as pb
from mlbus.trainer.v1 import trainer_pb2_grpc

SERVICE_NAME: Final = "mlbus.trainer.v1.TrainerService"
ACTOR_METADATA: Final = "x-mlbus-actor"


def _actor(field: str, context: grpc.aio.ServicerContext[object, object]) -> str:
    if field:
        return field
    for key, value in context.invocation_metadata() or ():
        if key == ACTOR_METADATA and isinstance(value, str) and value:
            return value
    raise InvalidArgument(f"actor: required (set the request's actor or {ACTOR_METADATA} metadata)")


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    """gRPC face of :class:`TrainerService`."""

    def __init__(self, service: TrainerService) -> None:
        self.service = service

    async def SubmitJob(
        self, request: pb.SubmitJobRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.SubmitJobResponse:
        actor = _actor(request.actor.name, context)
        job = await self.service.submit(
            conv.submission(request.job_id, request.kind, request.experiment, request.spec, actor)
        )
        return pb.SubmitJobResponse(job=conv.job_to_pb(job))

    async def DescribeJob(
        self, request: pb.DescribeJobRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.DescribeJobResponse:
        return pb.DescribeJobResponse(
            job=conv.job_to_pb(await self.service.describe(request.job_id))
        )

    async def ListJobs(
        self, request: pb.ListJobsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.ListJobsResponse:
        listing = Listing(
            experiment=request.experiment,
            status=conv.status_to_domain(request.status),
            kind=conv.kind_to_domain(request.kind) if request.kind else None,
            parent_job_id=request.parent_job_id or None,
        )
        jobs, token = await self.service.list_jobs(
            listing, request.page.page_size, request.page.page_token
        )
        response = pb.ListJobsResponse(jobs=[conv.job_to_pb(j) for j in jobs])
        response.page.next_page_token = token
        return response

    async def StopJob(
        self, request: pb.StopJobRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.StopJobResponse:
        actor = _actor(request.actor.name, context)
        job = await self.service.stop(request.job_id, request.reason, actor)
        return pb.StopJobResponse(job=conv.job_to_pb(job))

    async def StreamJobLogs(
        self, request: pb.StreamJobLogsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[pb.StreamJobLogsResponse]:
        sent = False
        async for lines, status in self.service.logs(
            request.job_id, follow=request.follow, from_line=int(request.from_line)
        ):
            sent = True
            yield pb.StreamJobLogsResponse(
                lines=[conv.log_line_to_pb(x) for x in lines], status=conv.status_to_pb(status)
            )
        if not sent:
            job = await self.service.describe(request.job_id)
            yield pb.StreamJobLogsResponse(status=conv.status_to_pb(job.status))

    async def ListExperiments(
        self, request: pb.ListExperimentsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.ListExperimentsResponse:
        experiments = await self.service.experiments()
        return pb.ListExperimentsResponse(
            experiments=[conv.experiment_to_pb(e) for e in experiments]
        )

    async def ListRuns(
        self, request: pb.ListRunsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.ListRunsResponse:
        runs = await self.service.runs(
            request.experiment, request.order_by, request.ascending, request.limit
        )
        return pb.ListRunsResponse(runs=[conv.job_to_pb(j) for j in runs])
