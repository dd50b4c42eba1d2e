"""The reference: a bare ``grpc.aio`` server with the v2 ``GRPCInferenceService`` calling ONNX
Runtime, no framework (no interceptors, telemetry, validation, batching or health service).

Runs in the workspace interpreter (it uses the generated stubs in ``mlbus.inference.v2``) with
``PEER_SERVER_CONFIG`` set (see common.py) plus ``"run_mode"``: ``"executor"`` runs each
``session.run`` in a one-thread executor, as the mlbus worker keeps runs off its event loop;
``"inline"`` calls it on the event loop (the least a Python gRPC server can do per request).
Implements ServerLive, ServerReady, ModelReady and ModelInfer (FP32/INT64 raw contents).
"""

from __future__ import annotations

import asyncio
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
from common import load_config, make_session

from mlbus.inference.v2 import grpc_service_pb2 as pb
from mlbus.inference.v2 import grpc_service_pb2_grpc as pb_grpc

DATATYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}
NAMES = {np.dtype(v): k for k, v in DATATYPES.items()}


class Servicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, config: dict[str, Any]) -> None:
        self.sessions = {
            name: make_session(path, config) for name, path in config["models"].items()
        }
        self.outputs = {
            name: [output.name for output in session.get_outputs()]
            for name, session in self.sessions.items()
        }
        self.inline = config.get("run_mode", "executor") == "inline"
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ort")

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        return pb.ModelReadyResponse(ready=request.name in self.sessions)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        session = self.sessions.get(request.model_name)
        if session is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no model {request.model_name!r}")
        feeds = {
            tensor.name: np.frombuffer(raw, dtype=DATATYPES[tensor.datatype]).reshape(tensor.shape)
            for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=True)
        }
        if self.inline:
            results = session.run(None, feeds)
        else:
            loop = asyncio.get_running_loop()
            results = await loop.run_in_executor(self.executor, session.run, None, feeds)
        response = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
        for name, array in zip(self.outputs[request.model_name], results, strict=True):
            response.outputs.add(name=name, datatype=NAMES[array.dtype], shape=array.shape)
            response.raw_output_contents.append(array.tobytes())
        return response


async def serve() -> None:
    config = load_config()
    server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(config), server)
    server.add_insecure_port(f"{config['host']}:{config['grpc_port']}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    asyncio.run(serve())
