"""The router driven by the unchanged ``tritonclient[grpc]`` package, as Triton users would.

tritonclient registers the same ``inference.*`` protobuf symbols as our generated module,
so it runs in a process of its own (a script in a subprocess).
"""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

TRITON_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tritonclient.grpc as tc
    from tritonclient.utils import InferenceServerException

    url, endpoint = sys.argv[1], sys.argv[2]
    client = tc.InferenceServerClient(url)
    report = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(endpoint),
        "unknown_ready": client.is_model_ready("no-such-endpoint"),
        "server": client.get_server_metadata().name,
    }
    meta = client.get_model_metadata(endpoint)
    report["versions"] = sorted(meta.versions)
    report["inputs"] = [[t.name, t.datatype, list(t.shape)] for t in meta.inputs]

    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    i = np.array([[1, 2], [3, 2**40]], dtype=np.int64)
    s = np.array(["héllo".encode(), b""], dtype=np.object_)

    def inputs(x=x):
        tensors = [
            tc.InferInput("x", list(x.shape), tc.np_to_triton_dtype(x.dtype)),
            tc.InferInput("i", list(i.shape), "INT64"),
            tc.InferInput("s", list(s.shape), "BYTES"),
        ]
        for tensor, array in zip(tensors, (x, i, s)):
            tensor.set_data_from_numpy(array)
        return tensors

    result = client.infer(endpoint, inputs(), request_id="abc-1")
    response = result.get_response()
    report["id"] = response.id
    report["variant"] = response.parameters["variant"].string_param
    report["y_ok"] = bool(np.array_equal(result.as_numpy("y"), x * 2))
    report["j"] = result.as_numpy("j").tolist()
    report["t"] = [v.decode() for v in result.as_numpy("t").tolist()]
    pinned = client.infer(endpoint, inputs(), headers={"mlbus-target-variant": "green"})
    report["pinned"] = pinned.get_response().parameters["variant"].string_param
    subset = client.infer(endpoint, inputs(), outputs=[tc.InferRequestedOutput("t")])
    report["subset"] = [o.name for o in subset.get_response().outputs]

    errors = {}
    for name, call in {
        "dtype": lambda: client.infer(endpoint, inputs(x.astype(np.float64))),
        "unknown": lambda: client.infer("no-such-endpoint", inputs()),
        "variant": lambda: client.infer(endpoint, inputs(), headers={"mlbus-target-variant": "red"}),
        "version": lambda: client.infer(endpoint, inputs(), model_version="42"),
    }.items():
        try:
            call()
            errors[name] = None
        except InferenceServerException as exc:
            errors[name] = [exc.status(), exc.message()]
    report["errors"] = errors
    print(json.dumps(report))
    """
)


def mixed_model() -> bytes:
    """x FP32 [N, 4] → y = 2x; i INT64 [N, 2] → j = i + 1; s BYTES [N] → t = s."""
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "two"], ["y"]),
            helper.make_node("Add", ["i", "one"], ["j"]),
            helper.make_node("Identity", ["s"], ["t"]),
        ],
        "mixed",
        [
            vi("x", TensorProto.FLOAT, ["N", 4]),
            vi("i", TensorProto.INT64, ["N", 2]),
            vi("s", TensorProto.STRING, ["N"]),
        ],
        [
            vi("y", TensorProto.FLOAT, ["N", 4]),
            vi("j", TensorProto.INT64, ["N", 2]),
            vi("t", TensorProto.STRING, ["N"]),
        ],
        [
            numpy_helper.from_array(np.array(2.0, np.float32), "two"),
            numpy_helper.from_array(np.array(1, np.int64), "one"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


async def test_tritonclient_drives_the_router(stack: Any, endpoint_name: str) -> None:
    data = mixed_model()
    versions = []
    for _ in range(2):
        registered = await stack.registry.register(data, group=endpoint_name, create_group=True)
        await stack.registry.approve(endpoint_name, registered.version, reason="test")
        versions.append(registered.version)
    await stack.create(
        endpoint_name,
        [
            {
                "name": "blue",
                "model_group": endpoint_name,
                "model_version": versions[0],
                "weight": 99,
            },
            {
                "name": "green",
                "model_group": endpoint_name,
                "model_version": versions[1],
                "weight": 1,
            },
        ],
    )
    client = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        TRITON_SCRIPT,
        stack.router_target,
        endpoint_name,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(client.communicate(), 60)
    assert client.returncode == 0, stderr.decode()
    report = json.loads(stdout)
    assert report["live"]
    assert report["ready"]
    assert report["model_ready"]
    assert not report["unknown_ready"]
    assert report["server"] == "mlbus-router"
    assert report["versions"] == sorted(str(v) for v in versions)
    assert report["inputs"] == [
        ["x", "FP32", [-1, 4]],
        ["i", "INT64", [-1, 2]],
        ["s", "BYTES", [-1]],
    ]
    assert report["id"] == "abc-1"
    assert report["variant"] in {"blue", "green"}
    assert report["y_ok"]
    assert report["j"] == [[2, 3], [4, 2**40 + 1]]
    assert report["t"] == ["héllo", ""]
    assert report["pinned"] == "green"
    assert report["subset"] == ["t"]
    errors = report["errors"]
    assert errors["dtype"] == [
        "StatusCode.INVALID_ARGUMENT",
        "input 'x': expected FP32 [-1, 4], got FP64 [2, 4]",
    ]
    assert errors["unknown"][0] == "StatusCode.NOT_FOUND"
    assert "'no-such-endpoint' is not deployed" in errors["unknown"][1]
    assert errors["variant"][0] == "StatusCode.INVALID_ARGUMENT"
    assert "target_variant 'red'" in errors["variant"][1]
    assert errors["version"][0] == "StatusCode.NOT_FOUND"
    assert "no model version '42'" in errors["version"][1]
