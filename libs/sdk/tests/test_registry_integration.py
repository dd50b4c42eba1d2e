"""The SDK and the ``mlbus models`` / ``mlbus endpoints`` commands against the real registry
(started in-process with SQLite, a local object store and the session's broker).

Skipped, naming what is missing, while the registry service does not serve its API.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mlbus.sdk.cli import cli
from mlbus.sdk.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from mlbus.sdk.registry import (
    AsyncRegistryClient,
    EndpointVariant,
    ModelVersion,
    RegistryClient,
)

OnnxFile = Callable[..., Path]


def name(prefix: str) -> str:
    """A group or endpoint name no other test uses (lower-case, starts with a letter)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mlbus(target: str, *args: str, actor: str = "alice") -> tuple[int, str, str]:
    """Run the CLI in-process; returns exit code, stdout, stderr."""
    result = CliRunner().invoke(
        cli, [*args, "--registry", target, "--actor", actor], env={"COLUMNS": "200"}
    )
    return result.exit_code, result.stdout, result.stderr


def mlbus_json(target: str, *args: str, actor: str = "alice") -> Any:
    code, stdout, stderr = mlbus(target, *args, "--json", actor=actor)
    assert code == 0, stderr
    return json.loads(stdout)


def register_approved(
    registry: RegistryClient, approver: RegistryClient, group: str, path: Path
) -> ModelVersion:
    version = registry.register(path, group=group, create_group=True)
    return approver.approve(group, version.version, reason="ok")


# --- models: SDK -------------------------------------------------------------------------


def test_register_describe_approve_alias_download(
    registry: RegistryClient, approver: RegistryClient, onnx_file: OnnxFile, tmp_path: Path
) -> None:
    group = name("churn")
    path = onnx_file(seed=1)
    created = registry.create_group(group, description="churn model", tags={"team": "growth"})
    assert created.created_by == "alice"
    assert created.latest_version == 0

    v1 = registry.register(
        path,
        group=group,
        metrics={"auc": 0.91},
        hyperparameters={"max_depth": 6},
        lineage={"training_job_id": "job-7", "dataset_uri": "file:///data/churn.parquet"},
        model_card={"intended_use": "churn scoring", "owner": "growth"},
        tags={"stage": "candidate"},
        description="first",
    )
    assert (v1.model_group, v1.version) == (group, 1)
    assert v1.approval_status == "PENDING_MANUAL_APPROVAL"
    assert v1.registered_by == "alice"
    assert v1.artifact is not None
    assert v1.artifact.sha256 == sha256(path)
    assert v1.artifact.size_bytes == path.stat().st_size
    assert v1.signature is not None
    assert [(t.name, t.datatype, t.shape) for t in v1.signature.inputs] == [("X", "FP32", (-1, 4))]
    assert [(t.name, t.datatype, t.shape) for t in v1.signature.outputs] == [("Y", "FP32", (-1, 2))]
    assert v1.signature.opset == 17
    assert v1.hyperparameters == {"max_depth": "6"}
    assert v1.lineage.training_job_id == "job-7"
    assert v1.model_card.owner == "growth"

    assert registry.get_version(group, 1) == v1
    assert registry.get_group(group).latest_version == 1

    # The registrant may not approve their own version (default policy).
    with pytest.raises(PermissionDenied):
        registry.approve(group, 1, reason="mine")
    approved = approver.approve(group, 1, reason="auc 0.91 on holdout")
    assert approved.approval_status == "APPROVED"
    assert approved.status_reason == "auc 0.91 on holdout"

    moved = approver.set_alias(group, "production", 1, reason="first release")
    assert moved.previous_version == 0
    assert "production" in moved.model_version.aliases
    assert registry.get_version(group, alias="production").version == 1

    result = registry.download(group, alias="production", dest=tmp_path / "out")
    assert result.path.read_bytes() == path.read_bytes()
    assert result.artifact.sha256 == sha256(path)
    assert registry.read_artifact(group, 1) == path.read_bytes()

    entries = list(registry.audit(prefix=f"{group}"))
    actions = [(e.entity_type, e.entity_id, e.action, e.actor) for e in entries]
    assert (
        "model_version",
        f"{group}/1",
        "approved",
        "bob",
    ) in actions
    assert [e.id for e in entries] == sorted(e.id for e in entries)  # oldest first


def test_versions_are_numbered_and_listed_newest_first_across_pages(
    registry: RegistryClient, onnx_file: OnnxFile
) -> None:
    group = name("paged")
    for seed in range(5):
        registry.register(onnx_file(seed=seed), group=group, create_group=seed == 0)
    versions = list(registry.list_versions(group, page_size=2))
    assert [v.version for v in versions] == [5, 4, 3, 2, 1]
    assert [v.version for v in registry.list_versions(group, page_size=2, limit=3)] == [5, 4, 3]
    assert list(registry.list_versions(group, status="approved")) == []


def test_groups_list_across_pages_with_prefix_and_tags(registry: RegistryClient) -> None:
    prefix = name("many")
    for i in range(5):
        registry.create_group(f"{prefix}-{i}", tags={"parity": "even" if i % 2 == 0 else "odd"})
    names = [g.name for g in registry.list_groups(prefix=prefix, page_size=2)]
    assert sorted(names) == [f"{prefix}-{i}" for i in range(5)]
    even = [g.name for g in registry.list_groups(prefix=prefix, tags={"parity": "even"})]
    assert sorted(even) == [f"{prefix}-0", f"{prefix}-2", f"{prefix}-4"]


def test_a_large_artifact_streams_in_chunks(registry: RegistryClient, onnx_file: OnnxFile) -> None:
    path = onnx_file(seed=3, outputs=300_000)  # ~4.8 MB: five chunks
    assert path.stat().st_size > 4 * 1024 * 1024
    seen: list[int] = []
    version = registry.register(
        path, group=name("big"), create_group=True, progress=lambda done, total: seen.append(done)
    )
    assert version.artifact is not None
    assert version.artifact.sha256 == sha256(path)
    assert seen[-1] == path.stat().st_size
    assert len(seen) >= 6  # 0, then one call per chunk


def test_not_onnx_is_invalid_argument(registry: RegistryClient) -> None:
    group = name("junk")
    registry.create_group(group)
    with pytest.raises(InvalidArgument):
        registry.register(b"this is not an onnx model", group=group)
    assert list(registry.list_versions(group)) == []


def test_not_found(registry: RegistryClient) -> None:
    missing = name("nope")
    with pytest.raises(NotFound, match=missing):
        registry.get_group(missing)
    with pytest.raises(NotFound):
        registry.get_endpoint(missing)


async def test_async_client(registry_target: str, onnx_file: OnnxFile, tmp_path: Path) -> None:
    group = name("aio")
    path = onnx_file(seed=9)
    async with AsyncRegistryClient(registry_target, actor="service:trainer") as client:
        await client.wait_for_ready(10)
        version = await client.register(path, group=group, create_group=True, metrics={"f1": 0.5})
        assert version.registered_by == "service:trainer"
        assert (await client.get_version(group, version.version)).metrics == {"f1": 0.5}
        assert [v.version async for v in client.list_versions(group)] == [1]
        result = await client.download(group, 1, dest=tmp_path)
        assert result.path == tmp_path / f"{group}-v1.onnx"
        assert result.artifact.sha256 == sha256(path)


# --- models: CLI -------------------------------------------------------------------------


def test_models_cli_flow(registry_target: str, onnx_file: OnnxFile, tmp_path: Path) -> None:
    group = name("cli")
    path = onnx_file(seed=4)

    created = mlbus_json(registry_target, "models", "create-group", group, "--tag", "team=a")
    assert created["name"] == group
    assert created["tags"] == {"team": "a"}

    registered = mlbus_json(
        registry_target,
        "models",
        "register",
        str(path),
        "--group",
        group,
        "--metric",
        "auc=0.88",
        "--param",
        "lr=0.1",
        "--training-job",
        "job-1",
        "--card-owner",
        "team-a",
    )
    assert set(registered) == set(ModelVersion.model_fields)
    assert registered["version"] == 1
    assert registered["approval_status"] == "PENDING_MANUAL_APPROVAL"
    assert registered["metrics"] == {"auc": 0.88}
    assert registered["hyperparameters"] == {"lr": "0.1"}
    assert registered["lineage"]["training_job_id"] == "job-1"
    assert registered["model_card"]["owner"] == "team-a"
    assert registered["artifact"]["sha256"] == sha256(path)

    code, stdout, _ = mlbus(registry_target, "models", "describe", group, "1")
    assert code == 0
    assert "PENDING_MANUAL_APPROVAL" in stdout
    assert "X" in stdout
    assert "FP32" in stdout

    code, _, stderr = mlbus(registry_target, "models", "approve", group, "1")
    assert code == 7
    assert stderr.startswith("error: PERMISSION_DENIED: ")

    approved = mlbus_json(
        registry_target, "models", "approve", group, "1", "--reason", "lgtm", actor="bob"
    )
    assert approved["approval_status"] == "APPROVED"

    alias = mlbus_json(registry_target, "models", "alias", group, "production", "1")
    assert alias["alias"] == "production"
    assert alias["previous_version"] == 0

    out = tmp_path / "downloaded.onnx"
    downloaded = mlbus_json(
        registry_target, "models", "download", group, "--alias", "production", "-o", str(out)
    )
    assert downloaded["path"] == str(out)
    assert out.read_bytes() == path.read_bytes()

    versions = mlbus_json(registry_target, "models", "list", group)
    assert [v["version"] for v in versions] == [1]
    assert versions[0]["aliases"] == ["production"]

    groups = mlbus_json(registry_target, "models", "list", "--prefix", group)
    assert [g["name"] for g in groups] == [group]

    code, stdout, _ = mlbus(registry_target, "models", "list")
    assert code == 0
    assert group in stdout

    audit = mlbus_json(registry_target, "models", "audit", "--prefix", f"{group}/")
    assert {"registered", "approved"} <= {e["action"] for e in audit}
    assert set(audit[0]) == {
        "id",
        "entity_type",
        "entity_id",
        "action",
        "actor",
        "reason",
        "time",
        "before",
        "after",
    }

    deleted = mlbus_json(registry_target, "models", "alias", group, "production", "--delete")
    assert deleted == {"model_group": group, "alias": "production", "deleted": True}

    rejected = mlbus_json(
        registry_target, "models", "reject", group, "1", "--reason", "leaks labels", actor="bob"
    )
    assert rejected["model_version"]["approval_status"] == "REJECTED"
    assert rejected["degraded_endpoints"] == []


def test_cli_errors_are_one_line_with_distinct_exit_codes(
    registry_target: str, tmp_path: Path
) -> None:
    missing = name("missing")
    code, stdout, stderr = mlbus(registry_target, "models", "describe", missing, "--json")
    assert code == 4
    assert stdout == ""
    assert stderr.startswith("error: NOT_FOUND: ")
    assert missing in stderr
    assert len(stderr.strip().splitlines()) == 1

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    code, _, stderr = mlbus(
        registry_target, "models", "register", str(junk), "--group", missing, "--create-group"
    )
    assert code == 3
    assert stderr.startswith("error: INVALID_ARGUMENT: ")

    code, _, stderr = mlbus(registry_target, "models", "create-group", "Not_Valid")
    assert code == 3
    assert stderr.startswith("error: INVALID_ARGUMENT: ")


def test_cli_as_a_real_process(registry_target: str, registry: RegistryClient) -> None:
    group = name("proc")
    registry.create_group(group)
    mlbus_script = Path(sys.executable).parent / "mlbus"
    result = subprocess.run(
        [str(mlbus_script), "models", "list", "--json", "--prefix", group],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MLBUS_REGISTRY": registry_target, "MLBUS_ACTOR": "carol"},
    )
    assert result.returncode == 0, result.stderr
    assert [g["name"] for g in json.loads(result.stdout)] == [group]

    missing = subprocess.run(
        [str(mlbus_script), "models", "describe", name("nope")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MLBUS_REGISTRY": registry_target},
    )
    assert missing.returncode == 4
    assert missing.stderr.startswith("error: NOT_FOUND: ")
    assert "Traceback" not in missing.stderr


# --- endpoints ---------------------------------------------------------------------------


def test_unapproved_version_never_reaches_an_endpoint(
    registry: RegistryClient, registry_target: str, onnx_file: OnnxFile
) -> None:
    group = name("gate")
    version = registry.register(onnx_file(seed=5), group=group, create_group=True)
    endpoint = name("ep")
    variant = EndpointVariant(name="main", model_group=group, model_version=version.version)
    with pytest.raises(FailedPrecondition):
        registry.create_endpoint(endpoint, [variant])

    code, stdout, stderr = mlbus(
        registry_target,
        "endpoints",
        "create",
        endpoint,
        "--variant",
        f"name=main,group={group},version={version.version}",
    )
    assert code == 6
    assert stdout == ""
    assert stderr.startswith("error: FAILED_PRECONDITION: ")
    with pytest.raises(NotFound):
        registry.get_endpoint(endpoint)


def test_endpoints_sdk_create_update_history_rollback_delete(
    registry: RegistryClient, approver: RegistryClient, onnx_file: OnnxFile
) -> None:
    group = name("serve")
    v1 = register_approved(registry, approver, group, onnx_file(seed=11))
    v2 = register_approved(registry, approver, group, onnx_file(seed=12))
    endpoint = name("ep")

    created = registry.create_endpoint(
        endpoint,
        [{"name": "blue", "model_group": group, "model_version": v1.version, "instance_count": 2}],
        data_capture=5,
        description="first",
    )
    assert created.status == "ACTIVE"
    assert created.revision == 1
    assert created.current_config is not None
    resolved = created.current_config.variants[0]
    assert resolved.artifact is not None
    assert v1.artifact is not None
    assert resolved.artifact.sha256 == v1.artifact.sha256  # filled in by the registry
    assert resolved.signature == v1.signature
    assert created.current_config.data_capture is not None
    assert created.current_config.data_capture.sampling_percent == 5

    updated = registry.update_endpoint(
        endpoint,
        [
            EndpointVariant(name="blue", model_group=group, model_version=v1.version, weight=90),
            EndpointVariant(
                name="green",
                model_group=group,
                model_version=v2.version,
                weight=10,
                mode="SERVERLESS",
            ),
        ],
        shadow={
            "variant": {"name": "next", "model_group": group, "model_version": v2.version},
            "sampling_percent": 10,
        },
        expected_revision=1,
    )
    assert updated.revision == 2
    assert updated.current_config is not None
    assert [v.name for v in updated.current_config.variants] == ["blue", "green"]
    assert updated.current_config.variants[1].mode == "SERVERLESS"
    assert updated.current_config.shadow is not None

    with pytest.raises(FailedPrecondition):
        registry.update_endpoint(endpoint, updated.current_config.spec(), expected_revision=1)

    assert [c.revision for c in registry.endpoint_history(endpoint, page_size=1)] == [2, 1]

    rolled = registry.rollback_endpoint(endpoint, 1, reason="green misbehaves")
    assert rolled.revision == 3
    assert rolled.current_config is not None
    assert [v.name for v in rolled.current_config.variants] == ["blue"]
    assert rolled.current_config.rolled_back_from == 1  # the revision it restores
    assert registry.get_endpoint(endpoint) == rolled

    assert endpoint in {e.name for e in registry.list_endpoints()}
    registry.delete_endpoint(endpoint)
    assert endpoint not in {e.name for e in registry.list_endpoints()}
    deleted = {e.name: e for e in registry.list_endpoints(include_deleted=True)}
    assert deleted[endpoint].status == "DELETED"


def test_forced_rejection_degrades_the_endpoint(
    registry: RegistryClient, approver: RegistryClient, registry_target: str, onnx_file: OnnxFile
) -> None:
    group = name("degrade")
    v1 = register_approved(registry, approver, group, onnx_file(seed=21))
    endpoint = name("ep")
    registry.create_endpoint(endpoint, [{"name": "main", "model_group": group, "model_version": 1}])

    with pytest.raises(FailedPrecondition):
        approver.reject(group, v1.version, reason="bias found")

    code, _, stderr = mlbus(
        registry_target, "models", "reject", group, "1", "--reason", "bias found", actor="bob"
    )
    assert code == 6
    assert stderr.startswith("error: FAILED_PRECONDITION: ")

    result = mlbus_json(
        registry_target, "models", "reject", group, "1", "--reason", "bias", "--force", actor="bob"
    )
    assert result["degraded_endpoints"] == [endpoint]
    assert registry.get_endpoint(endpoint).status == "DEGRADED"


ENDPOINT_YAML = """
description: blue/green from a file
variants:
  - {{name: blue, group: {group}, version: 1, weight: 80, instances: 2}}
  - name: green
    group: {group}
    version: 2
    weight: 20
    mode: serverless
    max-concurrency: 4
    max-batch-size: 8
    max-queue-delay-us: 500
    scale-to-zero: 120
capture_percent: 2
"""


def test_endpoints_cli_flow(
    registry: RegistryClient,
    approver: RegistryClient,
    registry_target: str,
    onnx_file: OnnxFile,
    tmp_path: Path,
) -> None:
    group = name("epcli")
    register_approved(registry, approver, group, onnx_file(seed=31))
    register_approved(registry, approver, group, onnx_file(seed=32))
    endpoint = name("ep")

    created = mlbus_json(
        registry_target,
        "endpoints",
        "create",
        endpoint,
        "--variant",
        f"name=blue,group={group},version=1,instances=2",
        "--capture-percent",
        "1",
    )
    assert created["name"] == endpoint
    assert created["status"] == "ACTIVE"
    assert created["current_config"]["revision"] == 1
    assert created["current_config"]["variants"][0]["instance_count"] == 2

    config = tmp_path / "endpoint.yaml"
    config.write_text(ENDPOINT_YAML.format(group=group))
    from_file = mlbus_json(registry_target, "endpoints", "update", endpoint, "-f", str(config))
    current = from_file["current_config"]
    assert current["revision"] == 2
    assert [v["name"] for v in current["variants"]] == ["blue", "green"]
    green = current["variants"][1]
    assert green["mode"] == "SERVERLESS"
    assert green["batching"] == {"max_batch_size": 8, "max_queue_delay_micros": 500}
    assert green["scale_to_zero_after_seconds"] == 120
    assert current["data_capture"] == {"sampling_percent": 2.0}

    # Options change only what they name; the rest of revision 2 is kept.
    tweaked = mlbus_json(
        registry_target,
        "endpoints",
        "update",
        endpoint,
        "--shadow",
        f"name=next,group={group},version=2,sampling=10",
    )
    assert tweaked["current_config"]["revision"] == 3
    assert [v["name"] for v in tweaked["current_config"]["variants"]] == ["blue", "green"]
    assert tweaked["current_config"]["shadow"]["sampling_percent"] == 10
    assert tweaked["current_config"]["variants"][1]["scale_to_zero_after_seconds"] == 120

    code, _, stderr = mlbus(
        registry_target, "endpoints", "update", endpoint, "--capture-percent", "0",
        "--expected-revision", "1",
    )  # fmt: skip
    assert code == 6
    assert stderr.startswith("error: FAILED_PRECONDITION: ")

    history = mlbus_json(registry_target, "endpoints", "history", endpoint)
    assert [c["revision"] for c in history] == [3, 2, 1]

    rolled = mlbus_json(
        registry_target, "endpoints", "rollback", endpoint, "1", "--reason", "revert"
    )
    assert rolled["current_config"]["revision"] == 4
    assert [v["name"] for v in rolled["current_config"]["variants"]] == ["blue"]

    described = mlbus_json(registry_target, "endpoints", "describe", endpoint)
    assert set(described) == {"endpoint", "history"}
    assert described["endpoint"]["current_config"]["revision"] == 4
    assert [c["revision"] for c in described["history"]] == [4, 3, 2, 1]

    code, stdout, _ = mlbus(registry_target, "endpoints", "describe", endpoint)
    assert code == 0
    assert "blue" in stdout
    assert "ACTIVE" in stdout

    listed = mlbus_json(registry_target, "endpoints", "list")
    assert endpoint in [e["name"] for e in listed]

    code, stdout, _ = mlbus(registry_target, "endpoints", "delete", endpoint, "--yes")
    assert code == 0
    listed_all = mlbus_json(registry_target, "endpoints", "list", "--all")
    assert {e["name"]: e["status"] for e in listed_all}[endpoint] == "DELETED"
