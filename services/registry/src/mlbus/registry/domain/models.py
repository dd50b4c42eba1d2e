"""The registry's entities as immutable pydantic models.

These are what the use cases work on; the API converts them to and from protobuf and
the SQL adapter to and from rows. Change one with ``model_copy(update=...)``.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Frozen(BaseModel):
    """Base of every domain model: immutable, unknown fields refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ApprovalStatus(StrEnum):
    """Where a model version stands in the approval workflow."""

    PENDING_MANUAL_APPROVAL = "PENDING_MANUAL_APPROVAL"
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"


class EndpointStatus(StrEnum):
    """Whether an endpoint serves its configuration, needs a new one, or is gone."""

    ACTIVE = "ACTIVE"
    DEGRADED = "DEGRADED"
    DELETED = "DELETED"


class VariantMode(StrEnum):
    """How a variant's workers run."""

    REALTIME = "REALTIME"
    SERVERLESS = "SERVERLESS"


class ArtifactRef(Frozen):
    """A stored object: where it is and what it holds."""

    uri: str
    sha256: str
    size_bytes: int
    content_type: str


class TensorSpec(Frozen):
    """Name, Open Inference Protocol datatype and shape (-1 = dynamic) of a tensor."""

    name: str
    datatype: str
    shape: tuple[int, ...] = ()


class Signature(Frozen):
    """A model's inputs and outputs and its ONNX default-domain opset."""

    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    opset: int = 0


class Lineage(Frozen):
    """Where a model version came from."""

    training_job_id: str = ""
    dataset_uri: str = ""
    dataset_sha256: str = ""
    code_version: str = ""
    parent_version: int = 0

    @property
    def dataset_version(self) -> str:
        """``<dataset uri>@<sha256>`` (either part alone when the other is unknown)."""
        if self.dataset_uri and self.dataset_sha256:
            return f"{self.dataset_uri}@{self.dataset_sha256}"
        return self.dataset_uri or self.dataset_sha256


class ModelCard(Frozen):
    """What a reader of the model must know before using it."""

    intended_use: str = ""
    limitations: str = ""
    evaluation: str = ""
    owner: str = ""


class ModelGroup(Frozen):
    """A named family of model versions."""

    name: str
    description: str = ""
    tags: dict[str, str] = Field(default_factory=dict)
    latest_version: int = 0
    created_by: str
    create_time: datetime
    update_time: datetime


class ModelVersion(Frozen):
    """One registered model version."""

    model_group: str
    version: int
    artifact: ArtifactRef
    signature: Signature
    approval_status: ApprovalStatus = ApprovalStatus.PENDING_MANUAL_APPROVAL
    status_reason: str = ""
    metrics: dict[str, float] = Field(default_factory=dict)
    hyperparameters: dict[str, str] = Field(default_factory=dict)
    lineage: Lineage = Field(default_factory=Lineage)
    model_card: ModelCard = Field(default_factory=ModelCard)
    tags: dict[str, str] = Field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    description: str = ""
    registered_by: str
    register_time: datetime
    update_time: datetime
    baseline: ArtifactRef | None = None
    request_id: str | None = None

    @property
    def ref(self) -> str:
        """``<group>/<version>``, how messages and the audit log name a version."""
        return version_ref(self.model_group, self.version)


def version_ref(model_group: str, version: int) -> str:
    """``<group>/<version>``."""
    return f"{model_group}/{version}"


class AuditEntry(Frozen):
    """One entry of the append-only audit log (``id`` is 0 until stored)."""

    id: int = 0
    entity_type: str
    entity_id: str
    action: str
    actor: str
    reason: str = ""
    time: datetime
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None


class BatchingConfig(Frozen):
    """Dynamic batching on a worker."""

    max_batch_size: int = 0
    max_queue_delay_micros: int = 0


class Variant(Frozen):
    """One model version behind an endpoint. ``artifact`` and ``signature`` are filled by
    the registry when a configuration is stored (anything a caller puts there is ignored).

    ``scale_to_zero_after_seconds``: idle time (no real-time request, empty asynchronous and
    batch queues) after which the router stops the variant's workers until the next
    request; 0 means never for REALTIME and the router's default for SERVERLESS.
    Configurations stored before the field existed load with 0.
    """

    name: str
    model_group: str
    model_version: int
    weight: float = 0.0
    instance_count: int = 0
    mode: VariantMode = VariantMode.REALTIME
    max_concurrency: int = 0
    batching: BatchingConfig | None = None
    scale_to_zero_after_seconds: int = 0
    artifact: ArtifactRef | None = None
    signature: Signature | None = None

    @property
    def version_ref(self) -> str:
        """``<group>/<version>`` of the served version."""
        return version_ref(self.model_group, self.model_version)

    def unresolved(self) -> Variant:
        """This variant without the registry-filled artifact and signature."""
        return self.model_copy(update={"artifact": None, "signature": None})


class ShadowVariant(Frozen):
    """A variant that receives a mirrored share of live traffic."""

    variant: Variant
    sampling_percent: float = 0.0


class DataCapture(Frozen):
    """Which share of real-time traffic workers capture for monitoring."""

    sampling_percent: float = 0.0


class EndpointConfigSpec(Frozen):
    """The desired state of an endpoint: what a caller writes."""

    variants: tuple[Variant, ...] = ()
    shadow: ShadowVariant | None = None
    data_capture: DataCapture | None = None
    description: str = ""

    def unresolved(self) -> EndpointConfigSpec:
        """This spec without registry-filled artifacts and signatures (for re-validation)."""
        shadow = self.shadow
        if shadow is not None:
            shadow = shadow.model_copy(update={"variant": shadow.variant.unresolved()})
        return self.model_copy(
            update={"variants": tuple(v.unresolved() for v in self.variants), "shadow": shadow}
        )

    def all_variants(self) -> list[tuple[str, Variant]]:
        """(field path, variant) for the production variants and the shadow, in order."""
        items = [(f"variants[{i}]", v) for i, v in enumerate(self.variants)]
        if self.shadow is not None:
            items.append(("shadow.variant", self.shadow.variant))
        return items


class EndpointConfig(Frozen):
    """One stored, immutable revision of an endpoint's configuration."""

    endpoint: str
    revision: int
    spec: EndpointConfigSpec
    created_by: str
    create_time: datetime
    rolled_back_from: int = 0


class Endpoint(Frozen):
    """An endpoint: its status and the configuration in force.

    ``revision`` is the last revision number used (a deletion uses one too);
    ``current_config`` is the configuration in force (kept after deletion, for history).
    """

    name: str
    status: EndpointStatus = EndpointStatus.ACTIVE
    status_reason: str = ""
    revision: int = 0
    current_config: EndpointConfig | None = None
    create_time: datetime
    update_time: datetime

    @property
    def live(self) -> bool:
        """True unless deleted (a DEGRADED endpoint still serves)."""
        return self.status is not EndpointStatus.DELETED
