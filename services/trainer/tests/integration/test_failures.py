"""Custom algorithms, parity failures, bad requests on the topic (DLQ), bad specs over gRPC."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiokafka import AIOKafkaConsumer

from mlbus.common.v1 import common_pb2
from mlbus.core.errors import NotFound
from mlbus.core.messaging import H_ERROR, EventProducer
from mlbus.trainer.v1 import events_pb2 as ev
from mlbus.trainer.v1 import trainer_pb2 as pb

CUSTOM = """
from sklearn.linear_model import LogisticRegression

def train(data, hyperparameters):
    model = LogisticRegression(C=hyperparameters.get("C", 1.0))
    for step in range(1, 4):
        data.report(step, custom_score=step / 10)
    return model.fit(data.X_train, data.y_train)
"""

# The estimator's predict() is not what its fitted attributes say, so the converted model
# (built from coef_ and intercept_) disagrees with it.
DISAGREES = """
from sklearn.linear_model import LinearRegression

def train(data, hyperparameters):
    model = LinearRegression().fit(data.X_train, data.y_train)
    model.predict = lambda x: LinearRegression.predict(model, x) + 0.5
    return model
"""


async def test_custom_script_trains_and_reports_iterations(stack: Any, tmp_path: Path) -> None:
    data = stack.classification_csv(tmp_path / "train.csv", rows=240, seed=3)
    validation = stack.classification_csv(tmp_path / "valid.csv", rows=80, seed=4)
    (tmp_path / "algo.py").write_text(CUSTOM)
    spec = stack.spec(
        data,
        validation_uri=str(validation),
        algorithm="custom",
        script_uri=str(tmp_path / "algo.py"),
        target_column="label",
        hyperparameters={"C": "0.5"},
        model_group="custom-lr",
    )
    job = await stack.wait((await stack.submit(spec)).job_id)
    assert job.status == ev.JOB_STATUS_COMPLETED, job.reason
    history = {h.name: list(h.values) for h in job.history}
    assert history["validation_custom_score"] == pytest.approx([0.1, 0.2, 0.3])
    lines = await stack.logs(job.job_id)
    assert any("loaded 240 training and 80 validation rows" in line for line in lines)
    version = await stack.registry.get_version("custom-lr", job.model_version)
    # Not in a git repository: the script's content hash is its version.
    assert version.lineage.code_version.startswith("sha256:")
    assert job.code_version == version.lineage.code_version


async def test_parity_failure_fails_the_job_with_the_largest_difference(
    stack: Any, tmp_path: Path
) -> None:
    data = stack.regression_parquet(tmp_path / "r.parquet")
    (tmp_path / "bad.py").write_text(DISAGREES)
    spec = stack.spec(
        data,
        algorithm="custom",
        script_uri=str(tmp_path / "bad.py"),
        target_column="y",
        model_group="never-registered",
    )
    job = await stack.wait((await stack.submit(spec)).job_id)
    assert job.status == ev.JOB_STATUS_FAILED
    assert job.reason.startswith(
        "parity check failed: the ONNX model's output differs from the original's by up to 0.5"
    )
    assert job.model_version == 0
    with pytest.raises(NotFound):
        await stack.registry.get_group("never-registered")


async def test_unknown_hyperparameter_fails_with_the_valid_ones(stack: Any, tmp_path: Path) -> None:
    data = stack.classification_csv(tmp_path / "d.csv", rows=60)
    spec = stack.spec(
        data,
        algorithm="logistic-regression",
        target_column="label",
        hyperparameters={"n_trees": "3"},
    )
    job = await stack.wait((await stack.submit(spec)).job_id)
    assert job.status == ev.JOB_STATUS_FAILED
    assert job.reason.startswith("hyperparameter 'n_trees': not a parameter of LogisticRegression")


async def test_invalid_spec_over_grpc(stack: Any, tmp_path: Path) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stack.submit(
            ev.JobSpec(algorithm="gradient-magic", input_uri="/x.csv", target_column="y")
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown algorithm 'gradient-magic'" in (raised.value.details() or "")


async def test_bad_reads_and_tuning_enums_name_the_field(stack: Any, tmp_path: Path) -> None:
    async def refused(call: Any, *fragments: str) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value
        for fragment in fragments:
            assert fragment in (raised.value.details() or "")

    stub = stack.stub
    await refused(stub.DescribeJob(pb.DescribeJobRequest(job_id="")), "job_id: required")
    await refused(
        stub.StopJob(pb.StopJobRequest(job_id="", actor=common_pb2.Actor(name="bob"))),
        "job_id: required",
    )
    await refused(
        stub.ListJobs(pb.ListJobsRequest(page=common_pb2.PageRequest(page_size=-2))),
        "page.page_size: expected 0",
        "got -2",
    )
    await refused(
        stub.ListJobs(pb.ListJobsRequest(status=42)),  # type: ignore[arg-type]
        "status: expected one of JOB_STATUS_UNSPECIFIED",
        "got 42",
    )
    data = stack.classification_csv(tmp_path / "t.csv", rows=40)
    for field, tuning in (
        ("strategy", ev.TuningSpec(strategy=7)),  # type: ignore[arg-type]
        ("direction", ev.TuningSpec(direction=9)),  # type: ignore[arg-type]
    ):
        spec = stack.spec(data, algorithm="logistic-regression", target_column="label")
        spec.tuning.CopyFrom(tuning)
        spec.tuning.objective_metric = "accuracy"
        spec.tuning.parameters.add(name="C").continuous.CopyFrom(
            ev.ContinuousRange(min=0.1, max=1.0)
        )
        await refused(
            stub.SubmitJob(
                pb.SubmitJobRequest(
                    kind=ev.JOB_KIND_TUNING,
                    experiment="enums",
                    spec=spec,
                    actor=common_pb2.Actor(name="bob"),
                )
            ),
            f"spec.tuning.{field}: expected one of",
        )


async def test_malformed_requests_land_in_the_dlq(stack: Any) -> None:
    topic = stack.trainer.catalogue.job_requested
    missing_input = ev.JobRequested(
        job_id="bad-1",
        kind=ev.JOB_KIND_TRAINING,
        spec=ev.JobSpec(algorithm="linear-regression", target_column="y"),
        actor=common_pb2.Actor(name="bob"),
    )
    async with EventProducer(stack.kafka, source="test") as producer:
        await producer.publish(topic, missing_input, key="bad-1")
        await producer.publish_raw(topic.name, b"\xff\x00 not protobuf", key=b"bad-2")
    consumer = AIOKafkaConsumer(
        topic.dlq_name,
        bootstrap_servers=stack.kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=20,
    )
    await consumer.start()
    found: dict[bytes, str] = {}
    try:
        deadline = time.monotonic() + 30
        while len(found) < 2 and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    headers = dict(record.headers)
                    found[record.key] = headers[H_ERROR].decode()
    finally:
        await consumer.stop()
    assert "spec.input_uri: required" in found[b"bad-1"]
    assert b"bad-2" in found
    with pytest.raises(grpc.aio.AioRpcError):
        await stack.describe("bad-1")
