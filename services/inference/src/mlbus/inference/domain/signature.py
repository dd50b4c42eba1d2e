"""A model's signature (input and output tensors) and the checks requests must pass.

Shapes use -1 for a dimension the model leaves open; ``None`` as a whole shape means the
model does not declare its rank. Error messages follow one pattern, naming the tensor and
saying what was expected and what came: ``input 'x': expected FP32 [-1, 4], got FP64 [2, 4]``.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from mlbus.core.errors import InvalidArgument
from mlbus.inference.domain.datatypes import DataType, from_name

Shape = tuple[int, ...]

_ACCEPTED_MAX = 256


def format_shape(shape: Sequence[int] | None) -> str:
    """``[-1, 4]``; ``[...]`` for an undeclared rank."""
    if shape is None:
        return "[...]"
    return "[" + ", ".join(str(d) for d in shape) + "]"


def element_count(shape: Sequence[int]) -> int:
    """Number of elements of a tensor of ``shape`` (1 for a scalar)."""
    return math.prod(shape)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output of the model."""

    name: str
    datatype: DataType
    shape: Shape | None
    """Dimensions, -1 where open; None when the model does not declare the rank."""
    _accepted: dict[tuple[int, ...], bool] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )
    """Shapes checked so far (requests repeat a few shapes; bounded by _ACCEPTED_MAX)."""

    def describe(self) -> str:
        """``FP32 [-1, 4]``."""
        return f"{self.datatype.name} {format_shape(self.shape)}"

    @property
    def batch_dim_open(self) -> bool:
        """True when the first dimension is open, so rows can be stacked along it."""
        return self.shape is not None and len(self.shape) >= 1 and self.shape[0] == -1

    def accepts(self, shape: tuple[int, ...]) -> bool:
        """True when a tensor of ``shape`` fits this spec (rank and fixed dimensions)."""
        known = self._accepted.get(shape)
        if known is None:
            known = self._check(shape)
            if len(self._accepted) >= _ACCEPTED_MAX:
                self._accepted.clear()
            self._accepted[shape] = known
        return known

    def _check(self, shape: Sequence[int]) -> bool:
        if any(d < 0 for d in shape):
            return False
        if self.shape is None:
            return True
        if len(shape) != len(self.shape):
            return False
        return all(want in (-1, got) for want, got in zip(self.shape, shape, strict=True))


@dataclass(frozen=True)
class ModelSignature:
    """The inputs and outputs a model serves, in the model's order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    _inputs: dict[str, TensorSpec] = field(init=False, repr=False, compare=False)
    _outputs: dict[str, TensorSpec] = field(init=False, repr=False, compare=False)

    _output_names: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_inputs", {t.name: t for t in self.inputs})
        object.__setattr__(self, "_outputs", {t.name: t for t in self.outputs})
        object.__setattr__(self, "_output_names", tuple(t.name for t in self.outputs))

    @property
    def input_names(self) -> tuple[str, ...]:
        """Input names in model order."""
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        """Output names in model order."""
        return self._output_names

    @property
    def batchable(self) -> bool:
        """True when every input and output has an open first dimension, so requests can
        be concatenated along it and the results split back."""
        return all(t.batch_dim_open for t in (*self.inputs, *self.outputs))

    def spec_of(self, name: str) -> TensorSpec | None:
        """The input called ``name``, or None."""
        return self._inputs.get(name)

    def input(self, name: str) -> TensorSpec:
        """The input called ``name``; InvalidArgument naming the model's inputs otherwise."""
        spec = self._inputs.get(name)
        if spec is None:
            raise InvalidArgument(
                f"unknown input {name!r}; the model's inputs are {_listing(self.inputs)}",
                details={"input": name},
            )
        return spec

    def output(self, name: str) -> TensorSpec:
        """The output called ``name``; InvalidArgument naming the model's outputs otherwise."""
        spec = self._outputs.get(name)
        if spec is None:
            raise InvalidArgument(
                f"unknown output {name!r}; the model's outputs are {_listing(self.outputs)}",
                details={"output": name},
            )
        return spec

    def check_all_inputs(self, given: Collection[str]) -> None:
        """InvalidArgument naming the first input the model needs that is not in ``given``
        (names the model has, each once)."""
        if len(given) == len(self.inputs):
            return
        present = set(given)
        missing = [t for t in self.inputs if t.name not in present]
        if missing:
            names = ", ".join(f"{t.name!r} ({t.describe()})" for t in missing)
            raise InvalidArgument(
                f"missing input {names}; the model's inputs are {_listing(self.inputs)}",
                details={"input": missing[0].name},
            )


def _listing(specs: Sequence[TensorSpec]) -> str:
    return ", ".join(f"{t.name!r} ({t.describe()})" for t in specs) or "(none)"


def check_input_header(spec: TensorSpec, datatype: str, shape: Sequence[int]) -> DataType:
    """Check a request input's datatype and shape against ``spec``; return its datatype.

    Raises InvalidArgument ``input 'x': expected FP32 [-1, 4], got FP64 [2, 4]``.
    """
    given = from_name(datatype)
    dims = shape if isinstance(shape, tuple) else tuple(shape)
    if given is not spec.datatype or not spec.accepts(dims):
        got = f"{datatype or '(no datatype)'} {format_shape(shape)}"
        reason = ""
        if any(d < 0 for d in shape):
            reason = " (dimensions must not be negative)"
        elif spec.shape is not None and len(shape) != len(spec.shape):
            reason = f" (rank {len(shape)}, expected {len(spec.shape)})"
        raise InvalidArgument(
            f"input {spec.name!r}: expected {spec.describe()}, got {got}{reason}",
            details={"input": spec.name},
        )
    return spec.datatype
