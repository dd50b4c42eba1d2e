"""Rich tables for registry objects (the human side of every command; ``--json`` is the
machine side)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.filesize import decimal
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from mlbus.sdk.registry import (
    AuditEntry,
    Endpoint,
    EndpointConfig,
    EndpointVariant,
    ModelGroup,
    ModelSignature,
    ModelVersion,
    TensorSpec,
)

_STATUS_STYLES = {
    "APPROVED": "green",
    "PENDING_MANUAL_APPROVAL": "yellow",
    "REJECTED": "red",
    "ACTIVE": "green",
    "DEGRADED": "red",
    "DELETED": "dim",
}


def when(value: datetime | None) -> str:
    """``2025-06-01 12:34:56Z`` (UTC), or ``-``."""
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


def status(value: str) -> Text:
    """A status name, coloured."""
    return Text(value, style=_STATUS_STYLES.get(value, ""))


def pairs(values: Mapping[str, Any]) -> str:
    """``a=1, b=2`` (sorted), or ``-``."""
    if not values:
        return "-"
    return ", ".join(f"{k}={_number(v)}" for k, v in sorted(values.items()))


def _number(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def short_sha(sha: str) -> str:
    """First 12 hex digits of a SHA-256."""
    return sha[:12] if sha else "-"


def tensor(spec: TensorSpec) -> str:
    """``x FP32 [-1, 4]``."""
    dims = ", ".join(str(d) for d in spec.shape)
    return f"{spec.name} {spec.datatype} [{dims}]"


def signature_line(signature: ModelSignature | None) -> str:
    """``x FP32 [-1, 4] → y FP32 [-1, 1] (opset 17)``."""
    if signature is None:
        return "-"
    ins = ", ".join(tensor(t) for t in signature.inputs) or "-"
    outs = ", ".join(tensor(t) for t in signature.outputs) or "-"
    opset = f" (opset {signature.opset})" if signature.opset else ""
    return f"{ins} → {outs}{opset}"


def _fields(title: str, rows: Iterable[tuple[str, RenderableType | str]]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, escape(value) if isinstance(value, str) else value)
    return table


# --- model groups and versions -----------------------------------------------------------


def groups_table(groups: Iterable[ModelGroup]) -> Table:
    """One row per model group."""
    table = Table(title="model groups", title_justify="left")
    for column in ("name", "latest", "description", "tags", "updated"):
        table.add_column(column, overflow="fold")
    for g in groups:
        table.add_row(
            escape(g.name),
            str(g.latest_version or "-"),
            escape(g.description or "-"),
            escape(pairs(g.tags)),
            when(g.update_time),
        )
    return table


def versions_table(group: str, versions: Iterable[ModelVersion]) -> Table:
    """One row per version, newest first."""
    table = Table(title=f"versions of {group}", title_justify="left")
    for column in ("version", "status", "aliases", "metrics", "sha256", "size", "by", "registered"):
        table.add_column(column, overflow="fold")
    for v in versions:
        artifact = v.artifact
        table.add_row(
            str(v.version),
            status(v.approval_status),
            escape(", ".join(v.aliases) or "-"),
            escape(pairs(v.metrics)),
            short_sha(artifact.sha256 if artifact else ""),
            decimal(artifact.size_bytes) if artifact else "-",
            escape(v.registered_by or "-"),
            when(v.register_time),
        )
    return table


def group_details(group: ModelGroup) -> Table:
    """Every field of a model group."""
    return _fields(
        f"model group {group.name}",
        [
            ("description", group.description or "-"),
            ("tags", pairs(group.tags)),
            ("latest version", str(group.latest_version or "-")),
            ("created by", group.created_by or "-"),
            ("created", when(group.create_time)),
            ("updated", when(group.update_time)),
        ],
    )


def version_details(v: ModelVersion) -> RenderableType:
    """Every field of a model version (empty optional ones left out), with its signature
    as a table."""
    artifact = v.artifact
    lineage = v.lineage
    card = v.model_card
    rows: list[tuple[str, RenderableType | str]] = [("status", status(v.approval_status))]
    if v.status_reason:
        rows.append(("status reason", v.status_reason))
    rows += [
        ("aliases", ", ".join(v.aliases) or "-"),
        ("registered by", v.registered_by or "-"),
        ("registered", when(v.register_time)),
        ("updated", when(v.update_time)),
        ("artifact", artifact.uri if artifact else "-"),
        ("sha256", artifact.sha256 if artifact else "-"),
        ("size", decimal(artifact.size_bytes) if artifact else "-"),
        ("metrics", pairs(v.metrics)),
    ]
    optional: list[tuple[str, str]] = [
        ("description", v.description),
        ("hyperparameters", pairs(v.hyperparameters) if v.hyperparameters else ""),
        ("tags", pairs(v.tags) if v.tags else ""),
        ("training job", lineage.training_job_id),
        ("dataset", lineage.dataset_uri),
        ("dataset sha256", lineage.dataset_sha256),
        ("code version", lineage.code_version),
        ("parent version", str(lineage.parent_version or "")),
        ("intended use", card.intended_use),
        ("limitations", card.limitations),
        ("evaluation", card.evaluation),
        ("owner", card.owner),
        ("baseline", v.baseline.uri if v.baseline else ""),
    ]
    rows += [(key, value) for key, value in optional if value]
    parts: list[RenderableType] = [_fields(f"{v.model_group} version {v.version}", rows)]
    if v.signature is not None:
        sig = Table(title=f"signature (opset {v.signature.opset})", title_justify="left")
        for column in ("", "name", "datatype", "shape"):
            sig.add_column(column)
        for kind, specs in (("input", v.signature.inputs), ("output", v.signature.outputs)):
            for spec in specs:
                sig.add_row(kind, escape(spec.name), spec.datatype, str(list(spec.shape)))
        parts.append(sig)
    return Group(*parts)


def audit_table(entries: Iterable[AuditEntry]) -> Table:
    """One row per audit entry, oldest first."""
    table = Table(title="audit log", title_justify="left")
    for column in ("id", "time", "actor", "entity", "action", "reason"):
        table.add_column(column, overflow="fold")
    for e in entries:
        table.add_row(
            str(e.id),
            when(e.time),
            escape(e.actor or "-"),
            escape(f"{e.entity_type} {e.entity_id}"),
            escape(e.action),
            escape(e.reason or "-"),
        )
    return table


# --- endpoints ---------------------------------------------------------------------------


def _variant_row(v: EndpointVariant, weight: str) -> list[str]:
    batching = "-"
    if v.batching is not None and v.batching.max_batch_size > 1:
        batching = f"≤{v.batching.max_batch_size} / {v.batching.max_queue_delay_micros} µs"
    return [
        escape(v.name),
        escape(f"{v.model_group}/{v.model_version}"),
        weight,
        str(v.instance_count),
        v.mode.lower(),
        str(v.max_concurrency or "default"),
        batching,
        _scale_to_zero(v),
    ]


def _scale_to_zero(v: EndpointVariant) -> str:
    if v.scale_to_zero_after_seconds > 0:
        return f"{v.scale_to_zero_after_seconds}s"
    # A serverless variant always scales to zero; 0 leaves the idle time to the router.
    return "default" if v.mode == "SERVERLESS" else "off"


def variants_table(config: EndpointConfig) -> Table:
    """Variants of one configuration with their traffic share; the shadow last."""
    table = Table(title=f"revision {config.revision}", title_justify="left")
    for column in (
        "variant",
        "model",
        "weight (share)",
        "instances",
        "mode",
        "concurrency",
        "batching",
        "scale to zero",
    ):
        table.add_column(column, overflow="fold")
    total = sum(v.weight for v in config.variants)
    for v in config.variants:
        share = f"{100 * v.weight / total:.0f}%" if total > 0 else "-"
        table.add_row(*_variant_row(v, f"{_number(v.weight)} ({share})"))
    if config.shadow is not None:
        row = _variant_row(config.shadow.variant, f"shadow, {config.shadow.sampling_percent:g}%")
        table.add_row(*row, style="dim")
    return table


def endpoint_details(endpoint: Endpoint, history: Iterable[EndpointConfig] = ()) -> RenderableType:
    """An endpoint: status, configuration in force and (optionally) its history."""
    config = endpoint.current_config
    rows: list[tuple[str, RenderableType | str]] = [
        ("status", status(endpoint.status)),
    ]
    if endpoint.status_reason:
        rows.append(("status reason", endpoint.status_reason))
    if config is not None:
        capture = config.data_capture.sampling_percent if config.data_capture else 0.0
        rows += [
            ("revision", str(config.revision)),
            ("description", config.description or "-"),
            ("data capture", f"{capture:g}%" if capture else "off"),
            ("changed by", config.created_by or "-"),
            ("changed", when(config.create_time)),
        ]
    rows.append(("created", when(endpoint.create_time)))
    parts: list[RenderableType] = [_fields(f"endpoint {endpoint.name}", rows)]
    if config is not None:
        parts.append(variants_table(config))
    configs = list(history)
    if configs:
        parts.append(history_table(endpoint.name, configs))
    return Group(*parts)


def endpoints_table(endpoints: Iterable[Endpoint]) -> Table:
    """One row per endpoint."""
    table = Table(title="endpoints", title_justify="left")
    for column in ("name", "status", "revision", "variants", "updated"):
        table.add_column(column, overflow="fold")
    for e in endpoints:
        config = e.current_config
        variants = (
            ", ".join(f"{v.name}={v.model_group}/{v.model_version}" for v in config.variants)
            if config
            else "-"
        )
        table.add_row(
            escape(e.name),
            status(e.status),
            str(e.revision or "-"),
            escape(variants),
            when(e.update_time),
        )
    return table


def history_table(name: str, configs: Iterable[EndpointConfig]) -> Table:
    """One row per configuration revision, newest first."""
    table = Table(title=f"history of {name}", title_justify="left")
    for column in ("revision", "variants", "shadow", "capture", "by", "time", "note"):
        table.add_column(column, overflow="fold")
    for c in configs:
        variants = ", ".join(
            f"{v.name}={v.model_group}/{v.model_version}×{_number(v.weight)}" for v in c.variants
        )
        shadow = (
            f"{c.shadow.variant.model_group}/{c.shadow.variant.model_version} "
            f"{c.shadow.sampling_percent:g}%"
            if c.shadow
            else "-"
        )
        capture = f"{c.data_capture.sampling_percent:g}%" if c.data_capture else "-"
        note = f"rollback to {c.rolled_back_from}" if c.rolled_back_from else (c.description or "")
        table.add_row(
            str(c.revision),
            escape(variants),
            escape(shadow),
            capture,
            escape(c.created_by or "-"),
            when(c.create_time),
            escape(note or "-"),
        )
    return table
