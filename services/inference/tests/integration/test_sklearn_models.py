"""Real scikit-learn models exported with skl2onnx (mlbus.testing.onnx_models), served and
compared with a plain ONNX Runtime session on the same model. (skl2onnx names the input
``X``.)"""

from __future__ import annotations

import asyncio

import numpy as np
import onnxruntime as ort
import pytest

from mlbus.inference.v2 import grpc_service_pb2 as pb
from mlbus.testing import onnx_models

pytestmark = pytest.mark.asyncio


def reference(model: bytes, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs() if o.type.startswith("tensor(")]
    return dict(zip(names, session.run(names, {"X": x}), strict=True))


async def test_a_logistic_regression_is_served_with_batching(start_worker, v2) -> None:
    model = onnx_models.sklearn_classifier(n_features=4, seed=3)
    worker = await start_worker(model, max_batch_size=16, max_queue_delay_us=20_000)
    meta = await worker.stub.ModelMetadata(pb.ModelMetadataRequest(name="m"))
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("label", "INT64", [-1]),
        ("probabilities", "FP32", [-1, 2]),
    ]
    assert worker.app.worker.engine.batching
    rng = np.random.default_rng(0)
    rows = [rng.standard_normal((1 + i % 2, 4)).astype(np.float32) for i in range(8)]
    responses = await asyncio.gather(*(worker.infer(v2.request({"X": x})) for x in rows))
    for x, response in zip(rows, responses, strict=True):
        got = v2.outputs(response)
        want = reference(model, x)
        np.testing.assert_array_equal(got["label"], want["label"])
        np.testing.assert_allclose(got["probabilities"], want["probabilities"], rtol=1e-6)


async def test_a_zipmap_output_is_left_out_and_the_rest_served(start_worker, v2) -> None:
    model = onnx_models.sklearn_classifier_with_zipmap(n_features=4, seed=3)
    worker = await start_worker(model)
    meta = await worker.stub.ModelMetadata(pb.ModelMetadataRequest(name="m"))
    assert [t.name for t in meta.outputs] == ["output_label"]
    x = np.ones((3, 4), np.float32)
    response = await worker.infer(v2.request({"X": x}))
    assert [o.name for o in response.outputs] == ["output_label"]
    np.testing.assert_array_equal(
        v2.outputs(response)["output_label"], reference(model, x)["output_label"]
    )
