"""``mlbus broker`` / ``up`` / ``status`` / ``down``: the local stack on the embedded defaults."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import click
from rich.console import Console
from rich.table import Table

from mlbus.core.settings import DEFAULT_HOME
from mlbus.sdk.local.broker import BrokerError, start_broker
from mlbus.sdk.local.stack import (
    SERVICES,
    LocalStack,
    StackError,
    StackState,
    describe,
    health_status,
    stop_stack,
    tail,
)

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

home_option = click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    default=lambda: os.environ.get("MLBUS_HOME", str(DEFAULT_HOME)),
    show_default="$MLBUS_HOME or ~/.mlbus",
    help="Directory for the stack's state, logs and data.",
)


class _Stop(Exception):
    """Raised in the main thread by SIGTERM so `up` unwinds like on Ctrl-C."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop()


@click.command()
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Loopback address to listen on."
)
@click.option("--port", default=29092, show_default=True, type=int, help="Kafka port.")
def broker(host: str, port: int) -> None:
    """Run the embedded Kafka-compatible broker in the foreground (Ctrl-C stops it)."""
    try:
        process = start_broker(host, port)
    except BrokerError as exc:
        raise click.ClickException(str(exc)) from exc
    console.print(
        f"broker ready at [bold]{process.bootstrap_servers}[/] (pid {process.pid}); "
        "memory only: stopping it deletes every topic. Ctrl-C to stop."
    )
    signal.signal(signal.SIGTERM, _raise_stop)
    try:
        process.process.wait()
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        process.stop()
    if process.process.returncode not in (0, -signal.SIGTERM):
        raise click.ClickException(f"broker exited with code {process.process.returncode}")


def _print_table(state: StackState) -> None:
    table = Table(title=f"mlbus stack ({state.home})", title_justify="left")
    for column in ("service", "pid", "grpc", "metrics", "status", "log"):
        table.add_column(column, overflow="fold")
    for row in describe(state):
        style = {"SERVING": "green", "RUNNING": "green", "DEAD": "red"}.get(row["status"], "yellow")
        table.add_row(
            *[row[k] for k in ("service", "pid", "grpc", "metrics")],
            f"[{style}]{row['status']}[/]",
            row["log"],
        )
    console.print(table)


@click.command()
@home_option
@click.option("--broker-port", default=29092, show_default=True, type=int, help="Kafka port.")
@click.option(
    "--free-ports",
    is_flag=True,
    help="Let the OS pick every port (for tests, or when the default ports are taken).",
)
@click.option(
    "-d",
    "--detach",
    is_flag=True,
    help="Return once everything is SERVING; stop later with `mlbus down`.",
)
@click.option(
    "--timeout",
    default=90.0,
    show_default=True,
    type=float,
    help="Seconds to wait for every service to report SERVING.",
)
def up(home: Path, broker_port: int, free_ports: bool, detach: bool, timeout: float) -> None:
    """Start the broker and all seven services locally; Ctrl-C stops everything."""
    stack = LocalStack(
        home,
        broker_port=broker_port,
        free_ports=free_ports,
        ready_timeout=timeout,
        echo=console.print,
    )
    signal.signal(signal.SIGTERM, _raise_stop)
    try:
        with console.status(f"starting the broker and {len(SERVICES)} services ..."):
            state = stack.start()
    except (KeyboardInterrupt, _Stop):
        stack.stop()
        raise SystemExit(130) from None
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc
    _print_table(state)
    if free_ports:
        # The SDK and CLI default to the fixed ports; say how to reach these ones.
        ports = {info.name: info.grpc_port for info in state.services}
        exports = [
            f"{env}=127.0.0.1:{ports[name]}"
            for env, name in (
                ("MLBUS_REGISTRY", "registry"),
                ("MLBUS_ROUTER", "router"),
                ("MLBUS_TRAINER", "trainer"),
            )
            if ports.get(name)
        ]
        if exports:
            console.print("other commands reach this stack with:", highlight=False)
            console.print(f"  export {' '.join(exports)}", highlight=False, soft_wrap=True)
    if detach:
        state.supervisor_pid = None
        state.save()
        console.print("running in the background; `mlbus status` shows it, `mlbus down` stops it")
        return
    console.print(f"Kafka at [bold]{state.bootstrap_servers}[/]; Ctrl-C stops everything")
    stop = threading.Event()
    try:
        while not stop.wait(0.5):
            for info, code in stack.check():
                err_console.print(
                    f"[red]{info.name} (pid {info.pid}) died with exit code {code}"
                    f"[/]; last lines of {info.log}:\n{tail(info.log)}"
                )
    except (KeyboardInterrupt, _Stop):
        pass
    with console.status("stopping ..."):
        stack.stop()
    console.print("stopped")


@click.command()
@home_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status(home: Path, as_json: bool) -> None:
    """Show the local stack's processes, ports and health."""
    state = StackState.load(home.resolve())
    if state is None:
        if as_json:
            click.echo(json.dumps({"running": False, "services": []}))
            return
        console.print(f"no stack is running from {home} (start one with `mlbus up`)")
        sys.exit(3)
    if as_json:
        click.echo(json.dumps({"running": True, "services": list(describe(state))}, indent=2))
        return
    _print_table(state)


@click.command()
@home_option
@click.option(
    "--grace",
    default=15.0,
    show_default=True,
    type=float,
    help="Seconds each service gets to finish in-flight work before it is killed.",
)
def down(home: Path, grace: float) -> None:
    """Stop the local stack started by `mlbus up` (from any shell)."""
    stopped = stop_stack(home.resolve(), grace)
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@click.command()
@click.argument("target")
@click.option("--service", default="", help="Health of one gRPC service instead of the server.")
@click.option("--timeout", default=2.0, show_default=True, type=float)
def health(target: str, service: str, timeout: float) -> None:
    """Exit 0 when the gRPC server at TARGET (host:port) reports SERVING (container health checks)."""
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise click.BadParameter(f"expected host:port, got {target!r}", param_hint="TARGET")
    result = health_status(int(port), host=host, timeout=timeout, service=service)
    click.echo(result)
    if result != "SERVING":
        sys.exit(1)
