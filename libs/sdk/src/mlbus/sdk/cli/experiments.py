"""``mlbus experiments``: runs side by side, sorted by a metric, optionally plotted."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Column, Table

from mlbus.sdk.cli._common import RegistryGroup, console, echo_json
from mlbus.sdk.cli.jobs import TrainerOptions, trainer_options
from mlbus.sdk.trainer import job_to_dict
from mlbus.sdk.trainer.client import status_name
from mlbus.trainer.v1 import trainer_pb2 as pb


@click.group(cls=RegistryGroup)
def experiments() -> None:
    """Experiments and their runs."""


@experiments.command("list")
@trainer_options
def list_experiments(opts: TrainerOptions) -> None:
    """Experiments with their run counts."""
    with opts.client() as client:
        found = client.experiments()
    if opts.as_json:
        echo_json(
            [
                {
                    "name": e.name,
                    "run_count": e.run_count,
                    "last_run_time": e.last_run_time.ToJsonString(),
                }
                for e in found
            ]
        )
        return
    table = Table("experiment", "runs", "last run")
    for e in found:
        table.add_row(escape(e.name), str(e.run_count), e.last_run_time.ToJsonString())
    console.print(table)


def plot(runs: list[pb.Job], metric: str, path: Path) -> None:
    """A PNG of ``metric``: per iteration for runs that recorded it, else one bar per run."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise click.ClickException("--plot needs matplotlib (pip install matplotlib)") from None
    series = {
        r.job_id: list(h.values)
        for r in runs
        for h in r.history
        if h.name == f"validation_{metric}"
    }
    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=100)
    if series:
        for job_id, values in series.items():
            axes.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=job_id)
        axes.set_xlabel("iteration")
        axes.legend(fontsize="small")
    else:
        names = [r.job_id for r in runs if metric in r.metrics]
        axes.bar(range(len(names)), [r.metrics[metric] for r in runs if metric in r.metrics])
        axes.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize="small")
    axes.set_ylabel(metric)
    axes.set_title(f"{metric} across runs")
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)


@experiments.command()
@click.argument("experiment")
@click.option("--metric", "-m", default="", help="Sort by this validation metric (largest first).")
@click.option("--ascending", is_flag=True, help="Smallest first (error metrics).")
@click.option("--limit", type=click.IntRange(min=1), default=None)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write a PNG of --metric across the runs.",
)
@trainer_options
def compare(
    opts: TrainerOptions,
    experiment: str,
    metric: str,
    ascending: bool,
    limit: int | None,
    plot_path: Path | None,
) -> None:
    """Show the runs of EXPERIMENT side by side: parameters, metrics, duration."""
    if plot_path is not None and not metric:
        raise click.UsageError("--plot needs --metric")
    with opts.client() as client:
        runs = client.runs(experiment, order_by=metric, ascending=ascending, limit=limit or 0)
    if plot_path is not None:
        plot(runs, metric, plot_path)
    if opts.as_json:
        echo_json([job_to_dict(r) for r in runs])
        return
    metric_names = sorted({m for r in runs for m in r.metrics if m not in ("fit_seconds",)})
    if metric in metric_names:
        metric_names.remove(metric)
        metric_names.insert(0, metric)
    params = sorted({p for r in runs for p in r.hyperparameters})
    # Run ids are what people copy: never cut, whatever the terminal's width.
    run_column = Column(
        "run", no_wrap=True, min_width=max((len(r.job_id) for r in runs), default=3)
    )
    table = Table(run_column, "status", "algorithm", *params, *metric_names, "duration")
    for r in runs:
        table.add_row(
            escape(r.job_id),
            status_name(r.status),
            escape(r.spec.algorithm),
            *(escape(r.hyperparameters.get(p, "")) for p in params),
            *(f"{r.metrics[m]:.4g}" if m in r.metrics else "" for m in metric_names),
            f"{r.duration.ToTimedelta().total_seconds():.1f}s",
        )
    console.print(table)
    if plot_path is not None:
        console.print(f"plot written to {escape(str(plot_path))}")
