"""``mlbus deployments``: what a router's deployment controller runs — endpoints, their
revisions and status, every worker, and scale-to-zero state."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from mlbus.sdk.cli._common import RegistryCommand, console, echo_json, router_option


def list_deployments(router: str, endpoint: str = "", timeout: float = 10.0) -> list[Any]:
    """The router's ``ListDeployments`` answer (``mlbus.router.v1.Deployment`` messages)."""
    import grpc

    from mlbus.router.v1 import router_pb2 as rpb
    from mlbus.router.v1 import router_pb2_grpc as rpb_grpc
    from mlbus.sdk.errors import from_rpc_error

    with grpc.insecure_channel(router) as channel:
        stub = rpb_grpc.RouterServiceStub(channel)
        try:
            reply = stub.ListDeployments(
                rpb.ListDeploymentsRequest(endpoint=endpoint), timeout=timeout
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, target=router, service="router", timeout=timeout) from None
    return list(reply.deployments)


@click.command("deployments", cls=RegistryCommand)
@click.argument("endpoint", required=False, default="")
@router_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def deployments(endpoint: str, router: str, as_json: bool) -> None:
    """What the router runs: each endpoint's revision and status, workers, scaling."""
    from google.protobuf import json_format

    found = list_deployments(router, endpoint)
    if as_json:
        echo_json(
            [json_format.MessageToDict(d, always_print_fields_with_no_presence=True) for d in found]
        )
        return
    if not found:
        console.print("no endpoints deployed on this router")
        return
    for d in found:
        revision = f"revision {d.applied_revision}"
        if d.desired_revision != d.applied_revision:
            revision += f" (revision {d.desired_revision} asked for)"
        console.print(f"[bold]{d.endpoint}[/bold]  {d.status}  {revision}")
        if d.error:
            console.print(f"  [red]{d.error}[/red]")
        table = Table(show_edge=False)
        for column in ("worker", "variant", "version", "state", "address", "pid", "in flight"):
            table.add_column(column)
        table.add_column("restarts", justify="right")
        for w in d.workers:
            variant = f"{w.variant} (shadow)" if w.shadow else w.variant
            table.add_row(
                w.id,
                variant,
                f"{w.model_group}/{w.model_version}",
                w.state + (f": {w.error}" if w.error else ""),
                w.address,
                str(w.pid or "-"),
                str(w.outstanding),
                str(w.restarts),
            )
        if d.workers:
            console.print(table)
        for s in d.scaling:
            state = "scaled to zero" if s.scaled_to_zero else f"{s.instances} up"
            if s.scaling_up:
                state += ", starting"
            console.print(
                f"  {s.variant}: scales to zero after {s.scale_to_zero_after_seconds:g}s idle; "
                f"{state}; {s.scale_ups} up / {s.scale_downs} down since start"
            )
        if d.queue_depth >= 0:
            console.print(f"  queued records: {d.queue_depth}")
