"""The contract of asynchronous inference, shared by the router, the workers and clients.

A request is a v2 ``inference.ModelInferRequest`` on the endpoint's request topic
(``mlbus.inference.<endpoint>.requests.v1``), keyed by its inference id, as protobuf or v2
JSON (``content-type: application/json``). Headers (all optional for producers):

=========================  =====================================================================
``mlbus-inference-id``     the inference id (else the request ``id``, else the record key)
``mlbus-reply-topic``      a topic that also gets the notification
``mlbus-input-uri``        claim check: the request is in the object store at this URI (the
                           record value is then an empty request)
``mlbus-input-sha256``     the SHA-256 of that object, checked when read
``mlbus-input-content-type``  ``application/x-protobuf`` (default) or ``application/json``
``mlbus-deadline``         milliseconds since the epoch after which the request is not run
                           (EXPIRED) or given up (DEADLINE_EXCEEDED)
``mlbus-receive-time``     milliseconds since the epoch when the router accepted it
=========================  =====================================================================

Results live in the object store under ``async/<endpoint>/<inference id>/``: ``output.pb``
(the serialized ``ModelInferResponse``), ``completion.pb`` / ``failure.pb`` (the
``AsyncInferenceCompleted`` / ``AsyncInferenceFailed`` notification) and ``notified`` (written once the notification was published). These names
make the visible result exactly-once: a redelivered request whose output or failure exists
is not run again, and its notification is sent only if ``notified`` is missing.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Final

from mlbus.core import transform as tf
from mlbus.core.errors import InvalidArgument

H_INFERENCE_ID: Final = "mlbus-inference-id"
H_REPLY_TOPIC: Final = "mlbus-reply-topic"
H_INPUT_URI: Final = "mlbus-input-uri"
H_INPUT_SHA256: Final = "mlbus-input-sha256"
H_INPUT_CONTENT_TYPE: Final = "mlbus-input-content-type"
H_DEADLINE: Final = "mlbus-deadline"
H_RECEIVE_TIME: Final = "mlbus-receive-time"

_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")


def check_inference_id(inference_id: str) -> str:
    """``inference_id`` if it can name objects; InvalidArgument otherwise."""
    if not _ID.fullmatch(inference_id):
        raise InvalidArgument(
            f"inference_id {inference_id!r}: expected 1-200 letters, digits, '.', '_', ':' or '-', "
            "starting with a letter or digit"
        )
    return inference_id


def new_inference_id() -> str:
    """A fresh inference id."""
    return uuid.uuid4().hex


#: Content types of files of rows, and the transform content type each is read as. An
#: InvokeAsync input of one of these runs in row chunks (a transform job), never as one
#: v2 request: workers refuse such a claim check on the request topic.
ROWS_CONTENT_TYPES: Final[Mapping[str, str]] = {
    "text/csv": tf.CSV,
    "application/jsonlines": tf.JSONL,
    "application/x-ndjson": tf.JSONL,
    "application/vnd.apache.parquet": tf.PARQUET,
    "application/x-parquet": tf.PARQUET,
}


def media_type(content_type: str) -> str:
    """A content type without parameters, lower-cased (``text/CSV; charset=utf-8`` →
    ``text/csv``)."""
    return content_type.split(";", 1)[0].strip().lower()


def rows_format(content_type: str) -> str | None:
    """The transform content type a rows input of ``content_type`` is read as; None when
    it is not a file of rows."""
    return ROWS_CONTENT_TYPES.get(media_type(content_type))


def async_group_id(endpoint: str) -> str:
    """Consumer group of an endpoint's asynchronous workers (its lag is the queue depth)."""
    return f"mlbus-inference-{endpoint}-async"


def batch_group_id(endpoint: str) -> str:
    """Consumer group of an endpoint's workers for batch transform chunks."""
    return f"mlbus-inference-{endpoint}-batch"


def result_prefix(endpoint: str, inference_id: str) -> str:
    """Object-store key prefix of one inference's input, output and failure."""
    return f"async/{endpoint}/{check_inference_id(inference_id)}/"


def output_key(endpoint: str, inference_id: str) -> str:
    """Key of the serialized ModelInferResponse."""
    return result_prefix(endpoint, inference_id) + "output.pb"


def failure_key(endpoint: str, inference_id: str) -> str:
    """Key of the serialized AsyncInferenceFailed."""
    return result_prefix(endpoint, inference_id) + "failure.pb"


def completion_key(endpoint: str, inference_id: str) -> str:
    """Key of the serialized AsyncInferenceCompleted."""
    return result_prefix(endpoint, inference_id) + "completion.pb"


def notified_key(endpoint: str, inference_id: str) -> str:
    """Key of the marker written once the notification was published."""
    return result_prefix(endpoint, inference_id) + "notified"


def input_key(endpoint: str, inference_id: str) -> str:
    """Key of a request offloaded by the router (claim check)."""
    return result_prefix(endpoint, inference_id) + "input.pb"


def header(headers: Iterable[tuple[str, bytes]], name: str) -> str:
    """The first value of header ``name`` as text, or ''."""
    for key, value in headers:
        if key == name:
            return value.decode("utf-8", "replace")
    return ""
