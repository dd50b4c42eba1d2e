"""The approval state machine and the self-approval policy."""

from __future__ import annotations

from typing import Final

from mlbus.core.errors import FailedPrecondition, PermissionDenied
from mlbus.registry.domain.models import ApprovalStatus, ModelVersion

P = ApprovalStatus.PENDING_MANUAL_APPROVAL
A = ApprovalStatus.APPROVED
R = ApprovalStatus.REJECTED

#: status → statuses it may move to. APPROVED → REJECTED withdraws an approval.
TRANSITIONS: Final[dict[ApprovalStatus, frozenset[ApprovalStatus]]] = {
    P: frozenset({A, R}),
    A: frozenset({R}),
    R: frozenset(),
}


def check_transition(version: ModelVersion, target: ApprovalStatus) -> None:
    """Raise FailedPrecondition unless ``version`` may move to ``target``; the message names
    the current and the requested status."""
    current = version.approval_status
    allowed = TRANSITIONS[current]
    if target in allowed:
        return
    options = ", ".join(sorted(allowed)) or "none, it is final"
    raise FailedPrecondition(
        f"model version {version.ref} is {current}; it cannot move to {target} "
        f"(allowed from {current}: {options})",
        details={
            "model_version": version.ref,
            "current_status": str(current),
            "requested_status": str(target),
        },
    )


def check_approver(version: ModelVersion, approver: str, *, allow_self_approval: bool) -> None:
    """Raise PermissionDenied when ``approver`` registered ``version`` and policy forbids
    approving one's own versions."""
    if allow_self_approval or approver != version.registered_by:
        return
    raise PermissionDenied(
        f"model version {version.ref} was registered by {approver!r}; a registrant cannot "
        "approve their own version (another approver must, or set "
        "REGISTRY_ALLOW_SELF_APPROVAL=true)",
        details={"model_version": version.ref, "actor": approver},
    )
