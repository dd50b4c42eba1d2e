"""Real-time inference worker: ModelInfer latency and throughput, dynamic batching off vs on,
against a bare grpc.aio + ONNX Runtime server.

The worker runs as the deployment controller will run it: ``python -m mlbus.inference`` in a
process of its own, settings from the environment (defaults otherwise: inline runs, the
asynchronous-request consumer, Prometheus metrics, no traces exporter), the model in a local
object store, the bus on the runner's broker. The clients run in this process:
``concurrency`` coroutines on one grpc.aio channel with the generated v2 stub and no
interceptors, each sending a pre-built one-row request (raw FP32 contents), awaiting the
response, and sending the next, for a fixed time after a warm-up.

Two models, built here with onnx.helper (random weights, FP32):

* ``small``: MLP 30 → 64 → 64 → 2 (the per-request cost of the server decides);
* ``heavy``: MLP 256 → 1536 → 1536 → 1536 → 10 (≥ 0.3 ms per row in ONNX Runtime with one
  thread, where merging rows into one matrix product pays; the issue's 1024-wide example
  measured 0.2 ms per row here).

Per repetition and model, a fresh worker with batching off (``max_batch_size`` 1) and one with
batching on (``max_batch_size`` 16, ``max_queue_delay_us`` 0: requests that arrive while a
run is busy form the next batch) are started in rotating order, for the heavy model also one
with a 2 ms queue delay (fuller, fewer runs, at the cost of that delay at low load); all use
one intra-op and one inter-op thread and one session run at a time. Next to the small-model
workers, the same
load runs against a *bare* server (``python bench/bench_inference.py --bare-server``): grpc.aio
with the generated servicer calling ``session.run``, no validation, telemetry or batching, the
reference for what the framework costs. The floor is ``session.run`` in this process.

Cold start is spawn → health SERVING (probed with fast reconnects) with the model loaded and
warm, read from the batching-off small-model worker. Workers import from a bytecode cache
private to the run (``PYTHONPYCACHEPREFIX``, filled by one unmeasured start), as a deployed
worker does (deploy/Dockerfile compiles bytecode); this machine's environment sets
``PYTHONDONTWRITEBYTECODE=1`` and the virtualenv holds no ``.pyc`` files, so once per
repetition a worker is also started from an empty cache (every module compiled from source)
and that figure is recorded separately. Idle RSS is read one second after SERVING.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import onnxruntime as ort
from grpc_health.v1 import health_pb2, health_pb2_grpc
from onnx import TensorProto, helper, numpy_helper

from mlbus.core.storage import LocalObjectStore
from mlbus.inference.v2 import grpc_service_pb2 as pb
from mlbus.inference.v2 import grpc_service_pb2_grpc as pb_grpc
from mlbus.sdk.local.broker import free_port

#: This file, run as the bare reference server (``--bare-server``).
SCRIPT = str(Path(__file__).resolve())

TITLE = "Inference worker: ModelInfer over v2 gRPC, batching off vs on, vs a bare grpc.aio server"

MODELS: dict[str, dict[str, Any]] = {
    "small": {"inputs": 30, "hidden": (64, 64), "outputs": 2},
    "heavy": {"inputs": 256, "hidden": (1536, 1536, 1536), "outputs": 10},
}
BATCH_ON = {"INFERENCE_MAX_BATCH_SIZE": "16", "INFERENCE_MAX_QUEUE_DELAY_US": "0"}
#: Batching with a queue delay of about two heavy-model runs (heavy model only): requests
#: wait for others, so runs are fuller and fewer.
BATCH_DELAY = {"INFERENCE_MAX_BATCH_SIZE": "16", "INFERENCE_MAX_QUEUE_DELAY_US": "2000"}
BATCH_OFF = {"INFERENCE_MAX_BATCH_SIZE": "1"}
MODES = {"off": BATCH_OFF, "on": BATCH_ON, "delay": BATCH_DELAY}


@dataclass(frozen=True)
class Plan:
    """How long each measurement runs."""

    reps: int
    warmup_s: float
    c1_s: float
    c16_s: float
    concurrency: int = 16
    floor_runs: int = 2000


FULL = Plan(reps=3, warmup_s=0.5, c1_s=3.0, c16_s=4.0)
QUICK = Plan(reps=1, warmup_s=0.3, c1_s=1.0, c16_s=1.5, floor_runs=300)


# --- models -----------------------------------------------------------------------------------


def mlp(inputs: int, hidden: Sequence[int], outputs: int, seed: int = 0) -> bytes:
    """x FP32 [N, inputs] → ReLU MLP → y FP32 [N, outputs] (random weights)."""
    rng = np.random.default_rng(seed)
    nodes, initializers = [], []
    previous, width = "x", inputs
    sizes = [*hidden, outputs]
    for layer, size in enumerate(sizes):
        w = (rng.standard_normal((width, size)) / np.sqrt(width)).astype(np.float32)
        b = (rng.standard_normal(size) * 0.1).astype(np.float32)
        initializers += [
            numpy_helper.from_array(w, f"w{layer}"),
            numpy_helper.from_array(b, f"b{layer}"),
        ]
        last = layer == len(sizes) - 1
        nodes.append(helper.make_node("MatMul", [previous, f"w{layer}"], [f"m{layer}"]))
        nodes.append(
            helper.make_node("Add", [f"m{layer}", f"b{layer}"], ["y" if last else f"a{layer}"])
        )
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{layer}"], [f"h{layer}"]))
            previous = f"h{layer}"
        width = size
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", inputs])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", outputs])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def request_for(inputs: int, seed: int = 1) -> pb.ModelInferRequest:
    x = np.random.default_rng(seed).standard_normal((1, inputs)).astype(np.float32)
    request = pb.ModelInferRequest(model_name="bench")
    request.inputs.add(name="x", datatype="FP32", shape=[1, inputs])
    request.raw_input_contents.append(x.tobytes())
    return request


def floor_us(model: bytes, inputs: int, runs: int, *, rows: int = 1) -> float:
    """Median µs of a ``rows``-row ``session.run`` in this process, one thread (the floor)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((rows, inputs)).astype(np.float32)
    for _ in range(min(50, runs)):
        session.run(None, {"x": x})
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, {"x": x})
        samples.append((time.perf_counter() - started) * 1e6)
    return statistics.median(samples)


# --- the worker process -----------------------------------------------------------------------


@dataclass
class Worker:
    """A worker process started for one measurement."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    cold_start_s: float

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def metrics_port(self) -> int | None:
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("metrics_port"):
                    return int(record["metrics_port"])
        return None

    def counters(self) -> dict[str, float]:
        """Session runs (all, inline) and OK requests so far, from the worker's Prometheus
        endpoint."""
        port = self.metrics_port()
        if port is None:
            return {}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        totals: dict[str, float] = {"runs": 0.0, "inline_runs": 0.0, "requests": 0.0}
        # Session runs by where they ran; the request-duration histogram counts requests.
        for line in text.splitlines():
            if line.startswith("mlbus_inference_session_runs_total"):
                value = float(line.rsplit(" ", 1)[1])
                totals["runs"] += value
                if 'mlbus_inference_run="inline"' in line:
                    totals["inline_runs"] += value
            elif line.startswith("mlbus_inference_request_duration_seconds_count") and (
                'rpc_grpc_status="OK"' in line
            ):
                totals["requests"] += float(line.rsplit(" ", 1)[1])
        return totals

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


#: Reconnect quickly while the worker is not listening yet: with gRPC's default backoff
#: (1 s, then ×1.6) a probe would see readiness up to seconds after it happened, and the
#: cold start would measure the probe's backoff instead of the worker.
PROBE_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 10),
    ("grpc.min_reconnect_backoff_ms", 10),
    ("grpc.max_reconnect_backoff_ms", 20),
]


async def wait_serving(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=PROBE_OPTIONS) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with status {proc.returncode}")
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await health.Check(
                    health_pb2.HealthCheckRequest(), timeout=1, wait_for_ready=True
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            await asyncio.sleep(0.005)
    raise RuntimeError(f"worker on port {port} not SERVING after {timeout} s")


def spawn(
    env: dict[str, str], log_path: Path, argv: Sequence[str] = ("-m", "mlbus.inference")
) -> subprocess.Popen[bytes]:
    """``python -m mlbus.inference`` (or ``argv``) with ``env``, output to ``log_path``."""
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, *argv], env=env, stdout=log, stderr=log)


def python_env(pycache: Path | None) -> dict[str, str]:
    """This process's environment, with the bytecode cache at ``pycache`` (written and read)
    or, for None, none at all (every module compiled from source)."""
    env = dict(os.environ)
    if pycache is None:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["PYTHONPYCACHEPREFIX"] = tempfile.mkdtemp(prefix="mlbus-bench-nopyc-")
    else:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


async def start_worker(
    bootstrap: str,
    root: Path,
    uri: str,
    sha256: str,
    extra: dict[str, str],
    log_dir: Path,
    *,
    pycache: Path | None = None,
) -> Worker:
    port = free_port()
    env = {
        **python_env(pycache),
        "INFERENCE_GRPC_PORT": str(port),
        "INFERENCE_METRICS_PORT": "0",
        "INFERENCE_MODEL_NAME": "bench",
        "INFERENCE_VARIANT": "v",
        "INFERENCE_ARTIFACT_URI": uri,
        "INFERENCE_ARTIFACT_SHA256": sha256,
        "MLBUS_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "MLBUS_KAFKA_TOPIC_NAMESPACE": "bench-inference",
        "MLBUS_STORAGE_ROOT": str(root),
        "MLBUS_GRPC_SHUTDOWN_GRACE_S": "1",
        **extra,
    }
    log_path = log_dir / f"worker-{port}.log"
    started = time.perf_counter()
    proc = spawn(env, log_path)
    try:
        await wait_serving(port, proc)
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise
    return Worker(proc, port, log_path, time.perf_counter() - started)


async def start_bare(model_path: Path, log_dir: Path, pycache: Path) -> Worker:
    """The bare grpc.aio + ONNX Runtime server (see :func:`bare_server`) on a free port."""
    port = free_port()
    log_path = log_dir / f"bare-{port}.log"
    started = time.perf_counter()
    argv = (SCRIPT, "--bare-server", str(model_path), str(port))
    proc = spawn(python_env(pycache), log_path, argv)
    try:
        await wait_serving(port, proc)
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise
    return Worker(proc, port, log_path, time.perf_counter() - started)


# --- load -------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


@dataclass
class Load:
    """What one load run measured."""

    rate: float
    p50_ms: float
    p99_ms: float
    errors: int


async def drive(
    port: int, request: pb.ModelInferRequest, concurrency: int, plan_s: float, warmup_s: float
) -> Load:
    options = [("grpc.max_receive_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        loop = asyncio.get_running_loop()
        measure_from = loop.time() + warmup_s
        stop_at = measure_from + plan_s
        latencies: list[float] = []
        errors = 0

        async def client() -> None:
            nonlocal errors
            while True:
                started = loop.time()
                if started >= stop_at:
                    return
                try:
                    await stub.ModelInfer(request, timeout=10)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                if started >= measure_from:
                    latencies.append(loop.time() - started)

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return Load(
        rate=len(latencies) / plan_s,
        p50_ms=percentile(latencies, 50) * 1000,
        p99_ms=percentile(latencies, 99) * 1000,
        errors=errors,
    )


# --- the benchmark ----------------------------------------------------------------------------


class Recorder:
    """Collects the runs of every figure, keyed by name."""

    def __init__(self) -> None:
        self.figures: dict[str, dict[str, Any]] = {}
        self.ratios: dict[str, dict[str, Any]] = {}

    def add(self, name: str, value: float, *, label: str, unit: str, better: str) -> None:
        figure = self.figures.setdefault(
            name, {"label": label, "unit": unit, "better": better, "runs": []}
        )
        figure["runs"].append(value)

    def ratio(self, name: str, numerator: str, denominator: str, label: str) -> None:
        self.ratios.setdefault(
            name,
            {
                "label": label,
                "numerator": numerator,
                "denominator": denominator,
                "per_message_cost": False,
            },
        )


class Bench:
    """One run of the inference benchmark."""

    def __init__(self, bootstrap: str, plan: Plan, *, verbose: bool) -> None:
        self.bootstrap = bootstrap
        self.plan = plan
        self.verbose = verbose
        self.rec = Recorder()
        self.batch_sizes: dict[str, list[float]] = {
            "small_on": [],
            "heavy_on": [],
            "heavy_delay": [],
        }
        self.inline_share: list[float] = []
        self.errors = 0

    def log(self, text: str) -> None:
        if self.verbose:
            print(f"  {text}", flush=True)

    async def main(self) -> None:
        with tempfile.TemporaryDirectory(prefix="mlbus-bench-inference-") as tmp:
            self.tmp = Path(tmp)
            self.pycache = self.tmp / "pycache"
            root = self.tmp / "objects"
            store = LocalObjectStore(root)
            await store.start()
            refs, models = {}, {}
            for name, shape in MODELS.items():
                models[name] = mlp(**shape)
                refs[name] = await store.put_content(models[name])
                assert refs[name].sha256 == hashlib.sha256(models[name]).hexdigest()
            await store.aclose()
            small_path = self.tmp / "small.onnx"
            small_path.write_bytes(models["small"])
            self.refs, self.root = refs, root
            # Fill the bytecode cache (worker and bare server), unmeasured.
            warm = await self.start("small", BATCH_OFF)
            await asyncio.to_thread(warm.stop)
            bare = await start_bare(small_path, self.tmp, self.pycache)
            await asyncio.to_thread(bare.stop)
            for rep in range(self.plan.reps):
                self.log(f"repetition {rep + 1}/{self.plan.reps}")
                self.floors(models)
                cold = await self.start("small", BATCH_OFF, pycache=False)
                await asyncio.to_thread(cold.stop)
                self.rec.add(
                    "cold_start_nocache_s",
                    cold.cold_start_s,
                    label="worker cold start without a bytecode cache (every module compiled)",
                    unit="s",
                    better="lower",
                )
                self.log(f"cold start without bytecode cache {cold.cold_start_s:.2f} s")
                for name in MODELS:
                    modes = ["off", "on"] if rep % 2 == 0 else ["on", "off"]
                    if name == "small":
                        modes.insert(rep % 3, "bare")
                    else:
                        modes.insert((rep + 1) % 3, "delay")
                    for mode in modes:
                        if mode == "bare":
                            await self.measure_bare(small_path)
                        else:
                            await self.measure(name, mode)
        for name in MODELS:
            self.rec.ratio(
                f"{name}_batching_c16",
                f"{name}_on_c16_rate",
                f"{name}_off_c16_rate",
                f"{name}: batching on ÷ off, c=16 throughput",
            )
        self.rec.ratio(
            "heavy_batching_delay_c16",
            "heavy_delay_c16_rate",
            "heavy_off_c16_rate",
            "heavy: batching on with a 2 ms queue delay ÷ off, c=16 throughput",
        )
        self.rec.ratio(
            "small_batching_c1",
            "small_on_c1_p50",
            "small_off_c1_p50",
            "small: batching on ÷ off, c=1 p50 latency",
        )
        self.rec.ratio(
            "small_vs_bare_c16",
            "small_off_c16_rate",
            "bare_c16_rate",
            "small: worker ÷ bare grpc.aio server, c=16 throughput",
        )
        self.rec.ratio(
            "small_vs_bare_c1",
            "small_off_c1_p50",
            "bare_c1_p50",
            "small: worker ÷ bare grpc.aio server, c=1 p50 latency",
        )

    def floors(self, models: dict[str, bytes]) -> None:
        for name, shape in MODELS.items():
            runs = self.plan.floor_runs // (1 if name == "small" else 10)
            floor = floor_us(models[name], shape["inputs"], runs)
            self.rec.add(
                f"{name}_floor_us",
                floor,
                label=f"{name}: ONNX Runtime session.run in process, 1 row (floor)",
                unit="µs",
                better="lower",
            )
            self.log(f"{name}: session.run floor {floor:.1f} µs")
        rows = int(BATCH_ON["INFERENCE_MAX_BATCH_SIZE"])
        runs = self.plan.floor_runs // 10
        per_row = floor_us(models["heavy"], MODELS["heavy"]["inputs"], runs, rows=rows) / rows
        self.rec.add(
            "heavy_floor_batch_us_per_row",
            per_row,
            label=f"heavy: ONNX Runtime session.run in process, {rows} rows, per row",
            unit="µs",
            better="lower",
        )
        self.log(f"heavy: session.run of {rows} rows {per_row:.1f} µs per row")

    async def start(self, name: str, extra: dict[str, str], *, pycache: bool = True) -> Worker:
        ref = self.refs[name]
        return await start_worker(
            self.bootstrap,
            self.root,
            ref.uri,
            ref.sha256,
            extra,
            self.tmp,
            pycache=self.pycache if pycache else None,
        )

    async def measure(self, name: str, mode: str) -> None:
        plan = self.plan
        worker = await self.start(name, MODES[mode])
        try:
            if name == "small" and mode == "off":
                self.rec.add(
                    "cold_start_s",
                    worker.cold_start_s,
                    label="worker cold start: spawn → SERVING, small model loaded and warm",
                    unit="s",
                    better="lower",
                )
                await asyncio.sleep(1.0)
                self.rec.add(
                    "idle_rss_mb",
                    worker.rss_mb(),
                    label="worker RSS when idle, 1 s after SERVING (small model)",
                    unit="MiB",
                    better="lower",
                )
            request = request_for(MODELS[name]["inputs"])
            one = await drive(worker.port, request, 1, plan.c1_s, plan.warmup_s)
            before = worker.counters()
            many = await drive(worker.port, request, plan.concurrency, plan.c16_s, plan.warmup_s)
            after = worker.counters()
        finally:
            await asyncio.to_thread(worker.stop)
        self.errors += one.errors + many.errors
        runs = after.get("runs", 0) - before.get("runs", 0)
        served = after.get("requests", 0) - before.get("requests", 0)
        inline = after.get("inline_runs", 0) - before.get("inline_runs", 0)
        per_run = served / runs if runs else float("nan")
        if mode != "off":
            self.batch_sizes[f"{name}_{mode}"].append(per_run)
        if name == "small" and mode == "off" and runs:
            self.inline_share.append(inline / runs)
        what = {"off": "batching off", "on": "batching on", "delay": "batching on, 2 ms delay"}
        self.record(f"{name}_{mode}", f"{name}, {what[mode]}", one, many)
        self.log(
            f"{name}, {what[mode]}: c=1 p50 {one.p50_ms:.2f} ms p99 {one.p99_ms:.2f} ms; "
            f"c={plan.concurrency} {many.rate:,.0f}/s p99 {many.p99_ms:.1f} ms; "
            f"{per_run:.1f} requests per session run, {inline / runs if runs else 0:.0%} "
            f"inline; cold start {worker.cold_start_s:.2f} s"
        )

    async def measure_bare(self, model_path: Path) -> None:
        plan = self.plan
        bare = await start_bare(model_path, self.tmp, self.pycache)
        try:
            request = request_for(MODELS["small"]["inputs"])
            one = await drive(bare.port, request, 1, plan.c1_s, plan.warmup_s)
            many = await drive(bare.port, request, plan.concurrency, plan.c16_s, plan.warmup_s)
        finally:
            await asyncio.to_thread(bare.stop)
        self.errors += one.errors + many.errors
        self.record("bare", "small, bare grpc.aio + ONNX Runtime server", one, many)
        self.log(
            f"bare server: c=1 p50 {one.p50_ms:.2f} ms p99 {one.p99_ms:.2f} ms; "
            f"c={plan.concurrency} {many.rate:,.0f}/s p99 {many.p99_ms:.1f} ms"
        )

    def record(self, tag: str, what: str, one: Load, many: Load) -> None:
        concurrency = self.plan.concurrency
        self.rec.add(
            f"{tag}_c1_p50", one.p50_ms, label=f"{what}: c=1 p50", unit="ms", better="lower"
        )
        self.rec.add(
            f"{tag}_c1_p99", one.p99_ms, label=f"{what}: c=1 p99", unit="ms", better="lower"
        )
        self.rec.add(
            f"{tag}_c16_rate",
            many.rate,
            label=f"{what}: c={concurrency} throughput",
            unit="inf/s",
            better="higher",
        )
        self.rec.add(
            f"{tag}_c16_p99",
            many.p99_ms,
            label=f"{what}: c={concurrency} p99",
            unit="ms",
            better="lower",
        )


def notes(bench: Bench) -> list[str]:
    sizes = {
        name: f"{statistics.median(values):.1f}" if values else "n/a"
        for name, values in bench.batch_sizes.items()
    }
    inline = f"{statistics.median(bench.inline_share):.0%}" if bench.inline_share else "n/a"
    return [
        "Client and worker share the machine's 2 cores with the broker (capture is off; the "
        "worker's asynchronous-request consumer polls the broker). The worker is a process of "
        "its own with default settings and telemetry (Prometheus metrics; no traces exporter, "
        "so spans propagate the trace context without being recorded); the clients run in the "
        "benchmark process on one grpc.aio channel without interceptors.",
        "Every request carries one row. Both modes use 1 intra-op thread, 1 inter-op thread and "
        "1 session run at a time (INFERENCE_MAX_CONCURRENT_RUNS=1).",
        f"Small model, batching off, c={bench.plan.concurrency}: {inline} of session runs "
        "inline on the event loop (median over repetitions).",
        f"Requests per session run with batching on at c={bench.plan.concurrency} (median over "
        f"repetitions, from the worker's Prometheus counters): small {sizes['small_on']}, "
        f"heavy {sizes['heavy_on']}, heavy with a 2 ms queue delay {sizes['heavy_delay']}.",
        "In the ratio table 'wrapper' reads as the numerator (batching on; the worker) and "
        "'raw' as the denominator (batching off; the bare server).",
        f"Failed calls during the run: {bench.errors}.",
    ]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark against ``args.bootstrap_servers``; return its figures."""
    plan = QUICK if args.quick else FULL
    if args.reps:
        plan = Plan(**{**plan.__dict__, "reps": args.reps})
    bench = Bench(args.bootstrap_servers, plan, verbose=args.verbose)
    asyncio.run(bench.main())
    return {
        "title": TITLE,
        "repetitions": plan.reps,
        "config": {
            "plan": plan.__dict__,
            "models": {k: {**v, "hidden": list(v["hidden"])} for k, v in MODELS.items()},
            "batching_on": BATCH_ON,
            "batching_on_delay": BATCH_DELAY,
            "batching_off": BATCH_OFF,
            "onnxruntime": ort.__version__,
        },
        "figures": bench.rec.figures,
        "ratios": bench.rec.ratios,
        "notes": notes(bench),
    }


# --- the bare reference server ------------------------------------------------------------


def bare_server(model_path: str, port: int) -> None:
    """grpc.aio with the generated v2 servicer: ModelInfer decodes the one raw FP32 input,
    calls ``session.run`` on the loop and returns the output raw; health for readiness.
    Nothing else: no validation, telemetry, batching or threads."""
    from grpc_health.v1 import health

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        Path(model_path).read_bytes(), options, providers=["CPUExecutionProvider"]
    )

    class Servicer(pb_grpc.GRPCInferenceServiceServicer):
        async def ModelInfer(
            self, request: pb.ModelInferRequest, context: Any
        ) -> pb.ModelInferResponse:
            tensor = request.inputs[0]
            x = np.frombuffer(request.raw_input_contents[0], dtype=np.float32)
            (y,) = session.run(None, {tensor.name: x.reshape(tuple(tensor.shape))})
            response = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
            response.outputs.add(name="y", datatype="FP32", shape=y.shape)
            response.raw_output_contents.append(y.tobytes())
            return response

    async def serve() -> None:
        server = grpc.aio.server()
        # Only ModelInfer is served; the others answer UNIMPLEMENTED (the base class).
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(), server)  # type: ignore[abstract]
        checks = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(checks, server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await checks.set("", health_pb2.HealthCheckResponse.SERVING)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.stop(0)

    asyncio.run(serve())


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--bare-server":
        bare_server(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit("usage: bench_inference.py --bare-server MODEL.onnx PORT (run.py runs the bench)")
