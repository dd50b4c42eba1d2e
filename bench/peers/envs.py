"""The peers' benchmark environments: one virtualenv per peer under ``bench/.peers-venv/``.

KServe, MLServer and PyTriton are installed from PyPI into environments of their own, never
into the workspace: their pins conflict with ours and with each other (PyTriton needs
numpy < 2, MLServer 1.7.1 needs uvloop 0.21, both bring tritonclient, whose generated protos
must never share a process with ours). Each environment is installed from a lock file,
``requirements/<peer>.txt``, compiled by uv from the hand-written ``requirements/<peer>.in``
(top-level pins), so anyone gets the same versions:

    uv run python bench/peers/envs.py            # set up every peer (skips those up to date)
    uv run python bench/peers/envs.py kserve     # one peer
    uv run python bench/peers/envs.py --status   # what is installed
    uv run python bench/peers/envs.py --lock     # recompile the lock files from the .in files

Setting up is idempotent: an environment whose stamp file records the same lock file and base
interpreter is left alone; otherwise it is removed and rebuilt (``uv venv`` + ``uv pip install``
when uv is on PATH, else ``python -m venv`` + pip). The base interpreter is the one running
this code (the workspace's CPython 3.11), or ``MLBUS_PEERS_PYTHON``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

PEERS_DIR = Path(__file__).resolve().parent
BENCH_DIR = PEERS_DIR.parent
ENV_ROOT = BENCH_DIR / ".peers-venv"
REQUIREMENTS = PEERS_DIR / "requirements"
STAMP = ".mlbus-peer-stamp.json"
INSTALL_TIMEOUT_S = 1200
# Lock files are compiled for the benchmark machines: CPython 3.11 on x86-64 Linux with
# glibc >= 2.35 (nvidia-pytriton 0.7.0 publishes manylinux_2_35 wheels only).
LOCK_PYTHON = "3.11"
LOCK_PLATFORM = "x86_64-manylinux_2_35"


@dataclass(frozen=True)
class Peer:
    name: str
    imports: tuple[str, ...]
    """Modules that must import in the environment for it to count as installed."""
    versions: tuple[str, ...]
    """Distributions whose versions the benchmark records."""


PEERS: dict[str, Peer] = {
    "kserve": Peer(
        "kserve", ("kserve", "onnxruntime"), ("kserve", "onnxruntime", "grpcio", "uvloop")
    ),
    "mlserver": Peer(
        "mlserver", ("mlserver", "onnxruntime"), ("mlserver", "onnxruntime", "grpcio", "uvloop")
    ),
    "pytriton": Peer(
        "pytriton",
        ("pytriton.triton", "onnxruntime"),
        ("nvidia-pytriton", "onnxruntime", "grpcio", "numpy"),
    ),
}


class PeerSetupError(RuntimeError):
    """A peer's environment could not be created; the message says why."""


@dataclass
class PeerEnv:
    name: str
    path: Path
    python: Path
    versions: dict[str, str | None] = field(default_factory=dict)
    created: bool = False
    """True when this call built the environment (False: it was already up to date)."""
    setup_s: float = 0.0


def base_python() -> str:
    return os.environ.get("MLBUS_PEERS_PYTHON") or getattr(sys, "_base_executable", sys.executable)


def _lock_digest(peer: str, python: str) -> str:
    lock = (REQUIREMENTS / f"{peer}.txt").read_bytes()
    version = subprocess.run(
        [python, "-c", "import sys; print(sys.version)"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    return hashlib.sha256(lock + b"\0" + version.encode()).hexdigest()


@contextlib.contextmanager
def _setup_lock() -> Iterator[None]:
    """One setup at a time on this machine (two benchmark runs must not build the same venv)."""
    ENV_ROOT.mkdir(parents=True, exist_ok=True)
    with open(ENV_ROOT / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(command: list[str], what: str, timeout: float = INSTALL_TIMEOUT_S) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise PeerSetupError(f"{what}: timed out after {timeout:.0f} s") from exc
    except OSError as exc:
        raise PeerSetupError(f"{what}: {exc}") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise PeerSetupError(f"{what} failed (exit {done.returncode}):\n{tail}")
    return done.stdout


def _python_in(path: Path) -> Path:
    return path / "bin" / "python"


def installed_versions(python: Path, distributions: tuple[str, ...]) -> dict[str, str | None]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for name in sys.argv[1:]:\n"
        "    try: out[name] = m.version(name)\n"
        "    except m.PackageNotFoundError: out[name] = None\n"
        "print(json.dumps(out))\n"
    )
    output = _run([str(python), "-c", code, *distributions], "reading versions", timeout=60)
    return dict(json.loads(output))


def _check_imports(python: Path, peer: Peer) -> None:
    code = "import importlib, sys\nfor name in sys.argv[1:]: importlib.import_module(name)\n"
    _run([str(python), "-c", code, *peer.imports], f"importing {', '.join(peer.imports)}", 300)


def status(name: str) -> str:
    path = ENV_ROOT / name
    stamp = path / STAMP
    if not stamp.exists():
        return "not set up"
    recorded = json.loads(stamp.read_text())
    try:
        fresh = recorded.get("digest") == _lock_digest(name, base_python())
    except (OSError, subprocess.SubprocessError):
        fresh = False
    versions = ", ".join(f"{k} {v}" for k, v in recorded.get("versions", {}).items())
    return f"{'up to date' if fresh else 'STALE (lock or interpreter changed)'}: {versions}"


def ensure(name: str, *, log: Callable[[str], None] = print) -> PeerEnv:
    """The peer's environment, built first if missing or out of date. Raises PeerSetupError."""
    peer = PEERS[name]
    path = ENV_ROOT / name
    python = base_python()
    started = time.monotonic()
    with _setup_lock():
        digest = _lock_digest(name, python)
        stamp = path / STAMP
        if stamp.exists() and _python_in(path).exists():
            recorded = json.loads(stamp.read_text())
            if recorded.get("digest") == digest:
                return PeerEnv(name, path, _python_in(path), recorded.get("versions", {}))
        log(f"setting up the {name} environment in {path} (from {REQUIREMENTS / (name + '.txt')})")
        if path.exists():
            shutil.rmtree(path)
        lock = str(REQUIREMENTS / f"{name}.txt")
        uv = shutil.which("uv")
        if uv:
            _run([uv, "venv", "--quiet", "--python", python, str(path)], "uv venv", 300)
            _run(
                [uv, "pip", "install", "--quiet", "--python", str(_python_in(path)), "-r", lock],
                f"uv pip install -r {lock}",
            )
        else:
            _run([python, "-m", "venv", str(path)], "python -m venv", 300)
            _run(
                [str(_python_in(path)), "-m", "pip", "install", "--quiet", "-r", lock],
                f"pip install -r {lock}",
            )
        _check_imports(_python_in(path), peer)
        versions = installed_versions(_python_in(path), peer.versions)
        stamp.write_text(json.dumps({"digest": digest, "python": python, "versions": versions}))
        env = PeerEnv(name, path, _python_in(path), versions, created=True)
        env.setup_s = time.monotonic() - started
        log(f"{name} environment ready in {env.setup_s:.0f} s: {versions}")
        return env


def compile_locks(names: list[str]) -> None:
    uv = shutil.which("uv")
    if uv is None:
        raise SystemExit("compiling the lock files needs uv on PATH")
    for name in names:
        source, target = REQUIREMENTS / f"{name}.in", REQUIREMENTS / f"{name}.txt"
        subprocess.run(
            [
                uv,
                "pip",
                "compile",
                "--quiet",
                "--python-version",
                LOCK_PYTHON,
                "--python-platform",
                LOCK_PLATFORM,
                source.name,
                "-o",
                target.name,
            ],
            cwd=REQUIREMENTS,
            check=True,
        )
        print(f"compiled {target.relative_to(BENCH_DIR.parent)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("peers", nargs="*", help=f"any of {', '.join(PEERS)} (default: all)")
    parser.add_argument("--status", action="store_true", help="show what is installed")
    parser.add_argument("--lock", action="store_true", help="recompile requirements/*.txt")
    args = parser.parse_args(argv)
    names = args.peers or list(PEERS)
    unknown = sorted(set(names) - set(PEERS))
    if unknown:
        parser.error(f"unknown peer(s) {unknown}; known: {', '.join(PEERS)}")
    if args.lock:
        compile_locks(names)
        return 0
    if args.status:
        for name in names:
            print(f"{name}: {status(name)}")
        return 0
    failed = 0
    for name in names:
        try:
            env = ensure(name)
        except PeerSetupError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{name}: {env.python} {env.versions}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
