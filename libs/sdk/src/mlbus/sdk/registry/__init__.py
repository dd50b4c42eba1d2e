"""Python client of the mlbus model registry: model groups, versions and their artifacts,
approval, aliases, the audit log and endpoint configurations.

>>> from mlbus.sdk.registry import RegistryClient
>>> registry = RegistryClient()          # $MLBUS_REGISTRY or 127.0.0.1:50052
>>> v = registry.register("model.onnx", group="churn", create_group=True)
>>> registry.approve("churn", v.version, reason="auc 0.91 on holdout")   # as another actor

:class:`AsyncRegistryClient` offers the same operations on asyncio.
"""

from mlbus.sdk.registry._ops import CHUNK_SIZE
from mlbus.sdk.registry.aio import AsyncRegistryClient
from mlbus.sdk.registry.client import RegistryClient
from mlbus.sdk.registry.models import (
    AliasResult,
    ApprovalStatus,
    AuditEntry,
    BatchingConfig,
    DataCaptureConfig,
    DownloadResult,
    Endpoint,
    EndpointConfig,
    EndpointSpec,
    EndpointStatus,
    EndpointVariant,
    Lineage,
    ModelCard,
    ModelGroup,
    ModelSignature,
    ModelVersion,
    ObjectRef,
    RegistryModel,
    RejectResult,
    ShadowVariant,
    TensorSpec,
    VariantMode,
)
from mlbus.sdk.registry.specs import SpecError, load_spec

__all__ = [
    "CHUNK_SIZE",
    "AliasResult",
    "ApprovalStatus",
    "AsyncRegistryClient",
    "AuditEntry",
    "BatchingConfig",
    "DataCaptureConfig",
    "DownloadResult",
    "Endpoint",
    "EndpointConfig",
    "EndpointSpec",
    "EndpointStatus",
    "EndpointVariant",
    "Lineage",
    "ModelCard",
    "ModelGroup",
    "ModelSignature",
    "ModelVersion",
    "ObjectRef",
    "RegistryClient",
    "RegistryModel",
    "RejectResult",
    "ShadowVariant",
    "SpecError",
    "TensorSpec",
    "VariantMode",
    "load_spec",
]
