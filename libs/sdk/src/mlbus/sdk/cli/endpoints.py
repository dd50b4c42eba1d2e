"""``mlbus endpoints``: endpoint configurations (variants, shadow, data capture), their
history and rollback."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from mlbus.sdk.cli import _render as render
from mlbus.sdk.cli._common import (
    Options,
    RegistryGroup,
    console,
    echo_json,
    registry_options,
    spec_string,
)
from mlbus.sdk.registry import (
    DataCaptureConfig,
    EndpointSpec,
    EndpointVariant,
    ShadowVariant,
    SpecError,
    load_spec,
)
from mlbus.sdk.registry.specs import shadow_from_mapping, variant_from_mapping

_VARIANT_HELP = (
    "A production variant: name=...,group=...,version=...[,weight=1][,instances=1]"
    "[,mode=realtime|serverless][,max-concurrency=N][,max-batch-size=N]"
    "[,max-queue-delay-us=N][,scale-to-zero=SECONDS]. Repeatable."
)
_SHADOW_HELP = (
    "A shadow variant getting a mirrored sample: the --variant keys plus sampling=PERCENT."
)


def parse_variants(texts: Sequence[str]) -> tuple[EndpointVariant, ...]:
    """``--variant`` values → variants; click.BadParameter naming the bad one."""
    variants = []
    for index, text in enumerate(texts, start=1):
        fields = spec_string(text, "--variant")
        try:
            variant, _ = variant_from_mapping(fields, what=f"variant {index}")
        except SpecError as exc:
            raise click.BadParameter(str(exc), param_hint="--variant") from None
        variants.append(variant)
    names = [v.name for v in variants]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise click.BadParameter(
            f"variant names must be unique; repeated: {', '.join(repeated)}",
            param_hint="--variant",
        )
    return tuple(variants)


def parse_shadow(text: str) -> ShadowVariant:
    """The ``--shadow`` value → a shadow variant; click.BadParameter when malformed."""
    try:
        return shadow_from_mapping(spec_string(text, "--shadow"), what="shadow")
    except SpecError as exc:
        raise click.BadParameter(str(exc), param_hint="--shadow") from None


def build_spec(
    *,
    base: EndpointSpec | None,
    variants: Sequence[str],
    file: Path | None,
    shadow: str | None,
    no_shadow: bool,
    capture_percent: float | None,
    description: str | None,
) -> EndpointSpec:
    """The spec a create/update writes: ``--file``, or ``base`` (the current configuration,
    for updates) with the given options replacing its parts."""
    if file is not None:
        if (
            variants
            or shadow
            or no_shadow
            or capture_percent is not None
            or description is not None
        ):
            raise click.UsageError(
                "--file holds the whole configuration: do not combine it with "
                "--variant/--shadow/--no-shadow/--capture-percent/--description"
            )
        return load_spec(file)
    if shadow is not None and no_shadow:
        raise click.UsageError("give --shadow or --no-shadow, not both")
    if base is None and not variants:
        raise click.UsageError("give at least one --variant, or --file")
    new_variants = parse_variants(variants) if variants else base.variants if base else ()
    new_shadow = (
        parse_shadow(shadow) if shadow else None if no_shadow or base is None else base.shadow
    )
    if new_shadow is not None and new_shadow.variant.name in {v.name for v in new_variants}:
        raise click.BadParameter(
            f"the shadow's name {new_shadow.variant.name!r} is also a production variant's",
            param_hint="--shadow",
        )
    capture = base.data_capture if base is not None else None
    if capture_percent is not None:
        capture = DataCaptureConfig(sampling_percent=capture_percent) if capture_percent else None
    return EndpointSpec(
        variants=new_variants,
        shadow=new_shadow,
        data_capture=capture,
        description=description if description is not None else base.description if base else "",
    )


def _config_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        (
            click.option(
                "--variant", "variants", multiple=True, metavar="SPEC", help=_VARIANT_HELP
            ),
            click.option(
                "--file",
                "-f",
                type=click.Path(exists=True, dir_okay=False, path_type=Path),
                default=None,
                help="The whole configuration as YAML or JSON (see the SDK README).",
            ),
            click.option("--shadow", default=None, metavar="SPEC", help=_SHADOW_HELP),
            click.option(
                "--capture-percent",
                type=click.FloatRange(0, 100),
                default=None,
                help="Share of requests captured for monitoring (0 = off).",
            ),
            click.option("--description", default=None),
        )
    ):
        command = option(command)
    return command


@click.group(cls=RegistryGroup)
def endpoints() -> None:
    """Endpoint configurations: create, update, describe, history, rollback."""


@endpoints.command()
@click.argument("name")
@_config_options
@registry_options
def create(
    opts: Options,
    name: str,
    variants: tuple[str, ...],
    file: Path | None,
    shadow: str | None,
    capture_percent: float | None,
    description: str | None,
) -> None:
    """Create endpoint NAME serving approved model versions.

    \b
    mlbus endpoints create churn --variant name=blue,group=churn,version=3
    mlbus endpoints create churn -f churn-endpoint.yaml
    """
    spec = build_spec(
        base=None,
        variants=variants,
        file=file,
        shadow=shadow,
        no_shadow=False,
        capture_percent=capture_percent,
        description=description,
    )
    with opts.client() as client:
        endpoint = client.create_endpoint(name, spec)
    if opts.as_json:
        echo_json(endpoint)
    else:
        console.print(render.endpoint_details(endpoint))


@endpoints.command()
@click.argument("name")
@_config_options
@click.option("--no-shadow", is_flag=True, help="Remove the shadow variant.")
@click.option(
    "--expected-revision",
    type=click.IntRange(min=1),
    default=None,
    help="Fail unless this is the current revision (default: the revision read first).",
)
@registry_options
def update(
    opts: Options,
    name: str,
    variants: tuple[str, ...],
    file: Path | None,
    shadow: str | None,
    capture_percent: float | None,
    description: str | None,
    no_shadow: bool,
    expected_revision: int | None,
) -> None:
    """Change endpoint NAME's configuration (a new revision).

    Options given replace those parts of the current configuration (--variant replaces all
    production variants); --file replaces everything. The update fails if someone else
    changed the endpoint since it was read.
    """
    if (
        file is None
        and not variants
        and shadow is None
        and not no_shadow
        and capture_percent is None
        and description is None
    ):
        # A revision identical to the current one would still be a new revision, deployed.
        raise click.UsageError(
            "nothing to change: give --variant, --shadow, --no-shadow, --capture-percent, "
            "--description or --file"
        )
    with opts.client() as client:
        base: EndpointSpec | None = None
        if file is None:
            current = client.get_endpoint(name)
            if current.current_config is not None:
                base = current.current_config.spec()
            if expected_revision is None:
                expected_revision = current.revision
        spec = build_spec(
            base=base,
            variants=variants,
            file=file,
            shadow=shadow,
            no_shadow=no_shadow,
            capture_percent=capture_percent,
            description=description,
        )
        endpoint = client.update_endpoint(name, spec, expected_revision=expected_revision or 0)
    if opts.as_json:
        echo_json(endpoint)
    else:
        console.print(render.endpoint_details(endpoint))


@endpoints.command()
@click.argument("name")
@click.option(
    "--history",
    "history_limit",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="How many past revisions to show.",
)
@registry_options
def describe(opts: Options, name: str, history_limit: int) -> None:
    """Show endpoint NAME: status, configuration in force and recent history."""
    with opts.client() as client:
        endpoint = client.get_endpoint(name)
        history = list(client.endpoint_history(name, limit=history_limit)) if history_limit else []
    if opts.as_json:
        echo_json({"endpoint": endpoint, "history": history})
    else:
        console.print(render.endpoint_details(endpoint, history))


@endpoints.command("list")
@click.option("--all", "include_deleted", is_flag=True, help="Include deleted endpoints.")
@registry_options
def list_(opts: Options, include_deleted: bool) -> None:
    """List endpoints."""
    with opts.client() as client:
        found = list(client.list_endpoints(include_deleted=include_deleted))
    if opts.as_json:
        echo_json(found)
    else:
        console.print(render.endpoints_table(found))


@endpoints.command()
@click.argument("name")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Show at most N revisions.")
@registry_options
def history(opts: Options, name: str, limit: int | None) -> None:
    """Show every configuration revision of endpoint NAME, newest first."""
    with opts.client() as client:
        configs = list(client.endpoint_history(name, limit=limit))
    if opts.as_json:
        echo_json(configs)
    else:
        console.print(render.history_table(name, configs))


@endpoints.command()
@click.argument("name")
@click.argument("revision", type=click.IntRange(min=1))
@click.option("--reason", default="", help="Why (kept in the audit log).")
@registry_options
def rollback(opts: Options, name: str, revision: int, reason: str) -> None:
    """Make REVISION's configuration of endpoint NAME current again (as a new revision)."""
    with opts.client() as client:
        endpoint = client.rollback_endpoint(name, revision, reason=reason)
    if opts.as_json:
        echo_json(endpoint)
    else:
        console.print(
            f"endpoint [bold]{escape(name)}[/]: revision {endpoint.revision} restores "
            f"revision {revision}"
        )
        console.print(render.endpoint_details(endpoint))


@endpoints.command()
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@registry_options
def delete(opts: Options, name: str, yes: bool) -> None:
    """Delete endpoint NAME (its workers are drained; history is kept)."""
    if not yes:
        click.confirm(f"delete endpoint {name!r}?", abort=True, err=True)
    with opts.client() as client:
        client.delete_endpoint(name)
    if opts.as_json:
        echo_json({"endpoint": name, "deleted": True})
    else:
        console.print(f"deleted endpoint [bold]{escape(name)}[/]")
