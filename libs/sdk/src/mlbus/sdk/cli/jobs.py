"""``mlbus jobs``: training, processing and tuning jobs on the trainer."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from mlbus.sdk.cli._common import RegistryGroup, console, echo_json, err_console, key_values
from mlbus.sdk.defaults import ACTOR_ENV, default_actor
from mlbus.sdk.trainer import (
    DEFAULT_TRAINER,
    TRAINER_ENV,
    TrainerClient,
    job_to_dict,
    processing_spec,
    training_spec,
    tuning_spec,
)
from mlbus.sdk.trainer.client import STATUSES, TERMINAL, kind_name, status_name
from mlbus.trainer.v1 import events_pb2 as ev
from mlbus.trainer.v1 import trainer_pb2 as pb

MIB = 1024 * 1024
#: Exit status of ``--wait`` when the job FAILED or was STOPPED.
EXIT_JOB_FAILED = 12


@dataclass(frozen=True)
class TrainerOptions:
    """The options every trainer command takes."""

    trainer: str
    actor: str
    timeout: float
    as_json: bool

    def client(self) -> TrainerClient:
        """A client for these options."""
        return TrainerClient(self.trainer, actor=self.actor, timeout=self.timeout)


def trainer_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--trainer``, ``--actor``, ``--timeout`` and ``--json``."""

    @click.option(
        "--trainer",
        envvar=TRAINER_ENV,
        default=DEFAULT_TRAINER,
        show_default=f"${TRAINER_ENV} or {DEFAULT_TRAINER}",
        metavar="HOST:PORT",
        help="Address of the trainer.",
    )
    @click.option(
        "--actor", envvar=ACTOR_ENV, default=None, help="Who acts (the model's registrant)."
    )
    @click.option(
        "--timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=30.0,
        show_default=True,
        help="Seconds per call.",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
    @functools.wraps(command)
    def wrapper(
        trainer: str, actor: str | None, timeout: float, as_json: bool, **kwargs: Any
    ) -> Any:
        return command(
            TrainerOptions(trainer, actor or default_actor(), timeout, as_json), **kwargs
        )

    return wrapper


def _limits(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "--max-runtime",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        help="Wall-clock limit in seconds.",
    )(func)
    func = click.option(
        "--max-memory-mb", type=click.IntRange(min=64), default=None, help="Memory limit in MiB."
    )(func)
    func = click.option("--experiment", "-e", default="", help="Experiment the runs belong to.")(
        func
    )
    func = click.option(
        "--job-id", default="", help="Job id (idempotency key); default: a new one."
    )(func)
    func = click.option(
        "--wait",
        "wait_for_end",
        is_flag=True,
        help="Follow the job (status and logs) until it ends.",
    )(func)
    return func


def _training_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.option("--target", "-t", required=True, help="Label column."),
            click.option(
                "--algorithm",
                "-a",
                required=True,
                help="Built-in name (e.g. random-forest-classifier) or 'custom' with --script.",
            ),
            click.option(
                "--hp",
                "hyperparameters",
                multiple=True,
                callback=key_values,
                metavar="KEY=VALUE",
                help="Hyperparameter; repeatable.",
            ),
            click.option(
                "--validation",
                default="",
                help="Validation file; default: hold out --validation-fraction.",
            ),
            click.option(
                "--validation-fraction",
                type=click.FloatRange(0, 1, max_open=True),
                default=0.0,
                help="Share held out (default 0.2).",
            ),
            click.option(
                "--model-group", "-g", default="", help="Register the model in this group."
            ),
            click.option(
                "--script", default="", help="Python file with train(data, hyperparameters)."
            ),
            click.option(
                "--seed", type=int, default=0, help="Seed of the split and the algorithm."
            ),
        ]
    ):
        func = option(func)
    return func


def _row(job: pb.Job) -> list[str]:
    metrics = ", ".join(
        f"{k}={v:.4g}" for k, v in sorted(job.metrics.items()) if k != "fit_seconds"
    )
    registered = f"{job.model_group}/{job.model_version}" if job.model_version else ""
    return [
        job.job_id,
        kind_name(job.kind).lower(),
        status_name(job.status),
        job.experiment,
        f"{job.duration.ToTimedelta().total_seconds():.1f}s",
        registered,
        metrics[:80],
    ]


def _show(job: pb.Job, opts: TrainerOptions) -> None:
    if opts.as_json:
        echo_json(job_to_dict(job))
        return
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for key, value in (
        ("job", job.job_id),
        ("kind", kind_name(job.kind).lower()),
        ("status", status_name(job.status)),
        ("reason", job.reason),
        ("experiment", job.experiment),
        ("algorithm", job.spec.algorithm),
        ("input", job.spec.input_uri),
        ("attempts", str(job.attempts)),
        ("trainer", job.trainer_id),
        ("duration", f"{job.duration.ToTimedelta().total_seconds():.1f}s"),
        ("model", f"{job.model_group}/{job.model_version}" if job.model_version else ""),
        ("code version", job.code_version),
        ("dataset sha256", job.dataset_sha256),
    ):
        if value:
            table.add_row(key, escape(value))
    for name, number in sorted(job.metrics.items()):
        table.add_row(f"metric {name}", f"{number:.6g}")
    for name, text in sorted(job.hyperparameters.items()):
        table.add_row(f"param {name}", escape(text))
    if job.HasField("tuning"):
        t = job.tuning
        table.add_row(
            "trials",
            f"{t.trials_completed} completed, {t.trials_failed} failed, {t.trials_pruned} stopped early of {t.trials_total}; best {t.best_trial_job_id} ({t.best_objective:.6g})",
        )
    for artifact in job.artifacts:
        table.add_row(f"artifact {artifact.name}", escape(artifact.ref.uri))
    console.print(table)


def _follow(client: TrainerClient, job: pb.Job, opts: TrainerOptions) -> None:
    """Stream the job's logs with a live status line until it ends; exit non-zero unless
    it COMPLETED."""
    live = Live(console=err_console, transient=True, auto_refresh=False, redirect_stdout=False)
    show_live = err_console.is_terminal and not opts.as_json
    if show_live:
        live.start()
    try:
        for line in client.logs(job.job_id, follow=True):
            if not opts.as_json:
                console.print(escape(line.text), highlight=False)
            if show_live:
                current = client.describe(job.job_id)
                live.update(
                    f"[bold]{job.job_id}[/] {status_name(current.status)} · line {line.number}",
                    refresh=True,
                )
    finally:
        if show_live:
            live.stop()
    final = client.wait(job.job_id)
    _show(final, opts)
    if final.status != ev.JOB_STATUS_COMPLETED:
        raise click.exceptions.Exit(EXIT_JOB_FAILED)


def _submitted(
    opts: TrainerOptions,
    kind: str,
    spec: ev.JobSpec,
    experiment: str,
    job_id: str,
    wait_for_end: bool,
) -> None:
    with opts.client() as client:
        job = client.submit(kind, spec, experiment=experiment, job_id=job_id)
        if wait_for_end:
            if not opts.as_json:
                err_console.print(f"submitted {kind} job [bold]{job.job_id}[/]")
            _follow(client, job, opts)
        elif opts.as_json:
            echo_json(job_to_dict(job))
        else:
            console.print(
                f"submitted {kind} job [bold]{escape(job.job_id)}[/] ({status_name(job.status)})"
            )


@click.group(cls=RegistryGroup)
def jobs() -> None:
    """Training, processing and tuning jobs: submit, follow, stop."""


@jobs.command()
@click.argument("input_uri", metavar="INPUT")
@_training_options
@_limits
@trainer_options
def train(
    opts: TrainerOptions,
    input_uri: str,
    target: str,
    algorithm: str,
    hyperparameters: dict[str, str],
    validation: str,
    validation_fraction: float,
    model_group: str,
    script: str,
    seed: int,
    max_runtime: float | None,
    max_memory_mb: int | None,
    experiment: str,
    job_id: str,
    wait_for_end: bool,
) -> None:
    """Train a model on INPUT (CSV or Parquet, path or URI), export it to ONNX with a parity
    check, and register it (--model-group)."""
    spec = training_spec(
        input_uri,
        target=target,
        algorithm=algorithm,
        hyperparameters=hyperparameters,
        validation_uri=validation,
        validation_fraction=validation_fraction,
        model_group=model_group,
        script=script,
        seed=seed,
        max_runtime_s=max_runtime,
        max_memory_bytes=max_memory_mb * MIB if max_memory_mb else None,
    )
    _submitted(opts, "training", spec, experiment, job_id, wait_for_end)


jobs.add_command(train, "submit")


@jobs.command()
@click.argument("input_uri", metavar="INPUT")
@click.option(
    "--script", required=True, help="Python file with process(input_path, output_dir, arguments)."
)
@click.option(
    "--output", "output_uri", required=True, help="Where the output files go (directory or URI)."
)
@click.option(
    "--arg",
    "arguments",
    multiple=True,
    callback=key_values,
    metavar="KEY=VALUE",
    help="Argument; repeatable.",
)
@_limits
@trainer_options
def process(
    opts: TrainerOptions,
    input_uri: str,
    script: str,
    output_uri: str,
    arguments: dict[str, str],
    max_runtime: float | None,
    max_memory_mb: int | None,
    experiment: str,
    job_id: str,
    wait_for_end: bool,
) -> None:
    """Run a processing script over INPUT into --output."""
    spec = processing_spec(
        input_uri,
        script=script,
        output_uri=output_uri,
        arguments=arguments,
        max_runtime_s=max_runtime,
        max_memory_bytes=max_memory_mb * MIB if max_memory_mb else None,
    )
    _submitted(opts, "processing", spec, experiment, job_id, wait_for_end)


@jobs.command()
@click.argument("input_uri", metavar="INPUT")
@_training_options
@click.option(
    "--param",
    "parameters",
    multiple=True,
    required=True,
    metavar="NAME=TYPE:...",
    help="Range: NAME=int:MIN:MAX[:log], NAME=float:MIN:MAX[:log], NAME=cat:A,B; repeatable.",
)
@click.option("--objective", required=True, help="Validation metric to optimise (auc, rmse, ...).")
@click.option(
    "--direction",
    type=click.Choice(["maximize", "minimize"]),
    default=None,
    help="Default: minimise rmse/mae/log_loss, maximise others.",
)
@click.option(
    "--strategy",
    type=click.Choice(["random", "grid", "bayesian"]),
    default="random",
    show_default=True,
)
@click.option("--max-jobs", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--max-parallel", type=click.IntRange(1, 100), default=1, show_default=True)
@click.option(
    "--early-stopping",
    is_flag=True,
    help="Stop trials worse than the median at the same iteration.",
)
@_limits
@trainer_options
def tune(
    opts: TrainerOptions,
    input_uri: str,
    target: str,
    algorithm: str,
    hyperparameters: dict[str, str],
    validation: str,
    validation_fraction: float,
    model_group: str,
    script: str,
    seed: int,
    parameters: tuple[str, ...],
    objective: str,
    direction: str | None,
    strategy: str,
    max_jobs: int,
    max_parallel: int,
    early_stopping: bool,
    max_runtime: float | None,
    max_memory_mb: int | None,
    experiment: str,
    job_id: str,
    wait_for_end: bool,
) -> None:
    """Search hyperparameters on INPUT; every trial is a run; the best is registered."""
    base = training_spec(
        input_uri,
        target=target,
        algorithm=algorithm,
        hyperparameters=hyperparameters,
        validation_uri=validation,
        validation_fraction=validation_fraction,
        model_group=model_group,
        script=script,
        seed=seed,
        max_runtime_s=max_runtime,
        max_memory_bytes=max_memory_mb * MIB if max_memory_mb else None,
    )
    spec = tuning_spec(
        base,
        parameters=parameters,
        objective=objective,
        direction=direction or "",
        strategy=strategy,
        max_jobs=max_jobs,
        max_parallel_jobs=max_parallel,
        early_stopping=early_stopping,
    )
    _submitted(opts, "tuning", spec, experiment, job_id, wait_for_end)


@jobs.command()
@click.argument("job_id")
@trainer_options
def describe(opts: TrainerOptions, job_id: str) -> None:
    """Show a job: status, reason, metrics, artifacts, registered model."""
    with opts.client() as client:
        _show(client.describe(job_id), opts)


@jobs.command("list")
@click.option("--experiment", "-e", default="")
@click.option("--status", type=click.Choice(sorted(STATUSES)), default=None)
@click.option("--kind", type=click.Choice(["training", "processing", "tuning"]), default=None)
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@trainer_options
def list_jobs(
    opts: TrainerOptions, experiment: str, status: str | None, kind: str | None, limit: int
) -> None:
    """List jobs, newest first."""
    with opts.client() as client:
        found = list(
            client.list_jobs(
                experiment=experiment, status=status or "", kind=kind or "", limit=limit
            )
        )
    if opts.as_json:
        echo_json([job_to_dict(j) for j in found])
        return
    table = Table("job", "kind", "status", "experiment", "duration", "model", "metrics")
    for job in found:
        table.add_row(*(escape(c) for c in _row(job)))
    console.print(table)


@jobs.command()
@click.argument("job_id")
@click.option("--reason", default="", help="Why; recorded with the job.")
@trainer_options
def stop(opts: TrainerOptions, job_id: str, reason: str) -> None:
    """Stop a job: a pending one at once, a running one by SIGTERM (SIGKILL after the grace period)."""
    with opts.client() as client:
        job = client.stop(job_id, reason)
    if opts.as_json:
        echo_json(job_to_dict(job))
    else:
        console.print(
            f"stop requested for [bold]{escape(job.job_id)}[/] ({status_name(job.status)})"
        )


@jobs.command()
@click.argument("job_id")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until the job ends.")
@trainer_options
def logs(opts: TrainerOptions, job_id: str, follow: bool) -> None:
    """Print a job's log lines."""
    with opts.client() as client:
        for line in client.logs(job_id, follow=follow):
            if opts.as_json:
                click.echo(f'{{"number": {line.number}, "text": {escape_json(line.text)}}}')
            else:
                sys.stdout.write(line.text + "\n")
                sys.stdout.flush()


def escape_json(text: str) -> str:
    """``text`` as a JSON string."""
    import json

    return json.dumps(text)


__all__ = ["TERMINAL", "jobs", "trainer_options"]
