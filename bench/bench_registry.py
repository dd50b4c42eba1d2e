"""Model registry: a 100 MiB upload in bounded memory, and metadata reads at 10,000 versions.

The registry runs as a deployment runs it: ``python -m mlbus.registry`` in a process of its
own, settings from the environment, its SQLite database and object store in a temporary
directory, the bus on the runner's broker (a topic namespace of its own, deleted at the end),
default telemetry and logging. Readiness is the gRPC health check answering SERVING.

**(a) Memory.** Per repetition, a fresh registry registers a small model (warm-up: imports,
first allocations), then a ~100 MiB ONNX model (``y = x @ W``, one FP32 initializer in
``raw_data``, written by :func:`mlbus.testing.onnx_models.write_large_model`) through the
SDK (``RegistryClient.register(path)``: hashes the file, then streams 1 MiB chunks). A
thread samples the registry's ``VmRSS`` every 20 ms. Growth = peak sampled RSS during the
call − the median RSS of the 0.5 s before it (the issue's target: < 50 MiB); the kernel's
``VmHWM`` delta is given too. The SDK's progress callback stamps when the first and the last
chunk were handed to gRPC, so the peak can be placed in the streaming or the post-stream
(validate, store, commit) phase.

**(b) Metadata reads.** One registry is populated once per run with 10,000 versions (1,000
with ``--quick``) in 4 groups, each carrying realistic metadata (metrics, hyperparameters,
tags, lineage, model card). Registering by streaming costs a full ONNX check and object
store write per version (one registry process on 2 shared cores), so after each group's
first version (streamed) the others are registered by ``header.artifact_uri`` (the stored
artifact): the same API call, validation and database writes, without storing the bytes
again (~90/s at 16 concurrent calls). Then, after the outbox has relayed every event, each
repetition reads random versions, interleaving call by call: ``RegistryClient.get_version``
(SDK, sync, with its model conversion), the raw generated stub ``GetModelVersion`` on a
plain sync channel, and a ``grpc.health.v1.Health/Check`` on that channel as the gRPC round
trip floor (the server runs it through the same interceptors). raw − health estimates the
server's own work for a read.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import math
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from aiokafka.admin import AIOKafkaAdminClient
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mlbus.core.rpc.channel import channel_options
from mlbus.core.settings import GrpcSettings
from mlbus.registry.v1 import registry_pb2, registry_pb2_grpc
from mlbus.sdk.local.broker import free_port
from mlbus.sdk.registry import RegistryClient
from mlbus.sdk.registry.models import Lineage, ModelCard
from mlbus.testing.onnx_models import linear_model, write_large_model

TITLE = "Registry: 100 MiB upload memory, GetModelVersion latency at 10,000 versions"

MIB = 1024 * 1024
#: The issue's targets.
TARGET_GROWTH_MIB = 50.0
TARGET_P99_MS = 5.0


@dataclass(frozen=True)
class Plan:
    """How much work one run does."""

    #: Memory repetitions (a fresh registry each) and read-latency repetitions.
    reps: int
    #: Versions registered before the reads, spread over ``groups`` groups.
    versions: int
    #: Calls of each kind (SDK, raw stub, health) per read repetition.
    calls: int
    groups: int = 4
    artifact_mib: int = 100
    #: Concurrent registrations while populating.
    populate_concurrency: int = 16
    #: Calls of each kind before every read repetition.
    warmup_calls: int = 200
    #: RSS sampling period of the memory measurement.
    sample_s: float = 0.02


FULL = Plan(reps=3, versions=10_000, calls=2_000)
QUICK = Plan(reps=1, versions=1_000, calls=1_000, warmup_calls=100)


# --- the registry process ---------------------------------------------------------------------


def proc_status_kb(pid: int, key: str) -> int:
    """A ``/proc/<pid>/status`` figure in kB (``VmRSS``, ``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


@dataclass
class Registry:
    """A registry process started for one measurement."""

    proc: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    home: Path
    log_path: Path
    cold_start_s: float

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def rss_kb(self) -> int:
        return proc_status_kb(self.proc.pid, "VmRSS")

    def hwm_kb(self) -> int:
        return proc_status_kb(self.proc.pid, "VmHWM")

    def outbox_published(self) -> float:
        """Events the outbox relay has published so far (its Prometheus counter)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            text = reply.read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("mlbus_registry_outbox_published_total")
        )

    def database_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.home.glob("registry.db*"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def wait_serving(target: str, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    """Until the health check answers SERVING (no fixed sleeps: each check waits for the
    channel to connect, for at most a second)."""
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"registry exited with status {proc.returncode}")
            with contextlib.suppress(grpc.RpcError):
                reply = health.Check(
                    health_pb2.HealthCheckRequest(), timeout=1, wait_for_ready=True
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(0.005)
    raise RuntimeError(f"registry at {target} not SERVING after {timeout} s")


def start_registry(bootstrap: str, namespace: str, directory: Path) -> Registry:
    """``python -m mlbus.registry`` with its state under ``directory``; SERVING on return."""
    port, metrics_port = free_port(), free_port()
    home = directory / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "REGISTRY_GRPC_PORT": str(port),
        "REGISTRY_METRICS_PORT": str(metrics_port),
        "REGISTRY_HOME": str(home),
        "REGISTRY_DATABASE_URL": f"sqlite:///{home / 'registry.db'}",
        "MLBUS_STORAGE_ROOT": str(directory / "objects"),
        "MLBUS_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "MLBUS_KAFKA_TOPIC_NAMESPACE": namespace,
        "MLBUS_GRPC_SHUTDOWN_GRACE_S": "1",
    }
    log_path = directory / "registry.log"
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlbus.registry"], env=env, stdout=log, stderr=log
        )
    try:
        wait_serving(f"127.0.0.1:{port}", proc)
    except BaseException:
        proc.kill()
        proc.wait(10)
        print(log_path.read_text()[-3000:], file=sys.stderr)
        raise
    return Registry(proc, port, metrics_port, home, log_path, time.perf_counter() - started)


async def _delete_topics(bootstrap: str, prefix: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if names:
            await admin.delete_topics(names)
        return len(names)
    finally:
        await admin.close()


# --- helpers ----------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


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

    def median(self, name: str) -> float:
        return float(statistics.median(self.figures[name]["runs"]))


class RssSampler:
    """Samples a process's VmRSS every ``interval`` seconds in a thread: (monotonic, kB)."""

    def __init__(self, pid: int, interval: float) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while True:
            with contextlib.suppress(OSError, RuntimeError):
                self.samples.append((time.monotonic(), proc_status_kb(self.pid, "VmRSS")))
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def between(self, start: float, end: float) -> list[tuple[float, int]]:
        return [(t, kb) for t, kb in self.samples if start <= t <= end]


def version_metadata(i: int) -> dict[str, Any]:
    """Metadata like a training pipeline records it (~1 KB per version)."""
    rng = random.Random(i)
    return {
        "metrics": {
            name: round(rng.random(), 4)
            for name in ("auc", "accuracy", "precision", "recall", "f1", "log_loss")
        },
        "hyperparameters": {
            "learning_rate": "0.01",
            "epochs": "20",
            "batch_size": "256",
            "optimizer": "adam",
            "weight_decay": "0.0001",
            "seed": str(i),
        },
        "tags": {"team": "risk", "dataset": "2026-11", "stage": "bench"},
        "lineage": Lineage(
            training_job_id=f"train-{i:06d}",
            dataset_uri="s3://datasets/churn/2026-11-01/train.parquet",
            dataset_sha256=hashlib.sha256(f"dataset-{i % 50}".encode()).hexdigest(),
            code_version="9f2c4e1a7b3d",
        ),
        "model_card": ModelCard(
            intended_use="Rank accounts by churn risk for the retention team.",
            limitations="Trained on EU accounts only; not calibrated for accounts < 30 days.",
            evaluation="Hold-out month 2026-10: see metrics.",
            owner="risk-ml@example.com",
        ),
        "description": f"nightly retrain {i}",
    }


# --- the read path inside the registry, measured in this process ----------------------------


@dataclass
class DbLayer:
    """Latencies (ms) of the registry's read transaction, taken apart (see :func:`db_layer`)."""

    uow: list[float]
    one_hop: list[float]
    sql: list[float]
    hops: dict[str, int]


async def db_layer(db_file: Path, keys: list[tuple[str, int]], calls: int, seed: int) -> DbLayer:
    """The read transaction GetModelVersion runs, on the registry's SQLite file (WAL: read
    alongside the live registry), three ways: the registry's own ``Database`` unit of work
    (sqlite3 under a synchronous SQLAlchemy engine, the whole transaction in one hop to a
    database thread), the same BEGIN / SELECT / COMMIT on plain sqlite3 in a single
    ``asyncio.to_thread`` call, and the SELECT alone, synchronously."""
    from sqlalchemy import event

    from mlbus.registry.adapters.database import Database

    db = Database(f"sqlite:///{db_file}")
    captured: list[tuple[str, Any]] = []

    @event.listens_for(db.sync_engine, "before_cursor_execute")
    def _capture(_c: Any, _cur: Any, statement: str, parameters: Any, *_: Any) -> None:
        captured.append((statement, parameters))

    async def read(group: str, version: int) -> None:
        found = await db.unit_of_work(lambda uow: uow.get_version(group, version), write=False)
        if found is None:
            raise RuntimeError(f"{group}/{version} not found")

    rng = random.Random(1000 + seed)
    try:
        for _ in range(100):
            await read(*rng.choice(keys))
        # Count the thread hops of one read (each is one job for a database thread) and
        # the statements it runs.
        hops: collections.Counter[str] = collections.Counter()
        submit: Callable[..., Any] = db._submit

        def counting(fn: Any, *args: Any, **kwargs: Any) -> Any:
            hops["thread hop"] += 1
            return submit(fn, *args, **kwargs)

        db._submit = counting  # type: ignore[method-assign]
        try:
            captured.clear()
            probe = keys[0]
            await read(*probe)
        finally:
            db._submit = submit  # type: ignore[method-assign]
        for sql, _ in captured:
            hops[sql.split(None, 1)[0].upper()] += 1
        statement, sample = next(c for c in captured if c[0].lstrip().upper().startswith("SELECT"))

        def params(group: str, version: int) -> tuple[Any, ...]:
            swap = {probe[0]: group, probe[1]: version}
            return tuple(swap.get(p, p) for p in sample)

        uow = []
        for _ in range(calls):
            key = rng.choice(keys)
            started = time.perf_counter()
            await read(*key)
            uow.append((time.perf_counter() - started) * 1000)
    finally:
        await db.aclose()

    con = sqlite3.connect(db_file, isolation_level=None, check_same_thread=False)
    try:

        def transaction(group: str, version: int) -> None:
            con.execute("BEGIN")
            rows = con.execute(statement, params(group, version)).fetchall()
            con.execute("COMMIT")
            if not rows:
                raise RuntimeError(f"{group}/{version} not found")

        one_hop, sql = [], []
        for _ in range(calls):
            key = rng.choice(keys)
            started = time.perf_counter()
            await asyncio.to_thread(transaction, *key)
            one_hop.append((time.perf_counter() - started) * 1000)
        for _ in range(calls):
            key = rng.choice(keys)
            started = time.perf_counter()
            con.execute(statement, params(*key)).fetchall()
            sql.append((time.perf_counter() - started) * 1000)
    finally:
        con.close()
    return DbLayer(uow=uow, one_hop=one_hop, sql=sql, hops=dict(hops))


# --- the benchmark ----------------------------------------------------------------------------


@dataclass
class MemoryRun:
    """What one 100 MiB registration showed."""

    baseline_mib: float
    peak_mib: float
    growth_mib: float
    hwm_growth_mib: float
    after_mib: float
    upload_mb_s: float
    sdk_hash_s: float
    total_s: float
    peak_phase: str
    cold_start_s: float


@dataclass
class Population:
    """How the read benchmark's versions were registered."""

    versions: int = 0
    groups: int = 0
    seconds: float = 0.0
    rate: float = 0.0
    relay_wait_s: float = 0.0
    database_mib: float = 0.0
    method: str = ""
    per_group: dict[str, int] = field(default_factory=dict)


class Bench:
    """One run of the registry benchmark on one broker."""

    def __init__(self, bootstrap: str, plan: Plan, *, verbose: bool) -> None:
        self.bootstrap = bootstrap
        self.plan = plan
        self.verbose = verbose
        self.namespace = f"bench-registry-{uuid.uuid4().hex[:8]}"
        self.rec = Recorder()
        self.memory: list[MemoryRun] = []
        self.population = Population()
        self.artifact_bytes = 0
        self.errors = 0
        self.hops: dict[str, int] = {}
        self.db_layer_error = ""

    def log(self, text: str) -> None:
        if self.verbose:
            print(f"  [registry] {text}", flush=True)

    def main(self) -> None:
        with tempfile.TemporaryDirectory(prefix="mlbus-bench-registry-") as tmp:
            root = Path(tmp)
            try:
                model = write_large_model(root / "large.onnx", self.plan.artifact_mib * MIB)
                self.artifact_bytes = model.stat().st_size
                small = write_large_model(root / "small.onnx", 64 * 1024)
                for rep in range(self.plan.reps):
                    self.measure_memory(rep, root / f"memory-{rep}", model, small)
                self.measure_reads(root / "reads")
            finally:
                with contextlib.suppress(Exception):
                    deleted = asyncio.run(_delete_topics(self.bootstrap, f"{self.namespace}."))
                    self.log(f"deleted {deleted} topics of namespace {self.namespace}")

    # --- (a) memory -----------------------------------------------------------------------

    def measure_memory(self, rep: int, directory: Path, model: Path, small: Path) -> None:
        plan = self.plan
        registry = start_registry(self.bootstrap, self.namespace, directory)
        try:
            with RegistryClient(registry.target, actor="bench-memory") as client:
                # Warm-up: every code path of a registration once (imports, first buffers).
                client.register(small, group="warm-up", create_group=True)
                client.register(linear_model(), group="warm-up")
                marks: dict[str, float] = {}

                def progress(sent: int, total: int | None) -> None:
                    now = time.monotonic()
                    marks.setdefault("first_chunk", now)
                    if total is not None and sent >= total:
                        marks.setdefault("last_chunk", now)

                hwm_before = registry.hwm_kb()
                with RssSampler(registry.proc.pid, plan.sample_s) as sampler:
                    time.sleep(0.5)  # the baseline: what the idle, warm registry holds
                    started = time.monotonic()
                    version = client.register(
                        model, group="large", create_group=True, progress=progress
                    )
                    ended = time.monotonic()
                    time.sleep(0.5)  # and what it keeps afterwards
                hwm_after = registry.hwm_kb()
        finally:
            registry.stop()
        if version.artifact is None or version.artifact.size_bytes != self.artifact_bytes:
            raise RuntimeError(f"the registry stored {version.artifact}, not the 100 MiB model")
        if not version.signature or [t.name for t in version.signature.inputs] != ["x"]:
            raise RuntimeError(f"unexpected signature {version.signature}")

        before = [kb for _, kb in sampler.between(started - 0.5, started)]
        during = sampler.between(started, ended)
        after = [kb for _, kb in sampler.between(ended + 0.25, ended + 1.0)]
        baseline = statistics.median(before) / 1024
        peak_t, peak_kb = max(during, key=lambda s: s[1])
        first, last = marks.get("first_chunk", started), marks.get("last_chunk", ended)
        if peak_t < first:
            phase = "before the first chunk (SDK hashing)"
        elif peak_t <= last:
            phase = f"while streaming ({(peak_t - first) / max(last - first, 1e-9):.0%} through)"
        else:
            phase = f"after the last chunk, {(peak_t - last) * 1000:.0f} ms later"
        run = MemoryRun(
            baseline_mib=baseline,
            peak_mib=peak_kb / 1024,
            growth_mib=peak_kb / 1024 - baseline,
            hwm_growth_mib=(hwm_after - hwm_before) / 1024,
            after_mib=statistics.median(after) / 1024 if after else float("nan"),
            upload_mb_s=self.artifact_bytes / 1e6 / (ended - first),
            sdk_hash_s=first - started,
            total_s=ended - started,
            peak_phase=phase,
            cold_start_s=registry.cold_start_s,
        )
        self.memory.append(run)
        mib = self.plan.artifact_mib
        rec = self.rec
        rec.add(
            "mem_growth",
            run.growth_mib,
            label=f"{mib} MiB upload: registry RSS growth, peak − baseline (target < 50 MiB)",
            unit="MiB",
            better="lower",
        )
        rec.add(
            "mem_hwm_growth",
            run.hwm_growth_mib,
            label=f"{mib} MiB upload: registry VmHWM growth (kernel peak RSS)",
            unit="MiB",
            better="lower",
        )
        rec.add(
            "mem_baseline",
            run.baseline_mib,
            label="registry RSS before the upload (warm, idle)",
            unit="MiB",
            better="lower",
        )
        rec.add(
            "mem_peak",
            run.peak_mib,
            label=f"registry RSS peak during the {mib} MiB upload (sampled every 20 ms)",
            unit="MiB",
            better="lower",
        )
        rec.add(
            "mem_after",
            run.after_mib,
            label="registry RSS 0.25–1 s after the upload",
            unit="MiB",
            better="lower",
        )
        rec.add(
            "upload_rate",
            run.upload_mb_s,
            label=f"{mib} MiB upload: first chunk → version registered",
            unit="MB/s",
            better="higher",
        )
        rec.add(
            "register_total_s",
            run.total_s,
            label=f"{mib} MiB `register(path)` end to end (incl. the SDK's hashing pass)",
            unit="s",
            better="lower",
        )
        rec.add(
            "cold_start_s",
            run.cold_start_s,
            label="registry cold start: spawn → health SERVING (migrations on an empty DB)",
            unit="s",
            better="lower",
        )
        self.log(
            f"memory {rep + 1}/{plan.reps}: baseline {run.baseline_mib:.1f} MiB, peak "
            f"{run.peak_mib:.1f} MiB, growth {run.growth_mib:.1f} MiB (VmHWM "
            f"+{run.hwm_growth_mib:.1f}), after {run.after_mib:.1f} MiB; peak {phase}; "
            f"{run.upload_mb_s:.0f} MB/s, SDK hash {run.sdk_hash_s:.2f} s, total "
            f"{run.total_s:.2f} s"
        )

    # --- (b) metadata reads ---------------------------------------------------------------

    def populate(self, registry: Registry, client: RegistryClient) -> list[tuple[str, int]]:
        """Register ``plan.versions`` versions through the API; (group, version) of each."""
        plan = self.plan
        groups = [f"bench-{g}" for g in range(plan.groups)]
        model = linear_model(n_features=16, n_outputs=2)
        started = time.perf_counter()
        uris: dict[str, str] = {}
        for i, group in enumerate(groups):
            version = client.register(model, group=group, create_group=True, **version_metadata(i))
            assert version.artifact is not None
            uris[group] = version.artifact.uri

        def register(i: int) -> tuple[str, int]:
            group = groups[i % len(groups)]
            version = client.register(artifact_uri=uris[group], group=group, **version_metadata(i))
            return group, version.version

        done = 0
        keys = [(group, 1) for group in groups]
        with ThreadPoolExecutor(plan.populate_concurrency) as pool:
            for key in pool.map(register, range(len(groups), plan.versions)):
                keys.append(key)
                done += 1
                if done % 2000 == 0:
                    rate = (done + len(groups)) / (time.perf_counter() - started)
                    self.log(f"registered {done + len(groups)} versions ({rate:.0f}/s)")
        seconds = time.perf_counter() - started
        # Every version exists, numbered 1..n per group with no gaps.
        per_group: dict[str, int] = {}
        for group in groups:
            newest = next(iter(client.list_versions(group, limit=1)))
            per_group[group] = newest.version
        if sorted(keys) != sorted((g, v) for g in groups for v in range(1, per_group[g] + 1)):
            raise RuntimeError(f"versions are not 1..n per group: {per_group}")
        # Let the outbox relay publish every event (a version each, and the groups) first.
        waited = time.perf_counter()
        expected = plan.versions + len(groups)
        deadline = time.monotonic() + 300
        while registry.outbox_published() < expected:
            if time.monotonic() > deadline:
                raise RuntimeError("the outbox relay did not publish every event in 300 s")
            time.sleep(0.2)
        self.population = Population(
            versions=len(keys),
            groups=len(groups),
            seconds=seconds,
            rate=len(keys) / seconds,
            relay_wait_s=time.perf_counter() - waited,
            database_mib=registry.database_bytes() / MIB,
            method=(
                f"first version of each group streamed, the rest by header.artifact_uri, "
                f"{plan.populate_concurrency} concurrent SDK calls"
            ),
            per_group=per_group,
        )
        return keys

    def measure_reads(self, directory: Path) -> None:
        plan = self.plan
        registry = start_registry(self.bootstrap, self.namespace, directory)
        try:
            with (
                RegistryClient(registry.target, actor="bench-reads") as client,
                grpc.insecure_channel(
                    registry.target, options=channel_options(GrpcSettings())
                ) as channel,
            ):
                keys = self.populate(registry, client)
                pop = self.population
                self.rec.add(
                    "populate_rate",
                    pop.rate,
                    label="populating: versions registered per second (once per run, see notes)",
                    unit="versions/s",
                    better="higher",
                )
                self.log(
                    f"populated {pop.versions} versions in {pop.seconds:.0f} s "
                    f"({pop.rate:.0f}/s); relay done {pop.relay_wait_s:.1f} s later; "
                    f"database {pop.database_mib:.1f} MiB"
                )
                stub = registry_pb2_grpc.RegistryServiceStub(channel)
                health = health_pb2_grpc.HealthStub(channel)
                check = health_pb2.HealthCheckRequest()

                def sdk(group: str, version: int) -> None:
                    client.get_version(group, version)

                def raw(group: str, version: int) -> None:
                    request = registry_pb2.GetModelVersionRequest(
                        model_group=group, version=version
                    )
                    reply = stub.GetModelVersion(request, timeout=10)
                    if reply.model_version.version != version:
                        raise RuntimeError(f"asked for {group}/{version}, got {reply}")

                def ping(group: str, version: int) -> None:
                    health.Check(check, timeout=10)

                kinds: dict[str, Callable[[str, int], None]] = {
                    "sdk": sdk,
                    "raw": raw,
                    "health": ping,
                }
                for rep in range(plan.reps):
                    self.read_rep(rep, keys, kinds)
                    self.db_rep(rep, registry.home / "registry.db", keys)
        finally:
            registry.stop()

    def read_rep(
        self, rep: int, keys: list[tuple[str, int]], kinds: dict[str, Callable[[str, int], None]]
    ) -> None:
        plan = self.plan
        rng = random.Random(rep)
        names = list(kinds)
        for _ in range(plan.warmup_calls):
            group, version = rng.choice(keys)
            for name in names:
                kinds[name](group, version)
        samples: dict[str, list[float]] = {name: [] for name in names}
        for i in range(plan.calls):
            group, version = rng.choice(keys)
            # Rotate the order so no kind always follows the same one.
            shift = i % len(names)
            for name in names[shift:] + names[:shift]:
                started = time.perf_counter()
                try:
                    kinds[name](group, version)
                except grpc.RpcError:
                    self.errors += 1
                    continue
                samples[name].append((time.perf_counter() - started) * 1000)
        n = self.population.versions
        what = {
            "sdk": "`RegistryClient.get_version` (SDK, sync)",
            "raw": "raw stub `GetModelVersion` (sync channel)",
            "health": "health `Check` on the same channel (round-trip floor)",
        }
        for name in names:
            values = samples[name]
            for q in (50, 99):
                self.rec.add(
                    f"{name}_p{q}",
                    percentile(values, q),
                    label=f"{what[name]}, random of {n:,} versions: p{q}",
                    unit="ms",
                    better="lower",
                )
        for q in (50, 99):
            self.rec.add(
                f"server_p{q}",
                percentile(samples["raw"], q) - percentile(samples["health"], q),
                label=f"estimated server work of a read: raw p{q} − health p{q}",
                unit="ms",
                better="lower",
            )
        self.log(
            f"reads {rep + 1}/{plan.reps} ({plan.calls} calls each): "
            + "; ".join(
                f"{name} p50 {percentile(samples[name], 50):.2f} ms "
                f"p99 {percentile(samples[name], 99):.2f} ms"
                for name in names
            )
        )

    def db_rep(self, rep: int, db_file: Path, keys: list[tuple[str, int]]) -> None:
        """The read transaction in this process (uses the registry's internal adapter:
        skipped with a note if it changed)."""
        if self.db_layer_error:
            return
        try:
            layer = asyncio.run(db_layer(db_file, keys, self.plan.calls, rep))
        except (ImportError, AttributeError, TypeError, IndexError) as exc:
            self.db_layer_error = f"{type(exc).__name__}: {exc}"
            self.log(f"in-process DB read skipped: {self.db_layer_error}")
            return
        self.hops = layer.hops
        hops = layer.hops.get("thread hop", 0)
        what = {
            "db_uow": f"in process: the registry's read transaction (`Database.unit_of_work` + "
            f"`get_version`, sqlite3 on a database thread, {hops} thread hop"
            f"{'' if hops == 1 else 's'})",
            "db_one_hop": "in process: the same BEGIN/SELECT/COMMIT on sqlite3 in one "
            "`asyncio.to_thread` hop",
            "db_sql": "in process: the SELECT alone, sync sqlite3",
        }
        values = {"db_uow": layer.uow, "db_one_hop": layer.one_hop, "db_sql": layer.sql}
        for name, samples in values.items():
            for q in (50, 99):
                self.rec.add(
                    f"{name}_p{q}",
                    percentile(samples, q),
                    label=f"{what[name]}: p{q}",
                    unit="ms",
                    better="lower",
                )
        self.log(
            f"in-process DB read {rep + 1}/{self.plan.reps}: "
            + "; ".join(
                f"{name} p50 {percentile(v, 50):.3f} ms p99 {percentile(v, 99):.3f} ms"
                for name, v in values.items()
            )
            + f"; hops per read {layer.hops}"
        )


def _verdict(value: float, target: float) -> str:
    return "**PASS**" if value < target else "**FAIL**"


def notes(bench: Bench) -> list[str]:
    plan, pop, rec = bench.plan, bench.population, bench.rec
    growth = rec.median("mem_growth")
    sdk_p99, raw_p99 = rec.median("sdk_p99"), rec.median("raw_p99")
    phases = "; ".join(run.peak_phase for run in bench.memory)
    hashing = statistics.median(run.sdk_hash_s for run in bench.memory)
    out = [
        f"Target, memory: registering a {plan.artifact_mib} MiB artifact grows the registry's "
        f"peak RSS by < {TARGET_GROWTH_MIB:.0f} MiB: median growth {growth:.1f} MiB → "
        f"{_verdict(growth, TARGET_GROWTH_MIB)} (VmHWM growth "
        f"{rec.median('mem_hwm_growth'):.1f} MiB).",
        f"Target, reads: GetModelVersion p99 < {TARGET_P99_MS:.0f} ms on SQLite at "
        f"{pop.versions:,} versions: SDK p99 {sdk_p99:.2f} ms → "
        f"{_verdict(sdk_p99, TARGET_P99_MS)}; raw stub p99 {raw_p99:.2f} ms → "
        f"{_verdict(raw_p99, TARGET_P99_MS)} (medians of {plan.reps} repetitions of "
        f"{plan.calls:,} calls each).",
        f"Upload: {bench.artifact_bytes / MIB:.0f} MiB model (`write_large_model`: one "
        f"{plan.artifact_mib} MiB FP32 initializer in raw_data), SDK `register(path)` in 1 MiB "
        f"chunks; a fresh registry per repetition, warmed up by two small registrations. "
        f"Baseline = median RSS of the 0.5 s before the call. Where the RSS peak fell: "
        f"{phases}. The SDK's hashing pass before streaming took {hashing:.2f} s (median), "
        "outside the MB/s figure.",
        f"Read population: {pop.versions:,} versions in {pop.groups} groups "
        f"({', '.join(f'{g}: {n}' for g, n in pop.per_group.items())}), ~1 KB of metadata each "
        f"(metrics, hyperparameters, tags, lineage, model card), registered through the API in "
        f"{pop.seconds:.0f} s ({pop.rate:.0f} versions/s; {pop.method}); the outbox had "
        f"relayed every event {pop.relay_wait_s:.1f} s later, before any read. SQLite file "
        f"{pop.database_mib:.1f} MiB. Populated once per run, read by every repetition.",
        "Reads: uniformly random (group, version) by number, the three kinds interleaved call "
        f"by call after {plan.warmup_calls} warm-up calls of each; one caller at a time. "
        "The ratio table's 'wrapper' is the numerator and 'raw' the denominator.",
        f"Failed calls during the run: {bench.errors}.",
    ]
    if "db_uow_p50" in rec.figures:
        hops = bench.hops.get("thread hop", 0)
        detail = ", ".join(f"{n} {k}" for k, n in sorted(bench.hops.items()) if k != "thread hop")
        out.insert(
            -1,
            "In-process figures: the read transaction GetModelVersion runs, on the same SQLite "
            "file, in this process: through the registry's `Database` adapter (sqlite3 under a "
            "synchronous SQLAlchemy engine; the whole transaction (BEGIN and COMMIT straight "
            f"on the driver, {detail} through SQLAlchemy, the row conversion) in {hops} hop to "
            "a database thread and back to the event loop), the same BEGIN/SELECT/COMMIT on "
            "plain sqlite3 in one "
            "`asyncio.to_thread` hop, and the SELECT alone. "
            f"p50 {rec.median('db_uow_p50'):.2f} / {rec.median('db_one_hop_p50'):.2f} / "
            f"{rec.median('db_sql_p50'):.3f} ms; p99 {rec.median('db_uow_p99'):.2f} / "
            f"{rec.median('db_one_hop_p99'):.2f} / {rec.median('db_sql_p99'):.3f} ms.",
        )
    elif bench.db_layer_error:
        out.insert(-1, f"In-process DB read not measured: {bench.db_layer_error}.")
    if plan.versions < FULL.versions:
        out.insert(
            2,
            f"QUICK RUN: {pop.versions:,} versions, not the target's 10,000; "
            f"{plan.calls:,} calls per kind.",
        )
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark against ``args.bootstrap_servers``; return its figures."""
    plan = QUICK if args.quick else FULL
    if args.reps:
        plan = Plan(**{**asdict(plan), "reps": args.reps})
    bench = Bench(args.bootstrap_servers, plan, verbose=args.verbose)
    bench.main()
    bench.rec.ratio("sdk_over_raw_p50", "sdk_p50", "raw_p50", "SDK ÷ raw stub, read p50")
    bench.rec.ratio("sdk_over_raw_p99", "sdk_p99", "raw_p99", "SDK ÷ raw stub, read p99")
    bench.rec.ratio(
        "raw_over_health_p50", "raw_p50", "health_p50", "GetModelVersion ÷ health Check, p50"
    )
    if "db_uow_p50" in bench.rec.figures:
        bench.rec.ratio(
            "uow_over_one_hop_p50",
            "db_uow_p50",
            "db_one_hop_p50",
            "read transaction: registry adapter ÷ bare sqlite3 in one thread hop, p50",
        )
    return {
        "title": TITLE,
        "repetitions": plan.reps,
        "config": {
            "plan": asdict(plan),
            "artifact_bytes": bench.artifact_bytes,
            "population": asdict(bench.population),
            "memory_runs": [asdict(run) for run in bench.memory],
            "database": "SQLite (sqlite3 on database threads) in a temporary directory",
        },
        "figures": bench.rec.figures,
        "ratios": bench.rec.ratios,
        "notes": notes(bench),
    }
