"""What the registry returns, as plain Python: frozen pydantic models with datetimes
(timezone-aware, UTC), enum values as upper-case strings (``"APPROVED"``, ``"REALTIME"``)
and ``to_dict()`` for JSON.

Conversions from and to protobuf live in :mod:`mlbus.sdk.registry.converters`. Field names
follow the API (``registry.proto``); an actor is its name, a string.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

ApprovalStatus = Literal["UNSPECIFIED", "PENDING_MANUAL_APPROVAL", "APPROVED", "REJECTED"]
EndpointStatus = Literal["UNSPECIFIED", "ACTIVE", "DEGRADED", "DELETED"]
VariantMode = Literal["UNSPECIFIED", "REALTIME", "SERVERLESS"]

#: Spellings accepted for an approval status filter, beyond the exact names.
_STATUS_SHORTHANDS = {"PENDING": "PENDING_MANUAL_APPROVAL"}


def normalize_approval_status(value: str) -> ApprovalStatus:
    """``"approved"`` → ``"APPROVED"``, ``"pending"`` → ``"PENDING_MANUAL_APPROVAL"``;
    ValueError for anything else."""
    name = value.strip().upper().replace("-", "_")
    name = _STATUS_SHORTHANDS.get(name, name)
    if name not in ("PENDING_MANUAL_APPROVAL", "APPROVED", "REJECTED"):
        raise ValueError(
            f"unknown approval status {value!r}; expected pending, approved or rejected"
        )
    return name  # type: ignore[return-value]


class RegistryModel(BaseModel):
    """Base of every registry model: immutable, no unknown fields, JSON via :meth:`to_dict`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: datetimes as ISO 8601 strings, every field present (stable keys)."""
        return self.model_dump(mode="json")

    def to_json(self, *, indent: int | None = 2) -> str:
        """:meth:`to_dict` as a JSON string."""
        return json.dumps(self.to_dict(), indent=indent)


class ObjectRef(RegistryModel):
    """A stored object (model artifact, baseline statistics), content-addressed."""

    uri: str
    sha256: str = ""
    size_bytes: int = 0
    content_type: str = ""


class TensorSpec(RegistryModel):
    """Name, Open Inference Protocol datatype (``"FP32"``) and shape (-1 = dynamic)."""

    name: str
    datatype: str
    shape: tuple[int, ...] = ()


class ModelSignature(RegistryModel):
    """A model's inputs and outputs, derived by the registry from the ONNX graph."""

    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    opset: int = 0


class ModelGroup(RegistryModel):
    """A named family of model versions, e.g. ``churn-classifier``."""

    name: str
    description: str = ""
    tags: dict[str, str] = {}
    latest_version: int = 0
    created_by: str = ""
    create_time: datetime | None = None
    update_time: datetime | None = None


class Lineage(RegistryModel):
    """Where a version came from; empty strings / 0 mean unknown."""

    training_job_id: str = ""
    dataset_uri: str = ""
    dataset_sha256: str = ""
    code_version: str = ""
    parent_version: int = 0


class ModelCard(RegistryModel):
    """What a reader of the model must know before using it."""

    intended_use: str = ""
    limitations: str = ""
    evaluation: str = ""
    owner: str = ""


class ModelVersion(RegistryModel):
    """One registered model version with its metadata and approval status."""

    model_group: str
    version: int
    artifact: ObjectRef | None = None
    signature: ModelSignature | None = None
    approval_status: ApprovalStatus = "UNSPECIFIED"
    status_reason: str = ""
    metrics: dict[str, float] = {}
    hyperparameters: dict[str, str] = {}
    lineage: Lineage = Lineage()
    model_card: ModelCard = ModelCard()
    tags: dict[str, str] = {}
    aliases: tuple[str, ...] = ()
    description: str = ""
    registered_by: str = ""
    register_time: datetime | None = None
    update_time: datetime | None = None
    baseline: ObjectRef | None = None

    @property
    def ref(self) -> str:
        """``group/version``, the way the audit log names a version."""
        return f"{self.model_group}/{self.version}"


class RejectResult(RegistryModel):
    """A rejected version and the endpoints a forced rejection marked DEGRADED."""

    model_version: ModelVersion
    degraded_endpoints: tuple[str, ...] = ()


class AliasResult(RegistryModel):
    """Where an alias points now, and where it pointed before (0 if it is new)."""

    alias: str
    model_version: ModelVersion
    previous_version: int = 0


class AuditEntry(RegistryModel):
    """One entry of the registry's append-only audit log.

    ``before`` and ``after`` are the changed fields decoded from the server's JSON (None
    when not applicable; the raw text if it is not valid JSON).
    """

    id: int
    entity_type: str
    entity_id: str
    action: str
    actor: str = ""
    reason: str = ""
    time: datetime | None = None
    before: Any = None
    after: Any = None


class BatchingConfig(RegistryModel):
    """Dynamic batching on a worker; ``max_batch_size`` 0 or 1 disables it."""

    max_batch_size: int = 0
    max_queue_delay_micros: int = 0


class EndpointVariant(RegistryModel):
    """One model version behind an endpoint (production or shadow).

    When writing a configuration, ``artifact`` and ``signature`` are left out: the registry
    fills them in. ``mode`` accepts any case (``"serverless"``). ``instance_count`` defaults
    to 1 for a REALTIME variant and to 0 for a SERVERLESS one (its instances start on
    demand, bounded by ``max_concurrency``). ``scale_to_zero_after_seconds``: after this
    long with no real-time request and empty asynchronous and batch queues, the router stops
    the variant's workers until the next request; 0 means never (REALTIME) or the router's
    default idle time (SERVERLESS); not allowed on a shadow variant.
    """

    name: str
    model_group: str
    model_version: int
    weight: float = 1.0
    instance_count: int = 1
    mode: VariantMode = "REALTIME"
    max_concurrency: int = 0
    batching: BatchingConfig | None = None
    scale_to_zero_after_seconds: int = 0
    artifact: ObjectRef | None = None
    signature: ModelSignature | None = None

    @field_validator("mode", mode="before")
    @classmethod
    def _upper_mode(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _serverless_has_no_fixed_instances(cls, data: Any) -> Any:
        if (
            isinstance(data, dict)
            and "instance_count" not in data
            and str(data.get("mode", "")).strip().upper() == "SERVERLESS"
        ):
            return {**data, "instance_count": 0}
        return data


class ShadowVariant(RegistryModel):
    """A variant that gets a mirrored ``sampling_percent`` (0-100) of live traffic."""

    variant: EndpointVariant
    sampling_percent: float = 0.0


class DataCaptureConfig(RegistryModel):
    """Share of real-time traffic (0-100) workers capture for monitoring."""

    sampling_percent: float = 0.0


class EndpointSpec(RegistryModel):
    """The desired state of an endpoint: what :meth:`RegistryClient.create_endpoint` and
    :meth:`~RegistryClient.update_endpoint` write (see also :mod:`mlbus.sdk.registry.specs`
    for reading one from a YAML/JSON file)."""

    variants: tuple[EndpointVariant, ...]
    shadow: ShadowVariant | None = None
    data_capture: DataCaptureConfig | None = None
    description: str = ""


class EndpointConfig(RegistryModel):
    """One stored revision of an endpoint's configuration (variants resolved)."""

    endpoint: str
    revision: int
    variants: tuple[EndpointVariant, ...] = ()
    shadow: ShadowVariant | None = None
    data_capture: DataCaptureConfig | None = None
    description: str = ""
    created_by: str = ""
    create_time: datetime | None = None
    rolled_back_from: int = 0

    def spec(self) -> EndpointSpec:
        """This revision as a spec to write again (e.g. edited, in an update)."""
        return EndpointSpec(
            variants=self.variants,
            shadow=self.shadow,
            data_capture=self.data_capture,
            description=self.description,
        )


class Endpoint(RegistryModel):
    """An endpoint: status and the configuration in force."""

    name: str
    status: EndpointStatus = "UNSPECIFIED"
    status_reason: str = ""
    current_config: EndpointConfig | None = None
    create_time: datetime | None = None
    update_time: datetime | None = None

    @property
    def revision(self) -> int:
        """Revision of the configuration in force (0 if none)."""
        return self.current_config.revision if self.current_config else 0


class DownloadResult(RegistryModel):
    """A downloaded artifact: where it was written and its verified reference."""

    path: Path
    artifact: ObjectRef
