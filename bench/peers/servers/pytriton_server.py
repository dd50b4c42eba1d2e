"""PyTriton (NVIDIA's tritonserver binary from the ``nvidia-pytriton`` wheel) serving ONNX models
through a Python inference callable that calls ONNX Runtime.

The wheel's tritonserver has only the Python backend (no onnxruntime backend), so every
request goes tritonserver (C++ front end, dynamic batcher) → Python backend stub process →
ZeroMQ over an ipc:// socket → this process's callable → ONNX Runtime, and back. Run in the
PyTriton benchmark environment with ``PEER_SERVER_CONFIG`` set (see common.py).

Setup facts: the Python backend stub is linked against ``libpython3.X.so``, so
``LD_LIBRARY_PATH`` must contain the running interpreter's own ``LIBDIR`` (a venv's
interpreter does not put it on the loader path); it is set here before tritonserver is spawned.
Only gRPC is served, on loopback; HTTP and metrics are off. ``ModelConfig()`` is PyTriton's
default: batching on, ``max_batch_size`` 4, dynamic batcher with no queue delay.
"""

from __future__ import annotations

import os
import sysconfig
from typing import Any

from common import load_config, make_session

CONFIG = load_config()

libdir = sysconfig.get_config_var("LIBDIR")
if libdir:
    paths = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    if libdir not in paths:
        os.environ["LD_LIBRARY_PATH"] = ":".join([libdir, *paths])

import numpy as np  # noqa: E402
from pytriton.decorators import batch  # noqa: E402
from pytriton.model_config import ModelConfig, Tensor  # noqa: E402
from pytriton.triton import Triton, TritonConfig  # noqa: E402

TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def tensors(args: Any) -> list[Tensor]:
    """PyTriton tensors (per-row shapes: the batch dimension is implicit) for ONNX inputs/outputs."""
    return [
        Tensor(name=arg.name, dtype=TYPES[arg.type], shape=tuple(arg.shape[1:]) or (1,))
        for arg in args
    ]


def infer_function(session: Any) -> Any:
    names = [output.name for output in session.get_outputs()]

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        results = session.run(None, inputs)
        # A 1-D ONNX output ([N], e.g. class labels) is [N, 1] for Triton (per-row shape [1]).
        return {
            name: (array.reshape(-1, 1) if array.ndim == 1 else array)
            for name, array in zip(names, results, strict=True)
        }

    return infer


def main() -> None:
    config = TritonConfig(
        grpc_address=CONFIG["host"],
        grpc_port=int(CONFIG["grpc_port"]),
        http_address=CONFIG["host"],
        http_port=int(CONFIG["http_port"]),
        metrics_port=int(CONFIG["metrics_port"]),
        allow_http=False,
        allow_metrics=False,
        allow_cpu_metrics=False,
        allow_gpu_metrics=False,
    )
    with Triton(config=config) as triton:
        for name, path in CONFIG["models"].items():
            session = make_session(path, CONFIG)
            triton.bind(
                model_name=name,
                infer_func=infer_function(session),
                inputs=tensors(session.get_inputs()),
                outputs=tensors(session.get_outputs()),
                config=ModelConfig(),
                strict=False,
            )
        triton.serve()


if __name__ == "__main__":
    main()
