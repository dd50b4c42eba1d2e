"""Settings of the inference worker (env prefix ``INFERENCE_``).

One worker process serves one endpoint variant's model. The deployment controller starts it
with these variables set from the endpoint configuration and the registry's artifact
record; ``mlbus up`` starts it with none of them, and it then serves no model (see README).
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal, Self

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from mlbus.core.settings import ServiceSettings

_SHA256 = re.compile(r"[0-9a-f]{64}")


class InferenceSettings(ServiceSettings):
    """Everything the inference worker reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="INFERENCE_")

    service_name: ClassVar[str] = "inference"

    grpc_port: int = Field(default=50053, ge=0, le=65535)
    """gRPC port; 0 picks a free port (the chosen port is logged)."""
    metrics_port: int = Field(default=9103, ge=0, le=65535)
    """Port of the Prometheus text endpoint; 0 picks a free port."""

    # --- what is served --------------------------------------------------------------
    model_name: str = ""
    """Endpoint name, which is the model name of the v2 protocol; empty serves no model."""
    variant: str = ""
    """Name of the endpoint's production or shadow variant this worker serves."""
    model_group: str = ""
    """Registry model group of the served version (carried in captured records)."""
    model_version: int = Field(default=1, ge=1)
    """Registry version number of the served model; the v2 protocol sees it as a string."""
    artifact_uri: str = ""
    """Object-store URI of the ONNX artifact; required when model_name is set."""
    artifact_sha256: str = ""
    """Expected lower-case hex SHA-256 of the artifact; a mismatch stops the worker."""
    shadow: bool = False
    """This worker serves a shadow variant (its captured records say so)."""

    # --- ONNX Runtime ----------------------------------------------------------------
    intra_op_threads: int = Field(default=1, ge=1, le=256)
    """ONNX Runtime threads inside one operator (a session run)."""
    inter_op_threads: int = Field(default=1, ge=1, le=256)
    """ONNX Runtime threads across independent operators."""
    graph_optimization: Literal["disabled", "basic", "extended", "all"] = "all"
    """ONNX Runtime graph optimisation level."""
    max_concurrent_runs: int = Field(default=1, ge=1, le=64)
    """Session runs in flight at once (batches when batching is on, requests otherwise)."""
    warmup_runs: int = Field(default=3, ge=0, le=100)
    """Inferences on zero-filled inputs before the worker reports ready (the fastest one also seeds the run-time estimate of inline runs)."""
    gil_switch_interval_us: int = Field(default=5000, ge=0, le=100_000)
    """Python's thread switch interval in the worker process (``sys.setswitchinterval``): how long a finished session run may wait for the GIL while the event loop is busy; 0 keeps Python's default (5000)."""
    inline_run_max_us: int = Field(default=100, ge=0, le=1_000_000)
    """Session runs estimated to take at most this long run on the event loop instead of a thread (when nothing else runs or waits); 0: always in threads."""

    # --- dynamic batching ------------------------------------------------------------
    max_batch_size: int = Field(default=1, ge=1, le=65536)
    """Most rows merged into one session run; 1 turns dynamic batching off."""
    max_queue_delay_us: int = Field(default=0, ge=0, le=10_000_000)
    """Longest a request waits for others to join its batch (0: requests that arrive while a run is busy form the next batch)."""
    preferred_batch_sizes: list[int] = Field(default_factory=list)
    """Row counts dispatched at once without waiting out the delay, e.g. `[4,8]`."""

    # --- admission and capture -------------------------------------------------------
    max_concurrent_requests: int = Field(default=256, ge=1, le=1_000_000)
    """ModelInfer calls in progress at once; more are refused with RESOURCE_EXHAUSTED."""
    capture_percent: float = Field(default=0.0, ge=0.0, le=100.0)
    """Share of successful inferences published to the capture topic, in percent."""
    capture_queue_size: int = Field(default=256, ge=1, le=1_000_000)
    """Captured records waiting for the bus; when full, new ones are dropped (counted). Memory: at most this × capture_max_payload_bytes."""
    capture_max_payload_bytes: int = Field(default=1024 * 1024, ge=1024)
    """Largest request plus response a captured record carries; larger ones are dropped (counted)."""

    # --- asynchronous requests -------------------------------------------------------
    async_enabled: bool = True
    """Consume the endpoint's asynchronous request topic (production variants only; shadow workers never do)."""
    async_timeout_s: float = Field(default=3600.0, gt=0)
    """Deadline of an asynchronous request that carries none, from its acceptance."""
    batch_chunk_max_s: float = Field(default=1800.0, gt=0)
    """The longest one batch-transform chunk may take on this worker; the worker stays in the chunk topic's consumer group that long while it runs one (past it, the chunk may be given to another worker as well)."""
    queue_fetch_max_wait_ms: int = Field(default=100, ge=0, le=10_000)
    """How long the asynchronous-request and batch-chunk consumers wait per fetch. The embedded broker does not answer a waiting fetch when data arrives, so this adds up to this much latency per queued request; shorter waits cost an idle worker CPU (20 ms: ~5% of a core)."""

    @model_validator(mode="after")
    def _check_model(self) -> Self:
        if self.model_name or self.artifact_uri:
            missing = [
                f"INFERENCE_{name.upper()}"
                for name in ("model_name", "artifact_uri", "artifact_sha256")
                if not getattr(self, name)
            ]
            if missing:
                raise ValueError(
                    f"a served model needs {', '.join(missing)} as well "
                    "(set all of model_name, artifact_uri and artifact_sha256, or none)"
                )
            if not _SHA256.fullmatch(self.artifact_sha256):
                raise ValueError(
                    f"artifact_sha256: expected 64 lower-case hex digits, "
                    f"got {self.artifact_sha256!r}"
                )
        for size in self.preferred_batch_sizes:
            if not 1 <= size <= self.max_batch_size:
                raise ValueError(
                    f"preferred_batch_sizes: {size} is outside 1..max_batch_size "
                    f"({self.max_batch_size})"
                )
        return self

    @property
    def serves_model(self) -> bool:
        """True when a model is configured (the worker loads it before it reports ready)."""
        return bool(self.model_name)
