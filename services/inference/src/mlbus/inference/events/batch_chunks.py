"""Batch transform: the worker's handler for its endpoint's batch-chunk topic.

A chunk (see :mod:`mlbus.core.transform`) is a slice of one input file. The worker parses
its records (CSV with pyarrow, falling back to a per-line parser to find the bad ones;
JSON Lines; Parquet row ranges), applies the job's input filter, runs the model in batches
of ``max_records_per_batch`` (MULTI_RECORD) or one by one (SINGLE_RECORD) — a batch the
model refuses is re-run record by record so only the bad records fail — joins the input
when asked, applies the output filter and writes ``.out``, ``.err`` and finally ``.done``,
each only if absent. A chunk whose ``.done`` exists is skipped, so redelivery after a
crash neither loses nor duplicates a record.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlbus.core import transform as tf
from mlbus.core.errors import AlreadyExists, InvalidArgument, MlbusError, NotFound, Unavailable
from mlbus.core.messaging import Event, RetryableError
from mlbus.core.storage import ObjectStore
from mlbus.inference.domain.signature import ModelSignature, TensorSpec
from mlbus.inference.worker import Worker
from mlbus.router.v1 import events_pb2 as rev

log = logging.getLogger(__name__)

#: How long a worker trusts its copy of a job manifest (a stop is seen within this).
MANIFEST_TTL_S = 2.0


@dataclass
class Record:
    """One input record: its 1-based line in the input file, its text, the parsed record
    (CSV cells, JSON value, Parquet row), the model inputs it gives, or its error."""

    line: int
    raw: bytes
    parsed: Any = None
    value: Any = None
    error: str = ""


def _format_value(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return str(value)


class BatchChunkHandler:
    """Runs the chunks of transform jobs on this worker's model."""

    def __init__(self, worker: Worker, store: ObjectStore | None, *, endpoint: str) -> None:
        self.worker = worker
        self._store = store
        self.endpoint = endpoint
        #: job id → (manifest, when read); re-read after MANIFEST_TTL_S to see stops.
        self._manifests: OrderedDict[str, tuple[tf.JobManifest, float]] = OrderedDict()
        #: Counts since start (tests, logs).
        self.chunks = 0
        self.records = 0
        self.failed = 0

    @property
    def store(self) -> ObjectStore:
        """The object store chunks are read from and written to."""
        if self._store is None:
            raise Unavailable("the batch handler has no object store yet")
        return self._store

    @store.setter
    def store(self, store: ObjectStore) -> None:
        self._store = store

    async def _manifest(self, job_id: str, *, fresh: bool = False) -> tf.JobManifest | None:
        cached = self._manifests.get(job_id)
        if cached is not None and not fresh and time.monotonic() - cached[1] < MANIFEST_TTL_S:
            self._manifests.move_to_end(job_id)
            return cached[0]
        try:
            data = await self.store.read_bytes(self.store.uri_for(tf.manifest_key(job_id)))
        except NotFound:
            return None
        manifest = tf.JobManifest.model_validate_json(data)
        self._manifests[job_id] = (manifest, time.monotonic())
        while len(self._manifests) > 32:
            self._manifests.popitem(last=False)
        return manifest

    async def handle(self, event: Event[Any]) -> None:
        """Consumer handler: run one chunk (skipped when already done)."""
        chunk: rev.BatchChunkRequested = event.message
        job_id, index = chunk.job_id, int(chunk.chunk_index)
        store = self.store
        done_uri = store.uri_for(tf.chunk_key(job_id, index, "done"))
        if await store.exists(done_uri):
            return
        manifest = await self._manifest(job_id)
        if manifest is None:
            log.warning("chunk of an unknown job dropped", extra={"job_id": job_id, "chunk": index})
            return
        if manifest.stopped:
            return
        try:
            source = manifest.file_of(index)
        except InvalidArgument:
            # The router adds each file to the manifest as it splits it: read it again.
            manifest = await self._manifest(job_id, fresh=True)
            if manifest is None:
                return
            source = manifest.file_of(index)
        try:
            records = await self._records(manifest, source, chunk)
        except Unavailable as exc:
            raise RetryableError(str(exc)) from exc
        try:
            engine = self.worker.ready_engine(self.endpoint, "")
        except Unavailable as exc:
            raise RetryableError(str(exc)) from exc
        signature: ModelSignature = engine.runner.signature
        lines: list[bytes] = []
        errors: list[dict[str, Any]] = []
        await self._run(manifest, source, signature, engine, records, lines, errors)
        for key, body in (
            (tf.chunk_key(job_id, index, "out"), b"".join(line + b"\n" for line in lines)),
            (
                tf.chunk_key(job_id, index, "err"),
                b"".join(json.dumps(e).encode() + b"\n" for e in errors),
            ),
            (
                tf.chunk_key(job_id, index, "done"),
                json.dumps({"records": len(records), "failed": len(errors)}).encode(),
            ),
        ):
            # Another delivery of this chunk may have got here first; its files are the same.
            with contextlib.suppress(AlreadyExists):
                await store.put(key, body, content_type="application/octet-stream", if_absent=True)
        self.chunks += 1
        self.records += len(records)
        self.failed += len(errors)

    # --- records -----------------------------------------------------------------------

    async def _records(
        self, manifest: tf.JobManifest, source: tf.InputFile, chunk: rev.BatchChunkRequested
    ) -> list[Record]:
        first_line = int(chunk.first_record_index) + 1
        if manifest.content_type == tf.PARQUET:
            return await asyncio.to_thread(
                self._parquet_records, await self.store.read_bytes(source.uri), chunk
            )
        data = await self.store.read_bytes(
            chunk.input.uri, expected_sha256=chunk.input.sha256 or None
        )
        if manifest.split_type == "none":
            return [Record(line=first_line, raw=data)]
        header_lines = (
            1 if manifest.content_type == tf.CSV and manifest.csv_header and source.columns else 0
        )
        raw_lines = data.split(b"\n")
        if raw_lines and raw_lines[-1] == b"":
            raw_lines.pop()
        return [
            Record(line=first_line + header_lines + k, raw=line.rstrip(b"\r"))
            for k, line in enumerate(raw_lines)
        ]

    @staticmethod
    def _parquet_records(data: bytes, chunk: rev.BatchChunkRequested) -> list[Record]:
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(data))
        start = int(chunk.first_record_index)
        part = table.slice(start, int(chunk.record_count))
        rows = part.to_pylist()
        return [Record(line=start + k + 1, raw=b"", parsed=row) for k, row in enumerate(rows)]

    def _features(
        self,
        manifest: tf.JobManifest,
        source: tf.InputFile,
        signature: ModelSignature,
        records: list[Record],
    ) -> None:
        """Parse each record into the model's inputs (``value``), or set its ``error``."""
        inputs = signature.inputs
        kind = manifest.content_type
        path = tf.compile_jsonpath(manifest.input_filter) if kind == tf.JSONL else None
        columns = source.columns
        if kind == tf.PARQUET and records:
            columns = [str(c) for c in records[0].parsed]
        picked = tf.parse_columns(manifest.input_filter, columns) if columns else None
        for record in records:
            try:
                if kind == tf.JSONL:
                    record.parsed = json.loads(record.raw)
                    assert path is not None
                    value: Any = path(record.parsed)
                else:
                    if kind == tf.CSV:
                        record.parsed = next(csv.reader([record.raw.decode("utf-8")]))
                        cells = list(record.parsed)
                        if columns and len(cells) != len(columns):
                            raise ValueError(
                                f"expected {len(columns)} columns ({', '.join(columns)}), "
                                f"got {len(cells)}"
                            )
                    else:
                        cells = [record.parsed[c] for c in columns]
                    chosen = [cells[i] for i in picked] if picked is not None else cells
                    if len(inputs) == 1:
                        value = chosen
                    else:
                        names = [columns[i] for i in picked] if picked is not None else columns
                        value = dict(zip(names, chosen, strict=True))
                record.value = _to_inputs(value, inputs)
            except Exception as exc:
                record.error = f"cannot read the record: {type(exc).__name__}: {exc}"

    # --- running -----------------------------------------------------------------------

    async def _run(
        self,
        manifest: tf.JobManifest,
        source: tf.InputFile,
        signature: ModelSignature,
        engine: Any,
        records: list[Record],
        lines: list[bytes],
        errors: list[dict[str, Any]],
    ) -> None:
        self._features(manifest, source, signature, records)
        size = (
            1
            if manifest.batch_strategy == "single_record"
            else max(manifest.max_records_per_batch, 1)
        )
        output_names = signature.output_names
        good = [r for r in records if not r.error]
        results: dict[int, dict[str, Any]] = {}
        for start in range(0, len(good), size):
            batch = good[start : start + size]
            try:
                outputs = await engine.infer(_stack(batch, signature.inputs), output_names)
            except MlbusError:
                outputs = None
            if outputs is not None:
                for k, record in enumerate(batch):
                    results[record.line] = {n: outputs[n][k] for n in output_names}
                continue
            for record in batch:  # isolate the record(s) the model refuses
                try:
                    single = await engine.infer(_stack([record], signature.inputs), output_names)
                except MlbusError as exc:
                    record.error = f"{exc.code.name}: {exc.message}"
                    continue
                results[record.line] = {n: single[n][0] for n in output_names}
        out_filter_json = (
            tf.compile_jsonpath(manifest.output_filter)
            if manifest.output_filter and manifest.content_type != tf.CSV
            else None
        )
        for record in records:
            if record.error:
                errors.append({"file": source.name, "line": record.line, "error": record.error})
                continue
            prediction = results[record.line]
            try:
                lines.append(
                    self._format(manifest, record, prediction, output_names, out_filter_json)
                )
            except Exception as exc:
                errors.append(
                    {
                        "file": source.name,
                        "line": record.line,
                        "error": f"cannot write the output: {exc}",
                    }
                )

    @staticmethod
    def _format(
        manifest: tf.JobManifest,
        record: Record,
        prediction: dict[str, Any],
        output_names: tuple[str, ...],
        out_filter: Any,
    ) -> bytes:
        if manifest.content_type == tf.CSV:
            values = [
                v for name in output_names for v in np.asarray(prediction[name]).ravel().tolist()
            ]
            cells = ([*record.parsed] if manifest.join_input else []) + [
                _format_value(v) for v in values
            ]
            if manifest.output_filter:
                picked = tf.parse_columns(
                    manifest.output_filter, [str(i) for i in range(len(cells))]
                )
                cells = [cells[i] for i in picked]
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="").writerow(cells)
            return buffer.getvalue().encode()
        output = {name: _jsonable(prediction[name]) for name in output_names}
        if manifest.join_input:
            base = record.parsed
            value: Any = (
                {**base, "prediction": output}
                if isinstance(base, dict)
                else {"input": base, "prediction": output}
            )
        else:
            value = output
        if out_filter is not None:
            value = out_filter(value)
        return json.dumps(value, separators=(",", ":"), default=str).encode()


def _jsonable(value: Any) -> Any:
    array = np.asarray(value)
    if array.dtype == object:
        items = [
            v.decode("utf-8", "replace") if isinstance(v, bytes) else v
            for v in array.ravel().tolist()
        ]
        return items if array.ndim else items[0]
    return array.tolist()


def _to_inputs(value: Any, inputs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
    """One record's value as one row per model input."""
    if len(inputs) == 1 and not isinstance(value, dict):
        return {inputs[0].name: _row(value, inputs[0])}
    if not isinstance(value, dict):
        names = ", ".join(i.name for i in inputs)
        raise ValueError(f"the model has inputs {names}; expected an object with them")
    missing = [i.name for i in inputs if i.name not in value]
    if missing:
        raise ValueError(f"missing input(s) {', '.join(missing)}")
    return {spec.name: _row(value[spec.name], spec) for spec in inputs}


def _row(value: Any, spec: TensorSpec) -> np.ndarray:
    """One record's part of input ``spec``: shape ``spec.shape[1:]`` (one element for a
    rank-1 input)."""
    items = value if isinstance(value, list) else [value]
    if spec.datatype.is_bytes:
        array = np.array([v if isinstance(v, str) else str(v) for v in items], dtype=object)
    else:
        array = np.array(
            [float(v) if isinstance(v, str) else v for v in items], dtype=spec.datatype.dtype
        )
    shape = spec.shape
    if shape is None or len(shape) <= 1:
        if array.size != 1:
            raise ValueError(f"input {spec.name!r} takes one value per record, got {array.size}")
        return array.reshape(1)
    rest = list(shape[1:])
    if all(d > 0 for d in rest):
        want = int(np.prod(rest))
        if array.size != want:
            raise ValueError(
                f"input {spec.name!r} ({spec.describe()}) takes {want} values per record, "
                f"got {array.size}"
            )
        return array.reshape(rest)
    return array


def _stack(records: list[Record], inputs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
    """The model inputs of several records, stacked along the batch dimension."""
    out: dict[str, np.ndarray] = {}
    for spec in inputs:
        rows = [r.value[spec.name] for r in records]
        if spec.shape is None or len(spec.shape) <= 1:
            out[spec.name] = np.concatenate(rows)
        else:
            out[spec.name] = np.stack(rows)
    return out
