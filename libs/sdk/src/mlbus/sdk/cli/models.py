"""``mlbus models``: model groups, versions, approval, aliases, downloads and the audit log."""

from __future__ import annotations

from collections import deque
from pathlib import Path

import click
from rich.filesize import decimal
from rich.markup import escape

from mlbus.sdk.cli import _render as render
from mlbus.sdk.cli._common import (
    Options,
    RegistryGroup,
    console,
    echo_json,
    key_floats,
    key_values,
    registry_options,
    transfer_progress,
)
from mlbus.sdk.registry import Lineage, ModelCard

_VERSION = click.IntRange(min=1)
_STATUSES = click.Choice(["pending", "approved", "rejected"], case_sensitive=False)

_limit_option = click.option(
    "--limit", type=click.IntRange(min=1), default=None, help="Show at most this many."
)
_page_size_option = click.option(
    "--page-size",
    type=click.IntRange(min=0),
    default=0,
    help="Items per request (0 = the registry's default); every page is fetched.",
)


def _selector(version: int | None, alias: str | None) -> None:
    if version is not None and alias is not None:
        raise click.UsageError("give VERSION or --alias, not both")
    if version is None and alias is None:
        raise click.UsageError("give VERSION or --alias")


@click.group(cls=RegistryGroup)
def models() -> None:
    """Model groups and versions: register, approve, alias, download, audit."""


@models.command("create-group")
@click.argument("name")
@click.option("--description", default="", help="What the models of this group do.")
@click.option(
    "--tag", "tags", multiple=True, callback=key_values, metavar="KEY=VALUE", help="Repeatable."
)
@registry_options
def create_group(opts: Options, name: str, description: str, tags: dict[str, str]) -> None:
    """Create the model group NAME (lower-case letters, digits and '-')."""
    with opts.client() as client:
        group = client.create_group(name, description=description, tags=tags)
    if opts.as_json:
        echo_json(group)
    else:
        console.print(f"created model group [bold]{escape(group.name)}[/]")


@models.command()
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--group", "-g", required=True, help="Model group to add the version to.")
@click.option(
    "--artifact-uri",
    default="",
    help="Register an artifact already in the object store instead of FILE.",
)
@click.option(
    "--metric",
    "metrics",
    multiple=True,
    callback=key_floats,
    metavar="NAME=NUMBER",
    help="Evaluation metric, e.g. auc=0.91. Repeatable.",
)
@click.option(
    "--param",
    "params",
    multiple=True,
    callback=key_values,
    metavar="NAME=VALUE",
    help="Hyperparameter, e.g. max_depth=6. Repeatable.",
)
@click.option(
    "--tag", "tags", multiple=True, callback=key_values, metavar="KEY=VALUE", help="Repeatable."
)
@click.option("--description", default="")
@click.option("--create-group", is_flag=True, help="Create the group if it does not exist.")
@click.option("--training-job", default="", help="Lineage: id of the training job.")
@click.option("--dataset-uri", default="", help="Lineage: URI of the training dataset.")
@click.option("--dataset-sha256", default="", help="Lineage: SHA-256 of the dataset.")
@click.option("--code-version", default="", help="Lineage: git commit of the training code.")
@click.option(
    "--parent-version",
    type=click.IntRange(min=0),
    default=0,
    help="Lineage: version of this group the model was derived from.",
)
@click.option("--card-intended-use", default="", help="Model card: intended use.")
@click.option("--card-limitations", default="", help="Model card: known limitations.")
@click.option("--card-evaluation", default="", help="Model card: evaluation summary.")
@click.option("--card-owner", default="", help="Model card: responsible team or person.")
@click.option(
    "--request-id",
    default="",
    help="Idempotency key: retrying with the same key returns the first result.",
)
@registry_options
def register(
    opts: Options,
    file: Path | None,
    group: str,
    artifact_uri: str,
    metrics: dict[str, float],
    params: dict[str, str],
    tags: dict[str, str],
    description: str,
    create_group: bool,
    training_job: str,
    dataset_uri: str,
    dataset_sha256: str,
    code_version: str,
    parent_version: int,
    card_intended_use: str,
    card_limitations: str,
    card_evaluation: str,
    card_owner: str,
    request_id: str,
) -> None:
    """Register FILE (an ONNX model) as a new version of --group.

    The file is streamed in chunks with its SHA-256 sent ahead, so the registry verifies
    it end to end. The version starts PENDING_MANUAL_APPROVAL.
    """
    if (file is None) == (not artifact_uri):
        raise click.UsageError("give FILE or --artifact-uri (one of them)")
    lineage = Lineage(
        training_job_id=training_job,
        dataset_uri=dataset_uri,
        dataset_sha256=dataset_sha256,
        code_version=code_version,
        parent_version=parent_version,
    )
    card = ModelCard(
        intended_use=card_intended_use,
        limitations=card_limitations,
        evaluation=card_evaluation,
        owner=card_owner,
    )
    with (
        opts.client() as client,
        transfer_progress(f"uploading {file.name if file else ''}", not opts.as_json) as progress,
    ):
        version = client.register(
            file,
            group=group,
            artifact_uri=artifact_uri,
            metrics=metrics,
            hyperparameters=params,
            tags=tags,
            description=description,
            create_group=create_group,
            lineage=lineage if lineage != Lineage() else None,
            model_card=card if card != ModelCard() else None,
            request_id=request_id,
            progress=progress,
        )
    if opts.as_json:
        echo_json(version)
        return
    artifact = version.artifact
    size = decimal(artifact.size_bytes) if artifact else "?"
    console.print(
        f"registered [bold]{escape(version.model_group)}[/] version [bold]{version.version}[/] "
        f"({render.status(version.approval_status).markup}), {size}, "
        f"sha256 {render.short_sha(artifact.sha256 if artifact else '')}"
    )
    console.print(f"signature: {escape(render.signature_line(version.signature))}")
    console.print(
        f"approve with: mlbus models approve {escape(version.model_group)} {version.version}",
        style="dim",
    )


@models.command("list")
@click.argument("group", required=False)
@click.option("--prefix", default="", help="Groups: only names starting with this.")
@click.option(
    "--tag",
    "tags",
    multiple=True,
    callback=key_values,
    metavar="KEY=VALUE",
    help="Groups: only those with this tag. Repeatable.",
)
@click.option("--status", type=_STATUSES, default=None, help="Versions: only in this status.")
@_limit_option
@_page_size_option
@registry_options
def list_(
    opts: Options,
    group: str | None,
    prefix: str,
    tags: dict[str, str],
    status: str | None,
    limit: int | None,
    page_size: int,
) -> None:
    """List model groups, or the versions of GROUP (newest first)."""
    with opts.client() as client:
        if group is None:
            if status is not None:
                raise click.UsageError("--status filters versions: give a GROUP")
            groups = list(
                client.list_groups(prefix=prefix, tags=tags, page_size=page_size, limit=limit)
            )
            if opts.as_json:
                echo_json(groups)
            else:
                console.print(render.groups_table(groups))
            return
        if prefix or tags:
            raise click.UsageError("--prefix and --tag filter groups: leave out GROUP")
        versions = list(
            client.list_versions(group, status=status, page_size=page_size, limit=limit)
        )
    if opts.as_json:
        echo_json(versions)
    else:
        console.print(render.versions_table(group, versions))


@models.command()
@click.argument("group")
@click.argument("version", required=False, type=_VERSION)
@click.option("--alias", default=None, help="The version this alias points at.")
@registry_options
def describe(opts: Options, group: str, version: int | None, alias: str | None) -> None:
    """Show GROUP, or one of its versions (by VERSION or --alias)."""
    with opts.client() as client:
        if version is None and alias is None:
            model_group = client.get_group(group)
            if opts.as_json:
                echo_json(model_group)
                return
            recent = list(client.list_versions(group, limit=10))
            console.print(render.group_details(model_group))
            if recent:
                console.print(render.versions_table(group, recent))
            return
        _selector(version, alias)
        model_version = client.get_version(group, version, alias=alias)
    if opts.as_json:
        echo_json(model_version)
    else:
        console.print(render.version_details(model_version))


@models.command()
@click.argument("group")
@click.argument("version", type=_VERSION)
@click.option("--reason", default="", help="Why (kept in the audit log).")
@registry_options
def approve(opts: Options, group: str, version: int, reason: str) -> None:
    """Approve VERSION of GROUP so endpoints may serve it."""
    with opts.client() as client:
        result = client.approve(group, version, reason=reason)
    if opts.as_json:
        echo_json(result)
    else:
        console.print(
            f"{escape(group)} version {version}: {render.status(result.approval_status).markup}"
            f" by {escape(opts.actor)}"
        )


@models.command()
@click.argument("group")
@click.argument("version", type=_VERSION)
@click.option("--reason", required=True, help="Why it is rejected (required).")
@click.option(
    "--force",
    is_flag=True,
    help="Reject even when live endpoints serve it; they become DEGRADED.",
)
@registry_options
def reject(opts: Options, group: str, version: int, reason: str, force: bool) -> None:
    """Reject VERSION of GROUP (also withdraws an approval)."""
    if not reason.strip():
        raise click.BadParameter("must not be empty", param_hint="--reason")
    with opts.client() as client:
        result = client.reject(group, version, reason=reason, force=force)
    if opts.as_json:
        echo_json(result)
        return
    console.print(
        f"{escape(group)} version {version}: "
        f"{render.status(result.model_version.approval_status).markup}"
    )
    if result.degraded_endpoints:
        console.print(
            f"[red]endpoints now DEGRADED:[/] {escape(', '.join(result.degraded_endpoints))}"
        )


@models.command()
@click.argument("group")
@click.argument("alias")
@click.argument("version", required=False, type=_VERSION)
@click.option("--delete", is_flag=True, help="Remove ALIAS instead of moving it.")
@click.option("--reason", default="", help="Why (kept in the audit log).")
@registry_options
def alias(
    opts: Options, group: str, alias: str, version: int | None, delete: bool, reason: str
) -> None:
    """Point ALIAS (e.g. production) of GROUP at VERSION, or --delete it."""
    if delete == (version is not None):
        raise click.UsageError("give VERSION, or --delete without a VERSION")
    with opts.client() as client:
        if version is None:
            client.delete_alias(group, alias, reason=reason)
            if opts.as_json:
                echo_json({"model_group": group, "alias": alias, "deleted": True})
            else:
                console.print(f"deleted alias [bold]{escape(group)}@{escape(alias)}[/]")
            return
        result = client.set_alias(group, alias, version, reason=reason)
    if opts.as_json:
        echo_json(result)
        return
    before = f" (was {result.previous_version})" if result.previous_version else " (new)"
    console.print(f"[bold]{escape(group)}@{escape(alias)}[/] → version {version}{before}")


@models.command()
@click.argument("group")
@click.argument("version", required=False, type=_VERSION)
@click.option("--alias", default=None, help="Download the version this alias points at.")
@click.option(
    "-o",
    "--output",
    # A string, not a Path: a trailing "/" (a directory still to create) must survive.
    type=click.Path(),
    default=".",
    show_default=True,
    help="File to write, or a directory (existing, or ending in /) for <group>-v<version>.onnx.",
)
@registry_options
def download(
    opts: Options, group: str, version: int | None, alias: str | None, output: str
) -> None:
    """Download a version's ONNX artifact, verifying its SHA-256 (nothing is written when
    the check fails)."""
    _selector(version, alias)
    what = f"{group}/{version}" if version is not None else f"{group}@{alias}"
    with (
        opts.client() as client,
        transfer_progress(f"downloading {what}", not opts.as_json) as progress,
    ):
        result = client.download(group, version, alias=alias, dest=output, progress=progress)
    if opts.as_json:
        echo_json(result)
    else:
        console.print(
            f"downloaded {escape(what)} to [bold]{escape(str(result.path))}[/] "
            f"({decimal(result.artifact.size_bytes)}, sha256 {result.artifact.sha256} verified)"
        )


@models.command()
@click.option(
    "--entity-type",
    type=click.Choice(["model_group", "model_version", "alias", "endpoint"]),
    default=None,
    help="Only entries about this kind of entity.",
)
@click.option("--prefix", default="", help='Only entity ids starting with this, e.g. "churn/".')
@_limit_option
@click.option(
    "--tail", type=click.IntRange(min=1), default=None, help="Show only the last N entries."
)
@_page_size_option
@registry_options
def audit(
    opts: Options,
    entity_type: str | None,
    prefix: str,
    limit: int | None,
    tail: int | None,
    page_size: int,
) -> None:
    """Show the append-only audit log, oldest first."""
    if limit is not None and tail is not None:
        raise click.UsageError("give --limit or --tail, not both")
    with opts.client() as client:
        found = client.audit(
            entity_type=entity_type or "", prefix=prefix, page_size=page_size, limit=limit
        )
        # The log is served oldest first: the last N means reading it all.
        entries = list(deque(found, maxlen=tail)) if tail is not None else list(found)
    if opts.as_json:
        echo_json(entries)
    else:
        console.print(render.audit_table(entries))
