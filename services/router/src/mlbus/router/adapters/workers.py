"""Worker processes (the local process backend) and the gRPC client the router forwards with.

A worker is ``python -m mlbus.inference`` with its ``INFERENCE_*`` settings and the stack's
shared ``MLBUS_*`` settings in its environment, on a port the backend picks on loopback.
Its output goes to a log file of its own. Workers die with the router (Linux parent-death
signal, which the worker sets itself: :func:`mlbus.core.process.die_with_parent`), so a
killed router leaves no orphan serving stale models.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mlbus.core.process import PARENT_PID_ENV
from mlbus.core.rpc import channel_options
from mlbus.core.settings import GrpcSettings
from mlbus.inference.v2 import grpc_service_pb2 as pb
from mlbus.router.adapters.worker_stream import (
    DEFAULT_COALESCE_S,
    STREAM_MAX_REQUEST_BYTES,
    StreamCallError,
    WorkerStream,
)
from mlbus.router.domain.deployment import WorkerSpec

log = logging.getLogger(__name__)

SERVICE: Final = "inference.GRPCInferenceService"
_INFER: Final = f"/{SERVICE}/ModelInfer"
_METADATA: Final = f"/{SERVICE}/ModelMetadata"
_READY: Final = f"/{SERVICE}/ModelReady"
#: Exit status of a worker whose model could not be loaded (see services/inference).
EXIT_LOAD_FAILED: Final = 3
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class WorkerClient:
    """Calls one worker: ModelInfer as raw bytes both ways (never decoded here), metadata,
    readiness and health. The channel has no client interceptors: the router puts the trace
    context into the metadata itself, which keeps the forwarding hop cheap."""

    def __init__(
        self, address: str, settings: GrpcSettings, *, coalesce_s: float = DEFAULT_COALESCE_S
    ) -> None:
        self.address = address
        self.channel = grpc.aio.insecure_channel(address, options=channel_options(settings))
        # No (de)serializers: bytes in, bytes out.
        self.unary_infer = self.channel.unary_unary(_INFER, None, None)
        self.stream = WorkerStream(self.channel, coalesce_s=coalesce_s)
        #: Requests forwarded as unary calls (too large for the stream, or no stream service).
        self.unary_requests = 0
        self.metadata = self.channel.unary_unary(
            _METADATA,
            request_serializer=pb.ModelMetadataRequest.SerializeToString,
            response_deserializer=pb.ModelMetadataResponse.FromString,
        )
        self.model_ready = self.channel.unary_unary(
            _READY,
            request_serializer=pb.ModelReadyRequest.SerializeToString,
            response_deserializer=pb.ModelReadyResponse.FromString,
        )
        self._health = health_pb2_grpc.HealthStub(self.channel)

    async def infer(
        self, request: bytes, *, timeout: float, metadata: Sequence[tuple[str, str]] = ()
    ) -> bytes:
        """Forward one serialized ModelInferRequest; the worker's serialized response.

        Requests up to :data:`STREAM_MAX_REQUEST_BYTES` travel on the worker's stream (a
        fraction of a unary call's cost), larger ones — and every request to a worker
        without the stream service — as unary ModelInfer calls. Failures raise
        ``grpc.aio.AioRpcError`` (status, details, trailing metadata) either way.
        """
        if len(request) <= STREAM_MAX_REQUEST_BYTES and not self.stream.unsupported:
            try:
                return await self.stream.infer(request, timeout=timeout, metadata=metadata)
            except StreamCallError as exc:
                if not (exc.stream_failed and exc.code() is grpc.StatusCode.UNIMPLEMENTED):
                    raise
        self.unary_requests += 1
        response: bytes = await self.unary_infer(request, timeout=timeout, metadata=metadata)
        return response

    async def serving(self, timeout: float = 1.0) -> bool:
        """True when the worker's health service reports SERVING."""
        try:
            response = await self._health.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.aio.AioRpcError:
            return False
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)

    async def close(self) -> None:
        """Close the stream and the channel (in-flight calls are cancelled)."""
        await self.stream.close()
        await self.channel.close(grace=None)


class WorkerProcess:
    """One spawned worker process."""

    def __init__(
        self,
        instance_id: str,
        spec: WorkerSpec,
        address: str,
        log_path: Path,
        process: asyncio.subprocess.Process,
        *,
        port_file: Path | None = None,
        host: str = "",
    ) -> None:
        self.instance_id = instance_id
        self.spec = spec
        #: ``host:port`` of its gRPC server; empty until :meth:`bound` read the port file.
        self.address = address
        self.log_path = log_path
        self.port_file = port_file
        self._host = f"[{host}]" if ":" in host else host
        self._process = process
        self.started_at = time.monotonic()

    async def bound(self, timeout_s: float) -> bool:
        """Wait until the worker listens and its address is known: True then; False if it
        exited first or did not listen within ``timeout_s``.

        A worker started with port 0 writes the port the kernel gave it to ``port_file``
        (see ``ServiceSettings.port_file``). Choosing a free port here and passing it in
        would leave a window until the worker binds in which another process, or a second
        worker started at the same moment, can take that port: the worker then cannot
        start, or the router probes the other worker's server as if it were this one's."""
        if self.address:
            return True
        assert self.port_file is not None
        deadline = time.monotonic() + timeout_s
        delay = 0.005
        while True:
            try:
                text = self.port_file.read_text()
            except FileNotFoundError:
                text = ""
            if text.strip().isdigit():
                self.address = f"{self._host}:{int(text)}"
                return True
            if self.returncode is not None or time.monotonic() >= deadline:
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    @property
    def pid(self) -> int:
        """Process id."""
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        """Exit status once it exited (negative: killed by that signal)."""
        return self._process.returncode

    async def wait(self) -> int:
        """Wait for the process to exit; returns its status."""
        return await self._process.wait()

    async def stop(self, grace_s: float) -> int:
        """SIGTERM (the worker drains in-flight calls), then SIGKILL after ``grace_s``."""
        if self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.terminate()
            try:
                await asyncio.wait_for(self._process.wait(), grace_s)
            except TimeoutError:
                log.warning("worker did not stop in time; killing it", extra=self._log_extra())
                with contextlib.suppress(ProcessLookupError):
                    self._process.kill()
        code = await self._process.wait()
        if self.port_file is not None:
            self.port_file.unlink(missing_ok=True)
        return code

    def log_tail(self, lines: int = 5) -> str:
        """The last lines the worker wrote (for error messages)."""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(fh.tell() - 8192, 0))
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def _log_extra(self) -> dict[str, object]:
        return {"instance": self.instance_id, "pid": self.pid, "address": self.address}


class ProcessBackend:
    """Starts workers as local processes of the router's machine."""

    def __init__(
        self,
        *,
        command: Sequence[str],
        base_env: Mapping[str, str],
        log_dir: Path,
        host: str = "127.0.0.1",
    ) -> None:
        self.command = list(command) or [sys.executable, "-m", "mlbus.inference"]
        self.base_env = dict(base_env)
        self.log_dir = log_dir
        self.host = host

    async def spawn(self, spec: WorkerSpec, instance_id: str) -> WorkerProcess:
        """Start one worker for ``spec``; returns at once (its address is known once
        :meth:`WorkerProcess.bound`; readiness is the caller's)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        name = _SAFE.sub("_", instance_id)
        port_file = self.log_dir / f"{name}.port"
        # Instance ids restart at 1 with the router: a file left by an earlier router's
        # worker of the same id must not be read as this one's port.
        port_file.unlink(missing_ok=True)
        env = {
            **self.base_env,
            **spec.env(),
            "INFERENCE_HOST": self.host,
            "INFERENCE_GRPC_PORT": "0",
            "INFERENCE_PORT_FILE": str(port_file),
            "INFERENCE_METRICS_PORT": "0",
            # The worker asks the kernel to stop it when the router dies (see mlbus.core.process).
            PARENT_PID_ENV: str(os.getpid()),
        }
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log_file:
            process = await asyncio.create_subprocess_exec(
                *self.command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        worker = WorkerProcess(
            instance_id, spec, "", log_path, process, port_file=port_file, host=self.host
        )
        log.info(
            "worker started",
            extra={
                "instance": instance_id,
                "pid": process.pid,
                "port_file": str(port_file),
                "log_file": str(log_path),
            },
        )
        return worker
