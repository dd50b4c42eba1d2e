"""Protobuf ↔ domain, for the servicer and the Kafka side alike."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from mlbus.common.v1 import common_pb2
from mlbus.core.errors import InvalidArgument
from mlbus.trainer.domain import algorithms
from mlbus.trainer.domain.models import (
    Experiment,
    Job,
    JobKind,
    JobSpec,
    JobStatus,
    Limits,
    LogLine,
    ParameterRange,
    StatusChange,
    TuningSpec,
)
from mlbus.trainer.domain.service import Submission
from mlbus.trainer.v1 import events_pb2 as ev
from mlbus.trainer.v1 import trainer_pb2 as pb

_KINDS = {
    ev.JOB_KIND_TRAINING: JobKind.TRAINING,
    ev.JOB_KIND_PROCESSING: JobKind.PROCESSING,
    ev.JOB_KIND_TUNING: JobKind.TUNING,
}
_KINDS_PB = {v: k for k, v in _KINDS.items()}
_STATUSES = {
    ev.JOB_STATUS_PENDING: JobStatus.PENDING,
    ev.JOB_STATUS_RUNNING: JobStatus.RUNNING,
    ev.JOB_STATUS_COMPLETED: JobStatus.COMPLETED,
    ev.JOB_STATUS_FAILED: JobStatus.FAILED,
    ev.JOB_STATUS_STOPPED: JobStatus.STOPPED,
}
_STATUSES_PB = {v: k for k, v in _STATUSES.items()}
_STRATEGIES = {
    ev.SEARCH_STRATEGY_UNSPECIFIED: "random",
    ev.SEARCH_STRATEGY_RANDOM: "random",
    ev.SEARCH_STRATEGY_GRID: "grid",
    ev.SEARCH_STRATEGY_BAYESIAN: "bayesian",
}
_STRATEGIES_PB = {
    "random": ev.SEARCH_STRATEGY_RANDOM,
    "grid": ev.SEARCH_STRATEGY_GRID,
    "bayesian": ev.SEARCH_STRATEGY_BAYESIAN,
}


def kind_to_domain(value: int, field: str = "kind") -> JobKind:
    """A JobKind enum value; InvalidArgument for UNSPECIFIED or unknown values."""
    try:
        return _KINDS[value]  # type: ignore[index]
    except KeyError:
        raise InvalidArgument(
            f"{field}: expected JOB_KIND_TRAINING, JOB_KIND_PROCESSING or JOB_KIND_TUNING, "
            f"got {value}",
            details={"field": field},
        ) from None


def kind_to_pb(kind: JobKind) -> ev.JobKind.ValueType:
    """The proto enum of a kind."""
    return _KINDS_PB[kind]


def status_to_domain(value: int, field: str = "status") -> JobStatus | None:
    """A JobStatus filter (None for UNSPECIFIED); an unknown number is InvalidArgument (it
    was ignored, listing every job)."""
    if value == ev.JOB_STATUS_UNSPECIFIED:
        return None
    try:
        return _STATUSES[value]  # type: ignore[index]
    except KeyError:
        raise InvalidArgument(
            f"{field}: expected one of {', '.join(ev.JobStatus.keys())}, got {value}",
            details={"field": field},
        ) from None


def status_to_pb(status: JobStatus) -> ev.JobStatus.ValueType:
    """The proto enum of a status."""
    return _STATUSES_PB[status]


def _tuning_to_domain(message: ev.TuningSpec) -> TuningSpec:
    ranges = []
    for p in message.parameters:
        which = p.WhichOneof("range")
        if which == "continuous":
            ranges.append(
                ParameterRange(
                    name=p.name,
                    kind="continuous",
                    min=p.continuous.min,
                    max=p.continuous.max,
                    log=p.continuous.scale == ev.SCALE_LOG,
                )
            )
        elif which == "integer":
            ranges.append(
                ParameterRange(
                    name=p.name,
                    kind="integer",
                    min=float(p.integer.min),
                    max=float(p.integer.max),
                    log=p.integer.scale == ev.SCALE_LOG,
                )
            )
        elif which == "categorical":
            ranges.append(
                ParameterRange(name=p.name, kind="categorical", values=tuple(p.categorical.values))
            )
        else:
            raise InvalidArgument(
                f"spec.tuning.parameters: range of {p.name!r} missing (continuous, integer or categorical)"
            )
    metric = message.objective_metric
    directions = {
        ev.OBJECTIVE_DIRECTION_UNSPECIFIED: algorithms.default_direction(metric),
        ev.OBJECTIVE_DIRECTION_MAXIMIZE: "maximize",
        ev.OBJECTIVE_DIRECTION_MINIMIZE: "minimize",
    }
    if message.direction not in directions:
        raise InvalidArgument(
            "spec.tuning.direction: expected one of "
            f"{', '.join(ev.ObjectiveDirection.keys())}, got {message.direction}",
            details={"field": "spec.tuning.direction"},
        )
    if message.strategy not in _STRATEGIES:
        raise InvalidArgument(
            "spec.tuning.strategy: expected one of "
            f"{', '.join(ev.SearchStrategy.keys())}, got {message.strategy}",
            details={"field": "spec.tuning.strategy"},
        )
    direction = directions[message.direction]
    return TuningSpec(
        strategy=_STRATEGIES[message.strategy],  # type: ignore[arg-type]
        parameters=tuple(ranges),
        objective_metric=metric,
        direction=direction,
        max_jobs=message.max_jobs or 10,
        max_parallel_jobs=message.max_parallel_jobs or 1,
        early_stopping=message.early_stopping,
        grid_points=message.grid_points or 3,
    )


def spec_to_domain(message: ev.JobSpec) -> JobSpec:
    """JobSpec → domain."""
    limits = message.limits
    runtime = (
        limits.max_runtime.ToTimedelta().total_seconds() if limits.HasField("max_runtime") else None
    )
    return JobSpec(
        algorithm=message.algorithm,
        hyperparameters=dict(message.hyperparameters),
        input_uri=message.input_uri,
        validation_uri=message.validation_uri,
        target_column=message.target_column,
        limits=Limits(
            max_runtime_s=runtime or None, max_memory_bytes=limits.max_memory_bytes or None
        ),
        output_uri=message.output_uri,
        model_group=message.model_group,
        script_uri=message.script_uri,
        validation_fraction=message.validation_fraction,
        seed=message.seed,
        tuning=_tuning_to_domain(message.tuning) if message.HasField("tuning") else None,
    )


def spec_to_pb(spec: JobSpec) -> ev.JobSpec:
    """Domain → JobSpec."""
    message = ev.JobSpec(
        algorithm=spec.algorithm,
        hyperparameters=spec.hyperparameters,
        input_uri=spec.input_uri,
        validation_uri=spec.validation_uri,
        target_column=spec.target_column,
        output_uri=spec.output_uri,
        model_group=spec.model_group,
        script_uri=spec.script_uri,
        validation_fraction=spec.validation_fraction,
        seed=spec.seed,
    )
    if spec.limits.max_runtime_s:
        message.limits.max_runtime.FromNanoseconds(int(spec.limits.max_runtime_s * 1e9))
    message.limits.max_memory_bytes = spec.limits.max_memory_bytes or 0
    if spec.tuning is not None:
        t = spec.tuning
        tuning = message.tuning
        tuning.strategy = _STRATEGIES_PB[t.strategy]
        tuning.objective_metric = t.objective_metric
        tuning.direction = (
            ev.OBJECTIVE_DIRECTION_MAXIMIZE
            if t.direction == "maximize"
            else ev.OBJECTIVE_DIRECTION_MINIMIZE
        )
        tuning.max_jobs = t.max_jobs
        tuning.max_parallel_jobs = t.max_parallel_jobs
        tuning.early_stopping = t.early_stopping
        tuning.grid_points = t.grid_points
        for p in t.parameters:
            r = tuning.parameters.add(name=p.name)
            scale = ev.SCALE_LOG if p.log else ev.SCALE_LINEAR
            if p.kind == "continuous":
                r.continuous.CopyFrom(ev.ContinuousRange(min=p.min, max=p.max, scale=scale))
            elif p.kind == "integer":
                r.integer.CopyFrom(ev.IntegerRange(min=int(p.min), max=int(p.max), scale=scale))
            else:
                r.categorical.values.extend(p.values)
    return message


def _ts(moment: datetime | None, target: Timestamp) -> None:
    if moment is not None:
        target.FromDatetime(moment)


def job_to_pb(job: Job) -> pb.Job:
    """Domain → Job."""
    r = job.result
    message = pb.Job(
        job_id=job.job_id,
        kind=kind_to_pb(job.kind),
        experiment=job.experiment,
        spec=spec_to_pb(job.spec),
        actor=common_pb2.Actor(name=job.actor),
        status=status_to_pb(job.status),
        reason=job.reason,
        parent_job_id=job.parent_job_id,
        attempts=job.attempts,
        trainer_id=job.trainer_id,
        metrics=r.metrics,
        model_group=r.model_group,
        model_version=r.model_version,
        dataset_sha256=r.dataset_sha256,
        code_version=r.code_version,
        hyperparameters=r.hyperparameters or job.spec.hyperparameters,
    )
    _ts(job.create_time, message.create_time)
    _ts(job.start_time, message.start_time)
    _ts(job.end_time, message.end_time)
    message.duration.CopyFrom(Duration(seconds=0))
    message.duration.FromNanoseconds(int(job.duration_s() * 1e9))
    for name, values in sorted(r.history.items()):
        message.history.add(name=name, values=values)
    for name, ref in sorted(r.artifacts.items()):
        message.artifacts.add(
            name=name,
            ref=common_pb2.ObjectRef(
                uri=ref.uri, sha256=ref.sha256, size_bytes=ref.size, content_type=ref.content_type
            ),
        )
    if r.tuning is not None:
        message.tuning.CopyFrom(
            pb.TuningProgress(
                trials_total=r.tuning.trials_total,
                trials_completed=r.tuning.trials_completed,
                trials_failed=r.tuning.trials_failed,
                trials_pruned=r.tuning.trials_pruned,
                best_trial_job_id=r.tuning.best_trial_job_id,
                best_objective=r.tuning.best_objective or 0.0,
            )
        )
    return message


def submission(job_id: str, kind: int, experiment: str, spec: ev.JobSpec, actor: str) -> Submission:
    """A SubmitJobRequest or JobRequested as a domain submission."""
    return Submission(
        job_id=job_id,
        kind=kind_to_domain(kind),
        experiment=experiment,
        spec=spec_to_domain(spec),
        actor=actor,
    )


def job_requested(job: Job) -> ev.JobRequested:
    """The JobRequested event of a job (what SubmitJob publishes)."""
    message = ev.JobRequested(
        job_id=job.job_id,
        kind=kind_to_pb(job.kind),
        experiment=job.experiment,
        spec=spec_to_pb(job.spec),
        actor=common_pb2.Actor(name=job.actor),
    )
    message.request_time.FromDatetime(job.create_time)
    return message


def status_changed(change: StatusChange) -> ev.JobStatusChanged:
    """A StatusChange as the event on the status topic."""
    message = ev.JobStatusChanged(
        job_id=change.job_id,
        kind=kind_to_pb(change.kind),
        status=status_to_pb(change.status),
        reason=change.reason,
        model_version=change.model_version,
        model_group=change.model_group,
        experiment=change.experiment,
        parent_job_id=change.parent_job_id,
        metrics=change.metrics,
    )
    _ts(change.change_time, message.change_time)
    _ts(change.start_time, message.start_time)
    _ts(change.end_time, message.end_time)
    return message


def log_line_to_pb(line: LogLine) -> pb.LogLine:
    """Domain → LogLine."""
    message = pb.LogLine(number=line.number, text=line.text)
    message.time.FromDatetime(line.time)
    return message


def experiment_to_pb(experiment: Experiment) -> pb.Experiment:
    """Domain → Experiment."""
    message = pb.Experiment(name=experiment.name, run_count=experiment.run_count)
    _ts(experiment.last_run_time, message.last_run_time)
    return message
