"""pytest fixtures that build real ONNX models (see :mod:`mlbus.testing.onnx_models`).

Registered by the ``mlbus`` plugin; onnx (and scikit-learn / skl2onnx for the sklearn
fixtures) are imported only when a fixture is used.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest


@pytest.fixture
def onnx_linear_model() -> Callable[..., bytes]:
    """``onnx_linear_model(n_features=4, n_outputs=1, seed=0)`` → a serialized
    ``y = x @ W + b`` model; different seeds give different bytes."""
    from mlbus.testing.onnx_models import linear_model

    return linear_model


@pytest.fixture(scope="session")
def onnx_sklearn_classifier() -> bytes:
    """A scikit-learn LogisticRegression (4 FP32 features) converted with skl2onnx,
    outputs ``label`` and ``probabilities`` (built once per session)."""
    from mlbus.testing.onnx_models import sklearn_classifier

    return sklearn_classifier()


@pytest.fixture(scope="session")
def onnx_sklearn_regressor() -> bytes:
    """A scikit-learn LinearRegression (4 FP32 features) converted with skl2onnx."""
    from mlbus.testing.onnx_models import sklearn_regressor

    return sklearn_regressor()
