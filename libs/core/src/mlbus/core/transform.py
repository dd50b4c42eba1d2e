"""The contract of batch transform jobs between the router (which splits the input and
assembles the output) and the workers (which run the chunks).

Everything of a job lives in the object store under ``transform/<job id>/``:

* ``job.json`` — the :class:`JobManifest`: the spec, the input files and how they were
  cut into chunks (written by the router before any chunk is sent, updated as it goes);
* a chunk's records: for CSV and JSON Lines split by line, whole lines of the input file
  itself — the ``BatchChunkRequested`` names its byte range (``input_offset``,
  ``input_length``) and the line index of its first line (``first_record_index``, counted
  from 0 after any header), blank lines included (they are no records but keep the line
  numbers of the records after them; ``record_count`` counts the non-blank lines); with
  split type NONE, the whole file; for Parquet, ``chunks/<index>.in``: a Parquet file of
  the chunk's rows (``first_record_index`` is the row of its first one in the input), so a
  worker reads its chunk and never the whole file (a Parquet input of an asynchronous
  inference is converted into CSV ``.in`` chunks instead). The input must not change while
  the job runs (the router checks its size and modification time at the end);
* ``chunks/<index>.out`` — the chunk's output lines, one per successful record, in order;
* ``chunks/<index>.err`` — JSON Lines ``{"file", "line", "error"}`` of its failed records
  (only written when some failed);
* ``chunks/<index>.done`` — ``{"records", "failed"}``, written last (only if absent).

A chunk is done exactly when its ``.done`` exists, and every file is written only if
absent, so a chunk redelivered after a worker crash is either skipped or finishes the same
files: the assembled output holds each record once, in input order.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final, Literal

from pydantic import BaseModel, Field

from mlbus.core.errors import InvalidArgument

CSV: Final = "text/csv"
JSONL: Final = "application/jsonlines"
PARQUET: Final = "application/x-parquet"
CONTENT_TYPES: Final = (CSV, JSONL, PARQUET)
_SUFFIXES: Final = {
    ".csv": CSV,
    ".jsonl": JSONL,
    ".ndjson": JSONL,
    ".json": JSONL,
    ".parquet": PARQUET,
    ".pq": PARQUET,
}


def content_type_for(name: str) -> str | None:
    """The content type a file name's suffix implies, if any."""
    lower = name.lower()
    for suffix, kind in _SUFFIXES.items():
        if lower.endswith(suffix):
            return kind
    return None


def job_prefix(job_id: str) -> str:
    """Object-store prefix of one job."""
    return f"transform/{job_id}/"


def manifest_key(job_id: str) -> str:
    """Key of the job manifest."""
    return job_prefix(job_id) + "job.json"


def chunk_key(job_id: str, index: int, suffix: Literal["in", "out", "err", "done"]) -> str:
    """Key of one chunk's input, output, errors or done marker."""
    return f"{job_prefix(job_id)}chunks/{index:07d}.{suffix}"


class InputFile(BaseModel):
    """One input file of a job and the chunks cut from it."""

    name: str
    uri: str
    #: CSV header columns ([] without a header or for other types).
    columns: list[str] = Field(default_factory=list)
    #: Index of the file's first chunk; -1 until the router starts splitting it.
    first_chunk: int = -1
    chunk_count: int = 0
    records: int = 0
    #: Size and modification time (epoch seconds) when the job was planned; 0: unknown.
    size: int = 0
    modified: float = 0.0


class JobManifest(BaseModel):
    """What workers and the router know of a job (``job.json``)."""

    job_id: str
    endpoint: str
    content_type: str
    split_type: Literal["line", "none"] = "line"
    batch_strategy: Literal["multi_record", "single_record"] = "multi_record"
    max_payload_bytes: int = 6 * 1024 * 1024
    max_records_per_batch: int = 1000
    #: Records per chunk when chunk_bytes is 0 (records_per_chunk given in the spec).
    records_per_chunk: int = 10_000
    #: Chunks of about this many bytes of input (a line chunk ends with the first record
    #: line that takes it to this size; a Parquet chunk has the rows of this many bytes of
    #: the file); 0: records_per_chunk records each.
    chunk_bytes: int = 0
    csv_header: bool = True
    input_filter: str = ""
    join_input: bool = False
    output_filter: str = ""
    max_failure_percent: float = 100.0
    output_uri: str = ""
    files: list[InputFile] = Field(default_factory=list)
    chunks_total: int = 0
    records_total: int = 0
    #: Set when the router split everything; until then chunks_total may still grow.
    split_done: bool = False
    stopped: bool = False

    def file_of(self, chunk_index: int) -> InputFile:
        """The input file a chunk was cut from: the last file starting at or before it (the
        router lists each file, with its first chunk, before sending that file's chunks)."""
        best: InputFile | None = None
        for item in self.files:
            if 0 <= item.first_chunk <= chunk_index and (
                best is None or item.first_chunk >= best.first_chunk
            ):
                best = item
        if best is None or (
            self.split_done and chunk_index >= best.first_chunk + max(best.chunk_count, 1)
        ):
            raise InvalidArgument(f"job {self.job_id}: no input file holds chunk {chunk_index}")
        return best


def parse_columns(text: str, columns: list[str]) -> list[int]:
    """A CSV/Parquet filter (names or 0-based indexes, comma-separated) as column indexes."""
    if not text.strip():
        return list(range(len(columns)))
    indexes: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part.lstrip("-").isdigit():
            index = int(part)
            if columns and not -len(columns) <= index < len(columns):
                raise InvalidArgument(
                    f"filter {text!r}: column {index} is out of range (the record has {len(columns)})"
                )
            indexes.append(index % len(columns) if columns else index)
        elif part in columns:
            indexes.append(columns.index(part))
        else:
            raise InvalidArgument(
                f"filter {text!r}: no column {part!r}; columns: {', '.join(columns) or '(no header)'}"
            )
    return indexes


_TOKEN = re.compile(
    r"\.(?P<name>[A-Za-z_][A-Za-z0-9_-]*)"
    r"|\[(?P<index>-?\d+)\]"
    r"|\[(?P<slice>-?\d*:-?\d*)\]"
    r"|\[(?P<keys>\s*'[^']*'(?:\s*,\s*'[^']*')*\s*)\]"
)


def _item(key: Any) -> Callable[[Any], Any]:
    def get(value: Any) -> Any:
        return value[key]

    return get


def _subset(keys: tuple[str, ...]) -> Callable[[Any], Any]:
    def get(value: Any) -> Any:
        return {k: value[k] for k in keys}

    return get


def compile_jsonpath(text: str) -> Callable[[Any], Any]:
    """A JSONPath subset for filters: ``$``, ``$.a.b``, ``$[0]``, ``$[1:3]``,
    ``$['a','b']`` (several keys give an object with just those keys). InvalidArgument
    for anything else; the returned function raises KeyError/IndexError/TypeError when a
    record lacks the path."""
    path = text.strip()
    if path in ("", "$"):
        return lambda value: value
    if not path.startswith("$"):
        raise InvalidArgument(f"JSONPath {text!r}: must start with '$'")
    steps: list[Callable[[Any], Any]] = []
    pos = 1
    while pos < len(path):
        match = _TOKEN.match(path, pos)
        if match is None:
            raise InvalidArgument(
                f"JSONPath {text!r}: unsupported at {path[pos:]!r}; supported: $.name, $[i], "
                "$[a:b], $['k1','k2']"
            )
        if match["name"] is not None:
            steps.append(_item(match["name"]))
        elif match["index"] is not None:
            steps.append(_item(int(match["index"])))
        elif match["slice"] is not None:
            lo, _, hi = match["slice"].partition(":")
            steps.append(_item(slice(int(lo) if lo else None, int(hi) if hi else None)))
        else:
            keys = [k.strip()[1:-1] for k in match["keys"].split(",")]
            steps.append(_item(keys[0]) if len(keys) == 1 else _subset(tuple(keys)))
        pos = match.end()

    def apply(value: Any) -> Any:
        for step in steps:
            value = step(value)
        return value

    return apply
