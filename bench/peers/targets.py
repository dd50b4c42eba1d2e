"""Serving targets for the peer comparison: anything that serves ONNX models over v2 gRPC.

A target is started with the models to serve (model name → ONNX file) and answers with an
:class:`Endpoint` per model: an address on loopback and the model name to put in
``ModelInferRequest.model_name``. The benchmark only ever talks to endpoints, so any server
speaking ``inference.GRPCInferenceService`` fits. To add one (the mlbus router, say), subclass
:class:`Target`: ``start(models, workdir)`` brings it up and returns when every model is ready
(:func:`wait_ready`), ``stop()`` shuts it down, ``pids()`` names its processes (for the
loopback check and RSS); then list it in ``bench/bench_serving.py``'s ``targets()``.

Targets here:

* :class:`ReferenceTarget`: a bare grpc.aio server calling ONNX Runtime (workspace venv);
* :class:`KServeTarget`, :class:`MLServerTarget`, :class:`PyTritonTarget`: the peers, each in
  its own environment from :mod:`envs`, launched with :class:`PeerProcess`;
* :class:`WorkerTarget`: the mlbus inference worker, started as ``bench/bench_inference.py``
  starts it (``python -m mlbus.inference``, model in a local object store, checksum verified).

Safety: servers bind 127.0.0.1 only. After a target is ready, :func:`non_loopback_listeners`
reads the kernel's socket tables for every process of the target; a listener on any other
address stops the target and fails its start.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import importlib.util
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc

from mlbus.inference.v2 import grpc_service_pb2 as pb
from mlbus.inference.v2 import grpc_service_pb2_grpc as pb_grpc

from . import envs

PEERS_DIR = Path(__file__).resolve().parent
SERVERS_DIR = PEERS_DIR / "servers"
BENCH_DIR = PEERS_DIR.parent
LOOPBACK = "127.0.0.1"
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Endpoint:
    """Where to send a model's requests: ``address`` (host:port on loopback) and the model name."""

    address: str
    model_name: str


class TargetError(RuntimeError):
    """A target could not be set up, started or checked; the message says why."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


async def wait_ready(
    address: str,
    model_names: Sequence[str],
    alive: Any,
    timeout: float = READY_TIMEOUT_S,
) -> None:
    """Poll v2 ServerReady, then ModelReady for each model, until true (``alive()`` → False aborts)."""
    deadline = time.monotonic() + timeout
    pending = list(model_names)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        server_ready = False
        while time.monotonic() < deadline:
            if not alive():
                raise TargetError(f"server for {address} exited before it was ready")
            with contextlib.suppress(grpc.aio.AioRpcError):
                if not server_ready:
                    server_ready = (
                        await stub.ServerReady(pb.ServerReadyRequest(), timeout=2)
                    ).ready
                while server_ready and pending:
                    reply = await stub.ModelReady(pb.ModelReadyRequest(name=pending[0]), timeout=2)
                    if not reply.ready:
                        break
                    pending.pop(0)
                if server_ready and not pending:
                    return
            await asyncio.sleep(0.05)
    what = "server" if not server_ready else f"model(s) {pending}"
    raise TargetError(f"{what} at {address} not ready after {timeout:.0f} s")


# --- process facts ------------------------------------------------------------------------------


def session_pids(session_id: int) -> list[int]:
    """Every process in a session (a server started with ``start_new_session`` and its children)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session_id:  # fields after "(comm)": state ppid pgrp session ...
            pids.append(int(entry.name))
    return sorted(pids)


def rss_mb(pids: Sequence[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    return inodes


def _decode_address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw[::-1])
    # IPv6: four 32-bit words, each in host (little-endian) order.
    address = ipaddress.IPv6Address(b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))
    return address.ipv4_mapped or address


def listeners(pids: Sequence[int]) -> list[str]:
    """``address:port`` of every listening TCP socket (and bound UDP socket) the processes hold."""
    inodes: set[str] = set()
    for pid in pids:
        inodes |= _socket_inodes(pid)
    found = []
    for table, listen_state in (("tcp", "0A"), ("tcp6", "0A"), ("udp", None), ("udp6", None)):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
                parts = line.split()
                local, state, inode = parts[1], parts[3], parts[9]
                if inode not in inodes or (listen_state and state != listen_state):
                    continue
                host, port = local.split(":")
                found.append(f"{_decode_address(host)}:{int(port, 16)}")
    return sorted(set(found))


def non_loopback_listeners(pids: Sequence[int]) -> list[str]:
    bad = []
    for entry in listeners(pids):
        if not ipaddress.ip_address(entry.rsplit(":", 1)[0]).is_loopback:
            bad.append(entry)
    return bad


# --- targets --------------------------------------------------------------------------------


class Target(abc.ABC):
    """A server under test. Subclasses set ``key``/``label`` and implement start/stop/pids."""

    key: str = ""
    label: str = ""

    def __init__(self) -> None:
        self.startup_s: float | None = None
        self.facts: dict[str, Any] = {}

    @abc.abstractmethod
    async def start(self, models: dict[str, Path], workdir: Path) -> dict[str, Endpoint]:
        """Serve ``models`` (name → ONNX file); return name → endpoint once all are ready."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Shut down whatever :meth:`start` started (idempotent)."""

    def pids(self) -> list[int]:
        return []

    def log_tail(self, lines: int = 20) -> str:
        return ""

    async def check_loopback(self) -> None:
        bad = non_loopback_listeners(self.pids())
        if bad:
            await self.stop()
            raise TargetError(
                f"{self.key} listens on non-loopback address(es) {bad}: stopped, not measured"
            )


@dataclass
class ServerProcess:
    """One server process in a session of its own, so stopping it stops its children too."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def spawn(
        cls, argv: list[str], env: dict[str, str], log_path: Path, cwd: Path
    ) -> ServerProcess:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return cls(proc, log_path)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def pids(self) -> list[int]:
        return session_pids(self.proc.pid) if self.alive() else []

    def stop(self) -> None:
        """SIGTERM to the server, then SIGKILL to its whole session after ``STOP_TIMEOUT_S``.

        Only the leader gets SIGTERM, so it can shut its children down in order (PyTriton stops
        tritonserver, which removes its Python backend's /tmp folders and shared memory; MLServer
        stops its inference workers); whatever is left after it exits is killed.
        """
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(STOP_TIMEOUT_S)
        leftovers = session_pids(self.proc.pid)
        if leftovers:
            # Children that outlived the leader get a short grace, then SIGKILL.
            deadline = time.monotonic() + 5
            while leftovers and time.monotonic() < deadline:
                time.sleep(0.1)
                leftovers = session_pids(self.proc.pid)
            for pid in leftovers:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        if self.alive():
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)

    def tail(self, lines: int = 20) -> str:
        return _tail(self.log_path, lines)


class ProcessTarget(Target):
    """A target that is one command in one environment, configured by ``PEER_SERVER_CONFIG``."""

    script: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.server: ServerProcess | None = None

    def python(self) -> Path:
        return Path(sys.executable)

    def argv(self, config: dict[str, Any], workdir: Path) -> list[str]:
        return [str(self.python()), str(SERVERS_DIR / self.script)]

    def env(self, config: dict[str, Any]) -> dict[str, str]:
        env = {
            **os.environ,
            "PEER_SERVER_CONFIG": json.dumps(config),
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(SERVERS_DIR), os.environ.get("PYTHONPATH", "")) if p
            ),
            "PYTHONUNBUFFERED": "1",
        }
        # A peer must not pick up the workspace's virtualenv.
        env.pop("VIRTUAL_ENV", None)
        return env

    def config(self, models: dict[str, Path]) -> dict[str, Any]:
        return {
            "host": LOOPBACK,
            "grpc_port": free_port(),
            "http_port": free_port(),
            "metrics_port": free_port(),
            "models": {name: str(path) for name, path in models.items()},
            "intra_op_threads": 1,
            "inter_op_threads": 1,
        }

    async def start(self, models: dict[str, Path], workdir: Path) -> dict[str, Endpoint]:
        config = self.config(models)
        log_path = workdir / f"{self.key}-{config['grpc_port']}.log"
        self.server = ServerProcess.spawn(
            self.argv(config, workdir), self.env(config), log_path, workdir
        )
        address = f"{LOOPBACK}:{config['grpc_port']}"
        try:
            await wait_ready(address, list(models), self.server.alive)
        except BaseException as exc:
            tail = self.server.tail()
            await self.stop()
            if isinstance(exc, TargetError):
                raise TargetError(f"{exc}; log tail:\n{tail}") from None
            raise
        self.startup_s = time.perf_counter() - self.server.started
        await self.check_loopback()
        return {name: Endpoint(address, name) for name in models}

    async def stop(self) -> None:
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)

    def pids(self) -> list[int]:
        return self.server.pids() if self.server else []

    def log_tail(self, lines: int = 20) -> str:
        return self.server.tail(lines) if self.server else ""


class ReferenceTarget(ProcessTarget):
    """Bare grpc.aio + ONNX Runtime in the workspace interpreter (``servers/reference_server.py``)."""

    script = "reference_server.py"

    def __init__(self, run_mode: str = "executor") -> None:
        super().__init__()
        self.run_mode = run_mode
        self.key = f"reference_{run_mode}"
        where = "in a 1-thread executor" if run_mode == "executor" else "inline on the event loop"
        self.label = f"bare grpc.aio + ORT ({where})"

    def config(self, models: dict[str, Path]) -> dict[str, Any]:
        return {**super().config(models), "run_mode": self.run_mode}


class PeerProcess(ProcessTarget):
    """A peer in its own benchmark environment (built on first use by :func:`envs.ensure`)."""

    peer = ""

    def __init__(self, log: Any = print) -> None:
        super().__init__()
        self.log = log
        self.peer_env: envs.PeerEnv | None = None

    def prepare(self) -> None:
        """Build (or reuse) the environment; raises TargetError with the reason when it fails."""
        if self.peer_env is not None:
            return
        try:
            self.peer_env = envs.ensure(self.peer, log=self.log)
        except envs.PeerSetupError as exc:
            raise TargetError(f"{self.key}: environment setup failed: {exc}") from exc
        self.facts["versions"] = self.peer_env.versions

    def python(self) -> Path:
        self.prepare()
        assert self.peer_env is not None
        return self.peer_env.python

    def env(self, config: dict[str, Any]) -> dict[str, str]:
        env = super().env(config)
        assert self.peer_env is not None
        env["VIRTUAL_ENV"] = str(self.peer_env.path)
        env["PATH"] = os.pathsep.join([str(self.peer_env.path / "bin"), env.get("PATH", "")])
        return env


class KServeTarget(PeerProcess):
    key = "kserve"
    label = "KServe ModelServer"
    peer = "kserve"
    script = "kserve_server.py"


class PyTritonTarget(PeerProcess):
    key = "pytriton"
    label = "Triton (PyTriton)"
    peer = "pytriton"
    script = "pytriton_server.py"

    def __init__(self, log: Any = print) -> None:
        super().__init__(log)
        self.tmpdir: Path | None = None
        self.models: set[str] = set()
        self.before: set[Path] | None = None

    def env(self, config: dict[str, Any]) -> dict[str, str]:
        env = super().env(config)
        # PyTriton keeps its workspace (model store, ipc sockets) in the temp dir: the run's own.
        if self.tmpdir is not None:
            env["TMPDIR"] = str(self.tmpdir)
        return env

    async def start(self, models: dict[str, Path], workdir: Path) -> dict[str, Endpoint]:
        self.tmpdir = workdir / f"pytriton-tmp-{time.monotonic_ns()}"
        self.tmpdir.mkdir(parents=True)
        self.models = set(models)
        self.before = _triton_tmp_entries()
        return await super().start(models, workdir)

    async def stop(self) -> None:
        await super().stop()
        if self.before is not None:
            _remove_triton_leftovers(self.before, self.models)
            self.before = None


def _triton_tmp_entries() -> set[Path]:
    """Triton's Python backend makes these under a hard-coded /tmp, whatever TMPDIR says."""
    return set(Path("/tmp").glob("folder??????")) | set(Path("/tmp").glob("python_env_??????"))


def _remove_triton_leftovers(before: set[Path], models: set[str]) -> None:
    """Remove what our tritonserver left in /tmp (even a graceful stop sometimes leaves an
    empty ``python_env_*``): only entries new since start that are empty, or model folders
    whose config.pbtxt names one of our models."""
    for entry in _triton_tmp_entries() - before:
        with contextlib.suppress(OSError):
            if entry.name.startswith("python_env_") and not any(entry.iterdir()):
                entry.rmdir()
            elif entry.name.startswith("folder"):
                config = (entry / "config.pbtxt").read_text()
                if any(f'name: "{name}"' in config for name in models):
                    shutil.rmtree(entry)


class MLServerTarget(PeerProcess):
    """``mlserver start <repo>`` with a model repository written for the run."""

    key = "mlserver"
    label = "MLServer"
    peer = "mlserver"

    def argv(self, config: dict[str, Any], workdir: Path) -> list[str]:
        repo = workdir / f"mlserver-repo-{config['grpc_port']}"
        repo.mkdir(parents=True)
        settings = {
            "host": config["host"],
            "http_port": config["http_port"],
            "grpc_port": config["grpc_port"],
            "metrics_port": config["metrics_port"],
        }
        (repo / "settings.json").write_text(json.dumps(settings, indent=2))
        for name, path in config["models"].items():
            folder = repo / name
            folder.mkdir()
            (folder / "model-settings.json").write_text(
                json.dumps(
                    {
                        "name": name,
                        "implementation": "mlserver_runtime.OnnxRuntime",
                        "parameters": {
                            "uri": path,
                            "extra": {
                                "intra_op_threads": config["intra_op_threads"],
                                "inter_op_threads": config["inter_op_threads"],
                            },
                        },
                    },
                    indent=2,
                )
            )
        self.prepare()
        assert self.peer_env is not None
        return [str(self.peer_env.path / "bin" / "mlserver"), "start", str(repo)]


def _load_bench_inference() -> ModuleType:
    """``bench/bench_inference.py`` as a module (the runner may have loaded it already)."""
    if "bench_inference" in sys.modules:
        return sys.modules["bench_inference"]
    path = BENCH_DIR / "bench_inference.py"
    spec = importlib.util.spec_from_file_location("bench_inference", path)
    if spec is None or spec.loader is None:
        raise TargetError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class WorkerTarget(Target):
    """The mlbus inference worker: one ``python -m mlbus.inference`` per model, with its defaults
    (batching off, 1 intra-op and 1 inter-op thread, default telemetry), started by
    ``bench_inference.start_worker`` on the runner's broker."""

    key = "mlbus_worker"
    label = "mlbus worker (direct)"

    def __init__(self, bootstrap_servers: str, extra_env: dict[str, str] | None = None) -> None:
        super().__init__()
        self.bootstrap = bootstrap_servers
        self.extra_env = extra_env or {}
        self.workers: list[Any] = []

    async def start(self, models: dict[str, Path], workdir: Path) -> dict[str, Endpoint]:
        try:
            bench_inference = _load_bench_inference()
            from mlbus.core.storage import LocalObjectStore
        except Exception as exc:
            raise TargetError(f"{self.key}: cannot import the worker launcher: {exc!r}") from exc
        root = workdir / "mlbus-objects"
        store = LocalObjectStore(root)
        await store.start()
        refs = {name: await store.put_content(path.read_bytes()) for name, path in models.items()}
        await store.aclose()
        started = time.perf_counter()
        endpoints = {}
        try:
            for name, ref in refs.items():
                extra = {"INFERENCE_MODEL_NAME": name, **self.extra_env}
                worker = await bench_inference.start_worker(
                    self.bootstrap, root, ref.uri, ref.sha256, extra, workdir
                )
                self.workers.append(worker)
                address = f"{LOOPBACK}:{worker.port}"
                await wait_ready(address, [name], lambda w=worker: w.proc.poll() is None)
                endpoints[name] = Endpoint(address, name)
        except BaseException as exc:
            # The worker that failed is not in self.workers: read the newest worker log.
            tail = _newest_worker_log_tail(workdir)
            await self.stop()
            if isinstance(exc, Exception) and not isinstance(exc, TargetError):
                raise TargetError(f"{self.key}: {exc!r}; log tail:\n{tail}") from exc
            raise
        self.startup_s = (time.perf_counter() - started) / max(1, len(refs))
        await self.check_loopback()
        return endpoints

    async def stop(self) -> None:
        workers, self.workers = self.workers, []
        for worker in workers:
            await asyncio.to_thread(worker.stop)

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers if w.proc.poll() is None]

    def log_tail(self, lines: int = 20) -> str:
        return _tail(self.workers[-1].log_path, lines) if self.workers else ""


def _newest_worker_log_tail(workdir: Path) -> str:
    logs = sorted(workdir.glob("worker-*.log"), key=lambda p: p.stat().st_mtime)
    return _tail(logs[-1]) if logs else ""


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


class RouterTarget(Target):
    """The mlbus router as clients reach it: a registry and a router process on the runner's
    broker; each model is registered, approved and deployed as an endpoint (name = model
    name) whose one worker the router's deployment controller starts, with the worker's
    defaults. Requests take the extra hop client → router → worker."""

    key = "mlbus_router"
    label = "mlbus router (→ worker)"

    def __init__(self, bootstrap_servers: str) -> None:
        super().__init__()
        self.bootstrap = bootstrap_servers
        self.processes: list[ServerProcess] = []

    def _env(self, workdir: Path, extra: dict[str, str]) -> dict[str, str]:
        return {
            **os.environ,
            "MLBUS_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "MLBUS_STORAGE_ROOT": str(workdir / "router-objects"),
            "MLBUS_GRPC_SHUTDOWN_GRACE_S": "1",
            "PYTHONUNBUFFERED": "1",
            **extra,
        }

    async def start(self, models: dict[str, Path], workdir: Path) -> dict[str, Endpoint]:
        registry_port, router_port = free_port(), free_port()
        namespace = f"bench-router-{uuid.uuid4().hex[:6]}"
        # A fresh home per start: the registry database must not keep the last run's endpoints.
        home = workdir / f"router-home-{namespace}"
        common = {"MLBUS_KAFKA_TOPIC_NAMESPACE": namespace}
        registry = ServerProcess.spawn(
            [sys.executable, "-m", "mlbus.registry"],
            self._env(
                workdir,
                {
                    **common,
                    "REGISTRY_GRPC_PORT": str(registry_port),
                    "REGISTRY_METRICS_PORT": "0",
                    "REGISTRY_HOME": str(home),
                    "REGISTRY_ALLOW_SELF_APPROVAL": "true",
                },
            ),
            workdir / "registry.log",
            workdir,
        )
        self.processes.append(registry)
        started = time.perf_counter()
        try:
            registry_address = f"{LOOPBACK}:{registry_port}"
            await _wait_health(registry_address, registry)
            router = ServerProcess.spawn(
                [sys.executable, "-m", "mlbus.router"],
                self._env(
                    workdir,
                    {
                        **common,
                        "ROUTER_GRPC_PORT": str(router_port),
                        "ROUTER_METRICS_PORT": "0",
                        "ROUTER_HOME": str(home),
                        "ROUTER_REGISTRY_ADDRESS": registry_address,
                    },
                ),
                workdir / "router.log",
                workdir,
            )
            self.processes.append(router)
            address = f"{LOOPBACK}:{router_port}"
            await _wait_health(address, router)
            await asyncio.to_thread(_deploy, registry_address, models)
            await wait_ready(address, list(models), router.alive)
        except BaseException as exc:
            tail = self.log_tail()
            await self.stop()
            if isinstance(exc, Exception) and not isinstance(exc, TargetError):
                raise TargetError(f"{self.key}: {exc!r}; log tail:\n{tail}") from exc
            raise
        self.startup_s = time.perf_counter() - started
        await self.check_loopback()
        return {name: Endpoint(address, name) for name in models}

    async def stop(self) -> None:
        processes, self.processes = self.processes, []
        for process in reversed(processes):
            await asyncio.to_thread(process.stop)

    def pids(self) -> list[int]:
        return [pid for p in self.processes for pid in p.pids()]

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(p.tail(lines) for p in self.processes)


async def _wait_health(
    address: str, process: ServerProcess, timeout: float = READY_TIMEOUT_S
) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if not process.alive():
                raise TargetError(f"process exited during start-up:\n{process.tail()}")
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
    raise TargetError(f"{address} not SERVING within {timeout:.0f}s")


def _deploy(registry_address: str, models: dict[str, Path]) -> None:
    from mlbus.sdk.registry import RegistryClient

    with RegistryClient(registry_address, actor="bench") as registry:
        for name, path in models.items():
            version = registry.register(path, group=name, create_group=True)
            registry.approve(name, version.version, reason="benchmark")
            registry.create_endpoint(
                name, [{"name": "main", "model_group": name, "model_version": version.version}]
            )
