"""KServe ModelServer serving ONNX models through a custom ``kserve.Model`` that calls ONNX Runtime.

Run in the KServe benchmark environment with ``PEER_SERVER_CONFIG`` set (see common.py). KServe
0.21 hard-codes its listen addresses (gRPC ``[::]:port``, REST ``0.0.0.0:port``); this script
rebinds both to loopback by wrapping the two factory calls it makes (``grpc.aio.server`` and
``uvicorn.Config``), so nothing listens beyond 127.0.0.1. Everything else is ModelServer's
defaults: one REST worker, a gRPC server with its 4-thread pool and two interceptors, uvloop,
latency logging on; ``predict`` is a plain method, which KServe calls on its event loop.
"""

from __future__ import annotations

from typing import Any

from common import LOOPBACK, load_config, make_session

CONFIG = load_config()
HOST = CONFIG["host"]

import kserve.protocol.grpc.server as kserve_grpc  # noqa: E402
import kserve.protocol.rest.server as kserve_rest  # noqa: E402
from grpc import aio as _aio  # noqa: E402


class _LoopbackAio:
    """``grpc.aio`` whose ``server()`` binds every insecure port to ``HOST``."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_aio, name)

    @staticmethod
    def server(*args: Any, **kwargs: Any) -> Any:
        server = _aio.server(*args, **kwargs)
        add = server.add_insecure_port

        def add_insecure_port(address: str) -> int:
            port = address.rsplit(":", 1)[1]
            return add(f"{HOST}:{port}")

        server.add_insecure_port = add_insecure_port
        return server


class _LoopbackUvicorn:
    """``uvicorn`` whose ``Config`` always binds ``HOST``."""

    def __init__(self, module: Any) -> None:
        self._module = module

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)

    def Config(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["host"] = HOST
        return self._module.Config(*args, **kwargs)


kserve_grpc.aio = _LoopbackAio()
kserve_rest.uvicorn = _LoopbackUvicorn(kserve_rest.uvicorn)

from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer  # noqa: E402
from kserve.utils.numpy_codec import from_np_dtype  # noqa: E402


class OnnxModel(Model):
    """One ONNX model; ``predict`` runs the session on the request's inputs."""

    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.session: Any = None
        self.output_names: list[str] = []
        self.load()

    def load(self) -> bool:
        self.session = make_session(self.path, CONFIG)
        self.output_names = [output.name for output in self.session.get_outputs()]
        self.ready = True
        return self.ready

    def predict(
        self, payload: InferRequest, headers: dict[str, str] | None = None
    ) -> InferResponse:
        feeds = {tensor.name: tensor.as_numpy() for tensor in payload.inputs}
        results = self.session.run(None, feeds)
        outputs = []
        for name, array in zip(self.output_names, results, strict=True):
            output = InferOutput(
                name=name, shape=list(array.shape), datatype=from_np_dtype(array.dtype)
            )
            output.set_data_from_numpy(array)
            outputs.append(output)
        return InferResponse(model_name=self.name, infer_outputs=outputs, response_id=payload.id)


def main() -> None:
    assert HOST == LOOPBACK or HOST.startswith("127.")
    models = [OnnxModel(name, path) for name, path in CONFIG["models"].items()]
    ModelServer(
        http_port=int(CONFIG["http_port"]),
        grpc_port=int(CONFIG["grpc_port"]),
        enable_docs_url=False,
        grace_period=2,
    ).start(models)


if __name__ == "__main__":
    main()
