"""Shared by the peer server scripts: their configuration and the ONNX Runtime session.

Each script in this folder runs in the interpreter of one peer's benchmark environment
(``bench/.peers-venv/<peer>``), not in the workspace, so this module imports nothing but
the standard library, numpy and onnxruntime. The launcher (``bench/peers/targets.py``) passes
the configuration as JSON in the ``PEER_SERVER_CONFIG`` environment variable, never as
command-line flags (KServe parses ``sys.argv`` at import time):

    {"host": "127.0.0.1", "grpc_port": 50001, "http_port": 50002, "metrics_port": 50003,
     "models": {"small": "/tmp/.../small.onnx", ...},
     "intra_op_threads": 1, "inter_op_threads": 1}
"""

from __future__ import annotations

import ipaddress
import json
import os
from typing import Any

LOOPBACK = "127.0.0.1"


def load_config() -> dict[str, Any]:
    config = json.loads(os.environ["PEER_SERVER_CONFIG"])
    host = config.setdefault("host", LOOPBACK)
    # Benchmarks listen on loopback only, whatever a caller asks.
    if not ipaddress.ip_address(host).is_loopback:
        raise SystemExit(f"refusing to listen on {host!r}: benchmark servers bind loopback only")
    config.setdefault("intra_op_threads", 1)
    config.setdefault("inter_op_threads", 1)
    return config


def make_session(path: str, config: dict[str, Any]) -> Any:
    """An ONNX Runtime CPU session with the benchmark's explicit thread settings."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(config["intra_op_threads"])
    options.inter_op_num_threads = int(config["inter_op_threads"])
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
