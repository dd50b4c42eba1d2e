"""Model versions over gRPC: streamed and by-URI registration, derived signatures,
metadata, idempotency, listing, updates, downloads checked end to end, and uploads that
must leave nothing behind."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from mlbus.common.v1 import common_pb2
from mlbus.registry.v1 import registry_pb2 as pb
from mlbus.testing.onnx_models import sklearn_classifier_with_zipmap

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PENDING = common_pb2.APPROVAL_STATUS_PENDING_MANUAL_APPROVAL
APPROVED = common_pb2.APPROVAL_STATUS_APPROVED


async def test_register_streams_stores_and_derives_the_signature(
    registry: Any, unique_name: Callable[[str], str], onnx_sklearn_classifier: bytes
) -> None:
    group = unique_name("g")
    await registry.create_group(group)
    data = onnx_sklearn_classifier
    sha = hashlib.sha256(data).hexdigest()
    header = registry.header(
        group,
        expected_sha256=sha,
        metrics={"auc": 0.91, "f1": 0.8},
        hyperparameters={"C": "1.0", "penalty": "l2"},
        lineage=pb.Lineage(
            training_job_id="job-7",
            dataset_uri="file:///data/churn.csv",
            dataset_sha256="a" * 64,
            code_version="abc123",
        ),
        model_card=pb.ModelCard(intended_use="churn scoring", owner="growth"),
        tags={"framework": "sklearn"},
        description="first",
    )
    # Small chunks: the registry reassembles any chunking.
    version = await registry.register_stream(header, data, chunk_size=1000)

    assert version.model_group == group
    assert version.version == 1
    assert version.approval_status == PENDING
    assert version.registered_by.name == "alice"
    assert version.artifact.sha256 == sha
    assert version.artifact.size_bytes == len(data)
    assert version.artifact.content_type == "application/x-onnx"
    assert version.artifact.uri.endswith(f"sha256/{sha[:2]}/{sha}")
    signature = version.signature
    assert [(t.name, t.datatype, list(t.shape)) for t in signature.inputs] == [
        ("X", "FP32", [-1, 4])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in signature.outputs] == [
        ("label", "INT64", [-1]),
        ("probabilities", "FP32", [-1, 2]),
    ]
    assert signature.opset == 17
    assert dict(version.metrics) == {"auc": 0.91, "f1": 0.8}
    assert dict(version.hyperparameters) == {"C": "1.0", "penalty": "l2"}
    assert version.lineage.training_job_id == "job-7"
    assert version.lineage.dataset_sha256 == "a" * 64
    assert version.model_card.intended_use == "churn scoring"
    assert dict(version.tags) == {"framework": "sklearn"}

    got = await registry.stub.GetModelVersion(
        pb.GetModelVersionRequest(model_group=group, version=1)
    )
    assert got.model_version == version
    assert registry.app.store.root is not None
    assert await registry.app.store.read_bytes(version.artifact.uri, expected_sha256=sha) == data
    group_now = (await registry.stub.GetModelGroup(pb.GetModelGroupRequest(name=group))).model_group
    assert group_now.latest_version == 1
    entries = await registry.audit(f"{group}/", "model_version")
    assert [(e.entity_id, e.action) for e in entries] == [(f"{group}/1", "registered")]
    assert registry.staged_files() == []


async def test_versions_number_list_filter_and_update(
    registry: Any,
    unique_name: Callable[[str], str],
    onnx_linear_model: Any,
    expect_error: Any,
) -> None:
    group = unique_name("g")
    for seed in range(3):
        await registry.register(group, onnx_linear_model(seed=seed), create_group=True)
    await registry.approve(group, 2)

    listed = await registry.stub.ListModelVersions(pb.ListModelVersionsRequest(model_group=group))
    assert [v.version for v in listed.model_versions] == [3, 2, 1]
    approved = await registry.stub.ListModelVersions(
        pb.ListModelVersionsRequest(model_group=group, approval_status=APPROVED)
    )
    assert [v.version for v in approved.model_versions] == [2]
    page = await registry.stub.ListModelVersions(
        pb.ListModelVersionsRequest(model_group=group, page=common_pb2.PageRequest(page_size=2))
    )
    rest = await registry.stub.ListModelVersions(
        pb.ListModelVersionsRequest(
            model_group=group, page=common_pb2.PageRequest(page_token=page.page.next_page_token)
        )
    )
    assert [v.version for v in page.model_versions] == [3, 2]
    assert [v.version for v in rest.model_versions] == [1]
    assert rest.page.next_page_token == ""

    updated = (
        await registry.stub.UpdateModelVersion(
            pb.UpdateModelVersionRequest(
                model_group=group,
                version=2,
                description="better",
                set_metrics={"auc": 0.95},
                set_tags={"stage": "candidate"},
                model_card=pb.ModelCard(limitations="small data"),
                actor=common_pb2.Actor(name="carol"),
            )
        )
    ).model_version
    assert updated.description == "better"
    assert dict(updated.metrics) == {"auc": 0.95}
    assert updated.model_card.limitations == "small data"
    assert updated.approval_status == APPROVED  # metadata changes keep the status
    entries = await registry.audit(f"{group}/2", "model_version")
    assert [e.action for e in entries] == ["registered", "approved", "updated"]
    assert '"description":"better"' in entries[-1].after_json

    await expect_error(
        registry.stub.GetModelVersion(pb.GetModelVersionRequest(model_group=group, version=9)),
        grpc.StatusCode.NOT_FOUND,
        f"model version {group}/9 does not exist",
        "latest version",
    )
    await expect_error(
        registry.stub.GetModelVersion(pb.GetModelVersionRequest(model_group=group)),
        INVALID,
        "version or alias",
    )
    await expect_error(
        registry.stub.UpdateModelVersion(
            pb.UpdateModelVersionRequest(
                model_group=group,
                version=1,
                set_metrics={"auc": float("nan")},
                actor=common_pb2.Actor(name="carol"),
            )
        ),
        INVALID,
        "set_metrics['auc']: expected a finite number",
    )


async def test_an_unknown_approval_status_filter_is_refused(
    registry: Any, unique_name: Callable[[str], str], expect_error: Any
) -> None:
    group = unique_name("g")
    await registry.create_group(group)
    await expect_error(
        registry.stub.ListModelVersions(
            pb.ListModelVersionsRequest(model_group=group, approval_status=99)  # type: ignore[arg-type]
        ),
        INVALID,
        "approval_status: expected one of APPROVAL_STATUS_UNSPECIFIED",
        "got 99",
    )


async def test_registration_is_idempotent_by_request_id(
    registry: Any, unique_name: Callable[[str], str], onnx_linear_model: Any
) -> None:
    group = unique_name("g")
    first = await registry.register(
        group, onnx_linear_model(seed=1), create_group=True, request_id="req-1"
    )
    again = await registry.register(group, onnx_linear_model(seed=1), request_id="req-1")
    assert again == first
    other = await registry.register(group, onnx_linear_model(seed=2), request_id="req-2")
    assert other.version == first.version + 1
    entries = await registry.audit(f"{group}/", "model_version")
    assert len(entries) == 2
    assert await registry.outbox_count(group) == 3  # group created + two registrations


async def test_register_by_artifact_uri_stores_it_content_addressed(
    registry: Any, unique_name: Callable[[str], str], onnx_linear_model: Any, expect_error: Any
) -> None:
    group = unique_name("g")
    data = onnx_linear_model(seed=11)
    sha = hashlib.sha256(data).hexdigest()
    named = await registry.app.store.put(f"uploads/{group}/model.onnx", data)
    version = await registry.register_stream(
        registry.header(group, artifact_uri=named.uri, create_group=True, expected_sha256=sha), b""
    )
    assert version.artifact.sha256 == sha
    assert version.artifact.uri != named.uri
    assert version.artifact.uri.endswith(f"sha256/{sha[:2]}/{sha}")

    # A content-addressed URI is used as it is.
    again = await registry.register_stream(
        registry.header(group, artifact_uri=version.artifact.uri), b""
    )
    assert again.artifact.uri == version.artifact.uri
    assert again.version == 2

    await expect_error(
        registry.register_stream(registry.header(group, artifact_uri=named.uri), data),
        INVALID,
        "no chunks may follow",
    )
    missing = registry.app.store.uri_for(f"uploads/{group}/missing.onnx")
    await expect_error(
        registry.register_stream(registry.header(group, artifact_uri=missing), b""),
        grpc.StatusCode.NOT_FOUND,
        "header.artifact_uri",
    )
    await expect_error(
        registry.register_stream(registry.header(group, artifact_uri="s3://elsewhere/x"), b""),
        INVALID,
        "header.artifact_uri",
    )


async def test_registration_needs_a_group_and_a_valid_header(
    registry: Any, unique_name: Callable[[str], str], onnx_linear_model: Any, expect_error: Any
) -> None:
    group = unique_name("g")
    data = onnx_linear_model()
    await expect_error(
        registry.register(group, data),
        grpc.StatusCode.NOT_FOUND,
        f"model group '{group}' does not exist",
        "create_group",
    )
    await registry.create_group(group)
    await expect_error(
        registry.register(group, data, lineage=pb.Lineage(parent_version=4)),
        INVALID,
        "header.lineage.parent_version",
    )
    await expect_error(
        registry.register(group, data, expected_sha256="xyz"),
        INVALID,
        "header.expected_sha256: expected 64 hex digits",
    )
    await expect_error(
        registry.register_stream(registry.header(group, actor=""), data),
        INVALID,
        "actor",
    )

    async def chunk_first() -> AsyncIterator[pb.RegisterModelVersionRequest]:
        yield pb.RegisterModelVersionRequest(chunk=data)

    await expect_error(
        registry.stub.RegisterModelVersion(chunk_first()),
        INVALID,
        "first message must be the header",
    )
    parent = await registry.register(group, data)
    child = await registry.register(
        group, onnx_linear_model(seed=3), lineage=pb.Lineage(parent_version=parent.version)
    )
    assert child.lineage.parent_version == parent.version


async def test_download_streams_the_artifact_with_its_checksum(
    registry: Any, unique_name: Callable[[str], str], onnx_linear_model: Any, expect_error: Any
) -> None:
    group = unique_name("g")
    # Larger than one download chunk (1 MiB), so the bytes arrive in several messages.
    data = onnx_linear_model(n_features=700, n_outputs=500)
    assert len(data) > 1024 * 1024
    version = await registry.register(group, data, create_group=True)
    await registry.stub.SetAlias(
        pb.SetAliasRequest(
            model_group=group, alias="latest-good", version=1, actor=common_pb2.Actor(name="bob")
        )
    )
    for request in (
        pb.DownloadArtifactRequest(model_group=group, version=1),
        pb.DownloadArtifactRequest(model_group=group, alias="latest-good"),
    ):
        messages = [m async for m in registry.stub.DownloadArtifact(request)]
        assert messages[0].WhichOneof("part") == "artifact"
        artifact = messages[0].artifact
        assert artifact == version.artifact
        chunks = [m.chunk for m in messages[1:]]
        assert len(chunks) > 1
        assert all(m.WhichOneof("part") == "chunk" for m in messages[1:])
        body = b"".join(chunks)
        assert hashlib.sha256(body).hexdigest() == artifact.sha256
        assert body == data

    await expect_error(
        _drain(
            registry.stub.DownloadArtifact(pb.DownloadArtifactRequest(model_group=group, version=5))
        ),
        grpc.StatusCode.NOT_FOUND,
        f"{group}/5",
    )


async def _drain(call: Any) -> None:
    async for _ in call:
        pass


async def test_download_of_corrupted_stored_bytes_fails_with_data_loss(
    start_registry: Any, own_database_url: str, onnx_linear_model: Any, expect_error: Any
) -> None:
    async with start_registry(own_database_url) as registry:
        data = onnx_linear_model(seed=5)
        version = await registry.register("tampered", data, create_group=True)
        path = registry.app.store.root / registry.app.store.key_for(version.artifact.uri)
        path.chmod(0o644)
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
        error = await expect_error(
            _drain(
                registry.stub.DownloadArtifact(
                    pb.DownloadArtifactRequest(model_group="tampered", version=version.version)
                )
            ),
            grpc.StatusCode.DATA_LOSS,
            f"expected sha256 {version.artifact.sha256}",
        )
        assert error.details()


# -- uploads that must leave nothing behind -------------------------------------------------


def _corrupt_cases(model: bytes) -> list[tuple[str, bytes, dict[str, Any], str]]:
    sha = hashlib.sha256(model).hexdigest()
    return [
        ("sha mismatch", model, {"expected_sha256": "0" * 64}, "header.expected_sha256"),
        (
            "truncated, checksum given",
            model[: len(model) // 2],
            {"expected_sha256": sha},
            "truncated or corrupted",
        ),
        ("truncated, no checksum", model[:-7], {}, "not a valid ONNX model"),
        ("not onnx", b"PK\x03\x04 this is a zip file, not a model" * 10, {}, "not a valid ONNX"),
        ("no bytes", b"", {}, "without any artifact bytes"),
        ("zipmap output", sklearn_classifier_with_zipmap(), {}, "is not a tensor"),
    ]


async def _nothing_stored(registry: Any, group: str, objects_before: list[str]) -> None:
    listed = await registry.stub.ListModelVersions(pb.ListModelVersionsRequest(model_group=group))
    assert list(listed.model_versions) == []
    got = (await registry.stub.GetModelGroup(pb.GetModelGroupRequest(name=group))).model_group
    assert got.latest_version == 0
    assert await registry.audit(f"{group}/") == []
    assert await registry.outbox_count(group) == 1  # only the group's creation
    assert await registry.stored_objects() == objects_before
    assert registry.staged_files() == []


async def test_corrupt_uploads_store_nothing(
    registry: Any, unique_name: Callable[[str], str], onnx_linear_model: Any, expect_error: Any
) -> None:
    model = onnx_linear_model(seed=21)
    for case, data, fields, fragment in _corrupt_cases(model):
        group = unique_name("g")
        await registry.create_group(group)
        before = await registry.stored_objects()
        await expect_error(registry.register(group, data, **fields), INVALID, fragment)
        try:
            await _nothing_stored(registry, group, before)
        except AssertionError as exc:
            raise AssertionError(f"case {case!r}: {exc}") from exc


async def test_refused_headers_store_nothing(
    registry: Any, unique_name: Callable[[str], str], onnx_linear_model: Any, expect_error: Any
) -> None:
    # A valid artifact with a header the registry refuses after taking the upload: the
    # artifact must not be left in the store (it used to be, for a bad baseline).
    model = onnx_linear_model(seed=22)
    missing = registry.app.store.uri_for("baselines/missing.json")
    cases: list[tuple[str, dict[str, Any], str]] = [
        (
            "missing baseline",
            {"baseline": common_pb2.ObjectRef(uri=missing)},
            "header.baseline.uri: object",
        ),
        (
            "baseline of another store",
            {"baseline": common_pb2.ObjectRef(uri="s3://another-bucket/stats.json")},
            "header.baseline.uri:",
        ),
        ("NUL in the description", {"description": "churn\x00v2"}, "header.description"),
        ("NUL in a tag value", {"tags": {"team": "a\x00b"}}, "header.tags['team']"),
        (
            "NUL in a hyperparameter",
            {"hyperparameters": {"C": "1\x00"}},
            "header.hyperparameters['C']",
        ),
    ]
    for case, fields, fragment in cases:
        group = unique_name("g")
        await registry.create_group(group)
        before = await registry.stored_objects()
        await expect_error(registry.register(group, model, **fields), INVALID, fragment)
        try:
            await _nothing_stored(registry, group, before)
        except AssertionError as exc:
            raise AssertionError(f"case {case!r}: {exc}") from exc

    # A group created by the registration has no parent version to name.
    group = unique_name("g")
    before = await registry.stored_objects()
    await expect_error(
        registry.register(group, model, create_group=True, lineage=pb.Lineage(parent_version=5)),
        INVALID,
        "header.lineage.parent_version",
        "expected 0 (none)",
    )
    await expect_error(
        registry.stub.GetModelGroup(pb.GetModelGroupRequest(name=group)),
        grpc.StatusCode.NOT_FOUND,
    )
    assert await registry.stored_objects() == before


async def test_upload_cancelled_by_the_client_stores_nothing(
    registry: Any, unique_name: Callable[[str], str], onnx_linear_model: Any
) -> None:
    group = unique_name("g")
    await registry.create_group(group)
    before = await registry.stored_objects()
    data = onnx_linear_model(n_features=600, n_outputs=600)
    never = asyncio.Event()

    async def requests() -> AsyncIterator[pb.RegisterModelVersionRequest]:
        yield pb.RegisterModelVersionRequest(header=registry.header(group))
        yield pb.RegisterModelVersionRequest(chunk=data[: 1024 * 1024 + 10])
        await never.wait()  # the client stalls mid-upload, then gives up

    call = registry.stub.RegisterModelVersion(requests())

    async def staging_started() -> bool:
        return bool(registry.staged_files())

    await _wait(staging_started, "the upload to be staged")
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call

    async def staging_cleaned() -> bool:
        return not registry.staged_files()

    await _wait(staging_cleaned, "the staged upload to be removed")
    await _nothing_stored(registry, group, before)


async def test_oversized_upload_is_refused_and_leaves_nothing(
    start_registry: Any, own_database_url: str, onnx_linear_model: Any, expect_error: Any
) -> None:
    async with start_registry(own_database_url, max_artifact_bytes=4096) as registry:
        group = "big-models"
        await registry.create_group(group)
        data = onnx_linear_model(n_features=100, n_outputs=100)
        await expect_error(
            registry.register(group, data),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "larger than the limit of 4096 bytes",
        )
        await _nothing_stored(registry, group, [])


async def _wait(predicate: Any, what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)
