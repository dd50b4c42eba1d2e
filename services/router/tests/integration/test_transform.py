"""Batch transform jobs end to end: the router splits the input into chunks on the batch
topic, the endpoint's worker processes run them, the router assembles the output in input
order; bad records go to the error file; a killed worker loses and duplicates nothing."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest

from mlbus.core import transform as tf
from mlbus.router.v1 import events_pb2 as rev
from mlbus.router.v1 import router_pb2 as rpb
from mlbus.router.v1 import router_pb2_grpc as rpb_grpc

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

DONE = {
    rev.TRANSFORM_JOB_STATUS_COMPLETED,
    rev.TRANSFORM_JOB_STATUS_COMPLETED_WITH_ERRORS,
    rev.TRANSFORM_JOB_STATUS_FAILED,
    rev.TRANSFORM_JOB_STATUS_STOPPED,
}


async def deploy(stack: Any, endpoint: str, seed: int, instances: int = 1) -> None:
    version = await stack.model(endpoint, seed=seed)
    await stack.create(
        endpoint,
        [
            {
                "name": "main",
                "model_group": endpoint,
                "model_version": version,
                "instance_count": instances,
            }
        ],
    )


def prefix_uri(store: Any, prefix: str) -> str:
    """The URI of a key prefix (a "directory")."""
    return str(store.uri_for(prefix + "x"))[:-1]


async def put(stack: Any, key: str, data: bytes) -> str:
    ref = await stack.router.transform.store.put(key, data)
    return str(ref.uri)


async def read(stack: Any, uri: str) -> bytes:
    return bytes(await stack.router.transform.store.read_bytes(uri))


async def until(
    stub: Any, job_id: str, reached: Callable[[Any], bool], what: str, timeout: float
) -> Any:
    """The job as DescribeTransformJob gives it once ``reached`` holds for it."""
    deadline = time.monotonic() + timeout
    while True:
        job = (
            await stub.DescribeTransformJob(
                rpb.DescribeTransformJobRequest(job_id=job_id), timeout=5
            )
        ).job
        if reached(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} not {what} after {timeout}s: {job}")
        await asyncio.sleep(0.05)


async def create(stub: Any, **spec: Any) -> Any:
    """CreateTransformJob with these spec fields; the job as created."""
    request = rpb.CreateTransformJobRequest(spec=rpb.TransformJobSpec(**spec))
    return (await stub.CreateTransformJob(request, timeout=10)).job


async def finished(stub: Any, job_id: str, timeout: float = 120.0) -> Any:
    return await until(stub, job_id, lambda job: job.status in DONE, "done", timeout)


def csv_rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 4)).astype(np.float32)


async def test_csv_job_with_bad_records_completes_with_errors_in_order(
    stack: Any, endpoint_name: str
) -> None:
    await deploy(stack, endpoint_name, seed=41)
    stub = rpb_grpc.RouterServiceStub(stack.channel)
    x = csv_rows(2_500)
    lines = ["a,b,c,d"] + [",".join(repr(float(v)) for v in row) for row in x]
    bad_lines = {10: "1.0,oops,3.0,4.0", 1234: "1.0,2.0,3.0"}  # 1-based input line numbers
    for line_no, text in bad_lines.items():
        lines[line_no - 1] = text
    uri = await put(stack, f"inputs/{endpoint_name}/data.csv", ("\n".join(lines) + "\n").encode())
    created = await stub.CreateTransformJob(
        rpb.CreateTransformJobRequest(
            spec=rpb.TransformJobSpec(
                endpoint=endpoint_name,
                input_uri=uri,
                output_uri=prefix_uri(stack.router.transform.store, f"outputs/{endpoint_name}/"),
                records_per_chunk=400,
                max_records_per_batch=128,
                job_id=f"{endpoint_name}-csv",
            )
        ),
        timeout=10,
    )
    assert created.job.status in (
        rev.TRANSFORM_JOB_STATUS_PENDING,
        rev.TRANSFORM_JOB_STATUS_IN_PROGRESS,
    )
    job = await finished(stub, created.job.job_id)
    assert job.status == rev.TRANSFORM_JOB_STATUS_COMPLETED_WITH_ERRORS, job.reason
    assert job.records_total == 2_500
    assert job.records_done == 2_500
    assert job.records_failed == 2
    assert job.chunks_total == 7
    assert job.outputs[0].uri.endswith(f"outputs/{endpoint_name}/data.csv.out")
    out_lines = (await read(stack, job.outputs[0].uri)).decode().splitlines()
    good = [i for i in range(2_500) if i + 2 not in bad_lines]  # row i is on line i + 2
    assert len(out_lines) == len(good)
    predicted = np.array([float(v) for v in out_lines], dtype=np.float32)
    np.testing.assert_allclose(
        predicted, stack.reference(41, x[good]).ravel(), rtol=1e-4, atol=1e-5
    )
    errors = [
        json.loads(e) for e in (await read(stack, job.error_files[0].uri)).decode().splitlines()
    ]
    assert [(e["file"], e["line"]) for e in errors] == [("data.csv", 10), ("data.csv", 1234)]
    assert "cannot read the record" in errors[0]["error"]
    assert "expected 4 columns (a, b, c, d), got 3" in errors[1]["error"]
    listed = await stub.ListTransformJobs(
        rpb.ListTransformJobsRequest(endpoint=endpoint_name), timeout=5
    )
    assert [j.job_id for j in listed.jobs] == [created.job.job_id]


async def test_jsonl_join_filters_and_max_failure(stack: Any, endpoint_name: str) -> None:
    await deploy(stack, endpoint_name, seed=42)
    stub = rpb_grpc.RouterServiceStub(stack.channel)
    store = stack.router.transform.store
    x = csv_rows(300, seed=1)
    records = [{"id": i, "features": row.tolist()} for i, row in enumerate(x)]
    text = "\n".join(json.dumps(r) for r in records) + "\n"
    uri = await put(stack, f"inputs/{endpoint_name}/part-0.jsonl", text.encode())
    job = (
        await stub.CreateTransformJob(
            rpb.CreateTransformJobRequest(
                spec=rpb.TransformJobSpec(
                    endpoint=endpoint_name,
                    input_uri=uri,
                    output_uri=prefix_uri(store, f"out/{endpoint_name}/"),
                    input_filter="$.features",
                    join_source=rpb.JOIN_SOURCE_INPUT,
                    output_filter="$['id','prediction']",
                    records_per_chunk=100,
                    batch_strategy=rpb.BATCH_STRATEGY_SINGLE_RECORD,
                )
            ),
            timeout=10,
        )
    ).job
    job = await finished(stub, job.job_id)
    assert job.status == rev.TRANSFORM_JOB_STATUS_COMPLETED, job.reason
    rows = [
        json.loads(line) for line in (await read(stack, job.outputs[0].uri)).decode().splitlines()
    ]
    assert [r["id"] for r in rows] == list(range(300))
    assert set(rows[0]) == {"id", "prediction"}
    got = np.array([r["prediction"]["y"] for r in rows], dtype=np.float32)
    np.testing.assert_allclose(got, stack.reference(42, x), rtol=1e-4, atol=1e-5)

    # 10 % bad records against a limit of 5 %: the job fails, saying so.
    broken = [
        json.dumps({"id": i, "features": "nope"}) if i % 10 == 0 else json.dumps(r)
        for i, r in enumerate(records)
    ]
    uri = await put(
        stack, f"inputs/{endpoint_name}/broken.jsonl", ("\n".join(broken) + "\n").encode()
    )
    failed = (
        await stub.CreateTransformJob(
            rpb.CreateTransformJobRequest(
                spec=rpb.TransformJobSpec(
                    endpoint=endpoint_name,
                    input_uri=uri,
                    output_uri=prefix_uri(store, f"out2/{endpoint_name}/"),
                    input_filter="$.features",
                    max_failure_percent=5,
                )
            ),
            timeout=10,
        )
    ).job
    failed = await finished(stub, failed.job_id)
    assert failed.status == rev.TRANSFORM_JOB_STATUS_FAILED
    assert "30 of 300 records failed (10.0%), more than max_failure_percent 5" in failed.reason

    # Split type NONE: a file (here a JSON document over several lines) is one record,
    # which the worker reads from the input itself.
    uri = await put(
        stack,
        f"inputs/{endpoint_name}/one.json",
        json.dumps({"features": x[0].tolist()}, indent=2).encode(),
    )
    whole = (
        await stub.CreateTransformJob(
            rpb.CreateTransformJobRequest(
                spec=rpb.TransformJobSpec(
                    endpoint=endpoint_name,
                    input_uri=uri,
                    output_uri=prefix_uri(store, f"out3/{endpoint_name}/"),
                    input_filter="$.features",
                    split_type=rpb.SPLIT_TYPE_NONE,
                )
            ),
            timeout=10,
        )
    ).job
    whole = await finished(stub, whole.job_id)
    assert whole.status == rev.TRANSFORM_JOB_STATUS_COMPLETED, whole.reason
    assert (whole.records_total, whole.chunks_total) == (1, 1)
    (line,) = (await read(stack, whole.outputs[0].uri)).decode().splitlines()
    np.testing.assert_allclose(
        json.loads(line)["y"], stack.reference(42, x[:1]).ravel(), rtol=1e-4, atol=1e-5
    )


async def test_parquet_directory_input(stack: Any, endpoint_name: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    await deploy(stack, endpoint_name, seed=43)
    stub = rpb_grpc.RouterServiceStub(stack.channel)
    store = stack.router.transform.store
    parts = []
    for k in range(2):
        x = csv_rows(250, seed=10 + k)
        parts.append(x)
        buffer = io.BytesIO()
        pq.write_table(
            pa.table({f"f{j}": x[:, j] for j in range(4)} | {"key": list(range(250))}),
            buffer,
            row_group_size=100,
        )
        await put(stack, f"pq/{endpoint_name}/part-{k}.parquet", buffer.getvalue())
    directory = prefix_uri(store, f"pq/{endpoint_name}/")
    job = await create(
        stub,
        endpoint=endpoint_name,
        input_uri=directory,
        output_uri=prefix_uri(store, f"pq-out/{endpoint_name}/"),
        input_filter="f0,f1,f2,f3",
        records_per_chunk=100,
    )
    job = await finished(stub, job.job_id)
    assert job.status == rev.TRANSFORM_JOB_STATUS_COMPLETED, job.reason
    assert [o.uri.rsplit("/", 1)[-1] for o in job.outputs] == [
        "part-0.parquet.out",
        "part-1.parquet.out",
    ]
    for x, output in zip(parts, job.outputs, strict=True):
        rows = [
            json.loads(line)["y"] for line in (await read(stack, output.uri)).decode().splitlines()
        ]
        np.testing.assert_allclose(
            np.array(rows, np.float32), stack.reference(43, x), rtol=1e-4, atol=1e-5
        )

    # A filter naming a column the files do not have fails the job at its split, before
    # any chunk runs (each chunk used to fail on the workers, after the whole input).
    typo = await create(
        stub,
        endpoint=endpoint_name,
        input_uri=directory,
        output_uri=prefix_uri(store, f"pq-typo/{endpoint_name}/"),
        input_filter="f0,f1,f2,f9",
        records_per_chunk=100,
    )
    typo = await finished(stub, typo.job_id)
    assert typo.status == rev.TRANSFORM_JOB_STATUS_FAILED
    assert "spec.input_filter: filter 'f0,f1,f2,f9': no column 'f9'" in typo.reason, typo.reason
    assert typo.chunks_done == 0


async def test_parquet_chunk_files_and_csv_chunks_by_bytes(stack: Any, endpoint_name: str) -> None:
    """A Parquet input of several row groups is cut into Parquet chunk files of the chunk's
    rows only (across row-group boundaries), and the output keeps each row's values; a CSV
    without records_per_chunk is cut by bytes, into byte ranges of the file itself."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    await deploy(stack, endpoint_name, seed=49)
    stub = rpb_grpc.RouterServiceStub(stack.channel)
    store = stack.router.transform.store
    n = 3_000
    x = csv_rows(n, seed=20)
    table = pa.table(
        {f"f{j}": x[:, j] for j in range(4)}
        | {"key": list(range(n)), "name": [f"n{i}" for i in range(n)]}
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=500)
    assert pq.ParquetFile(io.BytesIO(buffer.getvalue())).metadata.num_row_groups == 6
    uri = await put(stack, f"pqrg/{endpoint_name}/rows.parquet", buffer.getvalue())
    job = (
        await stub.CreateTransformJob(
            rpb.CreateTransformJobRequest(
                spec=rpb.TransformJobSpec(
                    endpoint=endpoint_name,
                    input_uri=uri,
                    output_uri=prefix_uri(store, f"pqrg-out/{endpoint_name}/"),
                    input_filter="f0,f1,f2,f3",
                    join_source=rpb.JOIN_SOURCE_INPUT,
                    records_per_chunk=700,
                )
            ),
            timeout=10,
        )
    ).job
    job = await finished(stub, job.job_id)
    assert job.status == rev.TRANSFORM_JOB_STATUS_COMPLETED, job.reason
    assert (job.records_total, job.chunks_total) == (n, 5)
    rows = [json.loads(line) for line in (await read(stack, job.outputs[0].uri)).splitlines()]
    assert [(r["key"], r["name"]) for r in rows] == [(i, f"n{i}") for i in range(n)]
    np.testing.assert_allclose(
        np.array([r["prediction"]["y"] for r in rows], np.float32),
        stack.reference(49, x),
        rtol=1e-4,
        atol=1e-5,
    )
    # What each worker read: a Parquet file of its chunk's rows, not the input.
    chunk_files = sorted(
        [
            i.uri
            async for i in store.list(f"transform/{job.job_id}/chunks/")
            if i.uri.endswith(".in")
        ]
    )
    assert len(chunk_files) == 5
    first = 0
    for chunk_uri in chunk_files:
        data = await read(stack, chunk_uri)
        assert len(data) < len(buffer.getvalue())
        part = pq.read_table(io.BytesIO(data))
        assert part.column("key").to_pylist() == list(range(first, min(first + 700, n)))
        first += part.num_rows
    assert first == n
    # Without records_per_chunk: chunks of the rows of about 64 KiB of decoded data here.
    job = (
        await stub.CreateTransformJob(
            rpb.CreateTransformJobRequest(
                spec=rpb.TransformJobSpec(
                    endpoint=endpoint_name,
                    input_uri=uri,
                    output_uri=prefix_uri(store, f"pqrg-out2/{endpoint_name}/"),
                    input_filter="f0,f1,f2,f3",
                )
            ),
            timeout=10,
        )
    ).job
    job = await finished(stub, job.job_id)
    assert job.status == rev.TRANSFORM_JOB_STATUS_COMPLETED, job.reason
    assert job.records_total == n
    assert job.chunks_total >= 2
    rows = [json.loads(line) for line in (await read(stack, job.outputs[0].uri)).splitlines()]
    assert len(rows) == n

    # CSV, no records_per_chunk: at least 16 chunks of at least 64 KiB, read in place.
    x = csv_rows(20_000, seed=21)
    text = "a,b,c,d\n" + "\n".join(",".join(repr(float(v)) for v in r) for r in x) + "\n"
    uri = await put(stack, f"pqrg/{endpoint_name}/rows.csv", text.encode())
    job = (
        await stub.CreateTransformJob(
            rpb.CreateTransformJobRequest(
                spec=rpb.TransformJobSpec(
                    endpoint=endpoint_name,
                    input_uri=uri,
                    output_uri=prefix_uri(store, f"bytes-out/{endpoint_name}/"),
                )
            ),
            timeout=10,
        )
    ).job
    job = await finished(stub, job.job_id)
    assert job.status == rev.TRANSFORM_JOB_STATUS_COMPLETED, job.reason
    assert job.records_total == 20_000
    assert 16 <= job.chunks_total <= len(text) // (64 * 1024) + 1
    out = (await read(stack, job.outputs[0].uri)).decode().splitlines()
    np.testing.assert_allclose(
        np.array(out, dtype=np.float32), stack.reference(49, x).ravel(), rtol=1e-4, atol=1e-5
    )
    assert not [
        i async for i in store.list(f"transform/{job.job_id}/chunks/") if i.uri.endswith(".in")
    ]


async def test_killed_worker_mid_job_loses_and_duplicates_nothing(
    stack: Any, endpoint_name: str
) -> None:
    await deploy(stack, endpoint_name, seed=44, instances=2)
    stub = rpb_grpc.RouterServiceStub(stack.channel)
    store = stack.router.transform.store
    n = 40_000
    x = csv_rows(n, seed=3)
    text = "\n".join(",".join(repr(float(v)) for v in row) for row in x) + "\n"
    uri = await put(stack, f"big/{endpoint_name}/rows.csv", text.encode())
    job = (
        await stub.CreateTransformJob(
            rpb.CreateTransformJobRequest(
                spec=rpb.TransformJobSpec(
                    endpoint=endpoint_name,
                    input_uri=uri,
                    output_uri=prefix_uri(store, f"big-out/{endpoint_name}/"),
                    csv_header=False,
                    records_per_chunk=1_000,
                )
            ),
            timeout=10,
        )
    ).job
    await until(
        stub, job.job_id, lambda now: now.chunks_done >= 3 or now.status in DONE, "started", 60
    )
    os.kill(stack.workers(endpoint_name)[0]["pid"], signal.SIGKILL)
    job = await finished(stub, job.job_id, timeout=180)
    assert job.status == rev.TRANSFORM_JOB_STATUS_COMPLETED, job.reason
    assert job.records_done == n
    out = (await read(stack, job.outputs[0].uri)).decode().splitlines()
    assert len(out) == n
    np.testing.assert_allclose(
        np.array(out, dtype=np.float32), stack.reference(44, x).ravel(), rtol=1e-4, atol=1e-5
    )


async def test_stop_and_bad_specs(stack: Any, endpoint_name: str) -> None:
    await deploy(stack, endpoint_name, seed=45)
    stub = rpb_grpc.RouterServiceStub(stack.channel)
    store = stack.router.transform.store
    x = csv_rows(20_000, seed=4)
    uri = await put(
        stack,
        f"stop/{endpoint_name}/rows.csv",
        ("\n".join(",".join(map(str, r)) for r in x.tolist()) + "\n").encode(),
    )
    job = (
        await stub.CreateTransformJob(
            rpb.CreateTransformJobRequest(
                spec=rpb.TransformJobSpec(
                    endpoint=endpoint_name,
                    input_uri=uri,
                    output_uri=prefix_uri(store, f"stop-out/{endpoint_name}/"),
                    csv_header=False,
                    records_per_chunk=200,
                    batch_strategy=rpb.BATCH_STRATEGY_SINGLE_RECORD,
                )
            ),
            timeout=10,
        )
    ).job
    stopped = (
        await stub.StopTransformJob(
            rpb.StopTransformJobRequest(job_id=job.job_id, reason="enough"), timeout=5
        )
    ).job
    assert stopped.status in (rev.TRANSFORM_JOB_STATUS_STOPPING, rev.TRANSFORM_JOB_STATUS_STOPPED)
    stopped = await finished(stub, job.job_id)
    assert stopped.status == rev.TRANSFORM_JOB_STATUS_STOPPED
    assert stopped.reason == "enough"
    assert stopped.records_done < 20_000

    cases = [
        (
            rpb.TransformJobSpec(endpoint="no-such-endpoint", input_uri=uri, output_uri=uri),
            grpc.StatusCode.NOT_FOUND,
            "not deployed",
        ),
        (
            rpb.TransformJobSpec(
                endpoint=endpoint_name, input_uri=store.uri_for("nothing/here"), output_uri=uri
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "no object and no files",
        ),
        (
            rpb.TransformJobSpec(endpoint=endpoint_name, input_uri=uri),
            grpc.StatusCode.INVALID_ARGUMENT,
            "output_uri: required",
        ),
        (
            rpb.TransformJobSpec(
                endpoint=endpoint_name, input_uri=uri, output_uri=uri, input_filter="nope"
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "no column 'nope'",
        ),
        (
            rpb.TransformJobSpec(
                endpoint=endpoint_name, input_uri=uri, output_uri=uri, job_id=job.job_id
            ),
            grpc.StatusCode.ALREADY_EXISTS,
            "exists",
        ),
        (
            rpb.TransformJobSpec(
                endpoint=endpoint_name, input_uri=uri, output_uri=uri, job_id="nightly run/1"
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "spec.job_id: 'nightly run/1': expected",
        ),
        (
            rpb.TransformJobSpec(
                endpoint=endpoint_name, input_uri=uri, output_uri=uri, output_filter="score"
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "spec.output_filter: filter 'score': no column 'score'",
        ),
        (
            rpb.TransformJobSpec(
                endpoint=endpoint_name,
                input_uri=uri,
                output_uri=uri,
                csv_header=False,
                input_filter="age,income",
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "spec.input_filter: filter 'age,income': no column 'age'",
        ),
        (
            rpb.TransformJobSpec(
                endpoint=endpoint_name, input_uri=uri, output_uri=uri, max_payload_mb=float("nan")
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "spec.max_payload_mb: expected 0 (the default, 6) or a number above 0",
        ),
        (
            rpb.TransformJobSpec(
                endpoint=endpoint_name, input_uri=uri, output_uri=uri, max_records_per_batch=-1
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "spec.max_records_per_batch: expected 0 (the default, 1000) or 1-100000, got -1",
        ),
    ]
    for spec, code, text in cases:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.CreateTransformJob(rpb.CreateTransformJobRequest(spec=spec), timeout=5)
        assert info.value.code() is code, (spec, info.value.details())
        assert text in (info.value.details() or ""), info.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.DescribeTransformJob(rpb.DescribeTransformJobRequest(job_id="nope"), timeout=5)
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.DescribeTransformJob(rpb.DescribeTransformJobRequest(job_id=""), timeout=5)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "job_id: required"


async def test_transformer_sdk_and_cli(stack: Any, endpoint_name: str) -> None:
    from click.testing import CliRunner

    from mlbus.sdk import Transformer
    from mlbus.sdk.cli import cli

    await deploy(stack, endpoint_name, seed=46)
    store = stack.router.transform.store
    x = csv_rows(1_000, seed=5)
    uri = await put(
        stack,
        f"sdk/{endpoint_name}/rows.csv",
        ("f1,f2,f3,f4\n" + "\n".join(",".join(map(str, r)) for r in x.tolist()) + "\n").encode(),
    )
    out = prefix_uri(store, f"sdk-out/{endpoint_name}/")

    def run() -> Any:
        seen: list[int] = []
        with Transformer(endpoint_name, stack.router_target, poll_interval=0.05) as transformer:
            job = transformer.transform(
                uri,
                out,
                join_input=True,
                output_filter="0,4",
                records_per_chunk=250,
                wait=True,
                progress=lambda j: seen.append(j.records_done),
            )
            listed = transformer.list()
        result = CliRunner().invoke(
            cli,
            [
                "transform",
                "start",
                endpoint_name,
                uri,
                prefix_uri(store, f"cli-out/{endpoint_name}/"),
                "--router",
                stack.router_target,
                "--wait",
                "--json",
                "--records-per-chunk",
                "500",
            ],
        )
        # The README's command: --wait with a progress bar (it used to crash formatting the
        # total before the split had counted the records).
        shown = CliRunner().invoke(
            cli,
            [
                "transform",
                "start",
                endpoint_name,
                uri,
                prefix_uri(store, f"cli-bar/{endpoint_name}/"),
                "--router",
                stack.router_target,
                "--wait",
            ],
        )
        described = CliRunner().invoke(
            cli, ["transform", "describe", job.job_id, "--router", stack.router_target, "--json"]
        )
        return job, listed, seen, result, described, shown

    job, listed, seen, result, described, shown = await asyncio.to_thread(run)
    assert shown.exit_code == 0, shown.output
    assert "1,000/1,000 records" in shown.output, shown.output
    assert job.status == "COMPLETED", job.reason
    assert seen[-1] == 1_000
    assert seen == sorted(seen)
    assert job.job_id in [j.job_id for j in listed]
    rows = [line.split(",") for line in (await read(stack, job.outputs[0])).decode().splitlines()]
    assert len(rows) == 1_000
    np.testing.assert_allclose([float(r[0]) for r in rows], x[:, 0], rtol=1e-6)
    np.testing.assert_allclose(
        [float(r[1]) for r in rows], stack.reference(46, x).ravel(), rtol=1e-4, atol=1e-5
    )
    assert result.exit_code == 0, result.output
    cli_job = json.loads(result.output)
    assert cli_job["status"] == "COMPLETED"
    assert cli_job["records_done"] == 1_000
    assert json.loads(described.output)["job_id"] == job.job_id


def fallbacks(stack: Any, endpoint: str) -> list[str]:
    """Chunks the endpoint's worker ran record by record (from its log)."""
    found = []
    for path in sorted((stack.home / "logs" / "workers").glob(f"{endpoint}_main_*.log")):
        for line in path.read_text().splitlines():
            if "chunk runs record by record" in line:
                found.append(json.loads(line)["message"])
    return found


async def test_fast_and_per_record_chunks_write_the_same_lines(
    stack: Any, endpoint_name: str
) -> None:
    """A chunk with a bad record runs record by record; its good records come out exactly as
    the same records do from a chunk that ran column-wise (join with the input, quoted cells,
    an output filter), and blank lines keep the error's line number right."""
    await deploy(stack, endpoint_name, seed=47)
    stub = rpb_grpc.RouterServiceStub(stack.channel)
    store = stack.router.transform.store
    x = csv_rows(100, seed=6)
    rows = [f"r{i}," + ",".join(repr(float(v)) for v in row) for i, row in enumerate(x)]
    # Chunk 0: the rows; chunk 1: the same rows with a blank and a bad line among them
    # (line 153 of the file); chunk 2: the last row.
    lines = ['"id","a","b","c","d"', *rows, *rows[:50], "", "r-bad,1.0,nope,3.0,4.0", *rows[50:]]
    uri = await put(stack, f"same/{endpoint_name}/rows.csv", ("\n".join(lines) + "\n").encode())
    outputs = {}
    for name, extra in {
        "joined": {"join_source": rpb.JOIN_SOURCE_INPUT},
        "filtered": {"join_source": rpb.JOIN_SOURCE_INPUT, "output_filter": "0,5"},
        "plain": {},
    }.items():
        job = (
            await stub.CreateTransformJob(
                rpb.CreateTransformJobRequest(
                    spec=rpb.TransformJobSpec(
                        endpoint=endpoint_name,
                        input_uri=uri,
                        output_uri=prefix_uri(store, f"same-out/{endpoint_name}/{name}/"),
                        input_filter="a,b,c,d",
                        records_per_chunk=100,
                        max_records_per_batch=32,
                        **extra,
                    )
                ),
                timeout=10,
            )
        ).job
        job = await finished(stub, job.job_id)
        assert job.status == rev.TRANSFORM_JOB_STATUS_COMPLETED_WITH_ERRORS, job.reason
        assert (job.records_total, job.records_failed, job.chunks_total) == (201, 1, 3)
        errors = [json.loads(e) for e in (await read(stack, job.error_files[0].uri)).splitlines()]
        assert [(e["line"], "nope" in e["error"]) for e in errors] == [(153, True)]
        out = (await read(stack, job.outputs[0].uri)).decode().splitlines()
        assert len(out) == 200
        assert out[:100] == out[100:], name
        outputs[name] = out
    predicted = stack.reference(47, x).ravel()
    np.testing.assert_allclose(
        [float(v) for v in outputs["plain"][:100]], predicted, rtol=1e-4, atol=1e-5
    )
    assert outputs["joined"][:100] == [
        f"{row},{value}" for row, value in zip(rows, outputs["plain"][:100], strict=True)
    ]
    assert outputs["filtered"][:100] == [
        f"r{i},{value}" for i, value in enumerate(outputs["plain"][:100])
    ]
    # Only the chunk with the bad record ran record by record, once per job.
    assert len(fallbacks(stack, endpoint_name)) == 3, fallbacks(stack, endpoint_name)


async def test_csv_without_header_and_an_index_filter(stack: Any, endpoint_name: str) -> None:
    await deploy(stack, endpoint_name, seed=48)
    stub = rpb_grpc.RouterServiceStub(stack.channel)
    store = stack.router.transform.store
    x = csv_rows(500, seed=7)
    text = "\n".join(f"id{i}," + ",".join(map(str, r)) for i, r in enumerate(x.tolist()))
    uri = await put(stack, f"nohead/{endpoint_name}/rows.csv", text.encode())  # no final \n
    job = (
        await stub.CreateTransformJob(
            rpb.CreateTransformJobRequest(
                spec=rpb.TransformJobSpec(
                    endpoint=endpoint_name,
                    input_uri=uri,
                    output_uri=prefix_uri(store, f"nohead-out/{endpoint_name}/"),
                    csv_header=False,
                    input_filter="1,2,3,-1",
                    records_per_chunk=200,
                )
            ),
            timeout=10,
        )
    ).job
    job = await finished(stub, job.job_id)
    assert job.status == rev.TRANSFORM_JOB_STATUS_COMPLETED, job.reason
    out = (await read(stack, job.outputs[0].uri)).decode().splitlines()
    np.testing.assert_allclose(
        np.array(out, dtype=np.float32), stack.reference(48, x).ravel(), rtol=1e-4, atol=1e-5
    )
    assert fallbacks(stack, endpoint_name) == []


async def test_a_chunk_that_cannot_run_fails_its_records_and_the_job_still_ends(
    stack: Any, endpoint_name: str
) -> None:
    # The input shrinks after the split, while the worker is paused: the chunks past the
    # new end cannot be read, so the worker dead-letters them. Each is then marked done
    # with its records failed, and the job ends (it used to wait for them for ever).
    await deploy(stack, endpoint_name, seed=45)
    stub = rpb_grpc.RouterServiceStub(stack.channel)
    store = stack.router.transform.store
    x = csv_rows(3_000, seed=5)
    rows = [",".join(repr(float(v)) for v in row) for row in x]
    key = f"shrinking/{endpoint_name}/rows.csv"
    uri = await put(stack, key, ("a,b,c,d\n" + "\n".join(rows) + "\n").encode())
    worker = stack.workers(endpoint_name)[0]["pid"]
    os.kill(worker, signal.SIGSTOP)
    try:
        job = await create(
            stub,
            endpoint=endpoint_name,
            input_uri=uri,
            output_uri=prefix_uri(store, f"shrinking-out/{endpoint_name}/"),
            records_per_chunk=1_000,
        )
        # Split: every chunk request is on the topic.
        await until(
            stub,
            job.job_id,
            lambda now: now.chunks_total == 3 and now.records_total == 3_000,
            "split",
            30,
        )
        # Only the first 1,500 rows are left.
        await put(stack, key, ("a,b,c,d\n" + "\n".join(rows[:1_500]) + "\n").encode())
    finally:
        os.kill(worker, signal.SIGCONT)
    job = await finished(stub, job.job_id, timeout=120)
    assert job.status == rev.TRANSFORM_JOB_STATUS_FAILED
    assert "an input must not change while its job runs" in job.reason, job.reason
    assert job.chunks_done == 3
    # Chunks 2 and 3 (rows 1,001-3,000) could not be read: their records failed.
    assert job.records_failed == 2_000
    # (A job whose input changed has no outputs; the chunks' error files say why.)
    errors = [
        json.loads(line)
        for index in (1, 2)
        for line in (
            await store.read_bytes(store.uri_for(tf.chunk_key(job.job_id, index, "err")))
        ).splitlines()
    ]
    assert [e["line"] for e in errors] == list(range(1_002, 3_002))  # the header is line 1
    assert "the chunk could not be run and went to" in errors[0]["error"]
    assert "the input changed" in errors[0]["error"]


async def test_two_creates_of_one_job_id_at_once_make_one_job(
    stack: Any, endpoint_name: str
) -> None:
    await deploy(stack, endpoint_name, seed=46)
    stub = rpb_grpc.RouterServiceStub(stack.channel)
    store = stack.router.transform.store
    rows = "\n".join(",".join(repr(float(v)) for v in row) for row in csv_rows(500, seed=6))
    uri = await put(stack, f"twice/{endpoint_name}/rows.csv", ("a,b,c,d\n" + rows + "\n").encode())
    request = rpb.CreateTransformJobRequest(
        spec=rpb.TransformJobSpec(
            endpoint=endpoint_name,
            input_uri=uri,
            output_uri=prefix_uri(store, f"twice-out/{endpoint_name}/"),
            records_per_chunk=100,
            job_id=f"{endpoint_name}-twice",
        )
    )
    results = await asyncio.gather(
        *(stub.CreateTransformJob(request, timeout=10) for _ in range(3)), return_exceptions=True
    )
    created = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(created) == 1, results
    assert [e.code() for e in refused] == [grpc.StatusCode.ALREADY_EXISTS] * 2
    job = await finished(stub, created[0].job.job_id)
    assert job.status == rev.TRANSFORM_JOB_STATUS_COMPLETED, job.reason
    assert job.records_done == 500
    assert len((await read(stack, job.outputs[0].uri)).splitlines()) == 500  # each row once
