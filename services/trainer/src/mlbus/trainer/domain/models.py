"""The trainer's domain objects: jobs, their specs, results and log lines."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field


class JobStatus(StrEnum):
    """Where a job is in its life."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"

    @property
    def terminal(self) -> bool:
        """Whether the job has ended (nothing changes it any more)."""
        return self in TERMINAL


TERMINAL: Final = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.STOPPED})


class JobKind(StrEnum):
    """What a job does."""

    TRAINING = "TRAINING"
    PROCESSING = "PROCESSING"
    TUNING = "TUNING"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Limits(_Model):
    """Time and memory bounds of a job's child process; None: the trainer's default."""

    max_runtime_s: float | None = None
    max_memory_bytes: int | None = None


class ParameterRange(_Model):
    """One hyperparameter a tuning job searches."""

    name: str
    kind: Literal["continuous", "integer", "categorical"]
    min: float = 0.0
    max: float = 0.0
    log: bool = False
    values: tuple[str, ...] = ()


class TuningSpec(_Model):
    """A tuning job's search."""

    strategy: Literal["random", "grid", "bayesian"] = "random"
    parameters: tuple[ParameterRange, ...] = ()
    objective_metric: str = ""
    direction: Literal["maximize", "minimize"] = "maximize"
    max_jobs: int = 10
    max_parallel_jobs: int = 1
    early_stopping: bool = False
    grid_points: int = 3


class JobSpec(_Model):
    """What to run and on which data (see ``JobSpec`` in events.proto)."""

    algorithm: str = ""
    hyperparameters: dict[str, str] = Field(default_factory=dict)
    input_uri: str = ""
    validation_uri: str = ""
    target_column: str = ""
    limits: Limits = Limits()
    output_uri: str = ""
    model_group: str = ""
    script_uri: str = ""
    validation_fraction: float = 0.0
    seed: int = 0
    tuning: TuningSpec | None = None


class ArtifactRef(_Model):
    """A file a job produced, in the object store."""

    uri: str
    sha256: str
    size: int
    content_type: str


class TuningProgress(_Model):
    """How far a tuning job got."""

    trials_total: int = 0
    trials_completed: int = 0
    trials_failed: int = 0
    trials_pruned: int = 0
    best_trial_job_id: str = ""
    best_objective: float | None = None


class JobResult(_Model):
    """What a run produced: metrics, per-iteration series, artifacts, lineage."""

    metrics: dict[str, float] = Field(default_factory=dict)
    history: dict[str, list[float]] = Field(default_factory=dict)
    artifacts: dict[str, ArtifactRef] = Field(default_factory=dict)
    hyperparameters: dict[str, str] = Field(default_factory=dict)
    dataset_sha256: str = ""
    code_version: str = ""
    model_group: str = ""
    model_version: int = 0
    tuning: TuningProgress | None = None


class Job(_Model):
    """One job as stored."""

    job_id: str
    kind: JobKind
    experiment: str
    spec: JobSpec
    actor: str
    status: JobStatus = JobStatus.PENDING
    reason: str = ""
    create_time: datetime
    start_time: datetime | None = None
    end_time: datetime | None = None
    parent_job_id: str = ""
    attempts: int = 0
    trainer_id: str = ""
    stop_requested: bool = False
    result: JobResult = JobResult()

    def duration_s(self, now: datetime | None = None) -> float:
        """Seconds run so far (RUNNING) or in all; 0 before the start."""
        if self.start_time is None:
            return 0.0
        end = self.end_time or now or datetime.now(UTC)
        return max(0.0, (end - self.start_time).total_seconds())


class LogLine(_Model):
    """One line a job's process wrote."""

    number: int
    time: datetime
    text: str


class Experiment(_Model):
    """An experiment and how many runs it has."""

    name: str
    run_count: int
    last_run_time: datetime | None


class StatusChange(_Model):
    """A status transition, as published on the status topic."""

    job_id: str
    kind: JobKind
    status: JobStatus
    reason: str
    change_time: datetime
    start_time: datetime | None
    end_time: datetime | None
    experiment: str
    parent_job_id: str
    model_group: str = ""
    model_version: int = 0
    metrics: dict[str, float] = Field(default_factory=dict)

    @classmethod
    def of(cls, job: Job, when: datetime) -> StatusChange:
        """The change that brought ``job`` into its current status."""
        return cls(
            job_id=job.job_id,
            kind=job.kind,
            status=job.status,
            reason=job.reason,
            change_time=when,
            start_time=job.start_time,
            end_time=job.end_time,
            experiment=job.experiment,
            parent_job_id=job.parent_job_id,
            model_group=job.result.model_group,
            model_version=job.result.model_version,
            metrics=dict(job.result.metrics) if job.status == JobStatus.COMPLETED else {},
        )


def utcnow() -> datetime:
    """Now, timezone-aware UTC."""
    return datetime.now(UTC)
