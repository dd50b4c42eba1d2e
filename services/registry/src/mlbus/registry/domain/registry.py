"""The registry's use cases: one transport-agnostic core that the gRPC servicer calls.

Every change runs in one write transaction (:meth:`Registry._write`) that also appends its
audit entries and queues its events in the outbox, so a change, its audit trail and its
events exist together or not at all. Transactions that lose a race with a concurrent one
(:class:`~mlbus.registry.ports.RetryableConflict`) are retried a bounded number of times.

Locking, so that concurrent changes stay consistent on PostgreSQL (SQLite serialises
writers anyway): every change to a group, its versions or aliases first locks the group
row, so one group's changes (and its events) are totally ordered; storing an endpoint
configuration share-locks the versions it references before it locks the endpoint, and a
rejection locks the version before it looks for (and locks) endpoints that serve it, so a
version cannot be rejected while a configuration referencing it commits.

The work a use case hands to a unit of work (``work(uow)``) awaits only the unit of
work: the object store, staging and validation happen before it (see
:class:`~mlbus.registry.ports.UnitOfWork`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from pydantic import Field

from mlbus.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from mlbus.core.storage.base import IntegrityError, ObjectStore, sha256_of_content_key
from mlbus.registry.domain import events
from mlbus.registry.domain.approval import check_approver, check_transition
from mlbus.registry.domain.endpoints import validate_spec
from mlbus.registry.domain.models import (
    ApprovalStatus,
    ArtifactRef,
    AuditEntry,
    Endpoint,
    EndpointConfig,
    EndpointConfigSpec,
    EndpointStatus,
    Frozen,
    Lineage,
    ModelCard,
    ModelGroup,
    ModelVersion,
    Signature,
    Variant,
    version_ref,
)
from mlbus.registry.domain.paging import Page, PageRequest, decode_token, page_size, paginate
from mlbus.registry.domain.rules import (
    check_alias,
    check_endpoint_name,
    check_group_name,
    check_hyperparameters,
    check_lineage,
    check_metrics,
    check_model_card,
    check_request_id,
    check_required_text,
    check_sha256,
    check_tag_keys,
    check_tags,
    check_text,
    check_uri,
    check_version_number,
)
from mlbus.registry.ports import (
    ArtifactInspector,
    RetryableConflict,
    StagedArtifact,
    StagingArea,
    UnitOfWork,
    UnitOfWorkRunner,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

ONNX_CONTENT_TYPE: Final = "application/x-onnx"

#: Audit entity types.
GROUP: Final = "model_group"
VERSION: Final = "model_version"
ALIAS: Final = "alias"
ENDPOINT: Final = "endpoint"
ENTITY_TYPES: Final = (GROUP, VERSION, ALIAS, ENDPOINT)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class RegistryPolicy:
    """Limits and policies the use cases apply (from the service settings)."""

    allow_self_approval: bool = False
    max_artifact_bytes: int = 2 * 1024**3
    default_page_size: int = 50
    max_page_size: int = 1000
    download_chunk_size: int = 1024 * 1024
    write_attempts: int = 4


class RegisterVersion(Frozen):
    """Everything about a version to register except its bytes."""

    model_group: str
    actor: str
    artifact_uri: str = ""
    expected_sha256: str = ""
    metrics: dict[str, float] = Field(default_factory=dict)
    hyperparameters: dict[str, str] = Field(default_factory=dict)
    lineage: Lineage = Field(default_factory=Lineage)
    model_card: ModelCard = Field(default_factory=ModelCard)
    tags: dict[str, str] = Field(default_factory=dict)
    description: str = ""
    baseline: ArtifactRef | None = None
    request_id: str = ""
    create_group: bool = False


class VersionChanges(Frozen):
    """Metadata changes to a version (None: leave as is)."""

    description: str | None = None
    set_metrics: dict[str, float] = Field(default_factory=dict)
    set_tags: dict[str, str] = Field(default_factory=dict)
    remove_tags: tuple[str, ...] = ()
    model_card: ModelCard | None = None


def _cursor(token: str, query: Any, kind: type[T]) -> T | None:
    cursor = decode_token(token, query)
    if cursor is None or isinstance(cursor, kind):
        return cursor
    raise InvalidArgument(
        "page.page_token: not a token this server issued", details={"field": "page.page_token"}
    )


def _check_tag_changes(set_tags: Mapping[str, str], remove_tags: Sequence[str]) -> None:
    check_tags(set_tags, "set_tags")
    check_tag_keys(remove_tags, "remove_tags")
    both = sorted(set(set_tags) & set(remove_tags))
    if both:
        raise InvalidArgument(
            f"remove_tags: {both[0]!r} is also in set_tags; a key is either set or removed",
            details={"field": "remove_tags"},
        )


def _apply_tags(
    tags: Mapping[str, str], set_tags: Mapping[str, str], remove_tags: Sequence[str]
) -> dict[str, str]:
    result = dict(tags)
    result.update(set_tags)
    for key in remove_tags:
        result.pop(key, None)
    return result


class Registry:
    """The registry's use cases over its ports.

    ``on_commit`` is called after every committed change (the outbox relay's wake-up).
    """

    def __init__(
        self,
        *,
        uow: UnitOfWorkRunner,
        store: ObjectStore,
        staging: StagingArea,
        inspector: ArtifactInspector,
        policy: RegistryPolicy,
        on_commit: Callable[[], None] = lambda: None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._uow = uow
        self._store = store
        self._staging = staging
        self._inspector = inspector
        self.policy = policy
        self._on_commit = on_commit
        self._clock = clock

    # -- plumbing ---------------------------------------------------------------------

    async def _read(self, work: Callable[[UnitOfWork], Coroutine[Any, Any, T]]) -> T:
        """``work`` in a read-only unit of work (it may await only the unit of work)."""
        return await self._uow(work, write=False)

    async def _write(self, work: Callable[[UnitOfWork], Coroutine[Any, Any, T]]) -> T:
        """``work`` in a write unit of work, retried after conflicts; ``on_commit`` after."""
        attempt = 0
        while True:
            attempt += 1
            try:
                result = await self._uow(work, write=True)
            except RetryableConflict as exc:
                if attempt >= self.policy.write_attempts:
                    raise Unavailable(
                        f"the change conflicted with concurrent changes {attempt} times; retry it",
                        details={"conflict": str(exc)[:200]},
                    ) from exc
                log.info("retrying after a conflict with a concurrent change: %s", exc)
                # Jitter, so two retrying writers do not collide again in lock-step.
                await asyncio.sleep(random.uniform(0.0, 0.01 * 2**attempt))
                continue
            self._on_commit()
            return result

    def _page_size(self, page: PageRequest) -> int:
        return page_size(
            page.size, default=self.policy.default_page_size, maximum=self.policy.max_page_size
        )

    async def _audit(
        self,
        uow: UnitOfWork,
        *,
        entity_type: str,
        entity_id: str,
        action: str,
        actor: str,
        now: datetime,
        reason: str = "",
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
    ) -> None:
        await uow.add_audit(
            AuditEntry(
                entity_type=entity_type,
                entity_id=entity_id,
                action=action,
                actor=actor,
                reason=reason,
                time=now,
                before=before,
                after=after,
            )
        )

    async def _require_group(self, uow: UnitOfWork, name: str, *, lock: Any = None) -> ModelGroup:
        group = await uow.get_group(name, lock=lock)
        if group is None:
            raise NotFound(f"model group '{name}' does not exist", details={"model_group": name})
        return group

    # -- model groups -----------------------------------------------------------------

    async def create_group(
        self, name: str, *, description: str, tags: Mapping[str, str], actor: str
    ) -> ModelGroup:
        """Create a model group; ALREADY_EXISTS if the name is taken."""
        check_group_name(name, "name")
        check_text(description, "description")
        checked_tags = check_tags(tags)

        async def work(uow: UnitOfWork) -> ModelGroup:
            if await uow.get_group(name) is not None:
                raise AlreadyExists(
                    f"model group '{name}' exists already", details={"model_group": name}
                )
            return await self._add_group(uow, name, description, checked_tags, actor)

        return await self._write(work)

    async def _add_group(
        self,
        uow: UnitOfWork,
        name: str,
        description: str,
        tags: dict[str, str],
        actor: str,
    ) -> ModelGroup:
        now = self._clock()
        group = ModelGroup(
            name=name,
            description=description,
            tags=tags,
            created_by=actor,
            create_time=now,
            update_time=now,
        )
        await uow.add_group(group)
        await self._audit(
            uow,
            entity_type=GROUP,
            entity_id=name,
            action="created",
            actor=actor,
            now=now,
            after={"description": description, "tags": tags},
        )
        await uow.add_event(
            events.ModelGroupCreated(model_group=name, group=group, actor=actor, time=now)
        )
        return group

    async def get_group(self, name: str) -> ModelGroup:
        """One group; NOT_FOUND if it does not exist."""
        check_group_name(name, "name")
        return await self._read(lambda uow: self._require_group(uow, name))

    async def list_groups(
        self, page: PageRequest, *, name_prefix: str = "", tags: Mapping[str, str] | None = None
    ) -> Page[ModelGroup]:
        """Groups by name, optionally by name prefix and having all ``tags``."""
        check_text(name_prefix, "name_prefix", max_length=63)
        wanted = check_tags(tags or {})
        limit = self._page_size(page)
        query = {"list": "groups", "prefix": name_prefix, "tags": wanted}
        after = _cursor(page.token, query, str)
        rows = await self._read(
            lambda uow: uow.list_groups(
                name_prefix=name_prefix, tags=wanted, after=after, limit=limit + 1
            )
        )
        return paginate(rows, limit, query, lambda group: group.name)

    async def update_group(
        self,
        name: str,
        *,
        description: str | None,
        set_tags: Mapping[str, str],
        remove_tags: Sequence[str],
        actor: str,
    ) -> ModelGroup:
        """Change a group's description and tags; a change that changes nothing is not
        audited and publishes nothing."""
        check_group_name(name, "name")
        if description is not None:
            check_text(description, "description")
        _check_tag_changes(set_tags, remove_tags)

        async def work(uow: UnitOfWork) -> ModelGroup:
            group = await self._require_group(uow, name, lock="update")
            new_description = group.description if description is None else description
            new_tags = _apply_tags(group.tags, set_tags, remove_tags)
            before: dict[str, Any] = {}
            after: dict[str, Any] = {}
            if new_description != group.description:
                before["description"], after["description"] = group.description, new_description
            if new_tags != group.tags:
                before["tags"], after["tags"] = group.tags, new_tags
            if not after:
                return group
            now = self._clock()
            updated = group.model_copy(
                update={"description": new_description, "tags": new_tags, "update_time": now}
            )
            await uow.update_group(updated)
            await self._audit(
                uow,
                entity_type=GROUP,
                entity_id=name,
                action="updated",
                actor=actor,
                now=now,
                before=before,
                after=after,
            )
            await uow.add_event(
                events.ModelGroupUpdated(model_group=name, group=updated, actor=actor, time=now)
            )
            return updated

        return await self._write(work)

    # -- registering versions ---------------------------------------------------------

    def _check_register(self, command: RegisterVersion) -> RegisterVersion:
        check_group_name(command.model_group, "header.model_group")
        if command.artifact_uri:
            check_uri(command.artifact_uri, "header.artifact_uri")
        expected = command.expected_sha256
        if expected:
            expected = check_sha256(expected, "header.expected_sha256")
        check_metrics(command.metrics, "header.metrics")
        check_hyperparameters(command.hyperparameters, "header.hyperparameters")
        lineage = check_lineage(command.lineage, "header.lineage")
        check_model_card(command.model_card, "header.model_card")
        check_tags(command.tags, "header.tags")
        check_text(command.description, "header.description")
        check_request_id(command.request_id)
        if command.baseline is not None:
            check_uri(command.baseline.uri, "header.baseline.uri")
            if command.baseline.sha256:
                check_sha256(command.baseline.sha256, "header.baseline.sha256")
        return command.model_copy(update={"expected_sha256": expected, "lineage": lineage})

    async def _check_parent(self, uow: UnitOfWork, group: str, parent: int) -> None:
        if parent and await uow.get_version(group, parent) is None:
            raise InvalidArgument(
                f"header.lineage.parent_version: model version {version_ref(group, parent)} "
                "does not exist; expected 0 (none) or a version of the same group",
                details={"field": "header.lineage.parent_version"},
            )

    async def register_version(
        self, command: RegisterVersion, chunks: AsyncIterable[bytes]
    ) -> ModelVersion:
        """Register a version from streamed ``chunks`` (or ``command.artifact_uri``).

        The bytes are staged on local disk while hashed and size-limited, validated as
        ONNX (which also gives the signature), and only then stored content-addressed and
        recorded. A stream that is cut off, bytes that are not a valid ONNX model or a
        SHA-256 other than ``expected_sha256`` fail with INVALID_ARGUMENT and leave no
        version, audit entry, event or stored object behind.
        """
        command = self._check_register(command)
        group_name = command.model_group

        # Fail fast, before taking a large upload: the group, the idempotency key, lineage.
        async def check(uow: UnitOfWork) -> ModelVersion | None:
            group = await uow.get_group(group_name)
            if group is None and not command.create_group:
                raise NotFound(
                    f"model group '{group_name}' does not exist; create it first or set "
                    "header.create_group",
                    details={"model_group": group_name},
                )
            if group is not None and command.request_id:
                existing = await uow.find_version_by_request_id(group_name, command.request_id)
                if existing is not None:
                    return existing
            if group is not None:
                await self._check_parent(uow, group_name, command.lineage.parent_version)
            elif command.lineage.parent_version:
                raise InvalidArgument(
                    f"header.lineage.parent_version: model group '{group_name}' is created by "
                    f"this registration, so it has no version "
                    f"{command.lineage.parent_version}; expected 0 (none)",
                    details={"field": "header.lineage.parent_version"},
                )
            return None

        already = await self._read(check)
        if already is not None:
            return already

        # Everything that can refuse the request is checked before the artifact is stored:
        # a refused registration must not leave its (possibly 2 GiB) artifact behind.
        baseline = await self._check_baseline(command.baseline)
        artifact = await self._store_artifact(command, chunks)

        async def work(uow: UnitOfWork) -> ModelVersion:
            group = await uow.get_group(group_name, lock="update")
            if group is None:
                if not command.create_group:
                    raise NotFound(
                        f"model group '{group_name}' does not exist",
                        details={"model_group": group_name},
                    )
                await self._add_group(uow, group_name, "", {}, command.actor)
            elif command.request_id:
                existing = await uow.find_version_by_request_id(group_name, command.request_id)
                if existing is not None:
                    return existing
            await self._check_parent(uow, group_name, command.lineage.parent_version)
            now = self._clock()
            number = await uow.next_version_number(group_name, now)
            version = ModelVersion(
                model_group=group_name,
                version=number,
                artifact=artifact[0],
                signature=artifact[1],
                metrics=command.metrics,
                hyperparameters=command.hyperparameters,
                lineage=command.lineage,
                model_card=command.model_card,
                tags=command.tags,
                description=command.description,
                registered_by=command.actor,
                register_time=now,
                update_time=now,
                baseline=baseline,
                request_id=command.request_id or None,
            )
            await uow.add_version(version)
            await self._audit(
                uow,
                entity_type=VERSION,
                entity_id=version.ref,
                action="registered",
                actor=command.actor,
                now=now,
                after={
                    "approval_status": str(version.approval_status),
                    "artifact_uri": version.artifact.uri,
                    "artifact_sha256": version.artifact.sha256,
                },
            )
            await uow.add_event(
                events.ModelVersionRegistered(
                    model_group=group_name, version=version, actor=command.actor, time=now
                )
            )
            return version

        return await self._write(work)

    async def _store_artifact(
        self, command: RegisterVersion, chunks: AsyncIterable[bytes]
    ) -> tuple[ArtifactRef, Signature]:
        """Stage, check, validate and store the artifact; (stored ref, signature)."""
        source_sha: str | None = None
        if command.artifact_uri:
            async for chunk in chunks:
                if chunk:
                    raise InvalidArgument(
                        "chunk: the header names artifact_uri, so no chunks may follow it",
                        details={"field": "chunk"},
                    )
            try:
                # A content-addressed URI names its own checksum: verify it while reading.
                source_sha = sha256_of_content_key(self._store.key_for(command.artifact_uri))
                staged = await self._stage(
                    self._store.get(
                        command.artifact_uri,
                        expected_sha256=source_sha,
                        chunk_size=self.policy.download_chunk_size,
                    )
                )
            except (InvalidArgument, NotFound) as exc:
                raise type(exc)(
                    f"header.artifact_uri: {exc.message}", details={"field": "header.artifact_uri"}
                ) from None
        else:
            staged = await self._stage(chunks)
        try:
            if staged.size == 0:
                raise InvalidArgument(
                    "chunk: the stream ended after the header without any artifact bytes; "
                    "expected the ONNX file in chunks, or header.artifact_uri",
                    details={"field": "chunk"},
                )
            if command.expected_sha256 and staged.sha256 != command.expected_sha256:
                raise InvalidArgument(
                    f"header.expected_sha256: expected {command.expected_sha256}, but the "
                    f"{staged.size} bytes received have sha256 {staged.sha256} (upload "
                    "truncated or corrupted?)",
                    details={
                        "field": "header.expected_sha256",
                        "sha256": staged.sha256,
                        "size": str(staged.size),
                    },
                )
            signature = await asyncio.to_thread(self._inspector.inspect, staged.path)
            if source_sha is not None:
                stat = await self._store.stat(command.artifact_uri)
                ref = ArtifactRef(
                    uri=command.artifact_uri,
                    sha256=staged.sha256,
                    size_bytes=staged.size,
                    content_type=stat.content_type or ONNX_CONTENT_TYPE,
                )
            else:
                stored = await self._store.put_content(
                    staged.chunks(), content_type=ONNX_CONTENT_TYPE
                )
                if stored.sha256 != staged.sha256:
                    raise IntegrityError(
                        f"artifact changed while it was stored: staged sha256 {staged.sha256}, "
                        f"stored {stored.sha256}"
                    )
                ref = ArtifactRef(
                    uri=stored.uri,
                    sha256=stored.sha256,
                    size_bytes=stored.size,
                    content_type=stored.content_type,
                )
        finally:
            await staged.discard()
        return ref, signature

    async def _stage(self, source: AsyncIterable[bytes]) -> StagedArtifact:
        return await self._staging.stage(source, max_bytes=self.policy.max_artifact_bytes)

    async def _check_baseline(self, baseline: ArtifactRef | None) -> ArtifactRef | None:
        if baseline is None or not baseline.uri:
            return None
        try:
            info = await self._store.stat(baseline.uri)
        except NotFound:
            raise InvalidArgument(
                f"header.baseline.uri: object '{baseline.uri}' does not exist",
                details={"field": "header.baseline.uri"},
            ) from None
        except InvalidArgument as exc:  # e.g. a URI of another store
            raise InvalidArgument(
                f"header.baseline.uri: {exc.message}", details={"field": "header.baseline.uri"}
            ) from None
        if baseline.sha256 and info.sha256 and baseline.sha256.lower() != info.sha256:
            raise InvalidArgument(
                f"header.baseline.sha256: expected {baseline.sha256.lower()}, the stored "
                f"object has {info.sha256}",
                details={"field": "header.baseline.sha256"},
            )
        return ArtifactRef(
            uri=baseline.uri,
            sha256=info.sha256 or baseline.sha256.lower(),
            size_bytes=info.size,
            content_type=info.content_type or baseline.content_type or "application/json",
        )

    # -- reading versions -------------------------------------------------------------

    async def _find_version(
        self,
        uow: UnitOfWork,
        group: str,
        *,
        version: int | None,
        alias: str | None,
        lock: Any = None,
    ) -> ModelVersion:
        check_group_name(group)
        if alias is not None:
            check_alias(alias)
            number = await uow.get_alias(group, alias)
            if number is None:
                await self._require_group(uow, group)
                raise NotFound(
                    f"alias '{alias}' of model group '{group}' does not exist",
                    details={"model_group": group, "alias": alias},
                )
        elif version is not None:
            number = check_version_number(version)
        else:
            raise InvalidArgument(
                "version or alias: expected one of them to select a version",
                details={"field": "selector"},
            )
        found = await uow.get_version(group, number, lock=lock)
        if found is None:
            latest = (await self._require_group(uow, group)).latest_version
            raise NotFound(
                f"model version {version_ref(group, number)} does not exist (the latest "
                f"version of '{group}' is {latest})",
                details={"model_version": version_ref(group, number)},
            )
        return found

    async def get_version(
        self, group: str, *, version: int | None = None, alias: str | None = None
    ) -> ModelVersion:
        """One version, by number or alias."""
        return await self._read(
            lambda uow: self._find_version(uow, group, version=version, alias=alias)
        )

    async def list_versions(
        self, group: str, page: PageRequest, *, status: ApprovalStatus | None = None
    ) -> Page[ModelVersion]:
        """Versions of a group, newest first, optionally in one status."""
        check_group_name(group)
        limit = self._page_size(page)
        query = {"list": "versions", "group": group, "status": status}
        before = _cursor(page.token, query, int)

        async def read(uow: UnitOfWork) -> list[ModelVersion]:
            await self._require_group(uow, group)
            return await uow.list_versions(group, status=status, before=before, limit=limit + 1)

        rows = await self._read(read)
        return paginate(rows, limit, query, lambda v: v.version)

    async def update_version(
        self, group: str, version: int, changes: VersionChanges, *, actor: str
    ) -> ModelVersion:
        """Change a version's description, metrics, tags or model card (in any status)."""
        check_group_name(group)
        check_version_number(version)
        if changes.description is not None:
            check_text(changes.description, "description")
        check_metrics(changes.set_metrics, "set_metrics")
        _check_tag_changes(changes.set_tags, changes.remove_tags)
        if changes.model_card is not None:
            check_model_card(changes.model_card)

        async def work(uow: UnitOfWork) -> ModelVersion:
            await self._require_group(uow, group, lock="update")
            current = await self._find_version(uow, group, version=version, alias=None)
            new: dict[str, Any] = {
                "description": current.description
                if changes.description is None
                else changes.description,
                "metrics": {**current.metrics, **changes.set_metrics},
                "tags": _apply_tags(current.tags, changes.set_tags, changes.remove_tags),
                "model_card": current.model_card
                if changes.model_card is None
                else changes.model_card,
            }
            before: dict[str, Any] = {}
            after: dict[str, Any] = {}
            for name, value in new.items():
                old = getattr(current, name)
                if value != old:
                    before[name] = old.model_dump() if isinstance(old, ModelCard) else old
                    after[name] = value.model_dump() if isinstance(value, ModelCard) else value
            if not after:
                return current
            now = self._clock()
            updated = current.model_copy(update={**new, "update_time": now})
            await uow.update_version(updated)
            await self._audit(
                uow,
                entity_type=VERSION,
                entity_id=updated.ref,
                action="updated",
                actor=actor,
                now=now,
                before=before,
                after=after,
            )
            await uow.add_event(
                events.ModelVersionUpdated(
                    model_group=group,
                    version=updated,
                    changed_fields=tuple(after),
                    actor=actor,
                    time=now,
                )
            )
            return updated

        return await self._write(work)

    async def open_artifact(
        self, group: str, *, version: int | None = None, alias: str | None = None
    ) -> tuple[ArtifactRef, AsyncIterator[bytes]]:
        """The artifact's reference and a stream of its bytes, checked against its SHA-256
        as they are read (DATA_LOSS after the last chunk if they differ)."""
        found = await self.get_version(group, version=version, alias=alias)
        artifact = found.artifact
        try:
            await self._store.stat(artifact.uri)
        except NotFound:
            raise IntegrityError(
                f"the artifact of model version {found.ref} is missing from the object store "
                f"({artifact.uri})",
                details={"model_version": found.ref, "uri": artifact.uri},
            ) from None
        stream = self._store.get(
            artifact.uri,
            expected_sha256=artifact.sha256,
            chunk_size=self.policy.download_chunk_size,
        )
        return artifact, stream

    # -- governance -------------------------------------------------------------------

    async def approve(self, group: str, version: int, *, actor: str, reason: str) -> ModelVersion:
        """PENDING_MANUAL_APPROVAL → APPROVED. FAILED_PRECONDITION from any other status;
        PERMISSION_DENIED for the registrant unless self-approval is allowed."""
        check_group_name(group)
        check_version_number(version)
        check_text(reason, "reason")

        async def work(uow: UnitOfWork) -> ModelVersion:
            await self._require_group(uow, group, lock="update")
            current = await self._find_version(
                uow, group, version=version, alias=None, lock="update"
            )
            check_transition(current, ApprovalStatus.APPROVED)
            check_approver(current, actor, allow_self_approval=self.policy.allow_self_approval)
            now = self._clock()
            updated = current.model_copy(
                update={
                    "approval_status": ApprovalStatus.APPROVED,
                    "status_reason": reason,
                    "update_time": now,
                }
            )
            await uow.update_version(updated)
            await self._audit(
                uow,
                entity_type=VERSION,
                entity_id=updated.ref,
                action="approved",
                actor=actor,
                reason=reason,
                now=now,
                before={"approval_status": str(current.approval_status)},
                after={"approval_status": str(updated.approval_status)},
            )
            await uow.add_event(
                events.ModelVersionApproved(
                    model_group=group, version=updated, reason=reason, actor=actor, time=now
                )
            )
            return updated

        return await self._write(work)

    async def reject(
        self, group: str, version: int, *, actor: str, reason: str, force: bool
    ) -> tuple[ModelVersion, list[str]]:
        """PENDING_MANUAL_APPROVAL or APPROVED → REJECTED, with a required reason.

        Refused (FAILED_PRECONDITION) while live endpoints serve the version, unless
        ``force``: then those endpoints become DEGRADED. Returns the version and the
        endpoints degraded.
        """
        check_group_name(group)
        check_version_number(version)
        check_required_text(reason, "reason", why="when rejecting: say why")

        async def work(uow: UnitOfWork) -> tuple[ModelVersion, list[str]]:
            await self._require_group(uow, group, lock="update")
            current = await self._find_version(
                uow, group, version=version, alias=None, lock="update"
            )
            check_transition(current, ApprovalStatus.REJECTED)
            uses = await uow.live_endpoints_using(group, version)
            if uses and not force:
                served = ", ".join(f"{u.endpoint} ({', '.join(u.variants)})" for u in uses)
                raise FailedPrecondition(
                    f"model version {current.ref} is served by live endpoint(s) {served}; "
                    "move them to another version first, or reject with force to mark them "
                    "DEGRADED",
                    details={
                        "model_version": current.ref,
                        "endpoints": ",".join(u.endpoint for u in uses),
                    },
                )
            now = self._clock()
            updated = current.model_copy(
                update={
                    "approval_status": ApprovalStatus.REJECTED,
                    "status_reason": reason,
                    "update_time": now,
                }
            )
            await uow.update_version(updated)
            await self._audit(
                uow,
                entity_type=VERSION,
                entity_id=updated.ref,
                action="rejected",
                actor=actor,
                reason=reason,
                now=now,
                before={"approval_status": str(current.approval_status)},
                after={"approval_status": str(updated.approval_status)},
            )
            degraded = sorted(u.endpoint for u in uses)
            await uow.add_event(
                events.ModelVersionRejected(
                    model_group=group,
                    version=updated,
                    reason=reason,
                    previous_status=current.approval_status,
                    degraded_endpoints=tuple(degraded),
                    actor=actor,
                    time=now,
                )
            )
            for name in degraded:
                await self._degrade(uow, name, updated, actor=actor, reason=reason, now=now)
            return updated, degraded

        return await self._write(work)

    async def _degrade(
        self,
        uow: UnitOfWork,
        name: str,
        rejected: ModelVersion,
        *,
        actor: str,
        reason: str,
        now: datetime,
    ) -> None:
        endpoint = await uow.get_endpoint(name, lock="update")
        if endpoint is None or not endpoint.live:
            return
        status_reason = f"model version {rejected.ref} was rejected by {actor}: {reason}"
        updated = endpoint.model_copy(
            update={
                "status": EndpointStatus.DEGRADED,
                "status_reason": status_reason,
                "update_time": now,
            }
        )
        await uow.save_endpoint(updated, new=False)
        await self._audit(
            uow,
            entity_type=ENDPOINT,
            entity_id=name,
            action="degraded",
            actor=actor,
            reason=status_reason,
            now=now,
            before={"status": str(endpoint.status)},
            after={"status": str(updated.status)},
        )
        await uow.add_event(
            events.EndpointDegraded(
                endpoint=name,
                config_revision=endpoint.current_config.revision if endpoint.current_config else 0,
                reason=status_reason,
                model_group=rejected.model_group,
                model_version=rejected.version,
                actor=actor,
                time=now,
            )
        )

    async def set_alias(
        self, group: str, alias: str, version: int, *, actor: str, reason: str
    ) -> tuple[ModelVersion, int]:
        """Point ``alias`` at ``version`` (an alias names one version per group); returns
        the version and the one the alias pointed at before (0 if new)."""
        check_group_name(group)
        check_alias(alias)
        check_version_number(version)
        check_text(reason, "reason")

        async def work(uow: UnitOfWork) -> tuple[ModelVersion, int]:
            await self._require_group(uow, group, lock="update")
            target = await self._find_version(uow, group, version=version, alias=None)
            previous = await uow.get_alias(group, alias)
            if previous == version:
                return target, previous
            now = self._clock()
            await uow.set_alias(group, alias, version, now)
            await self._audit(
                uow,
                entity_type=ALIAS,
                entity_id=f"{group}@{alias}",
                action="alias_set",
                actor=actor,
                reason=reason,
                now=now,
                before={"version": previous} if previous else None,
                after={"version": version},
            )
            await uow.add_event(
                events.AliasMoved(
                    model_group=group,
                    alias=alias,
                    version=version,
                    previous_version=previous or 0,
                    reason=reason,
                    actor=actor,
                    time=now,
                )
            )
            moved = await uow.get_version(group, version)
            return (moved or target), previous or 0

        return await self._write(work)

    async def delete_alias(self, group: str, alias: str, *, actor: str, reason: str) -> None:
        """Remove an alias; NOT_FOUND if it does not exist."""
        check_group_name(group)
        check_alias(alias)
        check_text(reason, "reason")

        async def work(uow: UnitOfWork) -> None:
            await self._require_group(uow, group, lock="update")
            previous = await uow.get_alias(group, alias)
            if previous is None:
                raise NotFound(
                    f"alias '{alias}' of model group '{group}' does not exist",
                    details={"model_group": group, "alias": alias},
                )
            now = self._clock()
            await uow.delete_alias(group, alias)
            await self._audit(
                uow,
                entity_type=ALIAS,
                entity_id=f"{group}@{alias}",
                action="alias_deleted",
                actor=actor,
                reason=reason,
                now=now,
                before={"version": previous},
            )
            await uow.add_event(
                events.AliasDeleted(
                    model_group=group,
                    alias=alias,
                    previous_version=previous,
                    reason=reason,
                    actor=actor,
                    time=now,
                )
            )

        await self._write(work)

    async def list_audit(
        self, page: PageRequest, *, entity_type: str = "", entity_id_prefix: str = ""
    ) -> Page[AuditEntry]:
        """Audit entries, oldest first, optionally for one entity type and id prefix."""
        if entity_type and entity_type not in ENTITY_TYPES:
            raise InvalidArgument(
                f"entity_type: expected one of {', '.join(ENTITY_TYPES)} or empty, "
                f"got {entity_type!r}",
                details={"field": "entity_type"},
            )
        check_text(entity_id_prefix, "entity_id_prefix", max_length=255)
        limit = self._page_size(page)
        query = {"list": "audit", "type": entity_type, "prefix": entity_id_prefix}
        after = _cursor(page.token, query, int)
        rows = await self._read(
            lambda uow: uow.list_audit(
                entity_type=entity_type,
                entity_id_prefix=entity_id_prefix,
                after=after,
                limit=limit + 1,
            )
        )
        return paginate(rows, limit, query, lambda entry: entry.id)

    # -- endpoints --------------------------------------------------------------------

    async def _resolve(self, uow: UnitOfWork, spec: EndpointConfigSpec) -> EndpointConfigSpec:
        """Fill in each variant's artifact and signature; every version must exist and be
        APPROVED (share-locked until commit, so it cannot be rejected meanwhile), and all
        variants must take the same inputs."""
        keys = sorted({(v.model_group, v.model_version) for _, v in spec.all_variants()})
        found = {key: await uow.get_version(*key, lock="share") for key in keys}

        def resolve(field: str, variant: Variant) -> Variant:
            version = found[(variant.model_group, variant.model_version)]
            label = f"{field} '{variant.name}'"
            if version is None:
                raise NotFound(
                    f"{label}: model version {variant.version_ref} does not exist",
                    details={"field": field, "model_version": variant.version_ref},
                )
            if version.approval_status is not ApprovalStatus.APPROVED:
                raise FailedPrecondition(
                    f"{label}: model version {version.ref} is {version.approval_status}; only "
                    "APPROVED versions can be deployed",
                    details={
                        "field": field,
                        "model_version": version.ref,
                        "approval_status": str(version.approval_status),
                    },
                )
            return variant.model_copy(
                update={"artifact": version.artifact, "signature": version.signature}
            )

        variants = tuple(resolve(f"variants[{i}]", v) for i, v in enumerate(spec.variants))
        shadow = spec.shadow
        if shadow is not None:
            shadow = shadow.model_copy(
                update={"variant": resolve("shadow.variant", shadow.variant)}
            )
        resolved = spec.model_copy(update={"variants": variants, "shadow": shadow})
        self._check_same_inputs(resolved)
        return resolved

    @staticmethod
    def _check_same_inputs(spec: EndpointConfigSpec) -> None:
        items = spec.all_variants()
        first_field, first = items[0]
        assert first.signature is not None
        expected = [(t.name, t.datatype) for t in first.signature.inputs]
        for field, variant in items[1:]:
            assert variant.signature is not None
            got = [(t.name, t.datatype) for t in variant.signature.inputs]
            if got != expected:
                raise FailedPrecondition(
                    f"{field} '{variant.name}': model version {variant.version_ref} takes "
                    f"inputs {got}, but {first_field} '{first.name}' takes {expected}; all "
                    "variants of an endpoint must take the same inputs (names and datatypes)",
                    details={"field": field},
                )

    async def _store_config(
        self,
        uow: UnitOfWork,
        endpoint: Endpoint | None,
        name: str,
        spec: EndpointConfigSpec,
        *,
        actor: str,
        action: str,
        reason: str = "",
        rolled_back_from: int = 0,
    ) -> Endpoint:
        now = self._clock()
        revision = (endpoint.revision if endpoint else 0) + 1
        config = EndpointConfig(
            endpoint=name,
            revision=revision,
            spec=spec,
            created_by=actor,
            create_time=now,
            rolled_back_from=rolled_back_from,
        )
        recreated = endpoint is not None and not endpoint.live
        updated = Endpoint(
            name=name,
            status=EndpointStatus.ACTIVE,
            status_reason="",
            revision=revision,
            current_config=config,
            create_time=now if endpoint is None or recreated else endpoint.create_time,
            update_time=now,
        )
        await uow.save_endpoint(updated, new=endpoint is None)
        await uow.add_endpoint_config(config)
        before = None
        if endpoint is not None:
            before = {"status": str(endpoint.status), "revision": endpoint.revision}
        after: dict[str, Any] = {
            "status": str(updated.status),
            "revision": revision,
            "variants": [
                {"name": v.name, "model_version": v.version_ref, "weight": v.weight}
                for v in spec.variants
            ],
        }
        if spec.shadow is not None:
            after["shadow"] = spec.shadow.variant.version_ref
        if rolled_back_from:
            after["rolled_back_to_revision"] = rolled_back_from
        await self._audit(
            uow,
            entity_type=ENDPOINT,
            entity_id=name,
            action=action,
            actor=actor,
            reason=reason,
            now=now,
            before=before,
            after=after,
        )
        await uow.add_event(
            events.EndpointConfigUpdated(endpoint=name, config=config, actor=actor, time=now)
        )
        return updated

    async def create_endpoint(self, name: str, spec: EndpointConfigSpec, *, actor: str) -> Endpoint:
        """Create an endpoint with its first configuration (a deleted endpoint's name may be
        reused; its revisions continue)."""
        check_endpoint_name(name)
        spec = validate_spec(spec)

        async def work(uow: UnitOfWork) -> Endpoint:
            resolved = await self._resolve(uow, spec)
            current = await uow.get_endpoint(name, lock="update")
            if current is not None and current.live:
                raise AlreadyExists(
                    f"endpoint '{name}' exists already (revision {current.revision}); "
                    "use UpdateEndpoint to change it",
                    details={"endpoint": name},
                )
            return await self._store_config(
                uow, current, name, resolved, actor=actor, action="created"
            )

        return await self._write(work)

    async def _require_live_endpoint(
        self, uow: UnitOfWork, name: str, *, lock: Any = None
    ) -> Endpoint:
        endpoint = await uow.get_endpoint(name, lock=lock)
        if endpoint is None or not endpoint.live:
            gone = " (it was deleted)" if endpoint is not None else ""
            raise NotFound(f"endpoint '{name}' does not exist{gone}", details={"endpoint": name})
        return endpoint

    async def update_endpoint(
        self, name: str, spec: EndpointConfigSpec, *, actor: str, expected_revision: int = 0
    ) -> Endpoint:
        """Store a new configuration revision; with ``expected_revision`` the update fails
        (FAILED_PRECONDITION) unless that revision is current."""
        check_endpoint_name(name)
        if expected_revision < 0:
            raise InvalidArgument(
                f"expected_revision: expected 0 (any) or a revision, got {expected_revision}",
                details={"field": "expected_revision"},
            )
        spec = validate_spec(spec)

        async def work(uow: UnitOfWork) -> Endpoint:
            resolved = await self._resolve(uow, spec)
            current = await self._require_live_endpoint(uow, name, lock="update")
            if expected_revision and current.revision != expected_revision:
                raise FailedPrecondition(
                    f"endpoint '{name}' is at revision {current.revision}, not the "
                    f"expected_revision {expected_revision}; describe it again and retry",
                    details={"endpoint": name, "revision": str(current.revision)},
                )
            return await self._store_config(
                uow, current, name, resolved, actor=actor, action="updated"
            )

        return await self._write(work)

    async def rollback_endpoint(
        self, name: str, to_revision: int, *, actor: str, reason: str
    ) -> Endpoint:
        """Make an earlier revision's configuration current again, as a new revision; its
        versions must still be APPROVED."""
        check_endpoint_name(name)
        check_text(reason, "reason")

        async def work(uow: UnitOfWork) -> Endpoint:
            current = await self._require_live_endpoint(uow, name)
            if not 1 <= to_revision < current.revision:
                raise InvalidArgument(
                    f"to_revision: expected an earlier revision of endpoint '{name}' (1 to "
                    f"{current.revision - 1}), got {to_revision}",
                    details={"field": "to_revision"},
                )
            old = await uow.get_endpoint_config(name, to_revision)
            if old is None:
                raise NotFound(
                    f"endpoint '{name}' has no configuration revision {to_revision} (that "
                    "revision number was used by a deletion)",
                    details={"endpoint": name, "revision": str(to_revision)},
                )
            spec = validate_spec(old.spec)
            resolved = await self._resolve(uow, spec)
            current = await self._require_live_endpoint(uow, name, lock="update")
            return await self._store_config(
                uow,
                current,
                name,
                resolved,
                actor=actor,
                action="rolled_back",
                reason=reason,
                rolled_back_from=to_revision,
            )

        return await self._write(work)

    async def delete_endpoint(self, name: str, *, actor: str) -> None:
        """Mark an endpoint DELETED (kept for history); the deletion uses a revision."""
        check_endpoint_name(name)

        async def work(uow: UnitOfWork) -> None:
            current = await self._require_live_endpoint(uow, name, lock="update")
            now = self._clock()
            revision = current.revision + 1
            updated = current.model_copy(
                update={
                    "status": EndpointStatus.DELETED,
                    "status_reason": "",
                    "revision": revision,
                    "update_time": now,
                }
            )
            await uow.save_endpoint(updated, new=False)
            await self._audit(
                uow,
                entity_type=ENDPOINT,
                entity_id=name,
                action="deleted",
                actor=actor,
                now=now,
                before={"status": str(current.status), "revision": current.revision},
                after={"status": str(updated.status), "revision": revision},
            )
            await uow.add_event(
                events.EndpointDeleted(
                    endpoint=name, config_revision=revision, actor=actor, time=now
                )
            )

        await self._write(work)

    async def get_endpoint(self, name: str) -> Endpoint:
        """An endpoint (also a deleted one) with its configuration in force."""
        check_endpoint_name(name)
        endpoint = await self._read(lambda uow: uow.get_endpoint(name))
        if endpoint is None:
            raise NotFound(f"endpoint '{name}' does not exist", details={"endpoint": name})
        return endpoint

    async def list_endpoints(
        self, page: PageRequest, *, include_deleted: bool = False
    ) -> Page[Endpoint]:
        """Endpoints by name."""
        limit = self._page_size(page)
        query = {"list": "endpoints", "deleted": include_deleted}
        after = _cursor(page.token, query, str)
        rows = await self._read(
            lambda uow: uow.list_endpoints(
                include_deleted=include_deleted, after=after, limit=limit + 1
            )
        )
        return paginate(rows, limit, query, lambda endpoint: endpoint.name)

    async def list_endpoint_configs(self, name: str, page: PageRequest) -> Page[EndpointConfig]:
        """An endpoint's configuration history, newest first."""
        check_endpoint_name(name)
        limit = self._page_size(page)
        query = {"list": "configs", "endpoint": name}
        before = _cursor(page.token, query, int)

        async def read(uow: UnitOfWork) -> list[EndpointConfig]:
            if await uow.get_endpoint(name) is None:
                raise NotFound(f"endpoint '{name}' does not exist", details={"endpoint": name})
            return await uow.list_endpoint_configs(name, before=before, limit=limit + 1)

        rows = await self._read(read)
        return paginate(rows, limit, query, lambda config: config.revision)
