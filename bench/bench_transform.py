"""Batch transform: a 1,000,000-row CSV through the router and its workers, end to end,
against a plain pyarrow + ONNX Runtime loop over the same file (the floor).

The stack is the one ``mlbus up`` runs, on the runner's broker: the registry and the router
start in this process from their composition roots (as the router's integration tests do),
and the router's deployment controller spawns the workers as real ``python -m
mlbus.inference`` processes. The model is scikit-learn's logistic regression on 30 float
features exported by skl2onnx (``x`` FP32 [N, 30] in; ``label`` INT64 [N] and
``probabilities`` FP32 [N, 2] out, zipmap off), as in ``bench_serving``.

The input is a CSV with a header (``f0..f29``) and 1,000,000 rows of 30 numbers with four
decimals (about 220 MB), generated into a temporary directory and put into the router's
object store once. Two endpoints serve the same model version: one with one worker
instance, one with two.

Per repetition, in an order rotated every repetition:

* ``floor``: ``python bench/bench_transform.py --floor`` in a process of its own: a plain
  loop that streams the file with ``pyarrow.csv.open_csv`` (pyarrow's defaults: its thread
  pool) into numpy and calls ``session.run`` (1 intra-op thread, as the workers) on slices
  of the job's ``max_records_per_batch`` rows. It writes nothing;
* ``floor_1t``: the same with ``use_threads=False`` (one core);
* ``one`` / ``two``: ``CreateTransformJob`` (default chunks: 8 MiB of the file) on the
  1-instance / 2-instance endpoint, timed from the call to the first
  ``DescribeTransformJob`` (polled every 20 ms) that reports it COMPLETED, its output
  assembled. The output (label and probabilities per row, in input order) is checked
  against ONNX Runtime in this process on every 997th row;
* ``one_10k``: the 1-instance job with ``records_per_chunk`` 10,000 (the default before
  chunks were sized by bytes).

CPU seconds are taken from ``/proc`` for the workers and from this process (router,
registry, client) around each job; divided by the job's wall time they say how many cores
each used.

Ratios pair the measurements of one repetition. Before the first repetition each endpoint
runs a small unmeasured job, so the workers' batch consumers have joined their group.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SCRIPT = str(Path(__file__).resolve())
TITLE = "Batch transform: 1,000,000-row CSV through router + workers vs a pyarrow + ORT loop"
FEATURES = 30
TARGET_RATIO = 0.7
#: records_per_chunk of the extra 1-instance job: the default before chunks were sized by
#: bytes (8 MiB, ~36,000 of these records).
RECORD_CHUNK = 10_000


@dataclass(frozen=True)
class Plan:
    reps: int
    rows: int
    batch: int = 1000
    warmup_rows: int = 20_000


FULL = Plan(reps=3, rows=1_000_000)
QUICK = Plan(reps=1, rows=200_000)


# --- model and data ---------------------------------------------------------------------------


def build_model() -> bytes:
    """Logistic regression on 30 features (skl2onnx, zipmap off)."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    x, y = make_classification(n_samples=2000, n_features=FEATURES, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = LogisticRegression(max_iter=200).fit(x.astype(np.float32), y)
    onx = to_onnx(
        model,
        initial_types=[("x", FloatTensorType([None, FEATURES]))],
        options={id(model): {"zipmap": False}},
        target_opset=17,
    )
    return bytes(onx.SerializeToString())


def write_csv(path: Path, rows: int, seed: int = 0) -> np.ndarray:
    """``rows`` rows of ``FEATURES`` numbers (4 decimals) with a header; returns them (FP32)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    x = np.round(rng.standard_normal((rows, FEATURES)), 4).astype(np.float32)
    with path.open("wb") as out:
        out.write((",".join(f"f{i}" for i in range(FEATURES)) + "\n").encode())
        step = 100_000
        for start in range(0, rows, step):
            part = x[start : start + step]
            table = pa.table({f"f{i}": part[:, i] for i in range(FEATURES)})
            pacsv.write_csv(table, out, write_options=pacsv.WriteOptions(include_header=False))
    return x


def session(model: bytes) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


# --- the floor (a process of its own) ---------------------------------------------------------


def floor(model_path: str, csv_path: str, batch: int, threads: bool) -> dict[str, float]:
    """Stream the CSV with pyarrow, run the model on ``batch``-row slices; rows and seconds."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    sess = session(Path(model_path).read_bytes())
    types = {f"f{i}": pa.float32() for i in range(FEATURES)}
    started = time.perf_counter()
    cpu_started = time.process_time()
    rows = 0
    with pacsv.open_csv(
        csv_path,
        read_options=pacsv.ReadOptions(use_threads=threads),
        convert_options=pacsv.ConvertOptions(column_types=types),
    ) as reader:
        for record_batch in reader:
            x = np.stack([c.to_numpy() for c in record_batch.columns], axis=1)
            for start in range(0, len(x), batch):
                sess.run(None, {"x": x[start : start + batch]})
            rows += len(x)
    return {
        "rows": rows,
        "seconds": time.perf_counter() - started,
        "cpu_s": time.process_time() - cpu_started,
    }


def run_floor(model_path: Path, csv_path: Path, batch: int, threads: bool) -> tuple[float, float]:
    """records/s of the floor, measured in a fresh process, and its CPU seconds."""
    done = subprocess.run(
        [
            sys.executable,
            SCRIPT,
            "--floor",
            str(model_path),
            str(csv_path),
            str(batch),
            "1" if threads else "0",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return float(result["rows"] / result["seconds"]), float(result["cpu_s"])


# --- the stack --------------------------------------------------------------------------------


class Stack:
    """Registry + router in this process; the controller's workers as processes."""

    def __init__(self, bootstrap: str, home: Path) -> None:
        self.bootstrap = bootstrap
        self.home = home

    async def start(self) -> None:
        from mlbus.core.rpc import create_channel, wait_for_ready
        from mlbus.core.settings import (
            GrpcSettings,
            KafkaSettings,
            StorageSettings,
            TelemetrySettings,
        )
        from mlbus.registry.app import build_app as build_registry
        from mlbus.registry.settings import RegistrySettings
        from mlbus.router.app import build_app
        from mlbus.router.settings import RouterSettings
        from mlbus.router.v1 import router_pb2_grpc as rpb_grpc
        from mlbus.sdk.registry import AsyncRegistryClient

        kafka = KafkaSettings(
            bootstrap_servers=self.bootstrap,
            topic_namespace=f"bench-transform-{uuid.uuid4().hex[:8]}",
        )
        storage = StorageSettings(root=self.home / "objects")
        self.registry_app = build_registry(
            RegistrySettings(
                grpc_port=0,
                metrics_port=0,
                home=self.home,
                kafka=kafka,
                storage=storage,
                grpc=GrpcSettings(shutdown_grace_s=1.0),
                allow_self_approval=True,
                outbox_poll_interval_s=0.1,
            )
        )
        registry_port = await self.registry_app.start()
        self.registry = AsyncRegistryClient(f"127.0.0.1:{registry_port}", actor="bench")
        settings = RouterSettings(
            grpc_port=0,
            metrics_port=0,
            home=self.home,
            kafka=kafka,
            storage=storage,
            telemetry=TelemetrySettings(metrics_exporter="none"),
            grpc=GrpcSettings(shutdown_grace_s=1.0),
            registry_address=f"127.0.0.1:{registry_port}",
            controller_group_id=f"bench-router-{uuid.uuid4().hex[:8]}",
        )
        self.kafka = kafka
        self.router = build_app(settings)
        router_port = await self.router.start()
        self.channel = create_channel(f"127.0.0.1:{router_port}", settings.grpc)
        await wait_for_ready(self.channel, timeout=30)
        self.stub = rpb_grpc.RouterServiceStub(self.channel)

    async def stop(self) -> None:
        for step in (
            lambda: self.channel.close(None),
            self.router.stop,
            self.registry.close,
            self.registry_app.stop,
        ):
            with contextlib.suppress(Exception):
                await step()

    @property
    def store(self) -> Any:
        return self.router.transform.store

    async def deploy(self, endpoint: str, model: bytes, instances: int) -> None:
        version = await self.registry.register(model, group=endpoint, create_group=True)
        await self.registry.approve(endpoint, version.version, reason="bench")
        created = await self.registry.create_endpoint(
            endpoint,
            [
                {
                    "name": "main",
                    "model_group": endpoint,
                    "model_version": version.version,
                    "instance_count": instances,
                }
            ],
        )
        revision = created.current_config.revision
        controller = self.router.controller
        if not await controller.wait_for(
            lambda: controller.applied_revision(endpoint) >= revision, 180
        ):
            raise RuntimeError(f"{endpoint} not deployed: {controller.describe()}")

    async def group_members(self, endpoint: str) -> int:
        """Members of the endpoint's batch-chunk consumer group (-1 if the broker won't say)."""
        from aiokafka.admin import AIOKafkaAdminClient

        from mlbus.core.async_inference import batch_group_id

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            described = await admin.describe_consumer_groups([batch_group_id(endpoint)])
        except Exception:
            return -1
        finally:
            await admin.close()
        groups = described[0].groups if described else []
        return len(groups[0][5]) if groups else 0

    async def put_file(self, key: str, path: Path) -> str:
        async def blocks() -> AsyncIterator[bytes]:
            with path.open("rb") as handle:
                while block := handle.read(8 << 20):
                    yield block

        ref = await self.store.put(key, blocks(), content_type="text/csv")
        return str(ref.uri)

    async def transform(
        self, endpoint: str, input_uri: str, batch: int, tag: str, records_per_chunk: int = 0
    ) -> tuple[float, Any]:
        """Seconds from CreateTransformJob to COMPLETED seen by DescribeTransformJob; the job."""
        from mlbus.router.v1 import events_pb2 as rev
        from mlbus.router.v1 import router_pb2 as rpb

        terminal = {
            rev.TRANSFORM_JOB_STATUS_COMPLETED,
            rev.TRANSFORM_JOB_STATUS_COMPLETED_WITH_ERRORS,
            rev.TRANSFORM_JOB_STATUS_FAILED,
            rev.TRANSFORM_JOB_STATUS_STOPPED,
        }
        output = self.store.uri_for_prefix(f"bench-out/{tag}/")
        spec = rpb.TransformJobSpec(
            endpoint=endpoint,
            input_uri=input_uri,
            output_uri=output,
            max_records_per_batch=batch,
            records_per_chunk=records_per_chunk,
            job_id=tag,
        )
        started = time.perf_counter()
        await self.stub.CreateTransformJob(rpb.CreateTransformJobRequest(spec=spec), timeout=30)
        while True:
            job = (
                await self.stub.DescribeTransformJob(
                    rpb.DescribeTransformJobRequest(job_id=tag), timeout=10
                )
            ).job
            if job.status in terminal:
                break
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - started
        if job.status != rev.TRANSFORM_JOB_STATUS_COMPLETED:
            raise RuntimeError(f"job {tag}: {rev.TransformJobStatus.Name(job.status)} {job.reason}")
        return elapsed, job

    def worker_pids(self, endpoint: str) -> list[int]:
        for item in self.router.controller.describe():
            if item["endpoint"] == endpoint:
                return [int(w["pid"]) for w in item["workers"] if w.get("pid")]
        return []

    def fallbacks(self, endpoint: str) -> int:
        """Chunks the endpoint's workers ran record by record (from their logs)."""
        count = 0
        for path in (self.home / "logs" / "workers").glob(f"{endpoint}_*.log"):
            count += path.read_text(errors="replace").count("chunk runs record by record")
        return count

    async def cleanup(self, tag: str) -> None:
        """Delete a job's objects (the in-memory broker and the disk need not keep them)."""
        from mlbus.core import transform as tf

        for prefix in (tf.job_prefix(tag), f"bench-out/{tag}/"):
            uris = [info.uri async for info in self.store.list(prefix)]
            for uri in uris:
                await self.store.delete(uri)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (0 if it is gone)."""
    try:
        parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def check_output(data: bytes, expected: tuple[np.ndarray, np.ndarray], step: int = 997) -> str:
    """'' when the output rows are the model's (label, probabilities) in input order."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    labels, probabilities = expected
    table = pacsv.read_csv(
        pa.py_buffer(data),
        read_options=pacsv.ReadOptions(autogenerate_column_names=True),
    )
    if table.num_rows != len(labels):
        return f"{table.num_rows} output rows for {len(labels)} input rows"
    if table.num_columns != 3:
        return f"expected 3 output columns (label, p0, p1), got {table.num_columns}"
    picked = np.arange(0, len(labels), step)
    got_labels = table.column(0).to_numpy()[picked]
    got = np.stack([table.column(i).to_numpy()[picked] for i in (1, 2)], axis=1)
    if not np.array_equal(got_labels, labels[picked]):
        return "labels differ from ONNX Runtime's"
    if not np.allclose(got, probabilities[picked], rtol=1e-5, atol=1e-6):
        return f"probabilities differ (max {np.abs(got - probabilities[picked]).max():.2e})"
    return ""


# --- the benchmark ----------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, plan: Plan) -> None:
        self.args = args
        self.plan = plan
        self.runs: dict[str, list[float]] = {}
        self.router_s: dict[str, list[float]] = {}
        self.notes: list[str] = []
        self.chunks: dict[str, int] = {}
        #: CPU seconds per measurement: the floor's process; the workers + this process.
        self.cpu: dict[str, list[float]] = {}
        self.cpu_split: dict[str, list[tuple[float, float]]] = {}
        self.fallback_chunks: dict[str, int] = {}

    def log(self, text: str) -> None:
        if self.args.verbose:
            print(f"  {text}", flush=True)

    async def main(self) -> None:
        plan = self.plan
        with tempfile.TemporaryDirectory(prefix="mlbus-bench-transform-") as tmp:
            work = Path(tmp)
            model = build_model()
            model_path = work / "model.onnx"
            model_path.write_bytes(model)
            csv_path = work / "data.csv"
            started = time.perf_counter()
            x = await asyncio.to_thread(write_csv, csv_path, plan.rows)
            self.size_mb = csv_path.stat().st_size / 1e6
            self.log(
                f"{plan.rows:,} rows, {self.size_mb:.0f} MB in {time.perf_counter() - started:.1f} s"
            )
            sess = session(model)
            label, probabilities = sess.run(None, {"x": x})
            expected = (np.asarray(label), np.asarray(probabilities))
            warm_path = work / "warm.csv"
            await asyncio.to_thread(write_csv, warm_path, plan.warmup_rows, 1)

            stack = Stack(self.args.bootstrap_servers, work / "home")
            await stack.start()
            try:
                endpoints = {"one": "bench-transform-1", "two": "bench-transform-2"}
                for key, name in endpoints.items():
                    await stack.deploy(name, model, 1 if key == "one" else 2)
                input_uri = await stack.put_file("bench-in/data.csv", csv_path)
                warm_uri = await stack.put_file("bench-in/warm.csv", warm_path)
                for key, name in endpoints.items():
                    wanted = 1 if key == "one" else 2
                    deadline = time.monotonic() + 60
                    while True:
                        tag = f"warm-{key}-{uuid.uuid4().hex[:6]}"
                        await stack.transform(name, warm_uri, plan.batch, tag)
                        await stack.cleanup(tag)
                        members = await stack.group_members(name)
                        if members in (-1, wanted) or time.monotonic() > deadline:
                            break
                    self.log(f"{name}: warm, {members} batch consumer(s) in the group")
                kinds = ["floor", "floor_1t", "one", "two", "one_10k"]
                for rep in range(plan.reps):
                    shift = rep % len(kinds)
                    for kind in kinds[shift:] + kinds[:shift]:
                        if kind.startswith("floor"):
                            rate, cpu = await asyncio.to_thread(
                                run_floor, model_path, csv_path, plan.batch, kind == "floor"
                            )
                            self.runs.setdefault(kind, []).append(rate)
                            self.cpu.setdefault(kind, []).append(cpu)
                            self.log(
                                f"rep {rep + 1} {kind}: {rate:,.0f} records/s, CPU {cpu:.2f} s"
                            )
                            continue
                        tag = f"bench-{kind}-{rep}-{uuid.uuid4().hex[:6]}"
                        endpoint = endpoints["one" if kind == "one_10k" else kind]
                        pids = stack.worker_pids(endpoint)
                        before = [cpu_seconds(pid) for pid in pids], own_cpu_seconds()
                        seconds, job = await stack.transform(
                            endpoint,
                            input_uri,
                            plan.batch,
                            tag,
                            records_per_chunk=RECORD_CHUNK if kind == "one_10k" else 0,
                        )
                        workers_cpu = sum(
                            cpu_seconds(pid) - b for pid, b in zip(pids, before[0], strict=True)
                        )
                        router_cpu = own_cpu_seconds() - before[1]
                        self.cpu.setdefault(kind, []).append(workers_cpu + router_cpu)
                        self.cpu_split.setdefault(kind, []).append((workers_cpu, router_cpu))
                        rate = plan.rows / seconds
                        self.runs.setdefault(kind, []).append(rate)
                        self.chunks[kind] = job.chunks_total
                        router = job.end_time.ToNanoseconds() - job.create_time.ToNanoseconds()
                        self.router_s.setdefault(kind, []).append(router / 1e9)
                        data = await stack.store.read_bytes(job.outputs[0].uri)
                        problem = await asyncio.to_thread(check_output, data, expected)
                        if problem:
                            self.notes.append(
                                f"WRONG OUTPUT, repetition {rep + 1}, {kind}: {problem}"
                            )
                        await stack.cleanup(tag)
                        self.log(
                            f"rep {rep + 1} {kind}: {rate:,.0f} records/s ({seconds:.2f} s, "
                            f"{job.chunks_total} chunks, CPU workers {workers_cpu:.2f} s + "
                            f"router {router_cpu:.2f} s)"
                            f"{' WRONG: ' + problem if problem else ''}"
                        )
                self.fallback_chunks = {k: stack.fallbacks(n) for k, n in endpoints.items()}
            finally:
                await stack.stop()

    def paired(self, top: str, bottom: str) -> float | None:
        """Median of ``top ÷ bottom`` over the repetitions."""
        pairs = [
            a / b
            for a, b in zip(self.runs.get(top, []), self.runs.get(bottom, []), strict=False)
            if b
        ]
        return statistics.median(pairs) if pairs else None

    def result(self) -> dict[str, Any]:
        plan = self.plan
        labels = {
            "floor": "floor: pyarrow open_csv (default threads) → numpy → session.run, one process",
            "floor_1t": "floor, pyarrow use_threads=False (one core)",
            "one": "transform job, 1 worker instance (create → COMPLETED)",
            "two": "transform job, 2 worker instances (create → COMPLETED)",
            "one_10k": f"transform job, 1 worker instance, records_per_chunk {RECORD_CHUNK:,}",
        }
        figures = {
            key: {"label": labels[key], "unit": "records/s", "better": "higher", "runs": runs}
            for key, runs in self.runs.items()
        }
        for key, runs in self.cpu.items():
            figures[f"{key}_cpu"] = {
                "label": f"{labels[key].split(':')[0].split(' (')[0]}: CPU seconds "
                + ("(its process)" if key.startswith("floor") else "(workers + router process)"),
                "unit": "s",
                "better": "lower",
                "runs": runs,
            }
        ratios = {
            "one_vs_floor": {
                "label": "1 instance ÷ floor (pyarrow threads)",
                "numerator": "one",
                "denominator": "floor",
                "per_message_cost": False,
            },
            "one_vs_floor_1t": {
                "label": "1 instance ÷ floor (pyarrow one thread)",
                "numerator": "one",
                "denominator": "floor_1t",
                "per_message_cost": False,
            },
            "two_vs_floor": {
                "label": "2 instances ÷ floor (pyarrow threads)",
                "numerator": "two",
                "denominator": "floor",
                "per_message_cost": False,
            },
            "cpu_floor_vs_one": {
                "label": "CPU: floor (one thread) ÷ 1-instance job (above 1: the job uses less)",
                "numerator": "floor_1t_cpu",
                "denominator": "one_cpu",
                "per_message_cost": False,
            },
            "one_10k_vs_one": {
                "label": f"1 instance, {RECORD_CHUNK:,} records per chunk ÷ 8 MiB chunks",
                "numerator": "one_10k",
                "denominator": "one",
                "per_message_cost": False,
            },
            "two_vs_one": {
                "label": "2 instances ÷ 1 instance (scaling)",
                "numerator": "two",
                "denominator": "one",
                "per_message_cost": False,
            },
        }
        notes = []
        if self.args.quick:
            notes.append(f"QUICK RUN: {plan.rows:,} rows, 1 repetition; not for comparison.")
        notes.append(
            f"Input: {plan.rows:,} rows × {FEATURES} FP32 features, 4 decimals, header, "
            f"{getattr(self, 'size_mb', 0):.0f} MB; max_records_per_batch {plan.batch} for "
            "the jobs and the floor; other job settings at their defaults "
            f"(chunks per job: {self.chunks or 'n/a'})."
        )
        for floor_key, what in (("floor", "pyarrow with its threads"), ("floor_1t", "one thread")):
            value = self.paired("one", floor_key)
            if value is not None:
                verdict = "PASS" if value >= TARGET_RATIO else "FAIL"
                notes.append(
                    f"Target: one worker ≥ {TARGET_RATIO:.0%} of the floor ({what}): "
                    f"**{verdict}** ({value:.2f}, median of paired ratios)."
                )
        for key, splits in self.cpu_split.items():
            seconds = [plan.rows / rate for rate in self.runs[key]]
            workers = statistics.median(w / t for (w, _), t in zip(splits, seconds, strict=True))
            router = statistics.median(r / t for (_, r), t in zip(splits, seconds, strict=True))
            notes.append(
                f"{labels[key]}: CPU of the workers {statistics.median(w for w, _ in splits):.2f} s "
                f"and of this process (router, registry, client) "
                f"{statistics.median(r for _, r in splits):.2f} s (medians); cores used "
                f"during the job: workers {workers:.2f}, this process {router:.2f} "
                f"(of {os.cpu_count()})."
            )
        if self.fallback_chunks:
            notes.append(
                "Chunks the workers ran record by record (fallback) over the whole run: "
                f"{self.fallback_chunks} (0 expected: the data has no bad records)."
            )
        for key, values in self.router_s.items():
            notes.append(
                f"{labels[key]}: router's create → end time, median "
                f"{statistics.median(values):.2f} s."
            )
        notes.append(
            "In the ratio table 'wrapper' reads as the job and 'raw' as the floor (or 1 "
            "instance); above 1 the job is faster."
        )
        notes.append(
            "Every job's output was checked (row count; label and probabilities of every "
            "997th row against ONNX Runtime in this process)"
            + ("." if not any("WRONG" in n for n in self.notes) else ": see below.")
        )
        notes += self.notes
        return {
            "title": TITLE,
            "repetitions": plan.reps,
            "config": {"plan": plan.__dict__, "packages": _versions()},
            "figures": figures,
            "ratios": ratios,
            "notes": notes,
        }


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in ("pyarrow", "numpy", "skl2onnx", "scikit-learn", "onnxruntime"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    plan = QUICK if args.quick else FULL
    if args.reps:
        plan = Plan(**{**plan.__dict__, "reps": args.reps})
    rows = os.environ.get("MLBUS_BENCH_TRANSFORM_ROWS")
    if rows:
        plan = Plan(**{**plan.__dict__, "rows": int(rows)})
    bench = Bench(args, plan)
    asyncio.run(bench.main())
    return bench.result()


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "--floor":
    print(json.dumps(floor(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1")))
