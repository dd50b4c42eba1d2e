"""Checks a job request passes before it is accepted; errors name the field and what was
expected."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Final

from mlbus.core.errors import InvalidArgument
from mlbus.trainer.domain import algorithms
from mlbus.trainer.domain.models import JobKind, JobSpec, Limits, TuningSpec

JOB_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
EXPERIMENT: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
GROUP_NAME: Final = re.compile(r"[a-z][a-z0-9-]{0,62}")
PARAMETER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
DEFAULT_EXPERIMENT: Final = "default"
DEFAULT_VALIDATION_FRACTION: Final = 0.2
MAX_TRIALS: Final = 1000


@dataclass(frozen=True, slots=True)
class LimitPolicy:
    """The trainer's defaults and ceilings for job limits."""

    default_runtime_s: float
    max_runtime_s: float
    default_memory_bytes: int
    max_memory_bytes: int


def _bad(field: str, message: str) -> InvalidArgument:
    return InvalidArgument(f"{field}: {message}", details={"field": field})


def check_job_id(job_id: str, field: str = "job_id") -> str:
    """A job id: 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit."""
    if not JOB_ID.fullmatch(job_id):
        raise _bad(
            field,
            f"expected 1-128 letters, digits, '.', '_' or '-' starting with a letter or "
            f"digit, got {job_id!r}",
        )
    return job_id


def check_experiment(name: str) -> str:
    """An experiment name (same form as a job id); empty means ``default``."""
    if not name:
        return DEFAULT_EXPERIMENT
    if not EXPERIMENT.fullmatch(name):
        raise _bad(
            "experiment",
            f"expected 1-128 letters, digits, '.', '_' or '-' starting with a letter or "
            f"digit, got {name!r}",
        )
    return name


def resolve_limits(limits: Limits, policy: LimitPolicy) -> Limits:
    """``limits`` with defaults filled in; InvalidArgument past the ceilings."""
    runtime = limits.max_runtime_s or policy.default_runtime_s
    memory = limits.max_memory_bytes or policy.default_memory_bytes
    if not math.isfinite(runtime) or runtime <= 0 or runtime > policy.max_runtime_s:
        raise _bad(
            "spec.limits.max_runtime",
            f"expected more than 0 and at most {policy.max_runtime_s:g}s, got {runtime:g}s",
        )
    if memory < 0 or memory > policy.max_memory_bytes:
        raise _bad(
            "spec.limits.max_memory_bytes",
            f"expected at most {policy.max_memory_bytes} bytes, got {memory}",
        )
    return Limits(max_runtime_s=runtime, max_memory_bytes=memory)


def _check_training_fields(spec: JobSpec, *, tuning: bool) -> None:
    if not spec.algorithm:
        raise _bad("spec.algorithm", f"required; one of {', '.join(algorithms.names())}")
    if spec.algorithm == algorithms.CUSTOM:
        if not spec.script_uri:
            raise _bad(
                "spec.script_uri",
                "required for algorithm 'custom': a Python file exposing "
                "train(data, hyperparameters) -> estimator",
            )
    elif algorithms.find(spec.algorithm) is None:
        raise _bad(
            "spec.algorithm",
            f"unknown algorithm {spec.algorithm!r}; expected one of "
            f"{', '.join(algorithms.names())}",
        )
    if not spec.input_uri:
        raise _bad("spec.input_uri", "required: a CSV or Parquet file (path or URI)")
    if not spec.target_column:
        raise _bad("spec.target_column", "required: the label column of the input data")
    fraction = spec.validation_fraction
    if not (0.0 <= fraction < 1.0) or not math.isfinite(fraction):
        raise _bad("spec.validation_fraction", f"expected 0 <= fraction < 1, got {fraction}")
    if spec.model_group and not GROUP_NAME.fullmatch(spec.model_group):
        raise _bad(
            "spec.model_group",
            "expected 1-63 lower-case letters, digits or '-' starting with a letter, got "
            f"{spec.model_group!r}",
        )
    for name in spec.hyperparameters:
        if not PARAMETER.fullmatch(name):
            raise _bad(
                f"spec.hyperparameters[{name!r}]", "expected a Python identifier as the name"
            )
    if tuning:
        if spec.tuning is None:
            raise _bad("spec.tuning", "required for a tuning job")
        check_tuning(spec.tuning)


def check_tuning(tuning: TuningSpec) -> None:
    """A tuning search: ranges, objective and trial counts."""
    if not tuning.parameters:
        raise _bad("spec.tuning.parameters", "expected at least one range")
    seen: set[str] = set()
    for index, p in enumerate(tuning.parameters):
        field = f"spec.tuning.parameters[{index}]"
        if not PARAMETER.fullmatch(p.name):
            raise _bad(f"{field}.name", f"expected a Python identifier, got {p.name!r}")
        if p.name in seen:
            raise _bad(f"{field}.name", f"{p.name!r} given twice")
        seen.add(p.name)
        if p.kind == "categorical":
            if not p.values:
                raise _bad(f"{field}.categorical", "expected at least one value")
            continue
        if not (math.isfinite(p.min) and math.isfinite(p.max)) or p.min >= p.max:
            raise _bad(field, f"expected min < max, got [{p.min:g}, {p.max:g}]")
        if p.log and p.min <= 0:
            raise _bad(field, f"log scale needs min > 0, got {p.min:g}")
        if p.kind == "integer" and (p.min != int(p.min) or p.max != int(p.max)):
            raise _bad(field, "integer range bounds must be whole numbers")
    if tuning.objective_metric not in algorithms.ALL_METRICS:
        raise _bad(
            "spec.tuning.objective_metric",
            f"expected one of {', '.join(algorithms.ALL_METRICS)}, got {tuning.objective_metric!r}",
        )
    if not (1 <= tuning.max_jobs <= MAX_TRIALS):
        raise _bad("spec.tuning.max_jobs", f"expected 1 to {MAX_TRIALS}, got {tuning.max_jobs}")
    if not (1 <= tuning.max_parallel_jobs <= tuning.max_jobs):
        raise _bad(
            "spec.tuning.max_parallel_jobs",
            f"expected 1 to max_jobs ({tuning.max_jobs}), got {tuning.max_parallel_jobs}",
        )
    if not (2 <= tuning.grid_points <= 100):
        raise _bad("spec.tuning.grid_points", f"expected 2 to 100, got {tuning.grid_points}")


def check_spec(kind: JobKind, spec: JobSpec, policy: LimitPolicy) -> JobSpec:
    """The spec of a new job, checked, with limits and defaults filled in."""
    if kind == JobKind.PROCESSING:
        if not spec.script_uri:
            raise _bad(
                "spec.script_uri",
                "required for a processing job: a Python file exposing "
                "process(input_path, output_dir, arguments)",
            )
        if not spec.input_uri:
            raise _bad("spec.input_uri", "required: the file the script processes")
        if not spec.output_uri:
            raise _bad("spec.output_uri", "required: where the script's output files go")
    else:
        _check_training_fields(spec, tuning=kind == JobKind.TUNING)
    updates: dict[str, object] = {"limits": resolve_limits(spec.limits, policy)}
    if kind != JobKind.PROCESSING and not spec.validation_fraction and not spec.validation_uri:
        updates["validation_fraction"] = DEFAULT_VALIDATION_FRACTION
    return spec.model_copy(update=updates)
