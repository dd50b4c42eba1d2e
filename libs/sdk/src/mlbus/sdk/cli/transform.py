"""``mlbus transform``: batch transform jobs (start with a progress bar, describe, list,
stop)."""

from __future__ import annotations

from typing import Any

import click
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from mlbus.sdk.cli._common import RegistryCommand, RegistryGroup, console, echo_json, router_option


def _json(job: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(job)


def _show(job: Any) -> None:
    table = Table(show_header=False, show_edge=False)
    for key, value in (
        ("job", job.job_id),
        ("endpoint", job.endpoint),
        ("status", job.status),
        (
            "records",
            f"{job.records_done:,} of {job.records_total:,} ({job.records_failed:,} failed)",
        ),
        ("chunks", f"{job.chunks_done} of {job.chunks_total}"),
        ("throughput", f"{job.records_per_second:,.0f} records/s"),
        ("reason", job.reason or "-"),
        ("outputs", "\n".join(job.outputs) or "-"),
        ("error files", "\n".join(job.error_files) or "-"),
    ):
        table.add_row(key, value)
    console.print(table)


@click.group(cls=RegistryGroup, invoke_without_command=False)
def transform() -> None:
    """Batch transform jobs: run an endpoint's model over files in the object store."""


@transform.command("start", cls=RegistryCommand)
@click.argument("endpoint")
@click.argument("input_uri")
@click.argument("output_uri")
@router_option
@click.option(
    "--content-type",
    default="",
    help="text/csv, application/jsonlines or application/x-parquet (default: from the suffix).",
)
@click.option("--split", type=click.Choice(["line", "none"]), default="line", show_default=True)
@click.option(
    "--strategy",
    type=click.Choice(["multi_record", "single_record"]),
    default="multi_record",
    show_default=True,
)
@click.option(
    "--max-payload-mb",
    type=float,
    default=0.0,
    help="MULTI_RECORD: largest payload per inference (default 6).",
)
@click.option(
    "--max-records-per-batch",
    type=int,
    default=0,
    help="MULTI_RECORD: most records per inference (default 1000).",
)
@click.option(
    "--records-per-chunk",
    type=int,
    default=0,
    help="Records per unit of work (default: chunks of about 8 MiB).",
)
@click.option("--no-header", is_flag=True, help="CSV files have no header row.")
@click.option(
    "--input-filter", default="", help="Columns (names or indexes) or a JSONPath feeding the model."
)
@click.option(
    "--join-input", is_flag=True, help="Output rows are the input row plus the prediction."
)
@click.option(
    "--output-filter", default="", help="Columns or a JSONPath of the output row to keep."
)
@click.option(
    "--max-failure-percent",
    type=click.FloatRange(0, 100),
    default=None,
    help="Fail the job above this share of failed records.",
)
@click.option("--id", "job_id", default="", help="Job id (default generated).")
@click.option("--wait", is_flag=True, help="Follow the job with a progress bar until it ends.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def start(
    endpoint: str,
    input_uri: str,
    output_uri: str,
    router: str,
    content_type: str,
    split: str,
    strategy: str,
    max_payload_mb: float,
    max_records_per_batch: int,
    records_per_chunk: int,
    no_header: bool,
    input_filter: str,
    join_input: bool,
    output_filter: str,
    max_failure_percent: float | None,
    job_id: str,
    wait: bool,
    as_json: bool,
) -> None:
    """Transform INPUT_URI (a file or a directory) with ENDPOINT into OUTPUT_URI."""
    from mlbus.sdk.transformer import Transformer

    with Transformer(endpoint, router) as transformer:
        job = transformer.transform(
            input_uri,
            output_uri,
            content_type=content_type,
            split=split,
            strategy=strategy,
            max_payload_mb=max_payload_mb,
            max_records_per_batch=max_records_per_batch,
            records_per_chunk=records_per_chunk,
            csv_header=False if no_header else None,
            input_filter=input_filter,
            join_input=join_input,
            output_filter=output_filter,
            max_failure_percent=max_failure_percent,
            job_id=job_id,
        )
        if wait:
            if as_json:
                job = transformer.wait(job.job_id)
            else:
                with Progress(
                    TextColumn("[bold]{task.description}"),
                    BarColumn(),
                    TaskProgressColumn(),
                    # Not {task.total}: it is None until the split has counted the records.
                    TextColumn("{task.fields[records]}"),
                    TextColumn("{task.fields[rate]}"),
                    TimeRemainingColumn(),
                    console=console,
                    transient=False,
                ) as bar:
                    task = bar.add_task(job.job_id, total=None, rate="", records="")

                    def show(now: Any) -> None:
                        total = now.records_total
                        bar.update(
                            task,
                            completed=now.records_done,
                            total=total or None,
                            description=f"{now.job_id} {now.status.lower()}",
                            rate=f"{now.records_per_second:,.0f}/s",
                            records=(
                                f"{now.records_done:,}/{total:,} records"
                                if total
                                else f"{now.records_done:,} records"
                            ),
                        )

                    job = transformer.wait(job.job_id, progress=show)
    if as_json:
        echo_json(_json(job))
    else:
        _show(job)
    if job.status == "FAILED":
        raise click.exceptions.Exit(1)


@transform.command("describe", cls=RegistryCommand)
@click.argument("job_id")
@router_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def describe(job_id: str, router: str, as_json: bool) -> None:
    """Status and progress of a job."""
    from mlbus.sdk.transformer import Transformer

    with Transformer("", router) as transformer:
        job = transformer.describe(job_id)
    echo_json(_json(job)) if as_json else _show(job)


@transform.command("list", cls=RegistryCommand)
@click.option("--endpoint", default="", help="Only this endpoint's jobs.")
@router_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_jobs(endpoint: str, router: str, as_json: bool) -> None:
    """Jobs, newest first."""
    from mlbus.sdk.transformer import Transformer

    with Transformer(endpoint, router) as transformer:
        jobs = transformer.list()
    if as_json:
        echo_json([_json(j) for j in jobs])
        return
    table = Table()
    for column in ("job", "endpoint", "status", "records", "failed"):
        table.add_column(column)
    for job in jobs:
        table.add_row(
            job.job_id,
            job.endpoint,
            job.status,
            f"{job.records_done:,}/{job.records_total:,}",
            f"{job.records_failed:,}",
        )
    console.print(table)


@transform.command("stop", cls=RegistryCommand)
@click.argument("job_id")
@router_option
@click.option("--reason", default="", help="Why (recorded on the job).")
def stop(job_id: str, router: str, reason: str) -> None:
    """Stop a job (chunks not started are skipped)."""
    from mlbus.sdk.transformer import Transformer

    with Transformer("", router) as transformer:
        job = transformer.stop(job_id, reason)
    console.print(f"{job.job_id}: {job.status}")
