"""What the worker's domain needs from the outside, as interfaces."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from mlbus.inference.domain.signature import ModelSignature
from mlbus.inference.domain.tensors import Array


class ModelRunner(Protocol):
    """A loaded model that computes outputs from inputs (ONNX Runtime in production).

    ``run`` blocks and is called from worker threads, possibly several at once. It raises
    :class:`~mlbus.inference.domain.errors.InputRejected` when the model refuses the
    inputs' values and :class:`~mlbus.inference.domain.errors.ModelRunFailed` otherwise.
    """

    @property
    def signature(self) -> ModelSignature:
        """The inputs and outputs served."""
        ...

    def run(self, inputs: Mapping[str, Array], outputs: Sequence[str]) -> dict[str, Array]:
        """Compute ``outputs`` (names from the signature) for ``inputs`` (one per input)."""
        ...
