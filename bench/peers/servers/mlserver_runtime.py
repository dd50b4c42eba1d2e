"""MLServer custom runtime calling ONNX Runtime (MLServer ships no ONNX runtime: ``mlserver-onnx``
is not on PyPI), in the style of MLServer's own sklearn/xgboost runtimes.

``bench/peers/targets.py`` writes a model repository whose ``model-settings.json`` files name
``mlserver_runtime.OnnxRuntime`` with ``parameters.uri`` pointing at the ONNX file, a
``settings.json`` binding 127.0.0.1, and runs ``mlserver start`` with this folder on
``PYTHONPATH`` (the parallel inference workers import the runtime too). Thread settings come
from ``parameters.extra``.
"""

from __future__ import annotations

from typing import Any

from common import make_session
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        uri = await get_model_uri(self._settings)
        extra = dict(self._settings.parameters.extra or {}) if self._settings.parameters else {}
        self._session: Any = make_session(uri, extra)
        self._output_names = [output.name for output in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {tensor.name: NumpyCodec.decode_input(tensor) for tensor in payload.inputs}
        results = self._session.run(None, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[
                NumpyCodec.encode_output(name, array)
                for name, array in zip(self._output_names, results, strict=True)
            ],
        )
