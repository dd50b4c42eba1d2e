"""Naming and metadata rules, the approval state machine and the self-approval policy."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mlbus.core.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from mlbus.core.messaging.topics import check_endpoint_name as topic_endpoint_check
from mlbus.registry.domain import rules
from mlbus.registry.domain.approval import TRANSITIONS, check_approver, check_transition
from mlbus.registry.domain.models import (
    ApprovalStatus,
    ArtifactRef,
    Lineage,
    ModelVersion,
    Signature,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def version(status: ApprovalStatus, registered_by: str = "alice") -> ModelVersion:
    return ModelVersion(
        model_group="churn",
        version=3,
        artifact=ArtifactRef(uri="file:///a", sha256="0" * 64, size_bytes=1, content_type="x"),
        signature=Signature(),
        approval_status=status,
        registered_by=registered_by,
        register_time=NOW,
        update_time=NOW,
    )


@pytest.mark.parametrize("name", ["a", "churn-classifier", "m2", "x" * 63])
def test_valid_group_names(name: str) -> None:
    assert rules.check_group_name(name) == name


@pytest.mark.parametrize("name", ["", "A", "2fast", "has_underscore", "x" * 64, "a b"])
def test_invalid_group_names_name_the_field(name: str) -> None:
    with pytest.raises(InvalidArgument, match=r"^header\.model_group: expected 1-63"):
        rules.check_group_name(name, "header.model_group")


@pytest.mark.parametrize("alias", ["production", "v2", "champion-1"])
def test_valid_aliases(alias: str) -> None:
    assert rules.check_alias(alias) == alias


@pytest.mark.parametrize("alias", ["3", "42", "Prod", "-x", ""])
def test_invalid_aliases(alias: str) -> None:
    with pytest.raises(InvalidArgument, match="alias:"):
        rules.check_alias(alias)


@pytest.mark.parametrize(
    "name", ["churn", "Fraud-Endpoint-2", "a", "x" * 63, "-a", "a-", "a.b", ""]
)
def test_endpoint_names_follow_the_topic_rule(name: str) -> None:
    # Endpoint names become part of topic names: the two rules must agree.
    try:
        topic_endpoint_check(name)
        topic_ok = True
    except ValueError:
        topic_ok = False
    try:
        rules.check_endpoint_name(name)
        domain_ok = True
    except InvalidArgument:
        domain_ok = False
    assert domain_ok == topic_ok


def test_metadata_limits() -> None:
    assert rules.check_metrics({"auc": 0.9}) == {"auc": 0.9}
    with pytest.raises(InvalidArgument, match=r"metrics\['auc'\]: expected a finite number"):
        rules.check_metrics({"auc": float("inf")})
    with pytest.raises(InvalidArgument, match="tags: expected keys of 1-128"):
        rules.check_tags({"": "x"})
    with pytest.raises(InvalidArgument, match=r"tags\['k'\]: expected a value of at most 1024"):
        rules.check_tags({"k": "v" * 1025})
    with pytest.raises(InvalidArgument, match="at most 256 entries"):
        rules.check_tags({f"k{i}": "v" for i in range(257)})
    assert rules.check_sha256("A" * 64, "x") == "a" * 64
    with pytest.raises(InvalidArgument, match=r"lineage\.dataset_sha256"):
        rules.check_lineage(Lineage(dataset_sha256="nope"))
    with pytest.raises(InvalidArgument, match=r"lineage\.parent_version"):
        rules.check_lineage(Lineage(parent_version=-1))
    assert rules.check_request_id("") is None
    assert rules.check_actor("  bob ") == "bob"
    with pytest.raises(InvalidArgument, match="x-mlbus-actor"):
        rules.check_actor(" ")
    with pytest.raises(InvalidArgument, match="reason: required when rejecting"):
        rules.check_required_text("", "reason", why="when rejecting")


@pytest.mark.parametrize("current", list(ApprovalStatus))
@pytest.mark.parametrize("target", list(ApprovalStatus))
def test_transitions(current: ApprovalStatus, target: ApprovalStatus) -> None:
    allowed = {
        (ApprovalStatus.PENDING_MANUAL_APPROVAL, ApprovalStatus.APPROVED),
        (ApprovalStatus.PENDING_MANUAL_APPROVAL, ApprovalStatus.REJECTED),
        (ApprovalStatus.APPROVED, ApprovalStatus.REJECTED),
    }
    assert (target in TRANSITIONS[current]) == ((current, target) in allowed)
    if (current, target) in allowed:
        check_transition(version(current), target)
    else:
        with pytest.raises(FailedPrecondition) as caught:
            check_transition(version(current), target)
        message = caught.value.message
        assert f"churn/3 is {current}; it cannot move to {target}" in message
        assert caught.value.details["current_status"] == current
        assert caught.value.details["requested_status"] == target


def test_self_approval_policy() -> None:
    pending = version(ApprovalStatus.PENDING_MANUAL_APPROVAL, registered_by="alice")
    check_approver(pending, "bob", allow_self_approval=False)
    check_approver(pending, "alice", allow_self_approval=True)
    with pytest.raises(PermissionDenied, match="registered by 'alice'"):
        check_approver(pending, "alice", allow_self_approval=False)
