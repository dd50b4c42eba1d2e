"""Settings of the router service (env prefix ``ROUTER_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from mlbus.core.settings import ServiceSettings


class RouterSettings(ServiceSettings):
    """Everything the router service reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="ROUTER_")

    service_name: ClassVar[str] = "router"

    grpc_port: int = Field(default=8001, ge=0, le=65535)
    """gRPC port; 0 picks a free port (the chosen port is logged)."""
    metrics_port: int = Field(default=9101, ge=0, le=65535)
    """Port of the Prometheus text endpoint; 0 picks a free port."""

    # --- where deployments come from ---------------------------------------------------
    registry_address: str = "127.0.0.1:50052"
    """host:port of the registry, whose endpoint list the controller loads at start."""
    controller_enabled: bool = True
    """Run the deployment controller (start workers for the registry's endpoints)."""
    controller_group_id: str = "mlbus-router-controller"
    """Consumer group of the controller's registry-event consumer; each router replica that runs a controller needs its own."""

    # --- workers (local process backend) -------------------------------------------------
    worker_command: list[str] = Field(default_factory=list)
    """Command that starts one inference worker, e.g. `["python","-m","mlbus.inference"]`; empty: this interpreter with `-m mlbus.inference`."""
    worker_host: str = "127.0.0.1"
    """Address workers bind to (the router reaches them there)."""
    worker_env: dict[str, str] = Field(default_factory=dict)
    """Extra environment for every worker, e.g. `{"INFERENCE_INTRA_OP_THREADS":"2"}`."""
    worker_ready_timeout_s: float = Field(default=120.0, gt=0)
    """How long a new worker may take to load and warm its model before it counts as failed."""
    max_workers: int = Field(default=64, ge=0, le=100_000)
    """Most worker processes this router runs at once, over every endpoint (0: no limit). A revision that would take more is not deployed (the previous one keeps serving) and its status says why: one typo in an instance_count must not start hundreds of model processes on the router's machine."""
    worker_start_attempts: int = Field(default=3, ge=1, le=20)
    """Starts of a worker tried before its revision's rollout is abandoned (the old revision keeps serving)."""
    worker_drain_timeout_s: float = Field(default=30.0, ge=0)
    """Longest a replaced worker keeps running for its in-flight requests before it is stopped."""
    worker_stop_grace_s: float = Field(default=10.0, ge=0)
    """Time between SIGTERM and SIGKILL when a worker is stopped."""
    worker_restart_backoff_s: float = Field(default=1.0, gt=0)
    """First delay before restarting a crashed worker again; doubles per quick crash."""
    worker_restart_backoff_max_s: float = Field(default=30.0, gt=0)
    """Longest delay between restarts of a crash-looping worker."""
    worker_stream_coalesce_us: int = Field(default=1000, ge=0, le=100_000)
    """Longest wait of a request for others to share its message to a busy worker (only while others on its stream are unanswered; a request to an idle worker goes at once). Fewer, fuller messages cost the router and the worker less CPU per request; 0 sends every request at once."""

    # --- scale to zero ---------------------------------------------------------------------
    scale_poll_interval_s: float = Field(default=1.0, gt=0, le=300)
    """How often the controller checks variants that scale to zero: idle time, and the queue depth (consumer lag) that starts them again."""
    serverless_idle_s: float = Field(default=300.0, gt=0)
    """Idle time after which a SERVERLESS variant that sets no `scale_to_zero_after_seconds` stops its workers."""

    # --- asynchronous inference ------------------------------------------------------------
    async_inline_max_bytes: int = Field(default=128 * 1024, ge=0)
    """Largest request carried on the request topic itself; larger ones go to the object store and the topic carries a reference."""
    async_default_timeout_s: float = Field(default=3600.0, gt=0)
    """Deadline of an asynchronous inference that asks for none (from acceptance)."""
    async_max_timeout_s: float = Field(default=86400.0, gt=0)
    """Longest deadline an asynchronous inference may ask for."""

    # --- front door ----------------------------------------------------------------------
    shadow_max_in_flight: int = Field(default=64, ge=1)
    """Mirrored requests outstanding at once; more are dropped (counted), never queued."""
    shadow_timeout_s: float = Field(default=10.0, gt=0)
    """Deadline of a mirrored request to the shadow variant."""
