"""``mlbus up`` / ``status`` / ``down``: the broker and the seven services as local processes.

The stack's state (PIDs, ports, log files) is written to ``<home>/stack.json`` so that
``mlbus status`` and ``mlbus down`` work from another shell. Each process runs in its own
session (process group), so Ctrl-C in the terminal reaches only the supervisor, which then
stops the services in order, and ``down`` can stop a service together with any children it
spawned.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlbus.core.settings import ServiceSettings
from mlbus.sdk.local.broker import (
    BrokerError,
    BrokerProcess,
    free_port,
    free_ports,
    port_is_free,
    start_broker,
)

STATE_FILE = "stack.json"


@dataclass(frozen=True)
class ServiceSpec:
    """A service ``mlbus up`` runs: its name and where its settings class lives."""

    name: str
    settings_path: str  # "module:Class"

    @property
    def package(self) -> str:
        """Python package of the service, e.g. ``mlbus.feature_store``."""
        return "mlbus." + self.name.replace("-", "_")

    def settings_class(self) -> type[ServiceSettings]:
        """Import the service's settings class (the service must be installed)."""
        module, _, cls = self.settings_path.partition(":")
        loaded: type[ServiceSettings] = getattr(importlib.import_module(module), cls)
        return loaded

    @property
    def env_prefix(self) -> str:
        """Environment prefix of the service's own settings, e.g. ``FEATURE_STORE_``."""
        return str(self.settings_class().model_config.get("env_prefix", ""))


#: The seven services in start order: what others call first comes first.
SERVICES: tuple[ServiceSpec, ...] = tuple(
    ServiceSpec(name, f"mlbus.{name.replace('-', '_')}.settings:{cls}")
    for name, cls in (
        ("registry", "RegistrySettings"),
        ("feature-store", "FeatureStoreSettings"),
        ("ingest", "IngestSettings"),
        ("trainer", "TrainerSettings"),
        ("inference", "InferenceSettings"),
        ("router", "RouterSettings"),
        ("monitor", "MonitorSettings"),
    )
)


class StackError(RuntimeError):
    """The local stack could not be started, found or stopped."""


@dataclass
class ProcessInfo:
    """One process of the stack as recorded in the state file."""

    name: str
    pid: int
    log: str
    grpc_port: int | None = None
    metrics_port: int | None = None


@dataclass
class StackState:
    """Everything ``status`` and ``down`` need, persisted as JSON."""

    home: str
    bootstrap_servers: str
    broker: ProcessInfo
    services: list[ProcessInfo] = field(default_factory=list)
    supervisor_pid: int | None = None
    started_at: float = field(default_factory=time.time)

    def save(self) -> None:
        """Write the state file atomically."""
        path = Path(self.home) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)

    @classmethod
    def load(cls, home: Path) -> StackState | None:
        """Read the state file, or None when no stack was started from ``home``."""
        path = home / STATE_FILE
        if not path.exists():
            return None
        raw: dict[str, Any] = json.loads(path.read_text())
        return cls(
            home=raw["home"],
            bootstrap_servers=raw["bootstrap_servers"],
            broker=ProcessInfo(**raw["broker"]),
            services=[ProcessInfo(**s) for s in raw["services"]],
            supervisor_pid=raw.get("supervisor_pid"),
            started_at=raw.get("started_at", 0.0),
        )


def pid_alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def tail(path: str | Path, lines: int = 20) -> str:
    """Last ``lines`` lines of a log file (empty if missing)."""
    try:
        data = Path(path).read_bytes()[-64 * 1024 :]
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def health_status(
    port: int, host: str = "127.0.0.1", timeout: float = 1.0, service: str = ""
) -> str:
    """The gRPC health status of the overall server (``SERVING``, ``NOT_SERVING``, ``UNREACHABLE``)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"{host}:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as exc:
            return "SERVICE_UNKNOWN" if exc.code() == grpc.StatusCode.NOT_FOUND else "UNREACHABLE"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def _stop_pid(pid: int, grace: float) -> None:
    """SIGTERM the process group of ``pid``, SIGKILL it after ``grace`` seconds."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and pid_alive(pid):
        _reap(pid)
        time.sleep(0.05)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        for _ in range(100):
            _reap(pid)
            if not pid_alive(pid):
                break
            time.sleep(0.05)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


class LocalStack:
    """Starts, supervises and stops the local stack rooted at ``home``."""

    def __init__(
        self,
        home: Path,
        *,
        broker_port: int = 29092,
        free_ports: bool = False,
        services: Sequence[ServiceSpec] = SERVICES,
        ready_timeout: float = 90.0,
        echo: Callable[[str], None] = print,
    ) -> None:
        self.home = home.resolve()
        self.logs = self.home / "logs"
        self.broker_port = broker_port
        self.free_ports = free_ports
        self.specs = list(services)
        self.ready_timeout = ready_timeout
        self.echo = echo
        self.broker: BrokerProcess | None = None
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.state: StackState | None = None
        self.reported_dead: set[str] = set()
        self._ports: dict[str, tuple[int, int]] = {}

    # --- start ----------------------------------------------------------------------

    def _env_for(self, spec: ServiceSpec, grpc_port: int, metrics_port: int) -> dict[str, str]:
        assert self.broker is not None
        env = dict(os.environ)
        prefix = spec.env_prefix
        env.update(
            {
                "MLBUS_KAFKA_BOOTSTRAP_SERVERS": self.broker.bootstrap_servers,
                f"{prefix}HOST": "127.0.0.1",
                f"{prefix}GRPC_PORT": str(grpc_port),
                f"{prefix}METRICS_PORT": str(metrics_port),
                f"{prefix}HOME": str(self.home),
                "MLBUS_STORAGE_ROOT": env.get("MLBUS_STORAGE_ROOT", str(self.home / "objects")),
                "OTEL_SERVICE_NAME": spec.name,
                "PYTHONUNBUFFERED": "1",
            }
        )
        registry = self._ports.get("registry")
        if registry is not None and "registry_address" in spec.settings_class().model_fields:
            # Services that call the registry (router, trainer) learn where it listens.
            env.setdefault(f"{prefix}REGISTRY_ADDRESS", f"127.0.0.1:{registry[0]}")
        return env

    def _ports_for(self, spec: ServiceSpec) -> tuple[int, int]:
        defaults = spec.settings_class()()
        if self.free_ports:
            return free_port(), free_port()
        for port in (defaults.grpc_port, defaults.metrics_port):
            if not port_is_free("127.0.0.1", port):
                raise StackError(
                    f"{spec.name}: port {port} is in use; stop what uses it, or run "
                    "`mlbus up --free-ports`"
                )
        return defaults.grpc_port, defaults.metrics_port

    def start(self) -> StackState:
        """Start broker, topics and services; wait until each reports SERVING."""
        existing = StackState.load(self.home)
        if existing is not None and any(
            pid_alive(p.pid) for p in [existing.broker, *existing.services]
        ):
            raise StackError(
                f"a stack is already running from {self.home} (see `mlbus status`); "
                "stop it with `mlbus down` first"
            )
        self.logs.mkdir(parents=True, exist_ok=True)
        port = free_port() if self.free_ports else self.broker_port
        broker_log = self.logs / "broker.log"
        try:
            self.broker = start_broker(port=port, log_path=broker_log, detach=True)
        except BrokerError as exc:
            raise StackError(str(exc)) from exc
        self.state = StackState(
            home=str(self.home),
            bootstrap_servers=self.broker.bootstrap_servers,
            broker=ProcessInfo("broker", self.broker.pid, str(broker_log), None, None),
            supervisor_pid=os.getpid(),
        )
        self.state.save()
        try:
            self._create_topics()
            # Every port is chosen before any service starts, so each service can be told
            # where the others are (the router's controller reads the registry).
            if self.free_ports:
                # All at once: ports picked one by one could repeat (two services, one port).
                picked = iter(free_ports(2 * len(self.specs)))
                self._ports = {spec.name: (next(picked), next(picked)) for spec in self.specs}
            else:
                self._ports = {spec.name: self._ports_for(spec) for spec in self.specs}
            for spec in self.specs:
                self._spawn(spec)
            self.state.save()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self.state

    def _create_topics(self) -> None:
        import asyncio

        from mlbus.core.messaging import all_topics, ensure_topics
        from mlbus.core.settings import KafkaSettings

        assert self.broker is not None
        settings = KafkaSettings(bootstrap_servers=self.broker.bootstrap_servers)
        topics = all_topics(settings.topic_namespace)
        asyncio.run(ensure_topics(settings, topics))
        self.echo(f"created {len(topics)} topics (and their dead-letter topics)")

    def _spawn(self, spec: ServiceSpec) -> None:
        assert self.state is not None
        grpc_port, metrics_port = self._ports.get(spec.name) or self._ports_for(spec)
        log_path = self.logs / f"{spec.name}.log"
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", spec.package],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=self._env_for(spec, grpc_port, metrics_port),
                start_new_session=True,
            )
        self.processes[spec.name] = process
        self.state.services.append(
            ProcessInfo(spec.name, process.pid, str(log_path), grpc_port, metrics_port)
        )

    def _wait_ready(self) -> None:
        assert self.state is not None
        pending = {p.name: p for p in self.state.services}
        deadline = time.monotonic() + self.ready_timeout
        while pending:
            for name, info in list(pending.items()):
                process = self.processes[name]
                if process.poll() is not None:
                    raise StackError(
                        f"{name} exited with code {process.returncode} during start-up; "
                        f"last lines of {info.log}:\n{tail(info.log)}"
                    )
                if info.grpc_port and health_status(info.grpc_port, timeout=0.5) == "SERVING":
                    del pending[name]
            if not pending:
                break
            if time.monotonic() > deadline:
                names = ", ".join(sorted(pending))
                raise StackError(
                    f"not SERVING after {self.ready_timeout:.0f}s: {names}; see logs in {self.logs}"
                )
            time.sleep(0.2)

    # --- supervise ------------------------------------------------------------------

    def check(self) -> list[tuple[ProcessInfo, int | None]]:
        """Processes that died since the last check, with their exit codes (reported once)."""
        assert self.state is not None
        dead = []
        for info in self.state.services:
            process = self.processes.get(info.name)
            code = process.poll() if process is not None else None
            alive = code is None if process is not None else pid_alive(info.pid)
            if not alive and info.name not in self.reported_dead:
                self.reported_dead.add(info.name)
                dead.append((info, code))
        if self.broker is not None and "broker" not in self.reported_dead:
            code = self.broker.process.poll()
            if code is not None:
                self.reported_dead.add("broker")
                dead.append((self.state.broker, code))
        return dead

    def stop(self, grace: float = 15.0) -> None:
        """Stop services in reverse start order, then the broker; remove the state file."""
        for name in reversed(list(self.processes)):
            process = self.processes[name]
            if process.poll() is None:
                _stop_pid(process.pid, grace)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(1)
        if self.broker is not None:
            self.broker.stop()
        with contextlib.suppress(FileNotFoundError):
            (self.home / STATE_FILE).unlink()


def stop_stack(home: Path, grace: float = 15.0) -> list[str]:
    """``mlbus down``: stop the stack recorded under ``home``; returns what was stopped."""
    state = StackState.load(home)
    if state is None:
        return []
    stopped: list[str] = []
    if (
        state.supervisor_pid
        and state.supervisor_pid != os.getpid()
        and pid_alive(state.supervisor_pid)
    ):
        # A foreground `mlbus up` supervises the stack: let it stop everything in order.
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.supervisor_pid, signal.SIGTERM)
        deadline = time.monotonic() + grace + 10
        while time.monotonic() < deadline and pid_alive(state.supervisor_pid):
            time.sleep(0.1)
    for info in [*reversed(state.services), state.broker]:
        if pid_alive(info.pid):
            _stop_pid(info.pid, grace)
            stopped.append(info.name)
    with contextlib.suppress(FileNotFoundError):
        (home / STATE_FILE).unlink()
    return stopped


def describe(state: StackState) -> Iterable[dict[str, str]]:
    """Rows for ``mlbus status``: name, pid, ports, state, log."""
    yield {
        "service": "broker",
        "pid": str(state.broker.pid),
        "grpc": state.bootstrap_servers,
        "metrics": "",
        "status": "RUNNING" if pid_alive(state.broker.pid) else "DEAD",
        "log": state.broker.log,
    }
    for info in state.services:
        if not pid_alive(info.pid):
            status = "DEAD"
        elif info.grpc_port:
            status = health_status(info.grpc_port)
        else:
            status = "RUNNING"
        yield {
            "service": info.name,
            "pid": str(info.pid),
            "grpc": f"127.0.0.1:{info.grpc_port}",
            "metrics": f"http://127.0.0.1:{info.metrics_port}/metrics" if info.metrics_port else "",
            "status": status,
            "log": info.log,
        }
