"""ONNX export (skl2onnx; onnxmltools' converters for XGBoost and LightGBM) and the parity
check: the ONNX model and the original must predict the same on the validation set.

The model's inputs are those of :mod:`mlbus.trainer.child.encoding`: one input ``input``,
FP32 ``[-1, n_features]``, or, with categorical columns, one input per feature column (all
with a dynamic batch dimension). Classifiers give ``label`` and ``probabilities`` (no
ZipMap, so every output is a tensor); regressors ``variable``. Both models see the same
float32 values in the check: the original is fed the validation rows rounded to float32, as
ONNX Runtime is.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped]

from mlbus.trainer.child.encoding import Encoder
from mlbus.trainer.child.errors import JobFailed
from mlbus.trainer.domain.algorithms import Task

TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}


@dataclass
class Parity:
    """Outcome of the parity check."""

    rows: int
    max_abs_diff: float
    label_mismatches: int = 0


def _register_boosting_converters() -> None:
    # skl2onnx learns the XGBoost/LightGBM models (also inside pipelines) from onnxmltools.
    from skl2onnx import update_registered_converter  # type: ignore[import-untyped]
    from skl2onnx.common.shape_calculator import (  # type: ignore[import-untyped]
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    try:
        from lightgbm import LGBMClassifier, LGBMRegressor
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm  # type: ignore[import-untyped]

        update_registered_converter(
            LGBMClassifier,
            "LightGbmLGBMClassifier",
            calculate_linear_classifier_output_shapes,
            convert_lightgbm,
            options={"nocl": [True, False], "zipmap": [True, False, "columns"]},
        )
        update_registered_converter(
            LGBMRegressor,
            "LightGbmLGBMRegressor",
            calculate_linear_regressor_output_shapes,
            convert_lightgbm,
            options={"split": None},
        )
    except ImportError:
        pass
    try:
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost  # type: ignore[import-untyped]
        from xgboost import XGBClassifier, XGBRegressor

        update_registered_converter(
            XGBClassifier,
            "XGBoostXGBClassifier",
            calculate_linear_classifier_output_shapes,
            convert_xgboost,
            options={"nocl": [True, False], "zipmap": [True, False, "columns"]},
        )
        update_registered_converter(
            XGBRegressor,
            "XGBoostXGBRegressor",
            calculate_linear_regressor_output_shapes,
            convert_xgboost,
        )
    except ImportError:
        pass


def _patch_hist_gradient_boosting() -> None:
    # skl2onnx 1.20 passes a bool for the (integer) nodes_missing_value_tracks_true attribute
    # of HistGradientBoosting trees, which protobuf 7 refuses ("Expected an int, got a
    # boolean"); hand it an int.
    from skl2onnx.common import tree_ensemble  # type: ignore[import-untyped]

    original = tree_ensemble.add_node
    if getattr(original, "mlbus_patched", False):
        return

    def add_node(*args: Any, nodes_missing_value_tracks_true: Any = 0, **kwargs: Any) -> Any:
        return original(
            *args, nodes_missing_value_tracks_true=int(nodes_missing_value_tracks_true), **kwargs
        )

    add_node.mlbus_patched = True  # type: ignore[attr-defined]
    tree_ensemble.add_node = add_node


def _final_step(estimator: Any) -> Any:
    steps = getattr(estimator, "steps", None)
    return steps[-1][1] if steps else estimator


def _rename(graph: Any, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
        if value.name == old:
            value.name = new


def _name_inputs(model: Any, names: list[str]) -> None:
    # skl2onnx makes input names identifiers and keeps them apart from its other names
    # ("plan type" → "plan_type", "label" → "label1"); the inputs are named as the columns
    # again, which is how the SDK and batch transform find them.
    graph = model.graph
    outputs = [o.name for o in graph.output]
    taken = {o for n in graph.node for o in n.output} | {i.name for i in graph.initializer}
    current = [i.name for i in graph.input]
    if len(current) != len(names):
        raise JobFailed(f"ONNX export: the model has {len(current)} inputs, expected {len(names)}")
    for given, wanted in zip(current, names, strict=True):
        if given == wanted:
            continue
        if wanted in taken or wanted in {i.name for i in graph.input}:
            what = "an output" if wanted in outputs else "a value inside"
            raise JobFailed(
                f"feature column {wanted!r} has the name of {what} of the ONNX model "
                f"(outputs: {', '.join(outputs)}), whose inputs are named as the columns: "
                "rename the column"
            )
        _rename(graph, given, wanted)


def to_onnx(estimator: Any, encoder: Encoder, task: Task) -> bytes:
    """The fitted ``estimator`` (the model of ``encoder``: see
    :meth:`Encoder.model`) as a serialized ONNX model; JobFailed if no converter can."""
    import onnx
    from skl2onnx import convert_sklearn

    module = type(_final_step(estimator)).__module__
    if module.startswith(("xgboost", "lightgbm")) or any(
        type(step).__module__.startswith(("xgboost", "lightgbm"))
        for _, step in getattr(estimator, "steps", [])
    ):
        _register_boosting_converters()
    _patch_hist_gradient_boosting()
    options: dict[Any, Any] = {}
    if task == "classification":
        options[id(_final_step(estimator))] = {"zipmap": False}
    inputs = encoder.onnx_inputs()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = convert_sklearn(
                estimator,
                initial_types=inputs,
                options=options or None,
                target_opset=TARGET_OPSET,
            )
    except Exception as exc:
        detail = str(exc).splitlines()[0][:300] if str(exc) else ""
        raise JobFailed(
            f"ONNX export of {type(_final_step(estimator)).__name__} failed "
            f"({type(exc).__name__}: {detail})"
        ) from exc
    _name_inputs(model, [name for name, _ in inputs])
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise JobFailed(f"ONNX export: the converted model is not valid: {exc}") from exc
    return bytes(model.SerializeToString())


def _session(model: bytes) -> Any:
    import onnxruntime as ort  # type: ignore[import-untyped]

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _outputs(model: bytes, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = _session(model)
    names = [o.name for o in session.get_outputs()]
    values = session.run(None, feed)
    return dict(zip(names, (np.asarray(v) for v in values), strict=True))


def _same_labels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iufb" and b.dtype.kind in "iufb":
        return np.asarray(a.astype(np.float64) == b.astype(np.float64))
    return np.asarray(a.astype(str) == b.astype(str))


def check_parity(
    estimator: Any,
    model: bytes,
    encoder: Encoder,
    validation: pd.DataFrame,
    task: Task,
    *,
    atol: float,
    rtol: float,
) -> Parity:
    """Run both models on the validation rows (``estimator``, the model of ``encoder``, on
    the rows rounded to float32; the ONNX model on its inputs of them); JobFailed with the
    largest difference if classes differ, probabilities differ by more than ``atol``, or
    regression outputs by more than ``atol + rtol * |original|``."""
    x32 = encoder.model_input(validation, "validation")
    outputs = _outputs(model, encoder.onnx_feed(validation, "validation"))
    rows = len(x32)
    if task == "classification":
        labels = np.asarray(estimator.predict(x32)).ravel()
        onnx_labels = outputs["label"].ravel()
        same = _same_labels(labels, onnx_labels)
        mismatches = int((~same).sum())
        max_diff = 0.0
        if hasattr(estimator, "predict_proba") and "probabilities" in outputs:
            proba = np.asarray(estimator.predict_proba(x32), dtype=np.float64)
            onnx_proba = outputs["probabilities"].astype(np.float64).reshape(proba.shape)
            diff = np.abs(proba - onnx_proba)
            max_diff = float(diff.max()) if diff.size else 0.0
            if max_diff > atol:
                row, column = (int(i) for i in np.unravel_index(int(diff.argmax()), diff.shape))
                raise JobFailed(
                    f"parity check failed: the ONNX model's probabilities differ from the "
                    f"original's by up to {max_diff:.6g} (row {row}, class "
                    f"{_final_step(estimator).classes_[column]!r}: original "
                    f"{proba[row, column]:.6g}, ONNX {onnx_proba[row, column]:.6g}); "
                    f"tolerance {atol:g}"
                )
        if mismatches:
            first = int(np.flatnonzero(~same)[0])
            raise JobFailed(
                f"parity check failed: {mismatches} of {rows} validation rows get another class "
                f"from the ONNX model (first: row {first}, original {labels[first]!r}, ONNX "
                f"{onnx_labels[first]!r}); largest probability difference {max_diff:.6g}"
            )
        return Parity(rows=rows, max_abs_diff=max_diff, label_mismatches=0)
    predicted = np.asarray(estimator.predict(x32), dtype=np.float64).ravel()
    onnx_values = next(iter(outputs.values())).astype(np.float64).ravel()
    if onnx_values.shape != predicted.shape:
        raise JobFailed(
            f"parity check failed: the ONNX model gives {onnx_values.shape[0]} values for "
            f"{predicted.shape[0]} rows"
        )
    diff = np.abs(predicted - onnx_values)
    excess = diff - (atol + rtol * np.abs(predicted))
    max_diff = float(diff.max()) if diff.size else 0.0
    if diff.size and float(excess.max()) > 0:
        row = int(excess.argmax())
        raise JobFailed(
            f"parity check failed: the ONNX model's output differs from the original's by up to "
            f"{max_diff:.6g} (row {row}: original {predicted[row]:.6g}, ONNX "
            f"{onnx_values[row]:.6g}); tolerance {atol:g} + {rtol:g} x |original|"
        )
    return Parity(rows=rows, max_abs_diff=max_diff)
