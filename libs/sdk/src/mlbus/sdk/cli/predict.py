"""``mlbus predict ENDPOINT``: one real-time prediction through the router.

Input (``--input FILE`` with ``.json``/``.jsonl``/``.csv``, ``-`` for JSON on stdin, or
``--data JSON``):

* a v2 JSON request body ``{"inputs": [{"name", "shape", "datatype", "data"}, ...]}``,
  sent as given;
* a JSON object mapping input names to (nested) arrays: ``{"x": [[1, 2, 3, 4]]}``;
* a JSON array, or a CSV file, of rows for a model with one input (a CSV header naming the
  inputs feeds a model with one column per input instead).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.table import Table

from mlbus.sdk.cli._common import RegistryCommand, console, echo_json
from mlbus.sdk.defaults import DEFAULT_ROUTER, ROUTER_ENV

_MAX_SHOWN = 20


def _v2_request(endpoint: str, body: dict[str, Any]) -> Any:
    from mlbus.core.tensors import NUMPY_DTYPES, add_input
    from mlbus.inference.v2 import grpc_service_pb2 as pb

    request = pb.ModelInferRequest(model_name=endpoint, id=str(body.get("id", "")))
    for index, tensor in enumerate(body["inputs"]):
        where = f"inputs[{index}]"
        try:
            name, datatype, shape = tensor["name"], tensor["datatype"], tensor["shape"]
            data = tensor["data"]
        except (KeyError, TypeError):
            raise click.BadParameter(
                f"{where}: expected an object with name, shape, datatype and data",
                param_hint="--input",
            ) from None
        if datatype not in NUMPY_DTYPES:
            raise click.BadParameter(
                f"{where}.datatype: unknown {datatype!r}; expected one of {', '.join(NUMPY_DTYPES)}",
                param_hint="--input",
            )
        try:
            array = np.asarray(data, dtype=NUMPY_DTYPES[datatype]).reshape(shape)
        except (ValueError, TypeError) as exc:
            raise click.BadParameter(
                f"{where}: data does not fit shape {shape}: {exc}", param_hint="--input"
            ) from None
        add_input(request, name, array, datatype)
    for item in body.get("outputs", ()):
        request.outputs.add(name=item["name"] if isinstance(item, dict) else str(item))
    for key, value in (body.get("parameters") or {}).items():
        if isinstance(value, bool):
            request.parameters[key].bool_param = value
        elif isinstance(value, int):
            request.parameters[key].int64_param = value
        else:
            request.parameters[key].string_param = str(value)
    return request


def _csv_data(text: str) -> Any:
    rows = [row for row in csv.reader(io.StringIO(text)) if row]
    if not rows:
        raise click.BadParameter("the CSV file has no rows", param_hint="--input")

    def numeric(row: list[str]) -> bool:
        try:
            [float(cell) for cell in row]
        except ValueError:
            return False
        return True

    header = None if numeric(rows[0]) else [cell.strip() for cell in rows[0]]
    body = rows[1:] if header else rows
    try:
        matrix = np.array([[float(cell) for cell in row] for row in body], dtype=np.float64)
    except ValueError as exc:
        raise click.BadParameter(
            f"CSV: every cell must be a number ({exc})", param_hint="--input"
        ) from None
    if header is None:
        return matrix
    return {"__columns__": header, "__matrix__": matrix}


def _load(input_path: str | None, data: str | None) -> tuple[str, Any]:
    """("json" | "csv", parsed)."""
    if (input_path is None) == (data is None):
        raise click.UsageError("give --input FILE (or -) or --data JSON")
    if data is not None:
        text, kind = data, "json"
    elif input_path == "-":
        text, kind = sys.stdin.read(), "json"
    else:
        path = Path(input_path)  # type: ignore[arg-type]
        text = path.read_text()
        kind = "csv" if path.suffix.lower() in (".csv", ".tsv") else "json"
    if kind == "csv":
        return kind, _csv_data(text)
    try:
        return kind, json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(
            f"not JSON: {exc}", param_hint="--data" if data else "--input"
        ) from None


def _show(prediction: Any) -> None:
    console.print(
        f"endpoint [bold]{prediction.model_name}[/] · variant [bold]{prediction.variant or '-'}[/]"
        f" · model version [bold]{prediction.model_version or '-'}[/]"
        f" · inference id {prediction.inference_id or '-'}"
    )
    table = Table(show_edge=False)
    for column in ("output", "dtype", "shape", "values"):
        table.add_column(column)
    for name, array in prediction.items():
        flat = array.ravel()
        shown = [
            v.decode("utf-8", "replace") if isinstance(v, bytes) else v
            for v in flat[:_MAX_SHOWN].tolist()
        ]
        more = f" … ({flat.size - _MAX_SHOWN} more)" if flat.size > _MAX_SHOWN else ""
        table.add_row(name, str(array.dtype), str(list(array.shape)), f"{shown}{more}")
    console.print(table)


def _jsonable(prediction: Any) -> dict[str, Any]:
    def values(array: np.ndarray) -> Any:
        if array.dtype == object:
            return [
                v.decode("utf-8", "replace") if isinstance(v, bytes) else v
                for v in array.ravel().tolist()
            ]
        return array.ravel().tolist()

    return {
        "model_name": prediction.model_name,
        "variant": prediction.variant,
        "model_version": prediction.model_version,
        "inference_id": prediction.inference_id,
        "outputs": [
            {
                "name": name,
                "datatype": str(array.dtype),
                "shape": list(array.shape),
                "data": values(array),
            }
            for name, array in prediction.items()
        ],
    }


@click.command(cls=RegistryCommand)
@click.argument("endpoint")
@click.option(
    "--input", "-i", "input_path", metavar="FILE", help="JSON or CSV file; - reads JSON from stdin."
)
@click.option("--data", "-d", metavar="JSON", help="The input as inline JSON instead of a file.")
@click.option(
    "--router",
    envvar=ROUTER_ENV,
    default=DEFAULT_ROUTER,
    metavar="HOST:PORT",
    show_default=f"${ROUTER_ENV} or {DEFAULT_ROUTER}",
    help="Address of the router.",
)
@click.option("--target-variant", default="", help="Send to this production variant.")
@click.option("--model-version", default="", help="Send to the variant serving this version.")
@click.option(
    "--output",
    "outputs",
    multiple=True,
    metavar="NAME",
    help="Return only this output (repeatable).",
)
@click.option(
    "--id", "inference_id", default="", help="Inference id (echoed back; default generated)."
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds to wait for the prediction.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def predict(
    endpoint: str,
    input_path: str | None,
    data: str | None,
    router: str,
    target_variant: str,
    model_version: str,
    outputs: tuple[str, ...],
    inference_id: str,
    timeout: float,
    as_json: bool,
) -> None:
    """Run ENDPOINT's model on the input and print its outputs."""
    from mlbus.sdk.predictor import Predictor, build_request

    kind, parsed = _load(input_path, data)
    with Predictor(endpoint, router, timeout=timeout, target_variant=target_variant) as predictor:
        if kind == "json" and isinstance(parsed, dict) and "inputs" in parsed:
            request = _v2_request(endpoint, parsed)
            request.model_version = model_version
            if inference_id:
                request.id = inference_id
            for name in outputs:
                request.outputs.add(name=name)
            if target_variant:
                request.parameters["target_variant"].string_param = target_variant
        else:
            info = predictor.metadata()
            if isinstance(parsed, dict) and "__matrix__" in parsed:
                columns, matrix = parsed["__columns__"], parsed["__matrix__"]
                names = [t.name for t in info.inputs]
                if len(names) > 1 or columns == names:
                    parsed = {c: matrix[:, i] for i, c in enumerate(columns) if c in names}
                else:
                    parsed = matrix
            request = build_request(
                endpoint,
                info,
                parsed,
                outputs=outputs,
                model_version=model_version,
                inference_id=inference_id,
                target_variant=target_variant,
            )
        prediction = predictor.predict_request(request, timeout=timeout)
    if as_json:
        echo_json(_jsonable(prediction))
    else:
        _show(prediction)
