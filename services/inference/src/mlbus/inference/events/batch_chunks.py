"""Batch transform: the worker's handler for its endpoint's batch-chunk topic.

A chunk (see :mod:`mlbus.core.transform`) is a slice of one input file. CSV chunks for a
model with numeric inputs take the fast path: pyarrow parses the whole chunk (column names
from the manifest, the model's columns as numbers) straight into the model's input arrays,
the model runs on slices of ``max_records_per_batch`` rows, and the outputs are formatted
column by column (numbers to text in Arrow, lines joined in Arrow). When anything on that
path fails — a record pyarrow cannot parse, a batch the model refuses, a layout it does not
cover — the chunk is run again on the per-record path, which finds the bad records and
reports each with its line number: records parsed one by one (CSV cells, JSON Lines,
Parquet rows), the job's input filter, the model in batches of ``max_records_per_batch``
(MULTI_RECORD) or one by one (SINGLE_RECORD) with a refused batch re-run record by record,
the input joined when asked, the output filter. Both paths format a CSV output line the
same way, so where a chunk ran does not show in the output.

The handler writes ``.out``, ``.err`` and finally ``.done``, each only if absent. A chunk
whose ``.done`` exists is skipped, so redelivery after a crash neither loses nor duplicates
a record.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from mlbus.core import transform as tf
from mlbus.core.errors import AlreadyExists, InvalidArgument, MlbusError, NotFound, Unavailable
from mlbus.core.messaging import DeadLetter, Event, RetryableError
from mlbus.core.storage import ObjectStore
from mlbus.inference.domain.signature import ModelSignature, TensorSpec
from mlbus.inference.worker import Worker
from mlbus.router.v1 import events_pb2 as rev

log = logging.getLogger(__name__)

#: How long a worker trusts its copy of a job manifest (a stop is seen within this).
MANIFEST_TTL_S = 2.0
#: Parse a CSV chunk on pyarrow's thread pool when it is the only chunk this worker runs
#: (the parse is most of a chunk's work). With several at once (a chunk of each partition
#: fetched), each is parsed on one thread: on pyarrow's threads a parse costs ~50 % more
#: CPU, which a machine whose cores are all busy pays in throughput.
CSV_THREADS = True
#: Characters that make a CSV output cell quoted (the csv module's minimal quoting, plus
#: line breaks, which would otherwise split an output record in two).
_CSV_SPECIAL = (",", '"', "\r", "\n")
#: Regular expression of the same characters, for Arrow.
_CSV_SPECIAL_RE = '[,"\r\n]'


@dataclass
class Record:
    """One input record: its 1-based line in the input file, its text, the parsed record
    (CSV cells, JSON value, Parquet row), the model inputs it gives, or its error."""

    line: int
    raw: bytes
    parsed: Any = None
    value: Any = None
    error: str = ""


@dataclass
class ChunkResult:
    """What a chunk produced: the ``.out`` body, the failed records, the record count."""

    out: bytes
    errors: list[dict[str, Any]]
    records: int


class FastPathUnavailable(Exception):
    """The fast path does not cover this chunk (or failed on it): run it record by record."""


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
        #: Chunks run on the fast path, and chunks it handed to the per-record path.
        self.fast_chunks = 0
        self.fallbacks = 0
        #: Chunks being run now.
        self.running = 0

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
        """Consumer handler: run one chunk (skipped when already done). The object store
        or the model being unavailable is retried (then the chunk is dead-lettered)."""
        self.running += 1
        try:
            await self._handle(event.message)
        except Unavailable as exc:
            raise RetryableError(str(exc)) from exc
        finally:
            self.running -= 1

    async def on_dead_letter(self, letter: DeadLetter) -> None:
        """Consumer hook: a chunk that could not be run went to the dead-letter topic. It
        is marked done with every record failed (the reason in its errors file): the job
        then ends, COMPLETED_WITH_ERRORS or FAILED as its failures decide, instead of
        waiting for the chunk for ever."""
        chunk = letter.message
        if not isinstance(chunk, rev.BatchChunkRequested):
            log.error(
                "an undecodable chunk request went to %s: its job cannot finish",
                letter.topic.dlq_name,
                extra={"partition": letter.partition, "offset": letter.offset},
            )
            return
        job_id, index = chunk.job_id, int(chunk.chunk_index)
        where = {"job_id": job_id, "chunk": index}
        store = self.store
        if await store.exists(store.uri_for(tf.chunk_key(job_id, index, "done"))):
            return  # another delivery finished it
        manifest = await self._manifest(job_id, fresh=True)
        if manifest is None or manifest.stopped:
            return
        source = manifest.file_of(index)
        cause = letter.error.__cause__ if isinstance(letter.error, RetryableError) else None
        reason = (
            f"the chunk could not be run and went to {letter.topic.dlq_name}: "
            f"{cause or letter.error}"
        )
        try:
            lines = [
                r.line
                for r in self._split(
                    manifest, source, chunk, await self._read(manifest, source, chunk)
                )
            ]
        except Exception:
            # Its bytes cannot be read (or split) any more: number its records as the
            # router counted them.
            first = int(chunk.first_record_index) + 1
            if manifest.content_type == tf.CSV and manifest.csv_header and source.columns:
                first += 1
            lines = list(range(first, first + int(chunk.record_count)))
        errors = b"".join(
            json.dumps({"file": source.name, "line": line, "error": reason}).encode() + b"\n"
            for line in lines
        )
        done = json.dumps({"records": len(lines), "failed": len(lines)}).encode()
        files: list[tuple[Literal["out", "err", "done"], bytes]] = [
            ("out", b""),
            ("err", errors),
            ("done", done),
        ]
        for suffix, body in files:
            with contextlib.suppress(AlreadyExists):
                await store.put(
                    tf.chunk_key(job_id, index, suffix),
                    body,
                    content_type="application/octet-stream",
                    if_absent=True,
                )
        self.failed += len(lines)
        log.warning(
            "chunk marked failed: %d records", len(lines), extra={**where, "reason": reason}
        )

    async def _handle(self, chunk: rev.BatchChunkRequested) -> None:
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
            data = await self._read(manifest, source, chunk)
            engine = self.worker.ready_engine(self.endpoint, "")
        except Unavailable as exc:
            raise RetryableError(str(exc)) from exc
        signature: ModelSignature = engine.runner.signature
        result: ChunkResult | None = None
        if _fast_csv(manifest, signature):
            try:
                result = await self._run_csv_fast(manifest, source, signature, engine, data, chunk)
                self.fast_chunks += 1
            except FastPathUnavailable as exc:
                self.fallbacks += 1
                log.info(
                    "chunk runs record by record: %s",
                    exc,
                    extra={"job_id": job_id, "chunk": index},
                )
        if result is None:
            records = self._split(manifest, source, chunk, data)
            lines: list[bytes] = []
            errors: list[dict[str, Any]] = []
            await self._run(manifest, source, signature, engine, records, lines, errors)
            result = ChunkResult(b"".join(line + b"\n" for line in lines), errors, len(records))
        files = [(tf.chunk_key(job_id, index, "out"), result.out)]
        if result.errors:  # the router reads .err only of chunks with failed records
            files.append(
                (
                    tf.chunk_key(job_id, index, "err"),
                    b"".join(json.dumps(e).encode() + b"\n" for e in result.errors),
                )
            )
        files.append(
            (
                tf.chunk_key(job_id, index, "done"),
                json.dumps({"records": result.records, "failed": len(result.errors)}).encode(),
            )
        )
        for key, body in files:
            # Another delivery of this chunk may have got here first; its files are the same.
            with contextlib.suppress(AlreadyExists):
                await store.put(key, body, content_type="application/octet-stream", if_absent=True)
        self.chunks += 1
        self.records += result.records
        self.failed += len(result.errors)

    # --- records -----------------------------------------------------------------------

    async def _read(
        self, manifest: tf.JobManifest, source: tf.InputFile, chunk: rev.BatchChunkRequested
    ) -> bytes:
        """The chunk's bytes: its range of the input file, or its chunk file (or the whole
        input file: split type NONE; a Parquet chunk of a router before chunk files)."""
        if chunk.input_length:
            data = await self.store.read_range(
                chunk.input.uri, int(chunk.input_offset), int(chunk.input_length)
            )
            if len(data) != chunk.input_length:
                raise InvalidArgument(
                    f"chunk {chunk.chunk_index}: {chunk.input.uri} has {len(data)} bytes from "
                    f"{chunk.input_offset}, not {chunk.input_length}: the input changed"
                )
            return data
        # Not checked against chunk.input.sha256: the router wrote the object whole (puts are
        # atomic), a re-split writes the same bytes, and hashing every chunk again costs as
        # about an eighth of parsing it. (The router does not check the .out files either.)
        return await self.store.read_bytes(chunk.input.uri)

    def _split(
        self,
        manifest: tf.JobManifest,
        source: tf.InputFile,
        chunk: rev.BatchChunkRequested,
        data: bytes,
    ) -> list[Record]:
        """The chunk's records, each with its line in the input file (blank lines, which
        the router may leave in a chunk, are no records but keep their line numbers)."""
        first_line = int(chunk.first_record_index) + 1
        if manifest.content_type == tf.PARQUET:
            return self._parquet_records(data, chunk, whole_file=chunk.input.uri == source.uri)
        if manifest.split_type == "none":
            return [Record(line=first_line, raw=data)]
        header_lines = (
            1 if manifest.content_type == tf.CSV and manifest.csv_header and source.columns else 0
        )
        raw_lines = data.split(b"\n")
        if raw_lines and raw_lines[-1] == b"":
            raw_lines.pop()
        records = []
        for k, line in enumerate(raw_lines):
            text = line.rstrip(b"\r")
            if text.strip():
                records.append(Record(line=first_line + header_lines + k, raw=text))
        return records

    @staticmethod
    def _parquet_records(
        data: bytes, chunk: rev.BatchChunkRequested, *, whole_file: bool
    ) -> list[Record]:
        """The rows of a Parquet chunk file (or, ``whole_file``, of the chunk's part of the
        input file), each numbered by its 1-based row in the input."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(pa.py_buffer(data))
        start = int(chunk.first_record_index)
        part = table.slice(start if whole_file else 0, int(chunk.record_count))
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
        # Without a header the filter names columns by index (it used to be ignored).
        picked = (
            tf.parse_columns(manifest.input_filter, columns)
            if columns or (kind == tf.CSV and manifest.input_filter.strip())
            else None
        )
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

    # --- the fast path (CSV, numeric inputs) -------------------------------------------

    async def _run_csv_fast(
        self,
        manifest: tf.JobManifest,
        source: tf.InputFile,
        signature: ModelSignature,
        engine: Any,
        data: bytes,
        chunk: rev.BatchChunkRequested,
    ) -> ChunkResult:
        """Parse, run and format a whole CSV chunk column-wise; FastPathUnavailable when
        the chunk needs the per-record path."""
        # numpy counts newlines ~3x faster than bytes.count.
        lines = int(np.count_nonzero(np.frombuffer(data, dtype=np.uint8) == 10))
        lines += 1 if data and not data.endswith(b"\n") else 0
        if chunk.record_count and lines != int(chunk.record_count):
            raise FastPathUnavailable("the chunk has blank lines")
        try:
            inputs, rows = await asyncio.to_thread(
                _parse_csv,
                data,
                manifest,
                source.columns,
                signature,
                use_threads=CSV_THREADS and self.running == 1,
            )

        except FastPathUnavailable:
            raise
        except Exception as exc:
            raise FastPathUnavailable(f"pyarrow cannot read the chunk: {exc}") from exc
        if rows != lines:
            raise FastPathUnavailable(f"pyarrow read {rows} records of {lines} lines")
        size = (
            1
            if manifest.batch_strategy == "single_record"
            else max(manifest.max_records_per_batch, 1)
        )
        names = signature.output_names
        parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
        for start in range(0, rows, size):
            stop = min(start + size, rows)
            feeds = {name: array[start:stop] for name, array in inputs.items()}
            try:
                outputs = await engine.infer(feeds, names)
            except Unavailable as exc:
                raise RetryableError(str(exc)) from exc
            except MlbusError as exc:
                raise FastPathUnavailable(f"the model refused a batch: {exc.message}") from exc
            for name in names:
                value = np.asarray(outputs[name])
                if value.ndim == 0 or value.shape[0] != stop - start:
                    raise FastPathUnavailable(
                        f"output {name!r} has no batch dimension (shape {list(value.shape)})"
                    )
                parts[name].append(value)
        predictions = {
            name: (pieces[0] if len(pieces) == 1 else np.concatenate(pieces))
            for name, pieces in parts.items()
        }
        try:
            out = await asyncio.to_thread(
                _csv_output, manifest, data, rows, predictions, names, len(source.columns)
            )
        except FastPathUnavailable:
            raise
        except Exception as exc:
            raise FastPathUnavailable(f"cannot write the output column-wise: {exc}") from exc
        return ChunkResult(out, [], rows)

    # --- the per-record path -----------------------------------------------------------

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
            except Unavailable as exc:  # the worker is stopping: another one runs the chunk
                raise RetryableError(str(exc)) from exc
            except MlbusError:
                outputs = None
            if outputs is not None:
                for k, record in enumerate(batch):
                    results[record.line] = {n: outputs[n][k] for n in output_names}
                continue
            for record in batch:  # isolate the record(s) the model refuses
                try:
                    single = await engine.infer(_stack([record], signature.inputs), output_names)
                except Unavailable as exc:
                    raise RetryableError(str(exc)) from exc
                except MlbusError as exc:
                    record.error = f"{exc.code.name}: {exc.message}"
                    continue
                results[record.line] = {n: single[n][0] for n in output_names}
        out_filter_json = (
            tf.compile_jsonpath(manifest.output_filter)
            if manifest.output_filter and manifest.content_type != tf.CSV
            else None
        )
        texts: dict[int, list[str]] = {}
        if manifest.content_type == tf.CSV:
            texts = _prediction_texts(
                [(r.line, results[r.line]) for r in records if not r.error], output_names
            )
        for record in records:
            if record.error:
                errors.append({"file": source.name, "line": record.line, "error": record.error})
                continue
            prediction = results[record.line]
            try:
                if manifest.content_type == tf.CSV:
                    lines.append(_csv_line(manifest, record, texts[record.line]))
                else:
                    lines.append(
                        _json_line(manifest, record, prediction, output_names, out_filter_json)
                    )
            except Exception as exc:
                errors.append(
                    {
                        "file": source.name,
                        "line": record.line,
                        "error": f"cannot write the output: {exc}",
                    }
                )


# --- CSV: shared by both paths -----------------------------------------------------------


def _csv_cell(text: str) -> str:
    """One CSV output cell: quoted (quotes doubled) when it holds a comma, a quote or a
    line break."""
    if any(c in text for c in _CSV_SPECIAL):
        return '"' + text.replace('"', '""') + '"'
    return text


def _csv_join(cells: Sequence[str]) -> str:
    """One CSV output line of already quoted cells (a lone empty cell is written ``""``, as
    the csv module does, so the line is not blank)."""
    if len(cells) == 1 and not cells[0]:
        return '""'
    return ",".join(cells)


def _value_columns(array: Any) -> list[np.ndarray]:
    """An output of ``n`` records as columns: one per value of a record, in C order."""
    values = np.asarray(array)
    rows = values.shape[0] if values.ndim else 1
    flat = values.reshape(rows, -1)
    columns = []
    for j in range(flat.shape[1]):
        column = flat[:, j]
        if column.dtype.kind == "f" and column.dtype.itemsize < 4:
            column = column.astype(np.float32)  # Arrow formats float32 and float64
        columns.append(column)
    return columns


def _text_column(column: np.ndarray) -> Any:
    """One column of values as CSV text cells (a pyarrow string array, quoted where needed).
    Numbers are written as Arrow formats them (the shortest text that reads back as the same
    value of that type, as ``pyarrow.csv.write_csv`` writes them); booleans as True/False."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.dtype.kind
    if kind in "fiu":
        return pc.cast(pa.array(column), pa.string())
    if kind == "b":
        return pa.array(np.where(column, "True", "False"))
    return pa.array(
        [
            _csv_cell(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v))
            for v in column.tolist()
        ],
        type=pa.string(),
    )


def _text_columns(array: Any) -> list[Any]:
    """An output of ``n`` records as text columns, one per value of a record."""
    return [_text_column(column) for column in _value_columns(array)]


def _prediction_texts(
    results: list[tuple[int, dict[str, Any]]], output_names: tuple[str, ...]
) -> dict[int, list[str]]:
    """Line → the text cells of its prediction (the per-record path), formatted as the fast
    path formats them: all records at once where their outputs stack, else one by one."""
    texts: dict[int, list[str]] = {line: [] for line, _ in results}
    if not results:
        return texts
    for name in output_names:
        values = [np.asarray(prediction[name]) for _, prediction in results]
        try:
            stacked: list[list[Any]] | None = [
                c.to_pylist() for c in _text_columns(np.stack(values))
            ]
        except ValueError:
            stacked = None
        for k, (line, _) in enumerate(results):
            if stacked is not None:
                texts[line].extend(column[k] for column in stacked)
            else:
                texts[line].extend(
                    c.to_pylist()[0] for c in _text_columns(values[k].reshape(1, -1))
                )
    return texts


def _csv_line(manifest: tf.JobManifest, record: Record, prediction: list[str]) -> bytes:
    """One CSV output line (the per-record path). With the input joined and no output
    filter, the input line is kept as it is; with a filter, the input's cells are written
    again."""
    if manifest.join_input and not manifest.output_filter:
        return record.raw + b"," + _csv_join(prediction).encode()
    cells = ([_csv_cell(c) for c in record.parsed] if manifest.join_input else []) + prediction
    if manifest.output_filter:
        picked = tf.parse_columns(manifest.output_filter, [str(i) for i in range(len(cells))])
        cells = [cells[i] for i in picked]
    return _csv_join(cells).encode()


def _fast_csv(manifest: tf.JobManifest, signature: ModelSignature) -> bool:
    """Whether the fast path may take chunks of this job: CSV split by line, inputs of
    numbers or booleans."""
    return (
        manifest.content_type == tf.CSV
        and manifest.split_type == "line"
        and bool(signature.inputs)
        and all(spec.datatype.dtype.kind in "fiub" for spec in signature.inputs)
    )


def _parse_csv(
    data: bytes,
    manifest: tf.JobManifest,
    header: list[str],
    signature: ModelSignature,
    *,
    use_threads: bool = CSV_THREADS,
) -> tuple[dict[str, np.ndarray], int]:
    """A CSV chunk as the model's inputs (rows along the first dimension) and its row
    count, as the per-record path would build them from the same records;
    FastPathUnavailable (or pyarrow's error) when it cannot."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    if header:
        names = list(header)
    else:
        first = data.split(b"\n", 1)[0].rstrip(b"\r")
        if b'"' in first:
            raise FastPathUnavailable("no header, and quotes in the first record")
        names = [f"c{i}" for i in range(first.count(b",") + 1)]
    if len(set(names)) != len(names):
        raise FastPathUnavailable("the header names a column twice")
    picked = tf.parse_columns(manifest.input_filter, names)
    inputs = signature.inputs
    if len(inputs) > 1 and not header:
        raise FastPathUnavailable("a model with several inputs needs a header")
    wanted = [names[i] for i in sorted(set(picked))]
    table = pacsv.read_csv(
        pa.py_buffer(data),
        read_options=pacsv.ReadOptions(column_names=names, use_threads=use_threads),
        parse_options=pacsv.ParseOptions(newlines_in_values=False, ignore_empty_lines=True),
        convert_options=pacsv.ConvertOptions(
            column_types=dict.fromkeys(wanted, pa.float64()),
            include_columns=wanted,
            null_values=[],
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    rows = table.num_rows
    out: dict[str, np.ndarray] = {}
    if len(inputs) == 1:
        spec = inputs[0]
        # Column by column into a values × rows array (contiguous copies, converted to a
        # float or bool input's dtype on the way), then transposed once: filling a
        # rows × values array column by column is several times slower.
        dtype = spec.datatype.dtype
        by_column = np.empty((len(picked), rows), dtype=dtype if dtype.kind in "fb" else np.float64)
        for j, index in enumerate(picked):
            by_column[j] = table.column(names[index]).to_numpy()
        out[spec.name] = _cast(_shaped(by_column.T, spec), spec)
        return out, rows
    by_name = {names[i]: names[i] for i in picked}
    for spec in inputs:
        if spec.name not in by_name:
            raise FastPathUnavailable(f"no column for input {spec.name!r}")
        column = table.column(spec.name).to_numpy().reshape(rows, 1)
        out[spec.name] = _cast(_shaped(column, spec), spec)
    return out, rows


def _shaped(matrix: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """``rows × values`` as input ``spec`` takes it, by the rules of :func:`_row` and
    :func:`_stack`."""
    rows, values = matrix.shape
    shape = spec.shape
    if shape is None or len(shape) <= 1:
        if values != 1:
            raise FastPathUnavailable(f"input {spec.name!r} takes one value per record")
        return matrix.reshape(rows)
    rest = list(shape[1:])
    if all(d > 0 for d in rest):
        if int(np.prod(rest)) != values:
            raise FastPathUnavailable(
                f"input {spec.name!r} takes {int(np.prod(rest))} values per record, not {values}"
            )
        return matrix.reshape([rows, *rest])
    return matrix


def _cast(values: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Numbers as the input's dtype, exactly as ``np.array(floats, dtype)`` converts them."""
    dtype = spec.datatype.dtype
    if dtype.kind in "iu":
        # Within the type's range (strictly below its largest value, which a float64 may
        # round up past), where both conversions truncate towards zero.
        info = np.iinfo(dtype.type)  # type: ignore[type-var]
        if values.size and not (
            np.isfinite(values).all()
            and values.min() >= float(info.min)
            and values.max() < float(info.max)
        ):
            raise FastPathUnavailable(f"input {spec.name!r}: a value does not fit {dtype}")
    return np.ascontiguousarray(values.astype(dtype, copy=False))


def _csv_output(
    manifest: tf.JobManifest,
    data: bytes,
    rows: int,
    predictions: dict[str, np.ndarray],
    output_names: tuple[str, ...],
    header_columns: int,
) -> bytes:
    """The ``.out`` body of a CSV chunk, column-wise, line for line what :func:`_csv_line`
    writes."""
    import pyarrow as pa
    import pyarrow.compute as pc

    predicted: list[Any] = []
    for name in output_names:
        predicted.extend(_value_columns(predictions[name]))
    columns: list[Any]
    if manifest.join_input and not manifest.output_filter:
        columns = [_input_lines(data, rows), *predicted]
    elif manifest.join_input:
        columns = [*_input_cells(data, header_columns), *predicted]
    else:
        columns = predicted
    if manifest.output_filter:
        picked = tf.parse_columns(manifest.output_filter, [str(i) for i in range(len(columns))])
        columns = [columns[i] for i in picked]
    if not columns:
        return b"\n" * rows
    if all(isinstance(c, np.ndarray) and c.dtype.kind in "fiu" for c in columns):
        # Numbers only: Arrow's CSV writer formats them as _text_column does, in one pass,
        # into an Arrow buffer (a Python file would take the GIL for every batch it writes).
        import pyarrow.csv as pacsv

        sink = pa.BufferOutputStream()
        pacsv.write_csv(
            pa.table({str(k): c for k, c in enumerate(columns)}),
            sink,
            write_options=pacsv.WriteOptions(include_header=False, quoting_style="none"),
        )
        return bytes(sink.getvalue().to_pybytes())
    columns = [_text_column(c) if isinstance(c, np.ndarray) else c for c in columns]
    if len(columns) == 1:
        lines = columns[0]
        lines = pc.if_else(pc.equal(lines, ""), pa.scalar('""'), lines)
    else:
        lines = pc.binary_join_element_wise(*columns, ",")
    lines = pc.binary_join_element_wise(lines, pa.scalar(""), "\n")
    if lines.null_count:
        raise FastPathUnavailable("an output cell is missing")
    return _concatenated(lines)


def _input_lines(data: bytes, rows: int) -> Any:
    """The chunk's lines (without line ends) as a string array."""
    import pyarrow as pa
    import pyarrow.compute as pc

    text = data.decode("utf-8")
    parts = pc.split_pattern(pa.array([text]), "\n").flatten()
    if len(parts) > rows:
        parts = parts.slice(0, rows)
    return pc.utf8_rtrim(parts, characters="\r")


def _input_cells(data: bytes, columns: int) -> list[Any]:
    """The chunk's cells as text, one array per column (none needs quoting: a chunk with
    quotes takes the per-record path)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    if b'"' in data:
        # Quoted input cells: re-quoting them must match the csv module exactly.
        raise FastPathUnavailable("quoted input cells with an output filter")
    table = pacsv.read_csv(
        pa.py_buffer(data),
        read_options=pacsv.ReadOptions(autogenerate_column_names=True, use_threads=False),
        parse_options=pacsv.ParseOptions(newlines_in_values=False, ignore_empty_lines=True),
        convert_options=pacsv.ConvertOptions(
            column_types={f"f{i}": pa.string() for i in range(max(columns, 1))},
            null_values=[],
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    if columns and table.num_columns != columns:
        raise FastPathUnavailable("the chunk's column count differs from the header's")
    cells = []
    for column in table.columns:
        if column.type != pa.string():
            raise FastPathUnavailable("an input column was not read as text")
        cells.append(column.combine_chunks())
    return cells


def _concatenated(lines: Any) -> bytes:
    """The bytes of a string array's values, end to end."""
    array = lines.combine_chunks() if hasattr(lines, "combine_chunks") else lines
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32)[
        array.offset : array.offset + len(array) + 1
    ]
    data = array.buffers()[2]
    if data is None:
        return b""
    return bytes(memoryview(data)[int(offsets[0]) : int(offsets[-1])])


# --- JSON output ---------------------------------------------------------------------------


def _json_line(
    manifest: tf.JobManifest,
    record: Record,
    prediction: dict[str, Any],
    output_names: tuple[str, ...],
    out_filter: Any,
) -> bytes:
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
