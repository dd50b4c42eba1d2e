"""The registry commands' option handling, before anything is sent: malformed options are
usage errors (exit 2) naming the option; an unreachable registry is one line and exit 9."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from rich.console import Console

from mlbus.sdk.cli import cli
from mlbus.sdk.cli._common import EXIT_CODES, exit_code, key_floats, key_values
from mlbus.sdk.cli._render import variants_table
from mlbus.sdk.cli.endpoints import build_spec
from mlbus.sdk.errors import SDK_ERROR_TYPES, DataLoss, FailedPrecondition, NotFound
from mlbus.sdk.local.broker import free_port
from mlbus.sdk.registry import (
    DataCaptureConfig,
    EndpointConfig,
    EndpointSpec,
    EndpointVariant,
    ShadowVariant,
)


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_key_value_callbacks() -> None:
    assert key_values(None, None, ("a=1", "b=x=y", "c=")) == {"a": "1", "b": "x=y", "c": ""}
    assert key_floats(None, None, ("auc=0.9", "loss=1e-3")) == {"auc": 0.9, "loss": 0.001}
    for bad, message in (
        (("team",), "expected KEY=VALUE, got 'team'"),
        (("=x",), "expected KEY=VALUE"),
        (("a=1", "a=2"), "'a' given twice"),
    ):
        with pytest.raises(click.BadParameter, match=message):
            key_values(None, None, bad)
    with pytest.raises(click.BadParameter, match="auc: expected a number, got 'high'"):
        key_floats(None, None, ("auc=high",))
    with pytest.raises(click.BadParameter, match="finite"):
        key_floats(None, None, ("auc=nan",))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["models", "create-group", "g", "--tag", "team"],
            "'--tag': expected KEY=VALUE, got 'team'",
        ),
        (
            ["models", "register", "x.onnx", "-g", "g", "--metric", "auc=high"],
            "auc: expected a number",
        ),
        (["models", "register", "-g", "g"], "give FILE or --artifact-uri"),
        (["models", "describe", "g", "0"], "0 is not in the range x>=1"),
        (["models", "describe", "g", "2", "--alias", "prod"], "give VERSION or --alias, not both"),
        (["models", "download", "g"], "give VERSION or --alias"),
        (["models", "alias", "g", "prod"], "give VERSION, or --delete"),
        (["models", "alias", "g", "prod", "3", "--delete"], "give VERSION, or --delete"),
        (["models", "reject", "g", "1"], "Missing option '--reason'"),
        (["models", "reject", "g", "1", "--reason", " "], "--reason: must not be empty"),
        (["models", "list", "--status", "weird"], "'weird' is not one of"),
        (["models", "list", "--registry", "nowhere"], "expected HOST:PORT, got 'nowhere'"),
        (["endpoints", "create", "e"], "give at least one --variant, or --file"),
        (["endpoints", "create", "e", "--variant", "group=g"], "variant 1: version= is required"),
        (
            ["endpoints", "create", "e", "--variant", "group=g,version=1,weight"],
            "expected key=value",
        ),
        (
            ["endpoints", "create", "e", "--variant", "group=g,version=1,mode=batch"],
            "mode must be realtime or serverless",
        ),
        (
            ["endpoints", "create", "e", "--variant", "name=a,group=g,version=1"] * 1
            + ["--variant", "name=a,group=g,version=2"],
            "repeated: a",
        ),
        (
            [
                "endpoints",
                "create",
                "e",
                "--variant",
                "group=g,version=1",
                "--shadow",
                "group=g,version=2",
            ],
            "sampling= (percent of requests mirrored, 0-100) is required",
        ),
        (
            [
                "endpoints",
                "create",
                "e",
                "--variant",
                "group=g,version=1",
                "--capture-percent",
                "101",
            ],
            "0<=x<=100",
        ),
        (["endpoints", "rollback", "e", "zero"], "'zero' is not a valid integer"),
        (["endpoints", "update", "e"], "nothing to change: give --variant"),
    ],
)
def test_usage_errors(args: list[str], message: str) -> None:
    if "--registry" not in args:
        args = [*args, "--registry", f"127.0.0.1:{free_port()}"]
    code, stdout, stderr = run(*args)
    assert code == 2, stdout + stderr
    assert message in " ".join(stderr.split()), stderr
    assert "Traceback" not in stderr


def test_bad_config_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "e.yaml"
    path.write_text("variants:\n  - {group: g, version: x}\n")
    code, _, stderr = run("endpoints", "create", "e", "-f", str(path))
    assert code == 2
    assert stderr.strip() == f"error: {path}: variants[1]: version must be an integer, got 'x'"

    code, _, stderr = run(
        "endpoints", "create", "e", "-f", str(path), "--variant", "group=g,version=1"
    )
    assert code == 2
    assert "do not combine it with" in stderr


def test_unreachable_registry_is_one_line_and_exit_9() -> None:
    target = f"127.0.0.1:{free_port()}"
    code, stdout, stderr = run("models", "list", "--registry", target)
    assert code == 9
    assert stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: UNAVAILABLE: registry at {target} is unavailable")
    assert "is the registry running?" in lines[0]


def test_registry_and_actor_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    target = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLBUS_REGISTRY", target)
    code, _, stderr = run("endpoints", "list")
    assert code == 9
    assert target in stderr


def test_exit_codes_are_distinct_per_class() -> None:
    assert exit_code(NotFound("x")) == 4
    assert exit_code(FailedPrecondition("x")) == 6
    assert exit_code(DataLoss("x")) == 11
    assert (
        len({EXIT_CODES[c] for c in (NotFound.code, FailedPrecondition.code, DataLoss.code)}) == 3
    )
    assert all(code not in (0, 2) for code in EXIT_CODES.values())  # 2 is click's usage error
    assert {cls.code for cls in SDK_ERROR_TYPES}.isdisjoint({NotFound.code})


def _variant(name: str, version: int) -> EndpointVariant:
    return EndpointVariant(name=name, model_group="g", model_version=version)


def test_update_options_replace_only_what_they_name() -> None:
    base = EndpointSpec(
        variants=(_variant("blue", 1),),
        shadow=ShadowVariant(variant=_variant("next", 2), sampling_percent=5),
        data_capture=DataCaptureConfig(sampling_percent=10),
        description="before",
    )
    common = {
        "file": None,
        "shadow": None,
        "no_shadow": False,
        "capture_percent": None,
        "description": None,
    }

    same = build_spec(base=base, variants=(), **common)  # type: ignore[arg-type]
    assert same == base

    new = build_spec(
        base=base, variants=("name=green,group=g,version=3",), **{**common, "capture_percent": 0}
    )  # type: ignore[arg-type]
    assert new.variants == (_variant("green", 3),)
    assert new.shadow == base.shadow
    assert new.data_capture is None
    assert new.description == "before"

    dropped = build_spec(base=base, variants=(), **{**common, "no_shadow": True, "description": ""})  # type: ignore[arg-type]
    assert dropped.shadow is None
    assert dropped.description == ""

    with pytest.raises(click.BadParameter, match="also a production variant"):
        build_spec(
            base=base, variants=(), **{**common, "shadow": "name=blue,group=g,version=2,sampling=1"}
        )  # type: ignore[arg-type]


def test_variants_table_shows_scale_to_zero() -> None:
    config = EndpointConfig(
        endpoint="churn",
        revision=2,
        variants=(
            EndpointVariant(name="blue", model_group="g", model_version=1),
            EndpointVariant(
                name="green", model_group="g", model_version=2, scale_to_zero_after_seconds=300
            ),
            EndpointVariant(name="burst", model_group="g", model_version=2, mode="SERVERLESS"),
        ),
    )
    console = Console(width=200, record=True, highlight=False)
    console.print(variants_table(config))
    lines = console.export_text().splitlines()
    assert "scale to zero" in next(line for line in lines if "variant" in line)
    cells = {
        name: [c.strip() for c in line.split("│")]
        for line in lines
        for name in ("blue", "green", "burst")
        if f" {name} " in line
    }
    assert {name: row[-2] for name, row in cells.items()} == {
        "blue": "off",
        "green": "300s",
        "burst": "default",
    }


def test_ports_picked_together_are_distinct_and_bindable() -> None:
    import socket

    from mlbus.sdk.local.broker import free_ports

    ports = free_ports(40)
    assert len(set(ports)) == 40
    for port in ports[:3]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # free again once picked


def test_bad_prediction_inputs_are_usage_errors(tmp_path: Path) -> None:
    router = ["--router", f"127.0.0.1:{free_port()}"]  # never reached: refused before
    binary = tmp_path / "rows.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    for args, message in (
        (["--data", '{"inputs": 5}'], "inputs: expected a list of tensors, got int"),
        (
            ["--data", '{"inputs": [], "outputs": 5}'],
            "outputs: expected a list of tensors, got int",
        ),
        (["--input", str(binary)], "not UTF-8 text"),
    ):
        code, stdout, stderr = run("predict", "churn", *args, *router)
        assert code == 2, (args, stdout + stderr)
        assert message in " ".join(stderr.split()), stderr
        assert "Traceback" not in stderr
