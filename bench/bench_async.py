"""Asynchronous inference: sustained requests/s and end-to-end latency, InvokeAsync → the
completion notification on the endpoint's result topic, for small inline payloads.

The stack is ``bench_transform``'s: the registry and the router in this process, the
router's controller spawning one real worker process (``python -m mlbus.inference``) for an
endpoint serving scikit-learn's logistic regression on 30 features (skl2onnx). Every
request is one row, FP32 [1, 30] in raw contents (~200 bytes serialized): well under the
inline limit, so it travels on the request topic itself.

A reader in this process follows ``mlbus.inference.<endpoint>.results.v1`` (no consumer
group, from the end, ``fetch_max_wait_ms`` 10) and stamps each ``AsyncInferenceCompleted``
when it arrives; a request's latency is that stamp minus the moment just before its
``InvokeAsync`` call. Per repetition, in this order:

* ``realtime``: ModelInfer through the router, one call at a time (the same row), as the
  reference for what the model and the front door cost without the topic hops;
* ``light``: InvokeAsync at a steady 25 requests/s (latency with no queue);
* ``sustained``: InvokeAsync keeping ``window`` requests outstanding (submitted, no
  notification yet) until ``count`` requests completed or ``duration`` passed: the
  sustained rate and the latency under that load.

Every request must complete with a notification; the ones missing when a phase ends are
counted (and named in the notes). Figures are medians over repetitions; a request's
latency samples are pooled within a phase.

Then, once, the large rows payload: a CSV of about ``rows_mb`` MiB (1 GiB; ``--quick``: 20
MiB; the environment variable ``MLBUS_BENCH_ASYNC_ROWS_MB`` overrides it) of 30 FP32 features
with 4 decimals and a header, written block by block to disk by a child process (so this
process, the router's, does not hold the generator's memory) and streamed into the object
store, then one ``InvokeAsync(input_uri, input_content_type="text/csv")``: the
router runs it as a transform job in chunks of 10,000 rows on the endpoint's worker. Timed
from just before the call to the completion notification; the output file is checked (one
line per row, the first rows against ONNX Runtime in this process). Memory: each process's
peak RSS (``VmHWM`` in ``/proc/<pid>/status``, reset with ``clear_refs`` just before the
call, with a 50 ms ``VmRSS`` sampler as a cross-check) minus its RSS just before the call,
for the worker and for this process (router, registry and client), against the payload size.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from bench_transform import FEATURES, Stack, build_model, cpu_seconds  # noqa: E402

TITLE = (
    "Asynchronous inference: InvokeAsync → completion notification, small inline payloads "
    "and a large CSV of rows"
)
#: Rows generated at a time for the large payload (and checked against ONNX Runtime: the first).
ROWS_BLOCK = 100_000
MIB = 1024 * 1024


@dataclass(frozen=True)
class Plan:
    reps: int
    realtime: int = 300
    light: int = 150
    light_rate: float = 25.0
    window: int = 64
    count: int = 3000
    duration_s: float = 20.0
    rows_mb: float = 1024.0


FULL = Plan(reps=3)
QUICK = Plan(reps=1, realtime=100, light=50, count=600, duration_s=8.0, rows_mb=20.0)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


class Notifications:
    """Completion notifications of one endpoint, stamped on arrival."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.arrived: dict[str, float] = {}
        self._waiters: dict[str, asyncio.Future[float]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer

        self.consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.bootstrap,
            group_id=None,
            auto_offset_reset="latest",
            enable_auto_commit=False,
            fetch_max_wait_ms=10,
        )
        await self.consumer.start()
        deadline = time.monotonic() + 30
        while not self.consumer.assignment():
            if time.monotonic() > deadline:
                raise RuntimeError(f"no partitions of {self.topic}")
            await asyncio.sleep(0.05)
        for tp in self.consumer.assignment():
            await self.consumer.position(tp)  # resolve "latest" before anything is sent
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        from mlbus.inference.v1 import events_pb2 as ev

        while True:
            batch = await self.consumer.getmany(timeout_ms=100)
            now = time.perf_counter()
            for records in batch.values():
                for record in records:
                    inference_id = ev.AsyncInferenceCompleted.FromString(record.value).inference_id
                    self.arrived.setdefault(inference_id, now)
                    waiter = self._waiters.pop(inference_id, None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(now)

    def wait(self, inference_id: str) -> asyncio.Future[float]:
        """A future set to the arrival time of ``inference_id``'s notification."""
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if inference_id in self.arrived:
            future.set_result(self.arrived[inference_id])
        else:
            self._waiters[inference_id] = future
        return future

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.consumer.stop()


def _status_kib(pid: int, field: str) -> int | None:
    """A ``kB`` field (VmRSS, VmHWM) of ``/proc/<pid>/status``; None if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_peak(pid: int) -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux: ``echo 5 > /proc/<pid>/clear_refs``)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class RssSampler:
    """The largest VmRSS of some processes, sampled every 50 ms."""

    def __init__(self, pids: list[int]) -> None:
        self.peak = {pid: _status_kib(pid, "VmRSS") or 0 for pid in pids}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            for pid in self.peak:
                rss = _status_kib(pid, "VmRSS")
                if rss is not None and rss > self.peak[pid]:
                    self.peak[pid] = rss
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def write_csv(path: Path, target: int) -> int:
    """A CSV of at least ``target`` bytes (header, then blocks of ROWS_BLOCK rows) at
    ``path``, written block by block; its row count."""
    rows = 0
    with path.open("wb") as out:
        size = out.write((",".join(f"f{i}" for i in range(FEATURES)) + "\n").encode())
        k = 0
        while size < target or k == 0:
            data, x = csv_block(k)
            size += out.write(data)
            rows += len(x)
            k += 1
    return rows


def csv_block(k: int) -> tuple[bytes, np.ndarray]:
    """Block ``k`` of the large payload: ROWS_BLOCK rows of FEATURES numbers, 4 decimals."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng([7, k])
    x = np.round(rng.standard_normal((ROWS_BLOCK, FEATURES)), 4).astype(np.float32)
    buffer = io.BytesIO()
    pacsv.write_csv(
        pa.table({f"f{i}": x[:, i] for i in range(FEATURES)}),
        buffer,
        write_options=pacsv.WriteOptions(include_header=False),
    )
    return buffer.getvalue(), x


class Bench:
    def __init__(self, args: argparse.Namespace, plan: Plan) -> None:
        self.args = args
        self.plan = plan
        self.runs: dict[str, list[float]] = {}
        self.meta: dict[str, tuple[str, str, str]] = {}
        self.missing: list[str] = []
        self.requests = 0
        self.rows_notes: list[str] = []

    def log(self, text: str) -> None:
        if self.args.verbose:
            print(f"  {text}", flush=True)

    def add(self, key: str, value: float, label: str, unit: str, better: str) -> None:
        self.runs.setdefault(key, []).append(value)
        self.meta[key] = (label, unit, better)

    async def main(self) -> None:
        from mlbus.router.v1 import router_pb2_grpc as rpb_grpc

        with tempfile.TemporaryDirectory(prefix="mlbus-bench-async-") as tmp:
            self.tmp = tmp
            stack = Stack(self.args.bootstrap_servers, Path(tmp) / "home")
            await stack.start()
            try:
                endpoint = "bench-async"
                await stack.deploy(endpoint, build_model(), 1)
                self.stub = rpb_grpc.RouterServiceStub(stack.channel)
                from mlbus.inference.v2 import grpc_service_pb2_grpc as pb_grpc

                self.infer_stub = pb_grpc.GRPCInferenceServiceStub(stack.channel)
                self.endpoint = endpoint
                row = np.random.default_rng(0).standard_normal((1, FEATURES)).astype(np.float32)
                self.request = self._request(row)
                self.notes_ = Notifications(
                    self.args.bootstrap_servers,
                    stack.router.catalogue.async_results(endpoint).name,
                )
                await self.notes_.start()
                try:
                    await self.warm_up()
                    for rep in range(self.plan.reps):
                        self.log(f"repetition {rep + 1}/{self.plan.reps}")
                        await self.realtime()
                        await self.light(rep)
                        await self.sustained(rep)
                    await self.rows(stack)
                finally:
                    await self.notes_.stop()
            finally:
                await stack.stop()

    def _request(self, row: np.ndarray) -> Any:
        from mlbus.inference.v2 import grpc_service_pb2 as pb

        request = pb.ModelInferRequest(model_name="bench-async")
        request.inputs.add(name="x", datatype="FP32", shape=list(row.shape))
        request.raw_input_contents.append(row.tobytes())
        return request

    async def invoke(self, inference_id: str) -> float:
        """Submit one request; the moment just before the call."""
        from mlbus.router.v1 import router_pb2 as rpb

        started = time.perf_counter()
        await self.stub.InvokeAsync(
            rpb.InvokeAsyncRequest(
                endpoint=self.endpoint, request=self.request, inference_id=inference_id
            ),
            timeout=30,
        )
        self.requests += 1
        return started

    async def warm_up(self) -> None:
        """Until notifications come back (the worker's consumer group has joined)."""
        deadline = time.monotonic() + 120
        while True:
            inference_id = f"warm-{uuid.uuid4().hex[:12]}"
            await self.invoke(inference_id)
            try:
                await asyncio.wait_for(self.notes_.wait(inference_id), 10)
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise RuntimeError("no completion notification within 120 s") from None
        for _ in range(20):
            inference_id = f"warm-{uuid.uuid4().hex[:12]}"
            await self.invoke(inference_id)
            await asyncio.wait_for(self.notes_.wait(inference_id), 30)

    async def realtime(self) -> None:
        latencies = []
        for _ in range(self.plan.realtime):
            started = time.perf_counter()
            await self.infer_stub.ModelInfer(self.request, timeout=10)
            latencies.append((time.perf_counter() - started) * 1000)
        self.add(
            "realtime_p50",
            percentile(latencies, 0.5),
            "ModelInfer via the router, c=1: p50",
            "ms",
            "lower",
        )
        self.add(
            "realtime_p99",
            percentile(latencies, 0.99),
            "ModelInfer via the router, c=1: p99",
            "ms",
            "lower",
        )
        self.log(
            f"realtime c=1: p50 {percentile(latencies, 0.5):.2f} ms, "
            f"p99 {percentile(latencies, 0.99):.2f} ms"
        )

    async def _finish(
        self, pending: dict[str, tuple[float, asyncio.Future[float]]], phase: str, wait_s: float
    ) -> list[float]:
        """Latencies (ms) of ``pending`` once their notifications arrived (up to ``wait_s``)."""
        futures = [future for _, future in pending.values()]
        if futures:
            await asyncio.wait(futures, timeout=wait_s)
        latencies = []
        missing = 0
        for started, future in pending.values():
            if future.done():
                latencies.append((future.result() - started) * 1000)
            else:
                future.cancel()
                missing += 1
        if missing:
            self.missing.append(f"{phase}: {missing} of {len(pending)} without a notification")
        return latencies

    async def light(self, rep: int) -> None:
        plan = self.plan
        pending: dict[str, tuple[float, asyncio.Future[float]]] = {}
        period = 1 / plan.light_rate
        began = time.perf_counter()
        for k in range(plan.light):
            delay = began + k * period - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            inference_id = f"light-{rep}-{k}-{uuid.uuid4().hex[:6]}"
            future = self.notes_.wait(inference_id)
            pending[inference_id] = (await self.invoke(inference_id), future)
        latencies = await self._finish(pending, f"repetition {rep + 1} light", 30)
        self.add(
            "light_p50",
            percentile(latencies, 0.5),
            f"InvokeAsync → notification at {plan.light_rate:g} req/s: p50",
            "ms",
            "lower",
        )
        self.add(
            "light_p99",
            percentile(latencies, 0.99),
            f"InvokeAsync → notification at {plan.light_rate:g} req/s: p99",
            "ms",
            "lower",
        )
        self.log(
            f"async at {plan.light_rate:g}/s: p50 {percentile(latencies, 0.5):.1f} ms, "
            f"p99 {percentile(latencies, 0.99):.1f} ms"
        )

    async def sustained(self, rep: int) -> None:
        plan = self.plan
        pending: dict[str, tuple[float, asyncio.Future[float]]] = {}
        slots = asyncio.Semaphore(plan.window)
        submitted = 0
        began = time.perf_counter()
        end = began + plan.duration_s

        def release(_: asyncio.Future[float]) -> None:
            slots.release()

        while submitted < plan.count and time.perf_counter() < end:
            await slots.acquire()
            inference_id = f"load-{rep}-{submitted}-{uuid.uuid4().hex[:6]}"
            future = self.notes_.wait(inference_id)
            future.add_done_callback(release)
            pending[inference_id] = (await self.invoke(inference_id), future)
            submitted += 1
        latencies = await self._finish(pending, f"repetition {rep + 1} sustained", 60)
        done = [f.result() for _, f in pending.values() if f.done() and not f.cancelled()]
        elapsed = (max(done) - began) if done else float("nan")
        rate = len(done) / elapsed if done else 0.0
        self.add(
            "sustained_rate",
            rate,
            f"InvokeAsync with {plan.window} outstanding: completions/s",
            "req/s",
            "higher",
        )
        self.add(
            "sustained_p50",
            percentile(latencies, 0.5),
            f"InvokeAsync with {plan.window} outstanding: p50",
            "ms",
            "lower",
        )
        self.add(
            "sustained_p99",
            percentile(latencies, 0.99),
            f"InvokeAsync with {plan.window} outstanding: p99",
            "ms",
            "lower",
        )
        self.log(
            f"async sustained ({plan.window} outstanding, {len(done)} requests): {rate:,.0f}/s, "
            f"p50 {percentile(latencies, 0.5):.1f} ms, p99 {percentile(latencies, 0.99):.1f} ms"
        )

    async def rows(self, stack: Any) -> None:
        """The large rows payload, after a small one that warms the batch path up (its
        first run imports pyarrow and fills allocator pools: a fixed cost, reported apart)."""
        target = int(float(os.environ.get("MLBUS_BENCH_ASYNC_ROWS_MB", self.plan.rows_mb)) * MIB)
        warm = await self._rows_run(stack, 1, "warm")
        big = await self._rows_run(stack, target, "big")
        size_mib = big["size"] / MIB
        self.add(
            "rows_wall",
            big["wall"],
            f"{size_mib:,.0f} MiB CSV ({big['rows']:,} rows): InvokeAsync → completion "
            "notification",
            "s",
            "lower",
        )
        self.add(
            "rows_rate",
            big["rows"] / big["wall"],
            "large CSV: rows per second",
            "records/s",
            "higher",
        )
        self.add(
            "rows_mb_s", size_mib / big["wall"], "large CSV: payload per second", "MiB/s", "higher"
        )
        for key, label in (
            ("worker", "worker"),
            ("router", "router process (router + registry + client)"),
        ):
            growth = big[f"{key}_growth"]
            self.add(
                f"rows_{key}_growth", growth, f"large CSV: {label} peak RSS growth", "MiB", "lower"
            )
            self.add(
                f"rows_{key}_share",
                100 * growth / size_mib,
                f"large CSV: {label} peak RSS growth ÷ payload size",
                "%",
                "lower",
            )
        self.add(
            "rows_warm_worker_growth",
            warm["worker_growth"],
            f"first rows inference ({warm['size'] / MIB:.0f} MiB, warm-up): worker peak RSS growth",
            "MiB",
            "lower",
        )
        self.rows_notes = [
            f"Large rows payload: {big['size']:,} bytes ({size_mib:,.0f} MiB), {big['rows']:,} "
            f"rows × {FEATURES} features, written by a child process and put into the object store "
            f"in {big['put_s']:.0f} s (not timed); one InvokeAsync (answered in {big['answered_ms']:.0f} ms), run as "
            f"transform job {big['job_id']} in {big['chunks']} chunks of 10,000 rows "
            f"(MULTI_RECORD, 1000 rows per inference) on {big['workers']} worker; CPU of the "
            f"worker {big['cpu_workers']:.0f} s; output checked: {big['lines']:,} lines, the first "
            "1000 equal to ONNX Runtime's.",
            f"Memory (large payload): RSS just before the call — worker {big['worker_before']:.0f} "
            f"MiB, this process {big['router_before']:.0f} MiB; peak growth {big['method']} — "
            f"worker {big['worker_growth']:.0f} MiB, this process {big['router_growth']:.0f} MiB; "
            f"the 50 ms VmRSS sampler saw worker +{big['worker_sampled']:.0f} MiB, this process "
            f"+{big['router_sampled']:.0f} MiB.",
            f"Warm-up: a {warm['size'] / MIB:.0f} MiB CSV ({warm['rows']:,} rows) first, the "
            f"worker's first rows inference: worker RSS {warm['worker_before']:.0f} MiB before, "
            f"peak +{warm['worker_growth']:.0f} MiB (pyarrow's import and memory pool: paid once "
            f"per worker); it took {warm['wall']:.1f} s.",
        ]
        self.log(
            f"rows payload: {big['wall']:.1f} s, {big['rows'] / big['wall']:,.0f} rows/s, worker "
            f"peak RSS +{big['worker_growth']:.0f} MiB, router process "
            f"+{big['router_growth']:.0f} MiB (payload {size_mib:,.0f} MiB)"
        )

    async def _rows_run(self, stack: Any, target: int, tag: str) -> dict[str, Any]:
        """Generate a CSV of at least ``target`` bytes into the store, InvokeAsync it, wait
        for the notification, check the output; the figures."""
        import onnxruntime as ort

        from mlbus.router.v1 import router_pb2 as rpb

        store = stack.store
        began = time.perf_counter()
        # Written by a child process, so this one (the router's) does not hold the
        # generator's memory before the measurement; then streamed into the store.
        path = Path(self.tmp) / f"{tag}.csv"
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, __file__, "--write-csv", str(path), str(target)],
            capture_output=True,
            text=True,
            check=True,
            timeout=1800,
        )
        rows = int(done.stdout.strip().splitlines()[-1])
        ref = await stack.put_file(f"bench-rows/{tag}.csv", path)
        ref = await store.stat(ref)
        path.unlink()
        put_s = time.perf_counter() - began
        size = ref.size
        self.log(
            f"rows payload {tag}: {rows:,} rows, {size / MIB:,.0f} MiB stored in {put_s:.1f} s"
        )
        workers = [
            int(w["pid"])
            for item in stack.router.controller.describe()
            if item["endpoint"] == self.endpoint
            for w in item["workers"]
            if w.get("pid")
        ]
        me = os.getpid()
        pids = [*workers, me]
        before = {pid: _status_kib(pid, "VmRSS") or 0 for pid in pids}
        reset = all(_reset_peak(pid) for pid in pids)
        cpu_before = {pid: cpu_seconds(pid) for pid in workers}
        sampler = RssSampler(pids)
        sampler.start()
        inference_id = f"rows-{tag}-{uuid.uuid4().hex[:8]}"
        future = self.notes_.wait(inference_id)
        started = time.perf_counter()
        queued = await self.stub.InvokeAsync(
            rpb.InvokeAsyncRequest(
                endpoint=self.endpoint,
                input_uri=ref.uri,
                input_content_type="text/csv",
                inference_id=inference_id,
            ),
            timeout=30,
        )
        answered_ms = (time.perf_counter() - started) * 1000

        async def progress() -> None:
            while True:
                await asyncio.sleep(10)
                now = await self.stub.GetAsyncResult(
                    rpb.GetAsyncResultRequest(endpoint=self.endpoint, inference_id=inference_id),
                    timeout=10,
                )
                self.log(
                    f"  {time.perf_counter() - started:5.0f} s: {now.rows.records_done:,} of "
                    f"{now.rows.records_total or '?'} records done"
                )

        reporter = asyncio.create_task(progress())
        try:
            arrived = await asyncio.wait_for(future, timeout=3600)
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
        wall = arrived - started
        await sampler.stop()
        peak = {pid: _status_kib(pid, "VmHWM") or 0 for pid in pids}
        if not reset:  # no clear_refs: the sampler's peak is what there is
            peak = dict(sampler.peak)
        cpu_workers = sum(cpu_seconds(pid) - cpu_before[pid] for pid in workers)
        result = await self.stub.GetAsyncResult(
            rpb.GetAsyncResultRequest(endpoint=self.endpoint, inference_id=inference_id),
            timeout=10,
        )
        if result.status != rpb.ASYNC_RESULT_STATUS_SUCCEEDED:
            raise RuntimeError(f"rows inference {inference_id} did not succeed: {result}")
        if (result.completion.records_total, result.completion.records_failed) != (rows, 0):
            raise RuntimeError(f"rows inference counted {result.completion} for {rows} rows")

        # The output: one line per row, the first ones as ONNX Runtime computes them.
        lines = 0
        head = b""
        async for block in store.get(result.output.uri):
            lines += block.count(b"\n")
            if len(head) < 1 << 20:
                head += block
        if lines != rows:
            raise RuntimeError(f"output has {lines:,} lines for {rows:,} rows")
        sess = ort.InferenceSession(build_model(), providers=["CPUExecutionProvider"])
        outputs = sess.run(None, {"x": csv_block(0)[1][:1000]})
        check = [line.split(",") for line in head.decode().splitlines()[:1000]]
        labels = np.array([int(float(c[0])) for c in check])
        probabilities = np.array([[float(v) for v in c[1:]] for c in check])
        if not (labels == outputs[0].ravel()).all():
            raise RuntimeError("output labels differ from ONNX Runtime's")
        np.testing.assert_allclose(probabilities, outputs[1], rtol=1e-5, atol=1e-6)
        job = (
            await stack.stub.DescribeTransformJob(
                rpb.DescribeTransformJobRequest(job_id=queued.job_id), timeout=10
            )
        ).job
        await store.delete(ref.uri)  # the disk is not endless
        return {
            "rows": rows,
            "size": size,
            "put_s": put_s,
            "wall": wall,
            "answered_ms": answered_ms,
            "job_id": queued.job_id,
            "chunks": job.chunks_total,
            "workers": len(workers),
            "cpu_workers": cpu_workers,
            "lines": lines,
            "method": "(VmHWM, reset with clear_refs)" if reset else "(sampled VmRSS)",
            "worker_before": max((before[p] for p in workers), default=0) / 1024,
            "router_before": before[me] / 1024,
            "worker_growth": max((peak[p] - before[p] for p in workers), default=0) / 1024,
            "router_growth": (peak[me] - before[me]) / 1024,
            "worker_sampled": max((sampler.peak[p] - before[p] for p in workers), default=0) / 1024,
            "router_sampled": (sampler.peak[me] - before[me]) / 1024,
        }

    def result(self) -> dict[str, Any]:
        plan = self.plan
        figures = {
            key: {"label": label, "unit": unit, "better": better, "runs": self.runs[key]}
            for key, (label, unit, better) in self.meta.items()
        }
        ratios = {
            "light_vs_realtime_p50": {
                "label": "async p50 at a light load ÷ real-time c=1 p50",
                "numerator": "light_p50",
                "denominator": "realtime_p50",
                "per_message_cost": False,
            },
        }
        notes = []
        if self.args.quick:
            notes.append("QUICK RUN: 1 repetition, fewer requests; not for comparison.")
        notes.append(
            f"One worker (default settings: batching off, one session run at a time). Per "
            f"repetition: {plan.realtime} real-time calls, {plan.light} async requests at "
            f"{plan.light_rate:g}/s, then async requests with {plan.window} outstanding until "
            f"{plan.count} completed or {plan.duration_s:g} s passed. Requests submitted in all: "
            f"{self.requests:,}."
        )
        notes.append(
            "Latency runs from just before InvokeAsync to the completion notification reaching "
            "a reader in the benchmark process (result topic, fetch_max_wait_ms 10): it "
            "includes the router's publish (linger_ms 5), the worker's fetch, the run, the "
            "result and outcome written to the object store (put-if-absent, fsync) and the "
            "notification's publish and fetch."
        )
        notes.append("In the ratio table 'wrapper' reads as asynchronous and 'raw' as real-time.")
        if self.missing:
            notes.append("MISSING NOTIFICATIONS: " + "; ".join(self.missing) + ".")
        else:
            notes.append("Every request got its completion notification.")
        notes.extend(self.rows_notes)
        return {
            "title": TITLE,
            "repetitions": plan.reps,
            "config": {"plan": plan.__dict__},
            "figures": figures,
            "ratios": ratios,
            "notes": notes,
        }


def run(args: argparse.Namespace) -> dict[str, Any]:
    plan = QUICK if args.quick else FULL
    if args.reps:
        plan = Plan(**{**plan.__dict__, "reps": args.reps})
    bench = Bench(args, plan)
    asyncio.run(bench.main())
    return bench.result()


if __name__ == "__main__" and sys.argv[1:2] == ["--write-csv"]:
    print(write_csv(Path(sys.argv[2]), int(sys.argv[3])))
