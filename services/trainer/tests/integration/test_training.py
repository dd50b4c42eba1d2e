"""Training jobs end to end: gRPC and topic paths, registration with lineage and baseline."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mlbus.common.v1 import common_pb2
from mlbus.core.messaging import EventProducer
from mlbus.trainer.v1 import events_pb2 as ev


async def test_grpc_job_trains_exports_and_registers(stack: Any, tmp_path: Path) -> None:
    data = stack.classification_csv(tmp_path / "churn.csv")
    spec = stack.spec(
        data,
        algorithm="random-forest-classifier",
        target_column="label",
        model_group="churn-rf",
        hyperparameters={"n_estimators": "20", "max_depth": "5"},
    )
    accepted = await stack.submit(spec, experiment="churn")
    assert accepted.status in (ev.JOB_STATUS_PENDING, ev.JOB_STATUS_RUNNING)
    job = await stack.wait(accepted.job_id)
    assert job.status == ev.JOB_STATUS_COMPLETED, job.reason
    assert set(job.metrics) >= {"accuracy", "f1", "auc", "log_loss"}
    assert job.metrics["accuracy"] > 0.75
    assert job.metrics["parity_max_abs_diff"] < 1e-4
    history = {h.name: list(h.values) for h in job.history}
    assert len(history["validation_accuracy"]) == 10  # n_estimators grown in tenths
    assert {a.name for a in job.artifacts} == {"model.onnx", "baseline.json"}

    version = await stack.registry.get_version("churn-rf", job.model_version)
    assert job.model_group == "churn-rf"
    assert version.approval_status == "PENDING_MANUAL_APPROVAL"
    assert version.metrics["accuracy"] == job.metrics["accuracy"]
    assert version.hyperparameters == {"n_estimators": "20", "max_depth": "5"}
    assert version.lineage.training_job_id == job.job_id
    assert version.lineage.dataset_uri == str(data)
    assert version.lineage.dataset_sha256 == hashlib.sha256(data.read_bytes()).hexdigest()
    assert version.lineage.code_version.startswith("mlbus-trainer ")
    assert version.registered_by == "alice"
    # Dynamic batch dimension, one FP32 input of the 5 features.
    assert [(t.name, t.datatype, list(t.shape)) for t in version.signature.inputs] == [
        ("input", "FP32", [-1, 5])
    ]
    baseline = json.loads(await stack.trainer.objects.read_bytes(version.baseline.uri))
    columns = {c["name"]: c for c in baseline["columns"]}
    assert baseline["dataset"]["sha256"] == version.lineage.dataset_sha256
    f0 = columns["f0"]
    assert f0["type"] == "numeric"
    assert f0["count"] == 240
    assert f0["missing_fraction"] == 0.0
    assert set(f0) >= {"min", "max", "mean", "std", "quantiles", "histogram"}
    assert sum(f0["histogram"]["counts"]) == 240
    assert columns["label"]["role"] == "target"

    lines = await stack.logs(job.job_id)
    assert any("loaded 240 training and 60 validation rows" in line for line in lines)
    assert any("ONNX parity" in line for line in lines)


async def test_topic_request_gives_the_same_job(stack: Any, tmp_path: Path) -> None:
    data = stack.regression_parquet(tmp_path / "prices.parquet")
    spec = stack.spec(data, algorithm="linear-regression", target_column="y", model_group="prices")
    request = ev.JobRequested(
        job_id="topic-job-1",
        kind=ev.JOB_KIND_TRAINING,
        experiment="prices",
        spec=spec,
        actor=common_pb2.Actor(name="bob"),
    )
    async with EventProducer(stack.kafka, source="test") as producer:
        await producer.publish(stack.trainer.catalogue.job_requested, request, key="topic-job-1")
    job = await stack.wait("topic-job-1")
    assert job.status == ev.JOB_STATUS_COMPLETED, job.reason
    assert job.actor.name == "bob"
    assert job.experiment == "prices"
    assert set(job.metrics) >= {"rmse", "mae", "r2"}
    assert job.metrics["r2"] > 0.95
    version = await stack.registry.get_version("prices", job.model_version)
    assert version.lineage.training_job_id == "topic-job-1"

    # The same request through gRPC (same id) is the same job, not a second one.
    again = await stack.submit(spec, job_id="topic-job-1", actor="bob")
    assert again.status == ev.JOB_STATUS_COMPLETED
    assert again.model_version == job.model_version
