"""Asynchronous inference of files of rows (CSV, JSON Lines, Parquet at ``input_uri``): the
router runs them as internal transform jobs on the endpoint's workers, in row chunks, and
publishes one completion or failure notification when the job ends."""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from collections import Counter
from typing import Any

import grpc
import numpy as np
import pytest

from mlbus.core import async_inference as ai
from mlbus.core.messaging import EventProducer
from mlbus.inference.v1 import events_pb2 as ev
from mlbus.router.v1 import router_pb2 as rpb
from mlbus.router.v1 import router_pb2_grpc as rpb_grpc

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

_TERMINAL = {"COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED", "STOPPED"}


async def deploy(stack: Any, endpoint: str, seed: int) -> None:
    version = await stack.model(endpoint, seed=seed)
    await stack.create(
        endpoint,
        [{"name": "main", "model_group": endpoint, "model_version": version, "instance_count": 1}],
    )


async def put(stack: Any, key: str, data: bytes) -> str:
    return str((await stack.router.async_service.store.put(key, data)).uri)


async def read_lines(stack: Any, uri: str) -> list[str]:
    data = await stack.router.async_service.store.read_bytes(uri)
    return list(data.decode().splitlines())


async def done(stub: Any, endpoint: str, inference_id: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await stub.GetAsyncResult(
            rpb.GetAsyncResultRequest(endpoint=endpoint, inference_id=inference_id), timeout=5
        )
        if result.status != rpb.ASYNC_RESULT_STATUS_PENDING:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{inference_id} still pending after {timeout}s: {result}")
        await asyncio.sleep(0.05)


def rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 4)).astype(np.float32)


def csv_text(x: np.ndarray, header: bool = True) -> list[str]:
    return (["a,b,c,d"] if header else []) + [",".join(repr(float(v)) for v in r) for r in x]


async def test_csv_jsonl_and_parquet_rows_complete_in_order(stack: Any, endpoint_name: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    await deploy(stack, endpoint_name, seed=51)
    stub = rpb_grpc.RouterServiceStub(stack.channel)
    catalogue = stack.router.catalogue
    reply = f"{catalogue.name('test-replies')}-{uuid.uuid4().hex[:6]}"

    # CSV, 3,000 rows; the record on line 100 cannot be read.
    x = rows(3_000, seed=1)
    lines = csv_text(x)
    lines[99] = "1.0,oops,3.0,4.0"
    csv_uri = await put(stack, f"in/{endpoint_name}/rows.csv", ("\n".join(lines) + "\n").encode())
    invoke = rpb.InvokeAsyncRequest(
        endpoint=endpoint_name,
        input_uri=csv_uri,
        input_content_type="text/csv",
        inference_id="rows-csv",
        reply_topic=reply,
        rows=rpb.AsyncRowsOptions(records_per_chunk=500),
    )
    queued = await stub.InvokeAsync(invoke, timeout=10)
    assert queued.output_uri.endswith(f"async/{endpoint_name}/rows-csv/output.csv")
    assert queued.failure_uri.endswith(f"async/{endpoint_name}/rows-csv/failure.pb")
    assert queued.job_id == f"async.{endpoint_name}.rows-csv"
    assert queued.input_offloaded
    pending = await stub.GetAsyncResult(
        rpb.GetAsyncResultRequest(endpoint=endpoint_name, inference_id="rows-csv"), timeout=5
    )
    assert pending.status == rpb.ASYNC_RESULT_STATUS_PENDING
    assert pending.rows.job_id == queued.job_id

    # The same id again (even with other options): the same job, not a second one.
    again = rpb.InvokeAsyncRequest()
    again.CopyFrom(invoke)
    again.rows.records_per_chunk = 100
    duplicate = await stub.InvokeAsync(again, timeout=10)
    assert (duplicate.job_id, duplicate.output_uri) == (queued.job_id, queued.output_uri)
    jobs = await stub.ListTransformJobs(
        rpb.ListTransformJobsRequest(endpoint=endpoint_name), timeout=5
    )
    assert [j.job_id for j in jobs.jobs] == [queued.job_id]

    # JSON Lines (as application/x-ndjson), 2,000 records.
    xj = rows(2_000, seed=2)
    jsonl = "".join(json.dumps({"x": r.tolist()}) + "\n" for r in xj)
    jsonl_uri = await put(stack, f"in/{endpoint_name}/rows.jsonl", jsonl.encode())
    queued_jsonl = await stub.InvokeAsync(
        rpb.InvokeAsyncRequest(
            endpoint=endpoint_name,
            input_uri=jsonl_uri,
            input_content_type="application/x-ndjson",
            inference_id="rows-jsonl",
            rows=rpb.AsyncRowsOptions(records_per_chunk=700),
        ),
        timeout=10,
    )
    assert queued_jsonl.output_uri.endswith("/rows-jsonl/output.jsonl")

    # Parquet, 1,500 rows in row groups of 400, with a column the model does not take.
    xp = rows(1_500, seed=3)
    buffer = io.BytesIO()
    table = pa.table(
        {f"f{j}": xp[:, j] for j in range(4)} | {"key": [f"k{i}" for i in range(1500)]}
    )
    pq.write_table(table, buffer, row_group_size=400)
    parquet_uri = await put(stack, f"in/{endpoint_name}/rows.parquet", buffer.getvalue())
    queued_pq = await stub.InvokeAsync(
        rpb.InvokeAsyncRequest(
            endpoint=endpoint_name,
            input_uri=parquet_uri,
            input_content_type="application/vnd.apache.parquet",
            inference_id="rows-parquet",
            rows=rpb.AsyncRowsOptions(input_filter="f0,f1,f2,f3", records_per_chunk=600),
        ),
        timeout=10,
    )
    assert queued_pq.output_uri.endswith("/rows-parquet/output.csv")

    result = await done(stub, endpoint_name, "rows-csv")
    assert result.status == rpb.ASYNC_RESULT_STATUS_SUCCEEDED, result.error
    assert result.response.ByteSize() == 0  # a file of rows: the output is a file
    assert result.output.uri == queued.output_uri
    assert result.output.content_type == "text/csv"
    assert result.completion.records_total == 3_000
    assert result.completion.records_failed == 1
    assert result.completion.variant == "main"
    assert (result.rows.records_total, result.rows.records_failed) == (3_000, 1)
    assert result.rows.errors.uri.endswith(f"async/{endpoint_name}/rows-csv/errors.jsonl")
    good = [i for i in range(3_000) if i != 98]  # row i is on line i + 2
    predicted = np.array(await read_lines(stack, result.output.uri), dtype=np.float32)
    np.testing.assert_allclose(
        predicted, stack.reference(51, x[good]).ravel(), rtol=1e-4, atol=1e-5
    )
    errors = [json.loads(e) for e in await read_lines(stack, result.rows.errors.uri)]
    assert [(e["file"], e["line"]) for e in errors] == [("rows.csv", 100)]
    assert "cannot read the record" in errors[0]["error"]
    job = (
        await stub.DescribeTransformJob(
            rpb.DescribeTransformJobRequest(job_id=queued.job_id), timeout=5
        )
    ).job
    assert job.chunks_total == 6  # cut by the first call's 500 records, not the second's 100
    assert job.spec.content_type == "text/csv"

    result = await done(stub, endpoint_name, "rows-jsonl")
    assert result.status == rpb.ASYNC_RESULT_STATUS_SUCCEEDED, result.error
    assert result.output.content_type == "application/jsonlines"
    assert (result.completion.records_total, result.completion.records_failed) == (2_000, 0)
    assert not result.completion.HasField("errors")
    got = np.array([json.loads(v)["y"] for v in await read_lines(stack, result.output.uri)])
    np.testing.assert_allclose(got, stack.reference(51, xj), rtol=1e-4, atol=1e-5)

    result = await done(stub, endpoint_name, "rows-parquet")
    assert result.status == rpb.ASYNC_RESULT_STATUS_SUCCEEDED, result.error
    assert result.completion.records_total == 1_500
    predicted = np.array(await read_lines(stack, result.output.uri), dtype=np.float32)
    np.testing.assert_allclose(predicted, stack.reference(51, xp).ravel(), rtol=1e-4, atol=1e-5)

    # Finished: invoking again still names the same job and output, and runs nothing.
    after = await stub.InvokeAsync(invoke, timeout=10)
    assert (after.job_id, after.output_uri) == (queued.job_id, queued.output_uri)

    # Exactly one notification per inference, with the workers' event ids.
    notes = await stack.read_topic(
        catalogue.async_results(endpoint_name).name, count=4, timeout=1.5
    )
    assert Counter(ev.AsyncInferenceCompleted.FromString(r.value).inference_id for r in notes) == {
        "rows-csv": 1,
        "rows-jsonl": 1,
        "rows-parquet": 1,
    }
    assert {dict(r.headers)["ce_id"] for r in notes} == {
        f"{endpoint_name}/{i}/completed".encode()
        for i in ("rows-csv", "rows-jsonl", "rows-parquet")
    }
    replies = await stack.read_topic(reply, count=2, timeout=1.5)
    assert [ev.AsyncInferenceCompleted.FromString(r.value).inference_id for r in replies] == [
        "rows-csv"
    ]


async def test_bad_rows_inputs_are_refused_or_failed(stack: Any, endpoint_name: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    await deploy(stack, endpoint_name, seed=52)
    stub = rpb_grpc.RouterServiceStub(stack.channel)
    store = stack.router.async_service.store
    csv_uri = await put(
        stack, f"in/{endpoint_name}/ok.csv", ("\n".join(csv_text(rows(10, 4))) + "\n").encode()
    )

    def rows_call(**kw: Any) -> rpb.InvokeAsyncRequest:
        values: dict[str, Any] = {
            "endpoint": endpoint_name,
            "input_uri": csv_uri,
            "input_content_type": "text/csv",
        }
        values.update(kw)
        return rpb.InvokeAsyncRequest(**values)

    inline = stack.request("", np.ones((1, 4), np.float32))
    cases = {
        "unknown type": (
            rows_call(input_content_type="text/plain"),
            "input_content_type 'text/plain'",
        ),
        "missing object": (
            rows_call(input_uri=store.uri_for(f"in/{endpoint_name}/nope.csv")),
            "input_uri: object",
        ),
        "sha mismatch": (rows_call(input_sha256="0" * 64), "input_sha256: expected 0000"),
        "bad sha": (rows_call(input_sha256="xyz"), "input_sha256 'xyz'"),
        "directory": (rows_call(input_uri=csv_uri.rsplit("/", 1)[0] + "/"), "expected one object"),
        "filter": (rows_call(rows=rpb.AsyncRowsOptions(input_filter="nope")), "rows.input_filter"),
        "chunk size": (
            rows_call(rows=rpb.AsyncRowsOptions(records_per_chunk=-1)),
            "rows.records_per_chunk",
        ),
        "rows inline": (
            rpb.InvokeAsyncRequest(
                endpoint=endpoint_name, request=inline, rows=rpb.AsyncRowsOptions(csv_header=False)
            ),
            "rows: only for a file of rows",
        ),
        "type inline": (
            rpb.InvokeAsyncRequest(
                endpoint=endpoint_name, request=inline, input_content_type="text/csv"
            ),
            "applies to input_uri only",
        ),
    }
    for name, (request, text) in cases.items():
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.InvokeAsync(request, timeout=5)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT, name
        assert text in (info.value.details() or ""), (name, info.value.details())
    listed = await stub.ListTransformJobs(
        rpb.ListTransformJobsRequest(endpoint=endpoint_name), timeout=5
    )
    assert list(listed.jobs) == []

    # Accepted, but no record can be read: FAILED, saying so.
    garbage = await put(stack, f"in/{endpoint_name}/bad.csv", b"a,b\n1,2\n3,4\n5,6\n")
    queued = await stub.InvokeAsync(rows_call(input_uri=garbage, inference_id="all-bad"), timeout=5)
    failed = await done(stub, endpoint_name, "all-bad")
    assert failed.status == rpb.ASYNC_RESULT_STATUS_FAILED
    assert failed.error.code == "INVALID_ARGUMENT"
    assert "every record failed (3 of 3)" in failed.error.message
    assert failed.error.details["job_id"] == queued.job_id
    assert failed.error.details["errors_uri"].endswith("/all-bad/errors.jsonl")

    # Nested Parquet columns are not read as rows by InvokeAsync.
    buffer = io.BytesIO()
    pq.write_table(pa.table({"features": [[1.0, 2.0, 3.0, 4.0]] * 5}), buffer)
    nested = await put(stack, f"in/{endpoint_name}/nested.parquet", buffer.getvalue())
    await stub.InvokeAsync(
        rows_call(
            input_uri=nested,
            input_content_type="application/x-parquet",
            inference_id="nested",
        ),
        timeout=5,
    )
    failed = await done(stub, endpoint_name, "nested")
    assert failed.status == rpb.ASYNC_RESULT_STATUS_FAILED
    assert failed.error.code == "INVALID_ARGUMENT"
    assert "Parquet column 'features'" in failed.error.message

    # A rows claim check published straight to the request topic: a precise failure.
    producer = EventProducer(stack.settings.kafka, source="test-producer")
    await producer.start()
    try:
        await producer.publish(
            stack.router.catalogue.async_requests(endpoint_name),
            stack.request(endpoint_name, np.ones((1, 4), np.float32)),
            key="topic-csv",
            headers=[
                (ai.H_INFERENCE_ID, b"topic-csv"),
                (ai.H_INPUT_URI, csv_uri.encode()),
                (ai.H_INPUT_CONTENT_TYPE, b"text/csv"),
            ],
        )
    finally:
        await producer.stop()
    failed = await done(stub, endpoint_name, "topic-csv")
    assert failed.status == rpb.ASYNC_RESULT_STATUS_FAILED
    assert failed.error.code == "INVALID_ARGUMENT"
    assert "go through InvokeAsync or CreateTransformJob" in failed.error.message


async def test_rows_job_resumes_after_restart_and_sdk_cli(stack: Any, endpoint_name: str) -> None:
    from click.testing import CliRunner

    from mlbus.sdk import AsyncPredictor
    from mlbus.sdk.cli import cli

    await deploy(stack, endpoint_name, seed=53)
    stub = rpb_grpc.RouterServiceStub(stack.channel)
    transform = stack.router.transform
    x = rows(4_000, seed=5)
    uri = await put(
        stack,
        f"in/{endpoint_name}/rows.csv",
        ("\n".join(csv_text(x, header=False)) + "\n").encode(),
    )
    queued = await stub.InvokeAsync(
        rpb.InvokeAsyncRequest(
            endpoint=endpoint_name,
            input_uri=uri,
            input_content_type="text/csv; charset=utf-8",
            inference_id="resumed",
            rows=rpb.AsyncRowsOptions(csv_header=False, records_per_chunk=200),
        ),
        timeout=10,
    )
    # The router stops mid-job (its job tasks are cancelled, as at shutdown) and starts
    # again: the job is loaded from the object store and carried on.
    await transform.stop()
    found = transform.find(queued.job_id)
    assert found is not None
    assert found[1].status not in _TERMINAL
    transform._jobs.clear()
    await transform.resume()
    result = await done(stub, endpoint_name, "resumed")
    assert result.status == rpb.ASYNC_RESULT_STATUS_SUCCEEDED, result.error
    out = np.array(await read_lines(stack, result.output.uri), dtype=np.float32)
    np.testing.assert_allclose(out, stack.reference(53, x).ravel(), rtol=1e-4, atol=1e-5)
    # Chunk copies are gone once the outcome is out; the job stays describable.
    await stack.wait_until(
        lambda: transform.find(queued.job_id)[1].hooks_done, timeout=10, what="hooks done"
    )
    leftovers = [
        o.uri
        async for o in transform.store.list(f"transform/{queued.job_id}/chunks/")
        if o.uri.endswith((".in", ".out"))
    ]
    assert leftovers == []

    # Restarting after the end sends nothing again.
    await transform.stop()
    transform._jobs.clear()
    await transform.resume()
    notes = await stack.read_topic(
        stack.router.catalogue.async_results(endpoint_name).name, count=2, timeout=1.5
    )
    assert [ev.AsyncInferenceCompleted.FromString(r.value).inference_id for r in notes] == [
        "resumed"
    ]

    def run() -> dict[str, Any]:
        seen: list[str] = []
        with AsyncPredictor(endpoint_name, stack.router_target, poll_interval=0.05) as predictor:
            job = predictor.invoke(
                input_uri=uri,
                input_content_type="text/csv",
                inference_id="sdk-rows",
                csv_header=False,
                records_per_chunk=1_000,
            )
            result = predictor.result(
                job.inference_id, timeout=60, progress=lambda r: seen.append(r.status)
            )
        cli_out = CliRunner().invoke(
            cli,
            [
                "invoke-async",
                endpoint_name,
                "--router",
                stack.router_target,
                "--input-uri",
                uri,
                "--content-type",
                "text/csv",
                "--no-csv-header",
                "--id",
                "cli-rows",
                "--wait",
                "--json",
            ],
        )
        return {"job": job, "result": result, "seen": seen, "cli": cli_out}

    out = await asyncio.to_thread(run)
    assert out["job"].job_id == f"async.{endpoint_name}.sdk-rows"
    result = out["result"]
    assert result.status == "SUCCEEDED"
    assert result.prediction is None
    assert result.output_uri.endswith("/sdk-rows/output.csv")
    assert (result.records_total, result.records_done, result.records_failed) == (4_000, 4_000, 0)
    assert out["seen"][-1] == "SUCCEEDED"
    assert out["cli"].exit_code == 0, out["cli"].output
    shown = json.loads(out["cli"].output)
    assert shown["status"] == "SUCCEEDED"
    assert shown["rows"]["records_total"] == 4_000
    assert shown["output_uri"].endswith("/cli-rows/output.csv")
