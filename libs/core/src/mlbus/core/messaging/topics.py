"""Every topic mlbus uses, declared here and nowhere else, and their explicit creation.

Names follow ``mlbus.<domain>.<event>.v1``, one protobuf message type per topic, ``<event>``
being the kebab-case message name (``ModelVersionApproved`` →
``mlbus.registry.model-version-approved.v1``). Per-endpoint topics put the endpoint in the
middle: ``mlbus.inference.<endpoint>.requests.v1``. Dead letters go to ``<topic>.dlq``.

A :class:`TopicCatalogue` may carry a namespace that prefixes every name
(``<namespace>.mlbus.…``), so two stacks, or two tests, can share one cluster.

Topics are created explicitly with their final partition count: the embedded broker cannot
add partitions later, and it auto-creates an unknown topic with 4 partitions on first use.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, Generic

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code
from google.protobuf.message import Message
from typing_extensions import TypeVar

from mlbus.core.settings import KafkaSettings
from mlbus.inference.v1 import events_pb2 as inference_events
from mlbus.inference.v2 import grpc_service_pb2 as v2
from mlbus.ingest.v1 import events_pb2 as ingest_events
from mlbus.monitor.v1 import events_pb2 as monitor_events
from mlbus.registry.v1 import events_pb2 as registry_events
from mlbus.router.v1 import events_pb2 as router_events
from mlbus.trainer.v1 import events_pb2 as trainer_events

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message, default=Message)

DLQ_SUFFIX: Final = ".dlq"
#: Low-volume control-plane events (registry, jobs, alerts): ordering per key, few consumers.
CONTROL_PARTITIONS: Final = 3
#: High-volume data (feature rows, labels, captured traffic). Captured traffic and labels are
#: both keyed by inference id with the same count, so they are co-partitioned for joins.
DATA_PARTITIONS: Final = 12
#: Per-endpoint request/result topics: bounds how many workers of one endpoint share the load.
ENDPOINT_PARTITIONS: Final = 6

_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,245}$")  # Kafka's 249, less the ".dlq" suffix
_ENDPOINT_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_NAMESPACE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,78}[A-Za-z0-9])?$")


@dataclass(frozen=True, slots=True)
class Topic(Generic[M]):
    """A topic and the one protobuf message type it carries."""

    name: str
    message_type: type[M]
    partitions: int
    #: The entity whose order matters and that records are keyed by, in words.
    key: str
    #: Whether records that cannot be handled go to ``<name>.dlq`` (else they are logged and skipped).
    dlq: bool = True
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not _TOPIC_NAME.fullmatch(self.name) or self.name in {".", ".."}:
            raise ValueError(
                f"topic name {self.name!r}: expected 1-245 characters of [A-Za-z0-9._-]"
            )
        if self.partitions < 1:
            raise ValueError(f"topic {self.name}: expected partitions >= 1, got {self.partitions}")
        if not (isinstance(self.message_type, type) and issubclass(self.message_type, Message)):
            raise TypeError(f"topic {self.name}: message_type must be a protobuf message class")

    @property
    def dlq_name(self) -> str:
        """Name of the dead-letter topic: ``<name>.dlq``."""
        return f"{self.name}{DLQ_SUFFIX}"

    @property
    def type_name(self) -> str:
        """Protobuf full name of the message type (what ``ce_type`` carries)."""
        return str(self.message_type.DESCRIPTOR.full_name)


def _kebab(message_type: type[Message]) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", message_type.__name__).lower()


def check_endpoint_name(endpoint: str) -> str:
    """Return ``endpoint`` if it can be part of a topic name; raise ValueError otherwise."""
    if not _ENDPOINT_NAME.fullmatch(endpoint):
        raise ValueError(
            f"endpoint name {endpoint!r}: expected 1-63 letters, digits or '-', "
            "starting and ending with a letter or digit"
        )
    return endpoint


class TopicCatalogue:
    """The topics of ARCHITECTURE.md, optionally under a namespace.

    Static topics are attributes (``catalogue.model_version_approved``); per-endpoint topics are
    methods (``catalogue.async_requests("churn")``). Services get the catalogue from their
    composition root and never spell a topic name themselves.
    """

    def __init__(self, namespace: str = "") -> None:
        if namespace and not _NAMESPACE.fullmatch(namespace):
            raise ValueError(f"topic namespace {namespace!r}: expected 1-80 letters, digits or '-'")
        self.namespace = namespace
        c = CONTROL_PARTITIONS
        d = DATA_PARTITIONS

        # registry (published through the registry's outbox)
        self.model_group_created = self._event(
            "registry",
            registry_events.ModelGroupCreated,
            c,
            "model group name",
            "A model group was created.",
        )
        self.model_group_updated = self._event(
            "registry",
            registry_events.ModelGroupUpdated,
            c,
            "model group name",
            "A model group's description or tags changed.",
        )
        self.model_version_registered = self._event(
            "registry",
            registry_events.ModelVersionRegistered,
            c,
            "model group name",
            "A model version was registered, normally pending manual approval.",
        )
        self.model_version_updated = self._event(
            "registry",
            registry_events.ModelVersionUpdated,
            c,
            "model group name",
            "A model version's description, metrics, tags or model card changed.",
        )
        self.model_version_approved = self._event(
            "registry",
            registry_events.ModelVersionApproved,
            c,
            "model group name",
            "A model version was approved and may be deployed.",
        )
        self.model_version_rejected = self._event(
            "registry",
            registry_events.ModelVersionRejected,
            c,
            "model group name",
            "A model version was rejected.",
        )
        self.alias_moved = self._event(
            "registry",
            registry_events.AliasMoved,
            c,
            "model group name",
            "A model group alias now points at another version.",
        )
        self.alias_deleted = self._event(
            "registry",
            registry_events.AliasDeleted,
            c,
            "model group name",
            "A model group alias was removed.",
        )
        self.endpoint_config_updated = self._event(
            "registry",
            registry_events.EndpointConfigUpdated,
            c,
            "endpoint name",
            "An endpoint configuration changed; the deployment controller reconciles "
            "(events carry config_revision, so stale ones are ignored).",
        )
        self.endpoint_degraded = self._event(
            "registry",
            registry_events.EndpointDegraded,
            c,
            "endpoint name",
            "An endpoint serves a version that was rejected with force; it needs a new "
            "configuration.",
        )
        self.endpoint_deleted = self._event(
            "registry",
            registry_events.EndpointDeleted,
            c,
            "endpoint name",
            "An endpoint was deleted; its workers are drained.",
        )
        # trainer
        self.job_requested = self._event(
            "trainer",
            trainer_events.JobRequested,
            c,
            "job id",
            "A training, processing or tuning job was requested.",
        )
        self.job_status_changed = self._event(
            "trainer",
            trainer_events.JobStatusChanged,
            c,
            "job id",
            "A job moved to another status.",
        )
        # ingest
        self.feature_row_ingested = self._event(
            "ingest",
            ingest_events.FeatureRowIngested,
            d,
            "entity key",
            "A validated feature row; the feature store materialises it.",
        )
        self.label_recorded = self._event(
            "ingest",
            ingest_events.LabelRecorded,
            d,
            "inference id",
            "A ground-truth label for an earlier inference.",
        )
        self.record_rejected = self._event(
            "ingest",
            ingest_events.RecordRejected,
            c,
            "dataset name",
            "A record that failed validation, with the reason.",
        )
        # inference
        self.inference_captured = self._event(
            "inference",
            inference_events.InferenceCaptured,
            d,
            "inference id",
            "Sampled real-time request/response pairs for monitoring.",
        )
        # monitor
        self.alert_raised = self._event(
            "monitor",
            monitor_events.AlertRaised,
            c,
            "endpoint name",
            "A monitored metric crossed its threshold.",
        )
        self.retraining_requested = self._event(
            "monitor",
            monitor_events.RetrainingRequested,
            c,
            "model group name",
            "Monitor asks for a model group to be retrained.",
        )
        # router
        self.transform_job_status_changed = self._event(
            "router",
            router_events.TransformJobStatusChanged,
            c,
            "transform job id",
            "A batch transform job's status or progress changed.",
        )

    # --- naming -------------------------------------------------------------------------

    def name(self, base: str) -> str:
        """``base`` under this catalogue's namespace."""
        return f"{self.namespace}.{base}" if self.namespace else base

    def _event(
        self, domain: str, message_type: type[M], partitions: int, key: str, description: str
    ) -> Topic[M]:
        return Topic(
            name=self.name(f"mlbus.{domain}.{_kebab(message_type)}.v1"),
            message_type=message_type,
            partitions=partitions,
            key=key,
            description=description,
        )

    def _endpoint(self, endpoint: str, suffix: str) -> str:
        return self.name(f"mlbus.inference.{check_endpoint_name(endpoint)}.{suffix}.v1")

    # --- per-endpoint topics ------------------------------------------------------------

    def async_requests(
        self, endpoint: str, *, partitions: int = ENDPOINT_PARTITIONS
    ) -> Topic[v2.ModelInferRequest]:
        """Asynchronous v2 requests for ``endpoint`` (protobuf, or v2 JSON with
        ``content-type: application/json``); keyed by inference id (the request ``id``)."""
        return Topic(
            name=self._endpoint(endpoint, "requests"),
            message_type=v2.ModelInferRequest,
            partitions=partitions,
            key="inference id",
            description=f"Asynchronous inference requests for endpoint {endpoint}.",
        )

    def async_results(
        self, endpoint: str, *, partitions: int = ENDPOINT_PARTITIONS
    ) -> Topic[inference_events.AsyncInferenceCompleted]:
        """Success notifications of ``endpoint``'s asynchronous inferences (output in the object
        store); keyed by inference id."""
        return Topic(
            name=self._endpoint(endpoint, "results"),
            message_type=inference_events.AsyncInferenceCompleted,
            partitions=partitions,
            key="inference id",
            description=f"Completed asynchronous inferences of endpoint {endpoint}.",
        )

    def async_errors(
        self, endpoint: str, *, partitions: int = ENDPOINT_PARTITIONS
    ) -> Topic[inference_events.AsyncInferenceFailed]:
        """Failure and expiry notifications of ``endpoint``'s asynchronous inferences; keyed by
        inference id."""
        return Topic(
            name=self._endpoint(endpoint, "errors"),
            message_type=inference_events.AsyncInferenceFailed,
            partitions=partitions,
            key="inference id",
            description=f"Failed or expired asynchronous inferences of endpoint {endpoint}.",
        )

    def batch_chunks(
        self, endpoint: str, *, partitions: int = ENDPOINT_PARTITIONS
    ) -> Topic[router_events.BatchChunkRequested]:
        """Batch transform chunks for ``endpoint``'s workers; keyed by ``<job id>/<chunk index>``
        so the chunks of one job spread over all workers."""
        return Topic(
            name=self._endpoint(endpoint, "batch-chunks"),
            message_type=router_events.BatchChunkRequested,
            partitions=partitions,
            key="job id and chunk index",
            description=f"Batch transform chunks for endpoint {endpoint}.",
        )

    def endpoint_topics(
        self, endpoint: str, *, partitions: int = ENDPOINT_PARTITIONS
    ) -> tuple[Topic[Any], ...]:
        """Every per-endpoint topic of ``endpoint`` (what the router creates on deployment)."""
        return (
            self.async_requests(endpoint, partitions=partitions),
            self.async_results(endpoint, partitions=partitions),
            self.async_errors(endpoint, partitions=partitions),
            self.batch_chunks(endpoint, partitions=partitions),
        )

    # --- lookup ---------------------------------------------------------------------------

    def static_topics(self) -> tuple[Topic[Any], ...]:
        """The fixed (not per-endpoint) topics, in declaration order."""
        return tuple(v for v in vars(self).values() if isinstance(v, Topic))

    def __iter__(self) -> Iterator[Topic[Any]]:
        return iter(self.static_topics())

    def get(self, name: str) -> Topic[Any] | None:
        """The topic called ``name`` (static or per-endpoint), or None. DLQ names give None."""
        for topic in self.static_topics():
            if topic.name == name:
                return topic
        prefix = self.name("mlbus.inference.")
        if name.startswith(prefix) and name.endswith(".v1"):
            endpoint = name[len(prefix) :].split(".", 1)[0]
            if _ENDPOINT_NAME.fullmatch(endpoint):
                for topic in self.endpoint_topics(endpoint):
                    if topic.name == name:
                        return topic
        return None


#: The catalogue without a namespace: the names a production stack uses.
TOPICS: Final = TopicCatalogue()


def all_topics(namespace: str = "") -> tuple[Topic[Any], ...]:
    """Every static topic of the catalogue (per-endpoint topics are created on deployment)."""
    return (TOPICS if not namespace else TopicCatalogue(namespace)).static_topics()


def async_requests(endpoint: str) -> Topic[v2.ModelInferRequest]:
    """Shortcut for ``TOPICS.async_requests(endpoint)``."""
    return TOPICS.async_requests(endpoint)


def async_results(endpoint: str) -> Topic[inference_events.AsyncInferenceCompleted]:
    """Shortcut for ``TOPICS.async_results(endpoint)``."""
    return TOPICS.async_results(endpoint)


def async_errors(endpoint: str) -> Topic[inference_events.AsyncInferenceFailed]:
    """Shortcut for ``TOPICS.async_errors(endpoint)``."""
    return TOPICS.async_errors(endpoint)


def batch_chunks(endpoint: str) -> Topic[router_events.BatchChunkRequested]:
    """Shortcut for ``TOPICS.batch_chunks(endpoint)``."""
    return TOPICS.batch_chunks(endpoint)


# --- creation -------------------------------------------------------------------------------


def admin_client(settings: KafkaSettings, purpose: str = "admin") -> AIOKafkaAdminClient:
    """An admin client configured from ``settings`` (not started)."""
    return AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.client_id_prefix}-{purpose}",
        request_timeout_ms=settings.request_timeout_ms,
        security_protocol=settings.security_protocol,
    )


def wanted_partitions(topics: Iterable[Topic[Any]]) -> dict[str, int]:
    """Topic name → partition count for ``topics`` and their dead-letter topics."""
    wanted: dict[str, int] = {}
    for topic in topics:
        for name in (topic.name, topic.dlq_name) if topic.dlq else (topic.name,):
            previous = wanted.setdefault(name, topic.partitions)
            if previous != topic.partitions:
                raise ValueError(
                    f"topic {name}: declared with {previous} and {topic.partitions} partitions"
                )
    return wanted


async def _existing_partitions(admin: AIOKafkaAdminClient) -> dict[str, int]:
    # Metadata for *all* topics: asking for named topics would make the embedded broker (and
    # Kafka with auto.create.topics.enable) create missing ones with the default count.
    described = await admin.describe_topics()
    counts: dict[str, int] = {}
    for entry in described:
        if entry.get("error_code", 0) == 0:
            counts[str(entry["topic"])] = len(entry.get("partitions") or ())
    return counts


async def ensure_topics(
    settings: KafkaSettings, topics: Iterable[Topic[Any]], *, timeout_s: float | None = None
) -> dict[str, int]:
    """Create the missing ``topics`` and their dead-letter topics; return name → partitions.

    Safe to call concurrently from several processes (TopicAlreadyExists is success). Waits until
    every topic is visible in the metadata. An existing topic with another partition count is
    logged as a warning and left alone: partitions cannot be added on the embedded broker.
    With ``settings.create_topics`` off nothing is created and missing topics are an error.
    """
    wanted = wanted_partitions(topics)
    if not wanted:
        return {}
    timeout = timeout_s if timeout_s is not None else settings.request_timeout_ms / 1000
    admin = admin_client(settings)
    await admin.start()
    try:
        existing = await _existing_partitions(admin)
        missing = [name for name in wanted if name not in existing]
        if missing and settings.create_topics:
            response = await admin.create_topics(
                [NewTopic(n, wanted[n], settings.replication_factor) for n in missing]
            )
            for entry in response.topic_errors:
                name, code = entry[0], entry[1]
                if code not in (0, TopicAlreadyExistsError.errno):
                    message = entry[2] if len(entry) > 2 else ""
                    raise for_code(code)(f"creating topic {name}: {message}")
            log.info("created topics", extra={"topics": missing})
        deadline = time.monotonic() + timeout
        while True:
            existing = await _existing_partitions(admin)
            absent = [name for name in wanted if name not in existing]
            if not absent:
                break
            if time.monotonic() >= deadline:
                hint = "" if settings.create_topics else " (topic creation is off)"
                raise RuntimeError(f"topics {absent} do not exist after {timeout:.0f}s{hint}")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
    for name, count in wanted.items():
        if existing[name] != count:
            log.warning(
                "topic %s has %d partitions, expected %d; partitions cannot be changed "
                "in place (recreate the topic to change them)",
                name,
                existing[name],
                count,
                extra={"topic": name, "partitions": existing[name], "expected": count},
            )
    return {name: existing[name] for name in wanted}
