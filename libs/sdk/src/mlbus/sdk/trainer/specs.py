"""Building JobSpec messages from plain arguments (what the CLI options give)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from mlbus.sdk.registry import SpecError
from mlbus.trainer.v1 import events_pb2 as ev

_STRATEGIES = {
    "random": ev.SEARCH_STRATEGY_RANDOM,
    "grid": ev.SEARCH_STRATEGY_GRID,
    "bayesian": ev.SEARCH_STRATEGY_BAYESIAN,
}
_DIRECTIONS = {
    "": ev.OBJECTIVE_DIRECTION_UNSPECIFIED,
    "maximize": ev.OBJECTIVE_DIRECTION_MAXIMIZE,
    "minimize": ev.OBJECTIVE_DIRECTION_MINIMIZE,
}


def location(value: str) -> str:
    """A URI as given; a local path made absolute (the trainer may run elsewhere)."""
    if not value or "://" in value:
        return value
    return str(Path(value).expanduser().resolve())


def _limits(spec: ev.JobSpec, max_runtime_s: float | None, max_memory_bytes: int | None) -> None:
    if max_runtime_s:
        spec.limits.max_runtime.FromMilliseconds(int(max_runtime_s * 1000))
    if max_memory_bytes:
        spec.limits.max_memory_bytes = max_memory_bytes


def training_spec(
    input_uri: str,
    *,
    target: str,
    algorithm: str,
    hyperparameters: Mapping[str, object] | None = None,
    validation_uri: str = "",
    validation_fraction: float = 0.0,
    model_group: str = "",
    script: str = "",
    seed: int = 0,
    max_runtime_s: float | None = None,
    max_memory_bytes: int | None = None,
) -> ev.JobSpec:
    """The spec of a training job (``algorithm="custom"`` with ``script`` for your own
    ``train(data, hyperparameters)``)."""
    spec = ev.JobSpec(
        algorithm=algorithm,
        hyperparameters={k: str(v) for k, v in (hyperparameters or {}).items()},
        input_uri=location(input_uri),
        validation_uri=location(validation_uri),
        validation_fraction=validation_fraction,
        target_column=target,
        model_group=model_group,
        script_uri=location(script),
        seed=seed,
    )
    _limits(spec, max_runtime_s, max_memory_bytes)
    return spec


def processing_spec(
    input_uri: str,
    *,
    script: str,
    output_uri: str,
    arguments: Mapping[str, object] | None = None,
    max_runtime_s: float | None = None,
    max_memory_bytes: int | None = None,
) -> ev.JobSpec:
    """The spec of a processing job: ``process(input_path, output_dir, arguments)`` of
    ``script`` over ``input_uri``; its files go to ``output_uri``."""
    spec = ev.JobSpec(
        input_uri=location(input_uri),
        script_uri=location(script),
        output_uri=location(output_uri),
        hyperparameters={k: str(v) for k, v in (arguments or {}).items()},
    )
    _limits(spec, max_runtime_s, max_memory_bytes)
    return spec


def parse_range(text: str) -> ev.ParameterRange:
    """``name=int:1:10``, ``name=float:0.001:1:log`` or ``name=cat:a,b,c`` as a range."""
    name, sep, rest = text.partition("=")
    parts = rest.split(":")
    if not sep or not name or len(parts) < 2:
        raise SpecError(
            f"--param {text!r}: expected NAME=int:MIN:MAX[:log], NAME=float:MIN:MAX[:log] "
            "or NAME=cat:A,B,..."
        )
    kind = parts[0]
    message = ev.ParameterRange(name=name.strip())
    try:
        if kind == "cat":
            message.categorical.values.extend(v.strip() for v in ":".join(parts[1:]).split(","))
            return message
        if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] not in ("log", "linear")):
            raise ValueError("expected MIN:MAX[:log]")
        scale = ev.SCALE_LOG if len(parts) == 4 and parts[3] == "log" else ev.SCALE_LINEAR
        if kind == "int":
            message.integer.CopyFrom(
                ev.IntegerRange(min=int(parts[1]), max=int(parts[2]), scale=scale)
            )
        elif kind == "float":
            message.continuous.CopyFrom(
                ev.ContinuousRange(min=float(parts[1]), max=float(parts[2]), scale=scale)
            )
        else:
            raise ValueError(f"unknown type {kind!r} (int, float or cat)")
    except ValueError as exc:
        raise SpecError(f"--param {text!r}: {exc}") from None
    return message


def tuning_spec(
    base: ev.JobSpec,
    *,
    parameters: Sequence[str | ev.ParameterRange],
    objective: str,
    direction: str = "",
    strategy: str = "random",
    max_jobs: int = 10,
    max_parallel_jobs: int = 1,
    early_stopping: bool = False,
    grid_points: int = 0,
) -> ev.JobSpec:
    """``base`` (a training spec) with a search over ``parameters``."""
    spec = ev.JobSpec()
    spec.CopyFrom(base)
    if strategy not in _STRATEGIES:
        raise SpecError(f"strategy {strategy!r}: expected random, grid or bayesian")
    if direction not in _DIRECTIONS:
        raise SpecError(f"direction {direction!r}: expected maximize or minimize")
    tuning = spec.tuning
    tuning.strategy = _STRATEGIES[strategy]
    tuning.objective_metric = objective
    tuning.direction = _DIRECTIONS[direction]
    tuning.max_jobs = max_jobs
    tuning.max_parallel_jobs = max_parallel_jobs
    tuning.early_stopping = early_stopping
    tuning.grid_points = grid_points
    for p in parameters:
        tuning.parameters.append(parse_range(p) if isinstance(p, str) else p)
    return spec
