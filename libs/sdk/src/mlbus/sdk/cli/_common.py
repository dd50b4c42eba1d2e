"""What every registry command shares: ``--registry``/``--actor``/``--timeout``/``--json``,
one-line errors with an exit code per error class, option parsers and JSON output."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import click
import grpc
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from mlbus.sdk.defaults import (
    ACTOR_ENV,
    DEFAULT_REGISTRY,
    DEFAULT_ROUTER,
    REGISTRY_ENV,
    ROUTER_ENV,
    default_actor,
)
from mlbus.sdk.errors import MlbusError
from mlbus.sdk.registry import RegistryClient, RegistryModel, SpecError
from mlbus.sdk.registry.specs import parse_key_values

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def router_option(command: Any) -> Any:
    """The ``--router HOST:PORT`` option of every command that talks to the router."""
    return click.option(
        "--router",
        envvar=ROUTER_ENV,
        default=DEFAULT_ROUTER,
        metavar="HOST:PORT",
        show_default=f"${ROUTER_ENV} or {DEFAULT_ROUTER}",
        help="Address of the router.",
    )(command)


#: Exit status per gRPC status; anything else exits 1, click usage errors exit 2.
EXIT_CODES: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 3,
    grpc.StatusCode.OUT_OF_RANGE: 3,
    grpc.StatusCode.NOT_FOUND: 4,
    grpc.StatusCode.ALREADY_EXISTS: 5,
    grpc.StatusCode.FAILED_PRECONDITION: 6,
    grpc.StatusCode.ABORTED: 6,
    grpc.StatusCode.PERMISSION_DENIED: 7,
    grpc.StatusCode.UNAUTHENTICATED: 7,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 8,
    grpc.StatusCode.UNAVAILABLE: 9,
    grpc.StatusCode.DEADLINE_EXCEEDED: 10,
    grpc.StatusCode.DATA_LOSS: 11,
}
#: Exit status of local failures (unreadable file, ...) and unmapped statuses.
EXIT_OTHER = 1


def exit_code(error: MlbusError) -> int:
    """The process exit status for ``error``."""
    return EXIT_CODES.get(error.code, EXIT_OTHER)


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    raise click.exceptions.Exit(code)


class RegistryCommand(click.Command):
    """A command whose expected failures print one ``error: CODE: message`` line on stderr
    and exit with a status per error class, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command, turning expected failures into one line and an exit status."""
        try:
            return super().invoke(ctx)
        except MlbusError as exc:
            _fail(f"{exc.code.name}: {exc.message}", exit_code(exc))
        except SpecError as exc:
            _fail(str(exc), 2)
        except OSError as exc:
            where = f" {exc.filename}" if exc.filename else ""
            _fail(f"{exc.strerror or exc}{':' if where else ''}{where}", EXIT_OTHER)


class RegistryGroup(click.Group):
    """A command group whose commands are :class:`RegistryCommand`."""

    command_class = RegistryCommand


@dataclass(frozen=True)
class Options:
    """The options every registry command takes."""

    registry: str
    actor: str
    timeout: float
    as_json: bool

    def client(self) -> RegistryClient:
        """A client for these options (close it, or use ``with``)."""
        return RegistryClient(self.registry, actor=self.actor, timeout=self.timeout)


def registry_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--registry``, ``--actor``, ``--timeout`` and ``--json``; the command receives
    them as its first argument, an :class:`Options`."""

    @click.option(
        "--registry",
        envvar=REGISTRY_ENV,
        default=DEFAULT_REGISTRY,
        show_default=f"${REGISTRY_ENV} or {DEFAULT_REGISTRY}",
        metavar="HOST:PORT",
        help="Address of the registry.",
    )
    @click.option(
        "--actor",
        envvar=ACTOR_ENV,
        default=None,
        show_default=f"${ACTOR_ENV} or the OS user",
        help="Who acts; recorded in the audit log.",
    )
    @click.option(
        "--timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=30.0,
        show_default=True,
        help="Seconds to wait for each call (uploads and downloads get an hour).",
    )
    @click.option(
        "--json", "as_json", is_flag=True, help="Print JSON (stable keys) instead of tables."
    )
    @functools.wraps(command)
    def wrapper(
        registry: str, actor: str | None, timeout: float, as_json: bool, **kwargs: Any
    ) -> Any:
        host, sep, port = registry.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise click.BadParameter(
                f"expected HOST:PORT, got {registry!r}", param_hint="--registry"
            )
        options = Options(registry, actor or default_actor(), timeout, as_json)
        return command(options, **kwargs)

    return wrapper


# --- option parsing ----------------------------------------------------------------------


def _pairs(
    values: Sequence[str], ctx: click.Context | None, param: click.Parameter | None
) -> Iterator[tuple[str, str]]:
    seen: set[str] = set()
    for item in values:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", ctx=ctx, param=param)
        if key in seen:
            raise click.BadParameter(f"{key!r} given twice", ctx=ctx, param=param)
        seen.add(key)
        yield key, value


def key_values(
    ctx: click.Context | None, param: click.Parameter | None, values: Sequence[str]
) -> dict[str, str]:
    """Click callback: repeated ``KEY=VALUE`` options → dict of strings."""
    return dict(_pairs(values, ctx, param))


def key_floats(
    ctx: click.Context | None, param: click.Parameter | None, values: Sequence[str]
) -> dict[str, float]:
    """Click callback: repeated ``KEY=NUMBER`` options → dict of finite floats."""
    result: dict[str, float] = {}
    for key, value in _pairs(values, ctx, param):
        try:
            number = float(value)
        except ValueError:
            raise click.BadParameter(
                f"{key}: expected a number, got {value!r}", ctx=ctx, param=param
            ) from None
        if not math.isfinite(number):
            raise click.BadParameter(
                f"{key}: expected a finite number, got {value!r}", ctx=ctx, param=param
            )
        result[key] = number
    return result


def spec_string(text: str, option: str) -> dict[str, str]:
    """``key=value,...`` of ``--variant``/``--shadow`` → dict, or click.BadParameter."""
    try:
        return parse_key_values(text, what=option)
    except SpecError as exc:
        raise click.BadParameter(str(exc).removeprefix(f"{option}: "), param_hint=option) from None


# --- output ------------------------------------------------------------------------------


def to_jsonable(value: Any) -> Any:
    """Models (and lists of them) as JSON-ready values."""
    if isinstance(value, RegistryModel):
        return value.to_dict()
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    return value


def echo_json(value: Any) -> None:
    """Print ``value`` as indented JSON on stdout."""
    click.echo(json.dumps(to_jsonable(value), indent=2))


@contextmanager
def transfer_progress(
    description: str, enabled: bool
) -> Iterator[Callable[[int, int | None], None]]:
    """A rich progress bar (bytes, speed, ETA) on stderr; yields the SDK's progress callback.

    Hidden when ``enabled`` is false or stderr is not a terminal.
    """
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=not (enabled and err_console.is_terminal),
    )
    task = progress.add_task(description, total=None)

    def update(done: int, total: int | None) -> None:
        progress.update(task, completed=done, total=total)

    with progress:
        yield update
