"""Settings of the trainer service (env prefix ``TRAINER_``)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from mlbus.core.settings import ServiceSettings

MIB = 1024 * 1024


class TrainerSettings(ServiceSettings):
    """Everything the trainer service reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="TRAINER_")

    service_name: ClassVar[str] = "trainer"

    grpc_port: int = Field(default=50054, ge=0, le=65535)
    """gRPC port; 0 picks a free port (the chosen port is logged)."""
    metrics_port: int = Field(default=9104, ge=0, le=65535)
    """Port of the Prometheus text endpoint; 0 picks a free port."""

    # --- where state lives ---------------------------------------------------------------
    database_url: str = ""
    """SQLAlchemy URL of the jobs database: `postgresql://user:password@host/db` (or `postgresql+psycopg://...`), or `sqlite:///path`. Empty: the SQLite file `<home>/trainer.db`. Replicas share work only through a shared database (PostgreSQL, or one SQLite file on one machine)."""
    migrate_on_start: bool = True
    """Apply the database migrations (Alembic, to head) at start-up."""
    work_dir: Path | None = None
    """Directory of the jobs' working directories (staged inputs, exported model, statistics); each is removed when its job ends. Empty: `<home>/trainer-work`."""
    trainer_id: str = ""
    """Name of this replica, stored with the jobs it runs. A replica that starts again under the same name takes over its unfinished jobs at once; others wait for the lease to expire. Empty: `<host name>-<home directory hash>`, stable across restarts."""

    # --- work sharing --------------------------------------------------------------------
    consumer_group: str = "mlbus-trainer"
    """Consumer group of the job-requested topic; replicas in one group share the requests."""
    max_concurrent_jobs: int = Field(default=2, ge=1, le=256)
    """Jobs (and tuning trials) this replica runs at once; more wait as PENDING for any replica with room."""
    poll_interval_s: float = Field(default=1.0, gt=0)
    """How often the replica looks in the database for unclaimed pending jobs, stop requests and expired leases."""
    lease_s: float = Field(default=30.0, ge=1.0)
    """How long a replica's claim on a job lasts without renewal (renewed every poll); a job whose replica died is recovered once its lease expires."""
    max_attempts: int = Field(default=1, ge=1, le=10)
    """How often a job is started in all: a job interrupted by a trainer crash is run again while it has attempts left, else it FAILS saying so."""

    # --- limits --------------------------------------------------------------------------
    default_max_runtime_s: float = Field(default=3600.0, gt=0)
    """Wall-clock limit of a job that does not set one."""
    max_runtime_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    """Largest wall-clock limit a job may ask for."""
    default_max_memory_bytes: int = Field(default=4096 * MIB, ge=64 * MIB)
    """Memory limit (RSS of the job's process tree) of a job that does not set one."""
    max_memory_bytes: int = Field(default=16384 * MIB, ge=64 * MIB)
    """Largest memory limit a job may ask for."""
    memory_check_interval_s: float = Field(default=0.1, gt=0)
    """How often the watchdog measures a running job's memory."""
    stop_grace_s: float = Field(default=10.0, ge=0)
    """After SIGTERM (StopJob, a limit), how long a job may take to exit before SIGKILL."""
    checkpoint_sync_interval_s: float = Field(default=10.0, gt=0)
    """How often a running job's checkpoint directory (MLBUS_CHECKPOINT_DIR) is copied to the object store, from where a re-run of the job restores it; what changed after the last copy is lost if the trainer dies."""

    # --- results -------------------------------------------------------------------------
    parity_atol: float = Field(default=1e-4, ge=0)
    """Parity check: largest absolute difference allowed between the ONNX model's and the original's probabilities and regression outputs (plus the relative part)."""
    parity_rtol: float = Field(default=1e-3, ge=0)
    """Parity check: allowed difference relative to the original's regression output (|onnx - original| <= atol + rtol * |original|)."""
    max_categories: int = Field(default=50, ge=2)
    """Training with categorical (string) columns: how many categories of each such column get a one-hot column (the most frequent in the training rows); rarer ones encode as all zeros, like categories never seen."""
    registry_address: str = "127.0.0.1:50052"
    """host:port of the registry that trained models are registered in."""
    registry_timeout_s: float = Field(default=120.0, gt=0)
    """Deadline of one registration (upload included)."""
    registry_attempts: int = Field(default=5, ge=1)
    """How often a registration that failed with UNAVAILABLE is tried before the job FAILS."""
    log_flush_interval_s: float = Field(default=0.25, gt=0)
    """How often a running job's new log lines are written to the database (where StreamJobLogs reads them)."""
    max_log_line_chars: int = Field(default=4000, ge=80)
    """Longer log lines are cut to this length."""
    default_page_size: int = Field(default=50, ge=1)
    """Page size of ListJobs when the request does not ask for one."""
    max_page_size: int = Field(default=1000, ge=1)
    """Largest page ListJobs returns."""

    def resolved_database_url(self) -> str:
        """``database_url``, or the SQLite file under ``home`` when it is empty."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'trainer.db').expanduser().resolve()}"

    def resolved_work_dir(self) -> Path:
        """``work_dir``, or ``<home>/trainer-work``."""
        return (self.work_dir or self.home / "trainer-work").expanduser().resolve()

    def resolved_trainer_id(self) -> str:
        """``trainer_id``, or a name stable for this host and home directory."""
        if self.trainer_id:
            return self.trainer_id
        home = str(self.home.expanduser().resolve())
        digest = abs(hash_text(home)) % 10**8
        return f"{socket.gethostname()}-{digest:08d}"


def hash_text(text: str) -> int:
    """A hash of ``text`` stable across processes (``hash()`` is salted per process)."""
    import hashlib

    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big", signed=True)


#: Environment of a job's child process: no service settings leak into user code.
def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A minimal environment for a job's child process."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["PYTHONUNBUFFERED"] = "1"
    # One thread per BLAS/OpenMP pool unless the job says otherwise: jobs run side by side.
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, os.environ.get(name, "1"))
    env.update(extra or {})
    return env
