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

from mlbus.sdk.cli._common import RegistryCommand, console, echo_json, router_option

_MAX_SHOWN = 20


def _v2_request(endpoint: str, body: dict[str, Any]) -> Any:
    from mlbus.core.tensors import NUMPY_DTYPES, add_input
    from mlbus.inference.v2 import grpc_service_pb2 as pb

    request = pb.ModelInferRequest(model_name=endpoint, id=str(body.get("id", "")))
    for key in ("inputs", "outputs"):
        if key in body and not isinstance(body[key], list):
            raise click.BadParameter(
                f"{key}: expected a list of tensors, got {type(body[key]).__name__}",
                param_hint="--input",
            )
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
        try:
            text = path.read_text()
        except UnicodeDecodeError as exc:
            raise click.BadParameter(
                f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})", param_hint="--input"
            ) from None
        kind = "csv" if path.suffix.lower() in (".csv", ".tsv") else "json"
    if kind == "csv":
        return kind, _csv_data(text)
    try:
        return kind, json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(
            f"not JSON: {exc}", param_hint="--data" if data else "--input"
        ) from None


def _request(
    predictor: Any,
    kind: str,
    parsed: Any,
    *,
    outputs: tuple[str, ...],
    model_version: str,
    inference_id: str,
    target_variant: str,
) -> Any:
    """The v2 request for the loaded input (see the module docstring)."""
    from mlbus.sdk.predictor import build_request

    endpoint = predictor.endpoint
    if kind == "json" and isinstance(parsed, dict) and "inputs" in parsed:
        request = _v2_request(endpoint, parsed)
        request.model_version = model_version
        if inference_id:
            request.id = inference_id
        for name in outputs:
            request.outputs.add(name=name)
        if target_variant:
            request.parameters["target_variant"].string_param = target_variant
        return request
    info = predictor.metadata()
    if isinstance(parsed, dict) and "__matrix__" in parsed:
        columns, matrix = parsed["__columns__"], parsed["__matrix__"]
        names = [t.name for t in info.inputs]
        if len(names) > 1 or columns == names:
            parsed = {c: matrix[:, i] for i, c in enumerate(columns) if c in names}
        else:
            parsed = matrix
    return build_request(
        endpoint,
        info,
        parsed,
        outputs=outputs,
        model_version=model_version,
        inference_id=inference_id,
        target_variant=target_variant,
    )


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
@router_option
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
    from mlbus.sdk.predictor import Predictor

    kind, parsed = _load(input_path, data)
    with Predictor(endpoint, router, timeout=timeout, target_variant=target_variant) as predictor:
        request = _request(
            predictor,
            kind,
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


def _show_async(result: Any, as_json: bool) -> None:
    if as_json:
        echo_json(
            {
                "inference_id": result.inference_id,
                "status": result.status,
                "output_uri": result.output_uri,
                "error": {"code": result.error_code, "message": result.error_message}
                if result.error_code
                else None,
                "result": _jsonable(result.prediction) if result.prediction is not None else None,
                "rows": {
                    "job_id": result.job_id,
                    "records_total": result.records_total,
                    "records_done": result.records_done,
                    "records_failed": result.records_failed,
                    "errors_uri": result.errors_uri,
                }
                if result.job_id
                else None,
            }
        )
        return
    console.print(f"inference {result.inference_id}: [bold]{result.status}[/]")
    if result.job_id:
        total = f"{result.records_total:,}" if result.records_total else "?"
        console.print(
            f"records: {result.records_done:,} of {total} done, {result.records_failed:,} failed "
            f"(transform job {result.job_id})"
        )
        if result.status == "SUCCEEDED":
            console.print(f"output: {result.output_uri}")
        if result.errors_uri:
            console.print(f"failed records: {result.errors_uri}")
    if result.prediction is not None:
        _show(result.prediction)
    elif result.error_code:
        console.print(f"{result.error_code}: {result.error_message}")


@click.command("invoke-async", cls=RegistryCommand)
@click.argument("endpoint")
@click.option(
    "--input", "-i", "input_path", metavar="FILE", help="JSON or CSV file; - reads JSON from stdin."
)
@click.option("--data", "-d", metavar="JSON", help="The input as inline JSON instead of a file.")
@click.option(
    "--input-uri",
    default="",
    metavar="URI",
    help="An object in the object store: a v2 request (protobuf, or JSON) or a file of rows "
    "(CSV, JSON Lines, Parquet: run in row chunks); see --content-type.",
)
@click.option(
    "--content-type",
    "--input-content-type",
    "input_content_type",
    default="",
    help="Of --input-uri: application/x-protobuf (default) or application/json (a v2 request); "
    "text/csv, application/jsonlines or application/vnd.apache.parquet (rows).",
)
@click.option(
    "--input-sha256", default="", metavar="HEX", help="SHA-256 the --input-uri object must have."
)
@click.option(
    "--csv-header/--no-csv-header",
    default=None,
    help="Rows: whether the CSV file starts with a header (default: it does).",
)
@click.option(
    "--input-filter",
    default="",
    help="Rows: columns (CSV/Parquet names or indexes) or a JSONPath that feed the model.",
)
@click.option(
    "--records-per-chunk",
    type=click.IntRange(min=0),
    default=0,
    help="Rows: records per chunk (default 10,000).",
)
@router_option
@click.option("--id", "inference_id", default="", help="Inference id (default generated).")
@click.option(
    "--deadline",
    type=click.FloatRange(min=0),
    default=0.0,
    help="Seconds the workers have for it (default: the router's, 1 hour).",
)
@click.option("--reply-topic", default="", help="A Kafka topic that also gets the notification.")
@click.option("--wait", is_flag=True, help="Wait for the result and print it.")
@click.option(
    "--wait-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=3600.0,
    show_default=True,
    help="Longest --wait waits, in seconds.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def invoke_async(
    endpoint: str,
    input_path: str | None,
    data: str | None,
    input_uri: str,
    input_content_type: str,
    input_sha256: str,
    csv_header: bool | None,
    input_filter: str,
    records_per_chunk: int,
    router: str,
    inference_id: str,
    deadline: float,
    reply_topic: str,
    wait: bool,
    wait_timeout: float,
    as_json: bool,
) -> None:
    """Queue an inference on ENDPOINT; print its id and output location (or, with --wait,
    its result)."""
    from mlbus.sdk.async_predictor import AsyncPredictor

    with AsyncPredictor(endpoint, router) as predictor:
        if input_uri:
            if input_path or data:
                raise click.UsageError("give --input-uri, or --input/--data, not both")
            job = predictor.invoke(
                input_uri=input_uri,
                input_content_type=input_content_type,
                inference_id=inference_id,
                deadline_s=deadline,
                reply_topic=reply_topic,
                input_sha256=input_sha256,
                csv_header=csv_header,
                input_filter=input_filter,
                records_per_chunk=records_per_chunk,
            )
        else:
            kind, parsed = _load(input_path, data)
            request = _request(
                predictor._predictor,
                kind,
                parsed,
                outputs=(),
                model_version="",
                inference_id=inference_id,
                target_variant="",
            )
            job = predictor.invoke(
                request=request,
                inference_id=inference_id,
                deadline_s=deadline,
                reply_topic=reply_topic,
            )
        if not wait:
            if as_json:
                echo_json(
                    {
                        "inference_id": job.inference_id,
                        "output_uri": job.output_uri,
                        "failure_uri": job.failure_uri,
                        "input_offloaded": job.input_offloaded,
                        "job_id": job.job_id,
                    }
                )
            else:
                console.print(f"queued {job.inference_id} → {job.output_uri}")
                console.print(f"result with: mlbus async-result {endpoint} {job.inference_id}")
            return
        result = predictor.result(job.inference_id, timeout=wait_timeout)
    _show_async(result, as_json)
    if result.status != "SUCCEEDED":
        raise click.exceptions.Exit(1)


@click.command("async-result", cls=RegistryCommand)
@click.argument("endpoint")
@click.argument("inference_id")
@router_option
@click.option("--wait", is_flag=True, help="Wait until it is done.")
@click.option(
    "--wait-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=3600.0,
    show_default=True,
    help="Longest --wait waits, in seconds.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def async_result(
    endpoint: str, inference_id: str, router: str, wait: bool, wait_timeout: float, as_json: bool
) -> None:
    """Status and result of an asynchronous inference.

    Exit status 1 when it FAILED or EXPIRED (or, with --wait, ended any other way than
    SUCCEEDED), as invoke-async --wait; 0 while it is PENDING or IN_PROGRESS without --wait.
    An id the router never accepted also reads as PENDING."""
    from mlbus.sdk.async_predictor import AsyncPredictor

    with AsyncPredictor(endpoint, router) as predictor:
        result = predictor.result(inference_id, wait=wait, timeout=wait_timeout)
    _show_async(result, as_json)
    if result.status in ("FAILED", "EXPIRED") or (wait and result.status != "SUCCEEDED"):
        raise click.exceptions.Exit(1)
