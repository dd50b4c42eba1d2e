"""What the trainer's use cases need from the outside, as interfaces."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from mlbus.trainer.domain.models import Experiment, Job, JobKind, JobStatus, LogLine

#: Builds the status event of a job as it is after a change: (event id, payload).
MakeEvent = Callable[[Job], tuple[str, bytes]]


class JobFilterLike(Protocol):
    """Filters of a job listing."""

    experiment: str
    status: JobStatus | None
    kind: JobKind | None
    parent_job_id: str | None


@dataclass(frozen=True, slots=True)
class Renewal:
    """What renewing a replica's leases found."""

    #: Jobs among those renewed whose stop was requested.
    stop: set[str] = field(default_factory=set)
    #: Jobs no longer held by the replica: another one took them over (this replica's
    #: lease ran out, e.g. during a database outage), so it must not run them on.
    lost: set[str] = field(default_factory=set)


class JobStore(Protocol):
    """Jobs, their log lines and status events, shared by all replicas."""

    writer_id: str

    async def insert(self, job: Job, event: MakeEvent | None = None) -> tuple[Job, bool]: ...

    async def get(self, job_id: str) -> Job | None: ...

    async def list_jobs(
        self, filters: Any, *, page_size: int, page_token: str = ""
    ) -> tuple[list[Job], str]: ...

    async def transition(
        self,
        job_id: str,
        *,
        expect: Sequence[JobStatus],
        holder: str | None = None,
        event: MakeEvent | None = None,
        **changes: Any,
    ) -> Job | None: ...

    async def claim(self, job_id: str, trainer_id: str, lease_until: datetime) -> Job | None: ...

    async def claimable(self, limit: int) -> list[str]: ...

    async def renew(
        self, trainer_id: str, job_ids: Sequence[str], lease_until: datetime
    ) -> Renewal: ...

    async def orphans(self, trainer_id: str, *, own: bool) -> list[Job]: ...

    async def take_over(self, job: Job, trainer_id: str, lease_until: datetime) -> bool: ...

    async def request_stop(self, job_id: str, reason: str) -> Job | None: ...

    async def experiments(self) -> list[Experiment]: ...

    async def runs(self, experiment: str) -> list[Job]: ...

    async def append_logs(self, job_id: str, lines: Sequence[LogLine]) -> None: ...

    async def last_log_number(self, job_id: str) -> int: ...

    async def read_logs(self, job_id: str, from_number: int, limit: int) -> list[LogLine]: ...


class StagedInput(Protocol):
    """A job input on local disk."""

    @property
    def uri(self) -> str: ...

    @property
    def path(self) -> Path: ...

    @property
    def sha256(self) -> str: ...


class Stager(Protocol):
    """Makes a job input local; raises an error whose message is the job's reason."""

    async def stage(self, uri: str, into: Path, what: str) -> StagedInput: ...


class Artifacts(Protocol):
    """The object store, as far as jobs need it."""

    async def put_file(self, path: Path, content_type: str) -> dict[str, Any]: ...

    async def put_output(self, base_uri: str, name: str, path: Path) -> dict[str, Any]: ...


class CheckpointMirror(Protocol):
    """A job's local checkpoint directory and its copy that outlives the attempt."""

    @property
    def uri(self) -> str: ...

    async def restore(self) -> int: ...

    async def sync(self) -> int: ...


class Checkpoints(Protocol):
    """Where jobs' checkpoints are kept between attempts."""

    def mirror(self, job_id: str, local: Path) -> CheckpointMirror: ...

    async def discard(self, job_id: str) -> None: ...


class Registrar(Protocol):
    """Registers a trained model; raises an error whose message is the job's reason."""

    async def register(
        self,
        *,
        actor: str,
        model_group: str,
        model: Path | None,
        artifact_uri: str = "",
        expected_sha256: str = "",
        metrics: Mapping[str, float],
        hyperparameters: Mapping[str, str],
        lineage: Mapping[str, Any],
        baseline: Mapping[str, Any] | None,
        tags: Mapping[str, str],
        request_id: str,
        description: str,
    ) -> Any: ...


class Publisher(Protocol):
    """Publishes a job request on the job-requested topic (the gRPC path's copy)."""

    async def publish_request(self, job: Job) -> None: ...
