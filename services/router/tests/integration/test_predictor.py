"""The SDK's Predictor and ``mlbus predict`` against the real router and workers.

Both are synchronous; they run in a thread so the in-process router on this event loop
keeps serving.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from mlbus.sdk import Predictor
from mlbus.sdk.cli import cli
from mlbus.sdk.errors import InvalidArgument, NotFound

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]


def two_input_model() -> bytes:
    """a FP32 [N] and b FP64 [N] → s = a + float(b) (FP32 [N]); name BYTES [N] → echo."""
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["a", "bf"], ["s"]),
            helper.make_node("Identity", ["name"], ["echo"]),
        ],
        "two",
        [
            vi("a", TensorProto.FLOAT, ["N"]),
            vi("b", TensorProto.DOUBLE, ["N"]),
            vi("name", TensorProto.STRING, ["N"]),
        ],
        [vi("s", TensorProto.FLOAT, ["N"]), vi("echo", TensorProto.STRING, ["N"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


async def test_predictor_takes_arrays_frames_and_mappings(stack: Any, endpoint_name: str) -> None:
    version = await stack.model(endpoint_name, seed=21)
    await stack.create(
        endpoint_name, [{"name": "main", "model_group": endpoint_name, "model_version": version}]
    )

    def run() -> dict[str, Any]:
        with Predictor(endpoint_name, stack.router_target) as predictor:
            info = predictor.metadata()
            rows = np.arange(12, dtype=np.float64).reshape(3, 4)  # float64: cast to FP32
            by_array = predictor.predict(rows)
            one_row = predictor.predict([1.0, 2.0, 3.0, 4.0])
            frame = predictor.predict(pd.DataFrame(rows, columns=["f1", "f2", "f3", "f4"]))
            mapping = predictor.predict({"x": rows.tolist()}, inference_id="inf-9")
            errors = {}
            for name, data in {
                "strings": [["a", "b", "c", "d"]],
                "unknown": {"nope": [1.0]},
                "rank": np.zeros((2, 2, 4)),
            }.items():
                try:
                    predictor.predict(data)
                except InvalidArgument as exc:
                    errors[name] = str(exc)
            try:
                Predictor("no-such-endpoint", stack.router_target).metadata()
            except NotFound as exc:
                errors["endpoint"] = str(exc)
            return {
                "info": info,
                "array": by_array,
                "row": one_row,
                "frame": frame,
                "mapping": mapping,
                "errors": errors,
                "rows": rows,
            }

    out = await asyncio.to_thread(run)
    rows = out["rows"].astype(np.float32)
    expected = stack.reference(21, rows)
    assert [t.name for t in out["info"].inputs] == ["x"]
    assert out["info"].versions == (str(version),)
    np.testing.assert_allclose(out["array"]["y"], expected, rtol=1e-5)
    assert out["array"]["y"].dtype == np.float32
    assert out["array"].variant == "main"
    assert out["array"].model_version == str(version)
    assert out["row"]["y"].shape == (1, 1)
    np.testing.assert_allclose(
        out["row"]["y"], stack.reference(21, np.array([[1, 2, 3, 4]], np.float32)), rtol=1e-5
    )
    np.testing.assert_allclose(out["frame"]["y"], expected, rtol=1e-5)
    np.testing.assert_allclose(out["mapping"]["y"], expected, rtol=1e-5)
    assert out["mapping"].inference_id == "inf-9"
    errors = out["errors"]
    assert "input 'x': expected numbers (FP32)" in errors["strings"]
    assert "input 'nope'" in errors["unknown"]
    assert "expected one of x" in errors["unknown"]
    assert "expected 2 dimensions [-1, 4], got 3 [2, 2, 4]" in errors["rank"]
    assert "'no-such-endpoint' is not deployed" in errors["endpoint"]


async def test_predictor_feeds_one_input_per_frame_column(stack: Any, endpoint_name: str) -> None:
    registered = await stack.registry.register(
        two_input_model(), group=endpoint_name, create_group=True
    )
    await stack.registry.approve(endpoint_name, registered.version, reason="test")
    await stack.create(
        endpoint_name,
        [{"name": "main", "model_group": endpoint_name, "model_version": registered.version}],
    )

    def run() -> Any:
        frame = pd.DataFrame({"name": ["x", "héllo"], "b": [0.5, 1.5], "a": [1, 2]})
        with Predictor(endpoint_name, stack.router_target) as predictor:
            return predictor.predict(frame), predictor.predict(
                {"a": [1.0], "b": [2.0], "name": [b"z"]}
            )

    by_frame, by_mapping = await asyncio.to_thread(run)
    np.testing.assert_allclose(by_frame["s"], [1.5, 3.5])
    assert by_frame["echo"].tolist() == [b"x", "héllo".encode()]
    np.testing.assert_allclose(by_mapping["s"], [3.0])


async def test_mlbus_predict_cli(stack: Any, endpoint_name: str, tmp_path: Path) -> None:
    version = await stack.model(endpoint_name, seed=22)
    await stack.create(
        endpoint_name, [{"name": "main", "model_group": endpoint_name, "model_version": version}]
    )
    rows = [[1.0, 2.0, 3.0, 4.0], [0.0, -1.0, 0.5, 2.0]]
    expected = stack.reference(22, np.array(rows, np.float32))
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    (tmp_path / "rows.csv").write_text(
        "f1,f2,f3,f4\n" + "\n".join(",".join(map(str, r)) for r in rows)
    )
    v2_body = {
        "inputs": [
            {
                "name": "x",
                "shape": [2, 4],
                "datatype": "FP32",
                "data": [v for row in rows for v in row],
            }
        ]
    }
    (tmp_path / "v2.json").write_text(json.dumps(v2_body))
    runner = CliRunner()

    def invoke(*args: str) -> Any:
        return runner.invoke(
            cli, ["predict", endpoint_name, "--router", stack.router_target, *args]
        )

    for args in (
        ["--input", str(tmp_path / "rows.json")],
        ["--input", str(tmp_path / "rows.csv")],
        ["--input", str(tmp_path / "v2.json")],
        ["--data", json.dumps({"x": rows})],
    ):
        result = await asyncio.to_thread(invoke, *args, "--json")
        assert result.exit_code == 0, (args, result.output)
        report = json.loads(result.output)
        assert report["variant"] == "main"
        assert report["model_version"] == str(version)
        (y,) = report["outputs"]
        assert y["name"] == "y"
        assert y["shape"] == [2, 1]
        np.testing.assert_allclose(np.array(y["data"]).reshape(2, 1), expected, rtol=1e-5)

    table = await asyncio.to_thread(invoke, "--data", json.dumps(rows))
    assert table.exit_code == 0, table.output
    assert "variant main" in table.output
    assert "[2, 1]" in table.output

    bad = await asyncio.to_thread(invoke, "--data", json.dumps({"x": [["a", "b", "c", "d"]]}))
    assert bad.exit_code == 3
    assert "INVALID_ARGUMENT" in bad.output
    missing = await asyncio.to_thread(
        lambda: runner.invoke(
            cli,
            [
                "predict",
                "no-such-endpoint",
                "--router",
                stack.router_target,
                "--data",
                "[[1,2,3,4]]",
            ],
        )
    )
    assert missing.exit_code == 4
    assert "is not deployed" in missing.output
    not_json = await asyncio.to_thread(invoke, "--data", "{oops")
    assert not_json.exit_code == 2
    assert "not JSON" in not_json.output
