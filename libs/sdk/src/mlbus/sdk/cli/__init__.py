"""The ``mlbus`` command line."""

from __future__ import annotations

import click

from mlbus.sdk.cli.demo import demo
from mlbus.sdk.cli.deployments import deployments
from mlbus.sdk.cli.endpoints import endpoints
from mlbus.sdk.cli.experiments import experiments
from mlbus.sdk.cli.jobs import jobs
from mlbus.sdk.cli.local import broker, down, health, status, up
from mlbus.sdk.cli.models import models
from mlbus.sdk.cli.predict import async_result, invoke_async, predict
from mlbus.sdk.cli.transform import transform


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mlbus-sdk", prog_name="mlbus")
def cli() -> None:
    """mlbus: deploy, run and govern models on your own machines."""


for command in (
    broker,
    up,
    status,
    down,
    health,
    models,
    endpoints,
    deployments,
    predict,
    invoke_async,
    async_result,
    transform,
    demo,
    jobs,
    experiments,
):
    cli.add_command(command)


def main() -> None:
    """Entry point of the ``mlbus`` script."""
    cli()
