"""mlbus Python SDK and CLI.

``from mlbus.sdk import Predictor`` for real-time predictions; the registry clients live in
:mod:`mlbus.sdk.registry`. (Imported lazily, so the CLI does not load numpy until needed.)
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AsyncPredictor",
    "AsyncResult",
    "ModelInfo",
    "Prediction",
    "Predictor",
    "TensorInfo",
    "TransformJob",
    "Transformer",
]


def __getattr__(name: str) -> Any:
    if name in ("Transformer", "TransformJob"):
        from mlbus.sdk import transformer

        return getattr(transformer, name)
    if name in ("AsyncPredictor", "AsyncResult"):
        from mlbus.sdk import async_predictor

        return getattr(async_predictor, name)
    if name in __all__:
        from mlbus.sdk import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'mlbus.sdk' has no attribute {name!r}")
