"""The served model's lifecycle: configured → loading → ready (or failed), and the name and
version checks every v2 call makes.

Loading fetches the artifact and verifies its SHA-256, creates the ONNX Runtime session
(in a thread, so health checks keep being answered NOT_SERVING meanwhile), runs the
warm-up, and only then starts the engine. A worker configured without a model serves none:
it is ready (like a Triton server with an empty repository) and answers NOT_FOUND for any
model name.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time

from mlbus.core.errors import NotFound, Unavailable
from mlbus.inference.adapters.artifacts import StoreOpener, fetch_artifact
from mlbus.inference.adapters.onnx_runtime import OnnxModel
from mlbus.inference.domain.engine import InferenceEngine
from mlbus.inference.domain.errors import ModelLoadError
from mlbus.inference.domain.signature import ModelSignature
from mlbus.inference.metrics import InferenceMetrics
from mlbus.inference.settings import InferenceSettings

log = logging.getLogger(__name__)


class ModelState(enum.Enum):
    """Where the served model is in its lifecycle."""

    NONE = "none"
    """No model configured."""
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    STOPPED = "stopped"


class Worker:
    """Holds the one served model and answers which model, which version, and whether ready."""

    def __init__(
        self, settings: InferenceSettings, metrics: InferenceMetrics, *, open_store: StoreOpener
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._open_store = open_store
        self.state = ModelState.LOADING if settings.serves_model else ModelState.NONE
        self.engine: InferenceEngine | None = None
        self.load_seconds: float | None = None

    @property
    def version(self) -> str:
        """The served version as the v2 protocol spells it."""
        return str(self.settings.model_version)

    @property
    def server_ready(self) -> bool:
        """ServerReady: every configured model (zero or one) is ready."""
        return self.state in (ModelState.NONE, ModelState.READY)

    def check_model(self, name: str, version: str) -> None:
        """NotFound unless ``name`` (and ``version``, when given) is the served model."""
        served = self.settings.model_name
        if not served:
            raise NotFound(
                f"model {name!r} is not served here; this worker serves no model",
                details={"model": name},
            )
        if name != served:
            raise NotFound(
                f"model {name!r} is not served here; this worker serves {served!r}",
                details={"model": name},
            )
        if version and version != self.version:
            raise NotFound(
                f"model {name!r} version {version!r} is not served here; this worker serves "
                f"version {self.version!r}",
                details={"model": name, "version": version},
            )

    def model_ready(self, name: str, version: str) -> bool:
        """ModelReady for ``name``/``version``; NotFound for a model not served here."""
        self.check_model(name, version)
        return self.state is ModelState.READY

    def ready_engine(self, name: str, version: str) -> InferenceEngine:
        """The engine of the served model once ready; NotFound or Unavailable otherwise."""
        self.check_model(name, version)
        if self.state is ModelState.READY and self.engine is not None:
            return self.engine
        if self.state is ModelState.LOADING:
            raise Unavailable(f"model {name!r} is loading; retry when it is ready")
        if self.state is ModelState.FAILED:
            raise Unavailable(f"model {name!r} failed to load on this worker")
        raise Unavailable("the worker is stopping")

    def signature(self, name: str, version: str) -> ModelSignature:
        """The served model's signature (ModelMetadata)."""
        return self.ready_engine(name, version).runner.signature

    async def load(self) -> None:
        """Fetch, verify, load and warm the model, then start the engine.

        Raises ModelLoadError (state FAILED, reason logged) on any failure. Does nothing
        when no model is configured.
        """
        if self.state is not ModelState.LOADING:
            return
        s = self.settings
        started = time.perf_counter()
        context = {"model": s.model_name, "version": self.version, "artifact_uri": s.artifact_uri}
        log.info("loading model", extra=context)
        try:
            data = await fetch_artifact(
                s.storage, s.artifact_uri, s.artifact_sha256, open_store=self._open_store
            )
            model = await asyncio.to_thread(
                OnnxModel.load,
                data,
                intra_op_threads=s.intra_op_threads,
                inter_op_threads=s.inter_op_threads,
                graph_optimization=s.graph_optimization,
            )
            warm_run_s = await asyncio.to_thread(model.warm_up, s.warmup_runs)
        except ModelLoadError as exc:
            self.state = ModelState.FAILED
            log.error("model load failed: %s", exc, extra=context)
            raise
        except Exception as exc:
            self.state = ModelState.FAILED
            log.error("model load failed: %s", exc, exc_info=exc, extra=context)
            raise ModelLoadError(f"model {s.model_name!r}: {exc}") from exc
        engine = InferenceEngine(
            model,
            self.metrics,
            max_batch_size=s.max_batch_size,
            max_queue_delay_us=s.max_queue_delay_us,
            preferred_batch_sizes=s.preferred_batch_sizes,
            max_concurrent_runs=s.max_concurrent_runs,
            inline_run_max_us=s.inline_run_max_us,
            warm_run_s=warm_run_s,
        )
        engine.start()
        self.engine = engine
        self.state = ModelState.READY
        self.load_seconds = time.perf_counter() - started
        signature = model.signature
        log.info(
            "model ready",
            extra={
                **context,
                "load_ms": round(self.load_seconds * 1000, 1),
                "artifact_bytes": len(data),
                "inputs": [f"{t.name}: {t.describe()}" for t in signature.inputs],
                "outputs": [f"{t.name}: {t.describe()}" for t in signature.outputs],
                "batching": engine.batching,
            },
        )

    async def stop(self) -> None:
        """Stop the engine (queued requests fail UNAVAILABLE; running ones finish)."""
        engine, self.engine = self.engine, None
        if self.state is not ModelState.NONE:
            self.state = ModelState.STOPPED
        if engine is not None:
            await engine.stop()
        stats = self.metrics.stats
        log.info(
            "worker stopped",
            extra={
                "requests": stats.requests,
                "session_runs": stats.session_runs,
                "batched_runs": stats.batched_runs,
                "batch_fallbacks": stats.batch_fallbacks,
                "captured": stats.captured,
                "capture_dropped": stats.capture_dropped,
            },
        )
