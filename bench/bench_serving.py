"""Serving peers: the mlbus worker vs KServe, MLServer and Triton (PyTriton), same models, same client.

The comparison issue #4 ("Performance") asks for: the same load against KServe, MLServer and
Triton serving the same ONNX model, each installed into a separate benchmark environment by
the bench script. Every target serves the same two scikit-learn models exported by skl2onnx
(FP32 [N, 30] in; ``label`` INT64 and ``probabilities`` FP32 out):

* ``small``: logistic regression on 30 features;
* ``medium``: MLP classifier 30 → 256 → 256 → 2.

Targets (``targets()``; each is started, measured on both models and stopped in turn, in an
order rotated every repetition, so only one server is up at a time):

* ``reference_executor`` / ``reference_inline``: a bare grpc.aio v2 server calling ONNX
  Runtime (in a one-thread executor, as the worker does; or inline on the event loop);
* ``kserve``, ``mlserver``, ``pytriton``: the peers, from ``bench/peers/envs.py``'s
  environments (built on first use from lock files), each with a custom model/runtime/callable
  that calls ONNX Runtime, otherwise at their defaults, bound to 127.0.0.1;
* ``mlbus_worker``: ``python -m mlbus.inference`` as ``bench/bench_inference.py`` starts it
  (one worker per model, its defaults: batching off, default telemetry).

Every server uses ONNX Runtime 1 intra-op + 1 inter-op thread. The client is the same for
all (``bench/peers/client.py``: grpc.aio, our generated v2 stubs, one channel, raw FP32
contents, one row per request): c=1 p50/p99, then c=16 throughput and p99, each after a
warm-up. The floor is ``session.run`` in this process. Ratios are ours ÷ each other target,
paired within a repetition.

``MLBUS_BENCH_SERVING_TARGETS=kserve,mlbus_worker`` limits the run to some targets (figures
from such a run are partial: don't record them).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from peers import client, envs  # noqa: E402
from peers.targets import (  # noqa: E402
    Endpoint,
    KServeTarget,
    MLServerTarget,
    PeerProcess,
    PyTritonTarget,
    ReferenceTarget,
    RouterTarget,
    Target,
    TargetError,
    WorkerTarget,
    rss_mb,
)

TITLE = "Serving peers: mlbus worker and router vs KServe, MLServer, Triton (PyTriton) over v2 gRPC"
FEATURES = 30
MODELS = {
    "small": "logistic regression, 30 features → 2 classes (skl2onnx, zipmap off)",
    "medium": "MLP classifier 30 → 256 → 256 → 2 (skl2onnx, zipmap off)",
}
# Targets whose figures are divided by every other target's (ratios "ours ÷ peer").
SUBJECTS = ("mlbus_worker", "mlbus_router")
# The targets for a worker reached directly (same run, same client).
TARGET_C1_P50_MS = 1.0
TARGET_C16_VS_KSERVE = 1.3
# ... and through the router (the extra hop included): c=1 p50, and c=16 throughput as a
# multiple of each peer's direct figure.
TARGET_ROUTER_C1_P50_MS = 1.5
TARGET_ROUTER_C16_VS = {"kserve": 1.0, "mlserver": 2.5, "pytriton": 1.5}


@dataclass(frozen=True)
class Plan:
    reps: int
    warmup_s: float
    c1_s: float
    c16_s: float
    concurrency: int = 16
    max_requests: int = 100_000
    floor_runs: int = 2000


FULL = Plan(reps=3, warmup_s=0.5, c1_s=2.5, c16_s=3.0)
QUICK = Plan(reps=1, warmup_s=0.3, c1_s=1.0, c16_s=1.5, floor_runs=300)


def targets(args: argparse.Namespace, log: Callable[[str], None]) -> list[Target]:
    """Everything measured, in the first repetition's order. Add new targets here."""
    return [
        ReferenceTarget("executor"),
        ReferenceTarget("inline"),
        KServeTarget(log),
        MLServerTarget(log),
        PyTritonTarget(log),
        WorkerTarget(args.bootstrap_servers),
        RouterTarget(args.bootstrap_servers),
    ]


TARGET_NOTES = {
    "reference_executor": "no framework: generated v2 servicer on grpc.aio, `session.run` in a "
    "1-thread executor (the worker's design), no interceptors/telemetry/validation",
    "reference_inline": "the same, `session.run` called on the event loop",
    "kserve": "kserve.Model subclass (sync `predict`, which KServe runs on its event loop), "
    "ModelServer defaults (1 REST worker, gRPC with 4 threads, uvloop, per-request latency "
    "logging); gRPC and REST rebound from [::]/0.0.0.0 to 127.0.0.1 by the launcher",
    "mlserver": "custom MLModel runtime (mlserver-onnx is not on PyPI), MLServer defaults: 1 "
    "parallel inference worker process (requests cross a process boundary), debug logging; "
    "host 127.0.0.1 for gRPC, REST and metrics",
    "pytriton": "tritonserver from the nvidia-pytriton wheel (Python backend only, no ONNX "
    "backend) → Python backend stub → ZeroMQ ipc → @batch callable calling ORT; ModelConfig "
    "defaults (dynamic batching, max_batch_size 4); gRPC only on 127.0.0.1, HTTP and metrics off",
    "mlbus_worker": "`python -m mlbus.inference` per model (started by bench_inference."
    "start_worker), defaults: batching off, 1 run at a time, SDK tracer + Prometheus metrics",
    "mlbus_router": "`python -m mlbus.registry` + `python -m mlbus.router` with their defaults; "
    "each model registered, approved and deployed as an endpoint whose one worker (same "
    "defaults as mlbus_worker) the router's controller starts; client → router → worker",
}


# --- models -----------------------------------------------------------------------------------


def build_models(directory: Path) -> tuple[dict[str, Path], np.ndarray]:
    """Train the two models on a fixed synthetic data set and export them; return paths + X."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import make_classification
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    x, y = make_classification(n_samples=2000, n_features=FEATURES, random_state=0)
    x = x.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fitted = {
            "small": LogisticRegression(max_iter=200).fit(x, y),
            "medium": MLPClassifier(hidden_layer_sizes=(256, 256), max_iter=20, random_state=0).fit(
                x, y
            ),
        }
    paths = {}
    for name, model in fitted.items():
        onx = to_onnx(
            model,
            initial_types=[("x", FloatTensorType([None, FEATURES]))],
            options={id(model): {"zipmap": False}},
            target_opset=17,
        )
        paths[name] = directory / f"{name}.onnx"
        paths[name].write_bytes(onx.SerializeToString())
    return paths, x


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def floor_us(path: Path, row: np.ndarray, runs: int) -> float:
    """Median µs of one-row ``session.run`` in this process (the floor)."""
    sess = session(path)
    feeds = {"x": row}
    for _ in range(min(50, runs)):
        sess.run(None, feeds)
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        sess.run(None, feeds)
        samples.append((time.perf_counter() - started) * 1e6)
    return statistics.median(samples)


# --- the benchmark ----------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, plan: Plan) -> None:
        self.args = args
        self.plan = plan
        self.verbose = args.verbose
        self.runs: dict[str, list[float]] = {}
        self.meta: dict[str, dict[str, str]] = {}
        self.unavailable: dict[str, str] = {}
        self.failures: list[str] = []
        self.wrong: list[str] = []
        self.errors: dict[str, int] = {}
        self.startup: dict[str, list[float]] = {}
        self.rss: dict[str, list[float]] = {}
        self.targets: list[Target] = []
        self.requests = 0
        self.rep = 0
        self.reps_of: dict[str, list[int]] = {}
        """Key → the repetition of each of its runs (to pair ratios when a target missed one)."""

    def log(self, text: str) -> None:
        if self.verbose:
            print(f"  {text}", flush=True)

    def add(self, key: str, value: float, label: str, unit: str, better: str) -> None:
        self.runs.setdefault(key, []).append(value)
        self.reps_of.setdefault(key, []).append(self.rep)
        self.meta[key] = {"label": label, "unit": unit, "better": better}

    async def main(self) -> None:
        all_targets = targets(self.args, self.log)
        wanted = os.environ.get("MLBUS_BENCH_SERVING_TARGETS")
        if wanted:
            keys = {k.strip() for k in wanted.split(",") if k.strip()}
            all_targets = [t for t in all_targets if t.key in keys]
        self.targets = all_targets
        for target in all_targets:
            if isinstance(target, PeerProcess):
                try:
                    await asyncio.to_thread(target.prepare)
                except TargetError as exc:
                    self.unavailable[target.key] = str(exc)
                    self.log(f"{target.key}: UNAVAILABLE: {exc}")
        with tempfile.TemporaryDirectory(prefix="mlbus-bench-serving-") as tmp:
            workdir = Path(tmp)
            models, x = build_models(workdir)
            row = x[:1]
            expected = {name: session(path).run(None, {"x": row}) for name, path in models.items()}
            for rep in range(self.plan.reps):
                self.rep = rep
                self.log(f"repetition {rep + 1}/{self.plan.reps}")
                for name, path in models.items():
                    runs = self.plan.floor_runs // (1 if name == "small" else 2)
                    value = floor_us(path, row, runs)
                    self.add(
                        f"{name}_floor_us",
                        value,
                        f"{name}: ORT session.run in process, 1 row (floor)",
                        "µs",
                        "lower",
                    )
                    self.log(f"{name}: floor {value:.1f} µs")
                live = [t for t in all_targets if t.key not in self.unavailable]
                shift = rep % len(live) if live else 0
                for target in live[shift:] + live[:shift]:
                    order = list(models) if rep % 2 == 0 else list(models)[::-1]
                    await self.measure(target, models, order, row, expected, workdir, rep)

    async def measure(
        self,
        target: Target,
        models: dict[str, Path],
        order: list[str],
        row: np.ndarray,
        expected: dict[str, list[np.ndarray]],
        workdir: Path,
        rep: int,
    ) -> None:
        plan = self.plan
        endpoints = None
        for attempt in (1, 2):  # one retry: a start can time out on a busy machine
            try:
                endpoints = await target.start(models, workdir)
                break
            except Exception as exc:
                await target.stop()
                text = str(exc) if isinstance(exc, TargetError) else repr(exc)
                self.failures.append(
                    f"repetition {rep + 1}, attempt {attempt}: {target.key} did not start: {text}"
                )
                self.log(f"{target.key}: FAILED to start (attempt {attempt}): {text}")
        if endpoints is None:
            if rep == 0:
                self.unavailable[target.key] = self.failures[-1]
            return
        key = target.key
        try:
            if target.startup_s is not None:
                self.startup.setdefault(key, []).append(target.startup_s)
            for name in order:
                endpoint = endpoints[name]
                request = client.make_request(endpoint.model_name, {"x": row})
                await self.check(target, name, endpoint, request, expected[name])
                one = await client.drive(
                    endpoint,
                    request,
                    concurrency=1,
                    duration_s=plan.c1_s,
                    warmup_s=plan.warmup_s,
                    max_requests=plan.max_requests,
                )
                many = await client.drive(
                    endpoint,
                    request,
                    concurrency=plan.concurrency,
                    duration_s=plan.c16_s,
                    warmup_s=plan.warmup_s,
                    max_requests=plan.max_requests,
                )
                self.record(target, name, one, many)
            self.rss.setdefault(key, []).append(rss_mb(target.pids()))
        finally:
            await target.stop()

    async def check(
        self,
        target: Target,
        name: str,
        endpoint: Endpoint,
        request: Any,
        expected: list[np.ndarray],
    ) -> None:
        """One call whose probabilities must equal ONNX Runtime's in this process."""
        try:
            outputs = client.decode_outputs(await client.infer_once(endpoint, request))
            got = outputs["probabilities"]
            if not np.allclose(got.reshape(expected[1].shape), expected[1], atol=1e-5):
                self.wrong.append(f"{target.key}/{name}: probabilities {got} != {expected[1]}")
        except Exception as exc:
            self.wrong.append(f"{target.key}/{name}: check call failed: {exc!r}")

    def record(self, target: Target, name: str, one: client.Load, many: client.Load) -> None:
        plan = self.plan
        tag, what = f"{name}_{target.key}", f"{name}, {target.label}"
        self.requests += one.requests + many.requests
        for load in (one, many):
            if load.errors:
                self.errors[target.key] = self.errors.get(target.key, 0) + load.errors
                self.failures.append(
                    f"{target.key}/{name} c={load.concurrency}: {load.errors} failed calls "
                    f"(first: {load.first_error})"
                )
            if load.stopped_early:
                self.failures.append(
                    f"{target.key}/{name} c={load.concurrency} stopped early: {load.stopped_early}"
                )
        self.add(f"{tag}_c1_p50", one.p50_ms, f"{what}: c=1 p50", "ms", "lower")
        self.add(f"{tag}_c1_p99", one.p99_ms, f"{what}: c=1 p99", "ms", "lower")
        self.add(
            f"{tag}_c16_rate",
            many.rate,
            f"{what}: c={plan.concurrency} throughput",
            "inf/s",
            "higher",
        )
        self.add(f"{tag}_c16_p99", many.p99_ms, f"{what}: c={plan.concurrency} p99", "ms", "lower")
        self.log(
            f"{what}: c=1 p50 {one.p50_ms:.2f} ms p99 {one.p99_ms:.2f} ms; "
            f"c={plan.concurrency} {many.rate:,.0f}/s p99 {many.p99_ms:.1f} ms"
            + (f"; {one.errors + many.errors} errors" if one.errors + many.errors else "")
        )

    # --- result ------------------------------------------------------------------------------

    def figures(self) -> dict[str, dict[str, Any]]:
        """Figures in a fixed order: floors, then per model and target, then start-up and RSS."""
        keys = [key for key in self.runs if key.endswith("_floor_us")]
        for name in MODELS:
            for target in self.targets:
                for metric in ("c1_p50", "c1_p99", "c16_rate", "c16_p99"):
                    keys.append(f"{name}_{target.key}_{metric}")
        for target in self.targets:
            if self.startup.get(target.key):
                self.add_many(
                    f"{target.key}_startup_s",
                    self.startup[target.key],
                    f"{target.label}: start → ready (both models)"
                    if target.key not in SUBJECTS
                    else f"{target.label}: start → ready, per worker (one model each)",
                    "s",
                    "lower",
                )
                keys.append(f"{target.key}_startup_s")
            if self.rss.get(target.key):
                self.add_many(
                    f"{target.key}_rss_mb",
                    self.rss[target.key],
                    f"{target.label}: RSS of all its processes after the load"
                    + (" (one worker per model)" if target.key in SUBJECTS else ""),
                    "MiB",
                    "lower",
                )
                keys.append(f"{target.key}_rss_mb")
        return {
            key: {**self.meta[key], "runs": self.runs[key]} for key in keys if self.runs.get(key)
        }

    def partial_ratio(self, top: str, bottom: str) -> str:
        """``top ÷ bottom`` paired over the repetitions both have, as text for the notes."""
        a = dict(zip(self.reps_of.get(top, []), self.runs.get(top, []), strict=True))
        b = dict(zip(self.reps_of.get(bottom, []), self.runs.get(bottom, []), strict=True))
        common = sorted(set(a) & set(b))
        if not common:
            return f"{top} ÷ {bottom}: no common repetition"
        paired = [a[r] / b[r] for r in common if b[r]]
        reps = ", ".join(str(r + 1) for r in common)
        return f"{top} ÷ {bottom} = {statistics.median(paired):.2f} (repetitions {reps})"

    def add_many(self, key: str, values: list[float], label: str, unit: str, better: str) -> None:
        self.runs[key] = list(values)
        self.meta[key] = {"label": label, "unit": unit, "better": better}

    def ratios(self, figures: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """ours ÷ each other target, paired within a repetition (only with a full set of runs)."""
        ratios, skipped = {}, []
        labels = {t.key: t.label for t in self.targets}
        subjects = [t.key for t in self.targets if t.key in SUBJECTS]
        # The peers first, then the references.
        others = sorted(
            (t.key for t in self.targets if t.key not in SUBJECTS),
            key=lambda key: key.startswith("reference"),
        )
        for subject in subjects:
            for other in others:
                for name in MODELS:
                    for metric, what in (
                        ("c16_rate", f"c={self.plan.concurrency} throughput"),
                        ("c1_p50", "c=1 p50 latency"),
                    ):
                        top, bottom = f"{name}_{subject}_{metric}", f"{name}_{other}_{metric}"
                        if top not in figures or bottom not in figures:
                            continue
                        runs = (len(figures[top]["runs"]), len(figures[bottom]["runs"]))
                        if runs != (self.plan.reps, self.plan.reps):
                            skipped.append(self.partial_ratio(top, bottom))
                            continue
                        ratios[f"{name}_{subject}_vs_{other}_{metric}"] = {
                            "label": f"{name}: {labels[subject]} ÷ {labels[other]}, {what}",
                            "numerator": top,
                            "denominator": bottom,
                            "per_message_cost": False,
                        }
        # The router's extra hop: router ÷ worker.
        if {"mlbus_worker", "mlbus_router"} <= set(subjects):
            for name in MODELS:
                for metric, what in (
                    ("c16_rate", f"c={self.plan.concurrency} throughput"),
                    ("c1_p50", "c=1 p50 latency"),
                ):
                    top, bottom = f"{name}_mlbus_router_{metric}", f"{name}_mlbus_worker_{metric}"
                    if top in figures and bottom in figures:
                        ratios[f"{name}_mlbus_router_vs_mlbus_worker_{metric}"] = {
                            "label": f"{name}: {labels['mlbus_router']} ÷ {labels['mlbus_worker']}, {what}",
                            "numerator": top,
                            "denominator": bottom,
                            "per_message_cost": False,
                        }
        return ratios, skipped


def verdicts(bench: Bench, figures: dict[str, Any]) -> list[str]:
    """The issue's direct-to-worker targets, judged on the medians of this run."""
    out = []
    for name in MODELS:
        p50 = figures.get(f"{name}_mlbus_worker_c1_p50")
        if p50:
            value = statistics.median(p50["runs"])
            verdict = "PASS" if value <= TARGET_C1_P50_MS else "FAIL"
            out.append(
                f"Target (direct to a worker) c=1 p50 ≤ {TARGET_C1_P50_MS} ms, {name}: "
                f"**{verdict}** ({value:.2f} ms)."
            )
        ours, kserve = (figures.get(f"{name}_{k}_c16_rate") for k in ("mlbus_worker", "kserve"))
        if ours and kserve and len(ours["runs"]) == len(kserve["runs"]):
            paired = statistics.median(
                a / b for a, b in zip(ours["runs"], kserve["runs"], strict=True)
            )
            verdict = "PASS" if paired >= TARGET_C16_VS_KSERVE else "FAIL"
            out.append(
                f"Target (direct to a worker) c=16 throughput ≥ {TARGET_C16_VS_KSERVE}× KServe's, "
                f"{name}: **{verdict}** ({paired:.2f}×, median of paired ratios)."
            )
    for name in MODELS:
        p50 = figures.get(f"{name}_mlbus_router_c1_p50")
        if p50:
            value = statistics.median(p50["runs"])
            verdict = "PASS" if value <= TARGET_ROUTER_C1_P50_MS else "FAIL"
            out.append(
                f"Target (through the router) c=1 p50 ≤ {TARGET_ROUTER_C1_P50_MS} ms, {name}: "
                f"**{verdict}** ({value:.2f} ms)."
            )
        ours = figures.get(f"{name}_mlbus_router_c16_rate")
        for peer, want in TARGET_ROUTER_C16_VS.items():
            theirs = figures.get(f"{name}_{peer}_c16_rate")
            if not ours or not theirs or len(ours["runs"]) != len(theirs["runs"]):
                continue
            paired = statistics.median(
                a / b for a, b in zip(ours["runs"], theirs["runs"], strict=True)
            )
            verdict = "PASS" if paired >= want else "FAIL"
            out.append(
                f"Target (through the router) c=16 throughput ≥ {want}× {peer}'s (direct), "
                f"{name}: **{verdict}** ({paired:.2f}×, median of paired ratios)."
            )
    return out


def notes(bench: Bench, figures: dict[str, Any], skipped: list[str]) -> list[str]:
    plan = bench.plan
    out = []
    if bench.args.quick:
        out.append("QUICK RUN: 1 repetition and short loads; not for comparison.")
    if os.environ.get("MLBUS_BENCH_SERVING_TARGETS"):
        out.append(
            f"PARTIAL RUN: only MLBUS_BENCH_SERVING_TARGETS="
            f"{os.environ['MLBUS_BENCH_SERVING_TARGETS']}."
        )
    out.append(
        "Same client for every target (bench/peers/client.py: grpc.aio, the workspace's "
        "generated v2 stubs, one channel, no interceptors), same pre-built one-row request "
        f"(FP32 [1, {FEATURES}] raw contents), closed loop: c=1 for {plan.c1_s} s, then "
        f"c={plan.concurrency} for {plan.c16_s} s, each after a {plan.warmup_s} s warm-up. "
        "Each target runs alone (started, measured on both models, stopped), in an order rotated "
        "every repetition; all use ONNX Runtime with 1 intra-op and 1 inter-op thread."
    )
    out.append(
        "In the ratio table 'wrapper' reads as the mlbus worker (numerator) and 'raw' as the "
        "target named second (denominator): for throughput above 1 means ours is faster, for "
        "latency below 1 means ours is faster."
    )
    out += verdicts(bench, figures)
    for target in bench.targets:
        what = TARGET_NOTES.get(target.key, "")
        versions = target.facts.get("versions")
        if versions:
            what += f" — {', '.join(f'{k} {v}' for k, v in versions.items())}"
        status = (
            f"**not measured: {bench.unavailable[target.key]}**"
            if target.key in bench.unavailable
            else ""
        )
        out.append(f"`{target.key}` ({target.label}): {what}. {status}".rstrip())
    out.append(
        "Each result was checked once per repetition against ONNX Runtime in this process "
        f"(probabilities, atol 1e-5): {'all matched' if not bench.wrong else 'MISMATCHES: ' + '; '.join(bench.wrong)}."
    )
    total_errors = sum(bench.errors.values())
    out.append(
        f"Requests measured: {bench.requests:,}; failed calls: {total_errors}"
        + (f" ({bench.errors})" if total_errors else "")
        + "."
    )
    changes = worker_tree()
    if changes:
        out.append(
            "The worker ran from a tree with uncommitted changes under its code (other work in "
            f"progress): {'; '.join(c.strip() for c in changes)}."
        )
    out += bench.failures
    if skipped:
        out.append(
            "Ratios left out of the table (a side misses repetitions), paired over the "
            f"repetitions both have: {'; '.join(skipped)}."
        )
    out.append(
        "Environments: bench/peers/envs.py builds bench/.peers-venv/<peer> from "
        "bench/peers/requirements/<peer>.txt on first use (uv or pip, from PyPI) and reuses it "
        "while the lock file and interpreter are unchanged."
    )
    return out


def worker_tree() -> list[str]:
    """Uncommitted changes under the worker's code at run time (the worker runs from the tree)."""
    import subprocess

    try:
        done = subprocess.run(
            ["git", "status", "--porcelain", "services/inference", "libs/core", "libs/proto"],
            cwd=BENCH_DIR.parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return done.stdout.splitlines()


def run(args: argparse.Namespace) -> dict[str, Any]:
    plan = QUICK if args.quick else FULL
    if args.reps:
        plan = Plan(**{**plan.__dict__, "reps": args.reps})
    bench = Bench(args, plan)
    asyncio.run(bench.main())
    figures = bench.figures()
    ratios, skipped = bench.ratios(figures)
    import grpc

    return {
        "title": TITLE,
        "repetitions": plan.reps,
        "config": {
            "plan": plan.__dict__,
            "models": MODELS,
            "targets": {
                t.key: {
                    "label": t.label,
                    "notes": TARGET_NOTES.get(t.key, ""),
                    **t.facts,
                    **(
                        {"unavailable": bench.unavailable[t.key]}
                        if t.key in bench.unavailable
                        else {}
                    ),
                }
                for t in bench.targets
            },
            "subjects": list(SUBJECTS),
            "uncommitted_worker_changes": worker_tree(),
            "client": {"grpcio": grpc.__version__, "onnxruntime": ort.__version__},
            "peer_locks": {name: f"bench/peers/requirements/{name}.txt" for name in envs.PEERS},
        },
        "figures": figures,
        "ratios": ratios,
        "notes": notes(bench, figures, skipped),
    }
