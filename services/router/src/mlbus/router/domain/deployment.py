"""What the deployment controller wants running: plans built from endpoint configurations.

A :class:`WorkerSpec` is everything that makes one worker process different from another;
two workers with equal specs are interchangeable, so an update that only changes weights
(or instance counts) keeps the running workers instead of replacing them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class VariantMode(StrEnum):
    """How a variant's workers run."""

    REALTIME = "realtime"
    SERVERLESS = "serverless"


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """The settings of one worker process (its ``INFERENCE_*`` environment)."""

    endpoint: str
    variant: str
    model_group: str
    model_version: int
    artifact_uri: str
    artifact_sha256: str
    shadow: bool = False
    max_batch_size: int = 1
    max_queue_delay_us: int = 0
    #: Requests in flight on the worker; 0 keeps the worker's default.
    max_concurrency: int = 0
    capture_percent: float = 0.0

    def env(self) -> dict[str, str]:
        """The worker's environment variables for this spec."""
        env = {
            "INFERENCE_MODEL_NAME": self.endpoint,
            "INFERENCE_VARIANT": self.variant,
            "INFERENCE_MODEL_GROUP": self.model_group,
            "INFERENCE_MODEL_VERSION": str(self.model_version),
            "INFERENCE_ARTIFACT_URI": self.artifact_uri,
            "INFERENCE_ARTIFACT_SHA256": self.artifact_sha256,
            "INFERENCE_SHADOW": "true" if self.shadow else "false",
            "INFERENCE_MAX_BATCH_SIZE": str(max(self.max_batch_size, 1)),
            "INFERENCE_MAX_QUEUE_DELAY_US": str(max(self.max_queue_delay_us, 0)),
            "INFERENCE_CAPTURE_PERCENT": repr(float(self.capture_percent)),
        }
        if self.max_concurrency > 0:
            env["INFERENCE_MAX_CONCURRENT_REQUESTS"] = str(self.max_concurrency)
        return env


@dataclass(frozen=True, slots=True)
class VariantPlan:
    """One variant of a plan: its worker spec, traffic weight and instance count."""

    spec: WorkerSpec
    weight: float
    instance_count: int
    mode: VariantMode = VariantMode.REALTIME
    #: Idle seconds after which the variant's workers stop (0: never, or for a serverless
    #: variant the controller's default); see :meth:`idle_shutdown_s`.
    scale_to_zero_after_s: float = 0.0

    @property
    def name(self) -> str:
        """Variant name."""
        return self.spec.variant

    @property
    def instances_wanted(self) -> int:
        """Workers to run while the variant is up: the instance count; a serverless variant
        runs one (and none while scaled to zero)."""
        if self.mode is VariantMode.SERVERLESS:
            return 1
        return max(self.instance_count, 1)

    def idle_shutdown_s(self, serverless_default_s: float) -> float:
        """Idle seconds before the variant scales to zero; 0 if it never does (shadow
        variants never do: they only ever see mirrored traffic)."""
        if self.spec.shadow:
            return 0.0
        if self.scale_to_zero_after_s > 0:
            return self.scale_to_zero_after_s
        return serverless_default_s if self.mode is VariantMode.SERVERLESS else 0.0


@dataclass(frozen=True, slots=True)
class EndpointPlan:
    """Everything an endpoint configuration revision asks the controller to run."""

    endpoint: str
    revision: int
    variants: tuple[VariantPlan, ...]
    shadow: VariantPlan | None = None
    shadow_percent: float = 0.0
    #: Set when the endpoint may not serve (every production version was rejected).
    blocked_reason: str = ""

    def all_variants(self) -> tuple[VariantPlan, ...]:
        """Production variants, then the shadow variant if any."""
        return (*self.variants, *((self.shadow,) if self.shadow is not None else ()))

    def without_version(self, model_group: str, model_version: int, reason: str) -> EndpointPlan:
        """This plan minus the variants serving a rejected version (same revision)."""

        def keep(vp: VariantPlan) -> bool:
            return not (
                vp.spec.model_group == model_group and vp.spec.model_version == model_version
            )

        variants = tuple(vp for vp in self.variants if keep(vp))
        shadow = self.shadow if self.shadow is not None and keep(self.shadow) else None
        blocked = self.blocked_reason
        if not variants:
            blocked = reason
        return EndpointPlan(
            endpoint=self.endpoint,
            revision=self.revision,
            variants=variants,
            shadow=shadow,
            shadow_percent=self.shadow_percent if shadow is not None else 0.0,
            blocked_reason=blocked,
        )
