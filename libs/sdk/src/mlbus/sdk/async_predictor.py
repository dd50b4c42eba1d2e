"""Asynchronous predictions: :class:`AsyncPredictor` queues requests through the router's
``InvokeAsync`` and fetches their results when done.

    from mlbus.sdk import AsyncPredictor

    with AsyncPredictor("churn") as churn:
        job = churn.invoke(features)                  # returns at once: AsyncInvocation
        result = churn.result(job.inference_id, wait=True, timeout=600)   # Prediction
        # or churn.predict(features): invoke and wait

Inputs follow the same rules as :class:`~mlbus.sdk.predictor.Predictor` (a signature read
once with ModelMetadata). Requests above the router's inline limit go through the object
store, so large batches of rows work; the result is read back from the object store by
the router.

A file of rows already in the object store (CSV, JSON Lines, Parquet; any size) runs in row
chunks on the endpoint's workers; its result is a file of output lines:

    job = churn.invoke(input_uri="file:///data/rows.csv", input_content_type="text/csv")
    done = churn.result(job.inference_id, progress=lambda r: print(r.records_done))
    done.output_uri, done.records_total, done.records_failed, done.errors_uri
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from mlbus.core.tensors import decode_outputs
from mlbus.inference.v2 import grpc_service_pb2 as pb
from mlbus.router.v1 import router_pb2 as rpb
from mlbus.router.v1 import router_pb2_grpc as rpb_grpc
from mlbus.sdk.errors import DeadlineExceeded, MlbusError, error_class, from_rpc_error
from mlbus.sdk.predictor import Prediction, Predictor, build_request

__all__ = ["AsyncInvocation", "AsyncPredictor", "AsyncResult"]

_STATUS = {
    rpb.ASYNC_RESULT_STATUS_PENDING: "PENDING",
    rpb.ASYNC_RESULT_STATUS_SUCCEEDED: "SUCCEEDED",
    rpb.ASYNC_RESULT_STATUS_FAILED: "FAILED",
    rpb.ASYNC_RESULT_STATUS_EXPIRED: "EXPIRED",
}


@dataclass(frozen=True, slots=True)
class AsyncInvocation:
    """What InvokeAsync answered."""

    inference_id: str
    output_uri: str
    failure_uri: str
    input_offloaded: bool
    #: Files of rows: the transform job that runs it ('' for a v2 request).
    job_id: str = ""


@dataclass(frozen=True, slots=True)
class AsyncResult:
    """Where an asynchronous inference is: PENDING, SUCCEEDED, FAILED or EXPIRED.

    For a file of rows ``prediction`` stays None (the output is the file at ``output_uri``)
    and the ``records_*`` counts say how far it is and how many records failed (listed in
    the file at ``errors_uri``)."""

    inference_id: str
    status: str
    prediction: Prediction | None = None
    output_uri: str = ""
    error_code: str = ""
    error_message: str = ""
    job_id: str = ""
    records_total: int = 0
    records_done: int = 0
    records_failed: int = 0
    errors_uri: str = ""

    @property
    def done(self) -> bool:
        """True once it succeeded, failed or expired."""
        return self.status != "PENDING"


def _result(response: rpb.GetAsyncResultResponse) -> AsyncResult:
    status = _STATUS.get(response.status, "PENDING")
    prediction = None
    rows = response.rows if response.HasField("rows") else None
    if status == "SUCCEEDED" and rows is None:
        r: pb.ModelInferResponse = response.response
        params = r.parameters
        prediction = Prediction(
            decode_outputs(r),
            model_name=r.model_name,
            variant=params["variant"].string_param if "variant" in params else "",
            model_version=r.model_version,
            inference_id=response.inference_id,
        )
    return AsyncResult(
        inference_id=response.inference_id,
        status=status,
        prediction=prediction,
        output_uri=response.output.uri,
        error_code=response.error.code,
        error_message=response.error.message,
        job_id=rows.job_id if rows is not None else "",
        records_total=rows.records_total if rows is not None else 0,
        records_done=rows.records_done if rows is not None else 0,
        records_failed=rows.records_failed if rows is not None else 0,
        errors_uri=rows.errors.uri if rows is not None else "",
    )


class AsyncPredictor:
    """Asynchronous predictions from one endpoint through the router."""

    def __init__(
        self,
        endpoint: str,
        target: str | None = None,
        *,
        timeout: float = 60.0,
        poll_interval: float = 0.2,
    ) -> None:
        self._predictor = Predictor(endpoint, target, timeout=timeout)
        self.endpoint = endpoint
        self.target = self._predictor.target
        self.timeout = timeout
        self.poll_interval = poll_interval
        self._stub = rpb_grpc.RouterServiceStub(self._predictor._channel)

    def __enter__(self) -> AsyncPredictor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel."""
        self._predictor.close()

    def _error(self, exc: grpc.RpcError) -> MlbusError:
        return from_rpc_error(exc, target=self.target, service="router", timeout=self.timeout)

    def invoke(
        self,
        data: Any = None,
        *,
        request: pb.ModelInferRequest | None = None,
        input_uri: str = "",
        input_content_type: str = "",
        inference_id: str = "",
        outputs: Sequence[str] = (),
        target_variant: str = "",
        deadline_s: float = 0.0,
        reply_topic: str = "",
        input_sha256: str = "",
        csv_header: bool | None = None,
        input_filter: str = "",
        records_per_chunk: int = 0,
        max_records_per_batch: int = 0,
        max_failure_percent: float | None = None,
    ) -> AsyncInvocation:
        """Queue one inference: ``data`` (as for Predictor), a prepared v2 ``request``, or an
        ``input_uri`` in the object store — a v2 request (``input_content_type``
        application/x-protobuf or application/json) or a file of rows (text/csv,
        application/jsonlines, application/vnd.apache.parquet), which the rest of the
        keywords tune (as for :class:`~mlbus.sdk.transformer.Transformer`). Returns at once."""
        given = (data is not None) + (request is not None) + bool(input_uri)
        if given != 1:
            raise ValueError("give exactly one of data, request= or input_uri=")
        message = rpb.InvokeAsyncRequest(
            endpoint=self.endpoint,
            inference_id=inference_id,
            timeout_seconds=deadline_s,
            reply_topic=reply_topic,
        )
        rows = rpb.AsyncRowsOptions(
            input_filter=input_filter,
            records_per_chunk=records_per_chunk,
            max_records_per_batch=max_records_per_batch,
        )
        if csv_header is not None:
            rows.csv_header = csv_header
        if max_failure_percent is not None:
            rows.max_failure_percent = max_failure_percent
        if rows.ByteSize():
            message.rows.CopyFrom(rows)
        if input_uri:
            message.input_uri = input_uri
            message.input_content_type = input_content_type
            message.input_sha256 = input_sha256
        else:
            if request is None:
                request = build_request(
                    self.endpoint,
                    self._predictor.metadata(),
                    data,
                    outputs=outputs,
                    target_variant=target_variant,
                )
            message.request.CopyFrom(request)
        try:
            response = self._stub.InvokeAsync(message, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise self._error(exc) from None
        return AsyncInvocation(
            inference_id=response.inference_id,
            output_uri=response.output_uri,
            failure_uri=response.failure_uri,
            input_offloaded=response.input_offloaded,
            job_id=response.job_id,
        )

    def status(self, inference_id: str) -> AsyncResult:
        """The current state of ``inference_id`` (never waits)."""
        try:
            response = self._stub.GetAsyncResult(
                rpb.GetAsyncResultRequest(endpoint=self.endpoint, inference_id=inference_id),
                timeout=self.timeout,
            )
        except grpc.RpcError as exc:
            raise self._error(exc) from None
        return _result(response)

    def result(
        self,
        inference_id: str,
        *,
        wait: bool = True,
        timeout: float = 3600.0,
        progress: Callable[[AsyncResult], None] | None = None,
    ) -> AsyncResult:
        """The result of ``inference_id``; with ``wait``, polls until done or ``timeout``
        seconds (DeadlineExceeded), calling ``progress`` with each state seen."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.status(inference_id)
            if progress is not None:
                progress(result)
            if result.done or not wait:
                return result
            if time.monotonic() >= deadline:
                raise DeadlineExceeded(
                    f"asynchronous inference {inference_id!r} on {self.endpoint!r} not done "
                    f"within {timeout:g} s; it may still finish (check later)"
                )
            time.sleep(self.poll_interval)

    def predict(self, data: Any, *, timeout: float = 3600.0, **kwargs: Any) -> Prediction:
        """Invoke and wait; returns the outputs, or raises the error class of the failure."""
        job = self.invoke(data, **kwargs)
        result = self.result(job.inference_id, timeout=timeout)
        if result.prediction is None:
            code = result.error_code or "INTERNAL"
            cls = (
                error_class(grpc.StatusCode[code])
                if code in grpc.StatusCode.__members__
                else MlbusError
            )
            raise cls(
                f"asynchronous inference {job.inference_id} {result.status}: {result.error_message}"
            )
        return result.prediction
