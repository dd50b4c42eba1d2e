"""ONNX Runtime behind the :class:`~mlbus.inference.ports.ModelRunner` port.

The session is built with explicit options (threads, graph optimisation, sequential
execution) on the CPU provider. The signature comes from the session: inputs whose type has
no v2 datatype make the model unservable; outputs without one (e.g. the ``seq(map(...))``
probabilities of a scikit-learn classifier exported with ZipMap) are left out of the
signature and never computed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import onnxruntime as ort  # type: ignore[import-untyped]
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state  # type: ignore[import-untyped]

from mlbus.inference.domain.datatypes import from_onnx_type
from mlbus.inference.domain.errors import InputRejected, ModelLoadError, ModelRunFailed
from mlbus.inference.domain.signature import ModelSignature, Shape, TensorSpec
from mlbus.inference.domain.tensors import Array

log = logging.getLogger(__name__)

GraphOptimization = Literal["disabled", "basic", "extended", "all"]

_OPTIMIZATION = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_PROVIDERS = ["CPUExecutionProvider"]


def session_options(
    *, intra_op_threads: int, inter_op_threads: int, graph_optimization: GraphOptimization
) -> Any:
    """``onnxruntime.SessionOptions`` with every setting the worker relies on made explicit."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = _OPTIMIZATION[graph_optimization]
    # Fatal only: ONNX Runtime logs to stderr, not our JSON log, and every error it would
    # log reaches us as an exception that is reported (to the caller or in our log) anyway.
    options.log_severity_level = 4
    return options


def _shape(raw: Any) -> Shape | None:
    if raw is None:
        return None
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in raw)


def _specs(args: Sequence[Any], kind: str) -> tuple[list[TensorSpec], list[str]]:
    specs: list[TensorSpec] = []
    unsupported: list[str] = []
    for arg in args:
        datatype = from_onnx_type(arg.type)
        if datatype is None:
            unsupported.append(f"{kind} {arg.name!r} of type {arg.type}")
            continue
        specs.append(TensorSpec(arg.name, datatype, _shape(arg.shape)))
    return specs, unsupported


class OnnxModel:
    """A loaded ONNX Runtime session and its v2 signature."""

    def __init__(self, session: Any, signature: ModelSignature) -> None:
        self._session = session
        self._signature = signature
        # The C++ session's run, without the Python wrapper's per-call checks (every input
        # present, graph-capture and OrtValue-ownership rules, a fallback for non-CPU
        # providers): requests are checked against the signature before they get here, the
        # feeds are numpy arrays and the provider is the CPU's. A few µs per run, which is a
        # third of a small model's run.
        native = getattr(session, "_sess", None)
        self._run = native.run if native is not None else None

    @property
    def signature(self) -> ModelSignature:
        """The inputs and outputs served."""
        return self._signature

    @classmethod
    def load(
        cls,
        model: bytes,
        *,
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
        graph_optimization: GraphOptimization = "all",
    ) -> OnnxModel:
        """Create the session from the artifact's bytes; ModelLoadError when ONNX Runtime
        refuses it or no input/output combination can be served."""
        options = session_options(
            intra_op_threads=intra_op_threads,
            inter_op_threads=inter_op_threads,
            graph_optimization=graph_optimization,
        )
        try:
            session = ort.InferenceSession(model, sess_options=options, providers=_PROVIDERS)
        except Exception as exc:
            raise ModelLoadError(f"ONNX Runtime cannot load the model: {exc}") from exc
        inputs, bad_inputs = _specs(session.get_inputs(), "input")
        outputs, bad_outputs = _specs(session.get_outputs(), "output")
        if bad_inputs:
            raise ModelLoadError(
                f"the model cannot be served over the v2 protocol: {'; '.join(bad_inputs)} "
                "has no v2 datatype"
            )
        if bad_outputs:
            log.warning("outputs without a v2 datatype are not served: %s", "; ".join(bad_outputs))
        if not outputs:
            raise ModelLoadError("the model has no output with a v2 datatype")
        return cls(session, ModelSignature(tuple(inputs), tuple(outputs)))

    def run(self, inputs: Mapping[str, Array], outputs: Sequence[str]) -> dict[str, Array]:
        """One session run (blocking; safe to call from several threads at once)."""
        try:
            feeds = inputs if isinstance(inputs, dict) else dict(inputs)
            if self._run is not None:
                results = self._run(outputs, feeds, None)
            else:
                results = self._session.run(outputs, feeds)
        except ort_state.InvalidArgument as exc:
            raise InputRejected(f"the model refused the input: {exc}") from exc
        except Exception as exc:
            raise ModelRunFailed(f"the model failed: {exc}") from exc
        return dict(zip(outputs, results, strict=True))

    def warm_up(self, runs: int) -> float | None:
        """Run ``runs`` inferences on zero-filled inputs (open dimensions as 1), so the first
        request does not pay for lazy allocations; ModelLoadError when one fails. Returns the
        seconds of the fastest run (None for 0 runs): what a one-row run costs."""
        feeds: dict[str, Array] = {}
        for spec in self._signature.inputs:
            declared = spec.shape if spec.shape is not None else (1,)
            shape = tuple(1 if d < 0 else d for d in declared)
            if spec.datatype.is_bytes:
                array = np.empty(shape, dtype=object)
                array.fill("")
            else:
                array = np.zeros(shape, dtype=spec.datatype.dtype)
            feeds[spec.name] = array
        fastest: float | None = None
        for _ in range(runs):
            started = time.perf_counter()
            try:
                self.run(feeds, self._signature.output_names)
            except Exception as exc:
                raise ModelLoadError(f"warm-up inference on zero inputs failed: {exc}") from exc
            elapsed = time.perf_counter() - started
            fastest = elapsed if fastest is None else min(fastest, elapsed)
        return fastest
