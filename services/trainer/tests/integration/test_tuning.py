"""Early stopping in a tuning job: a trial whose per-epoch objective is worse than the
median of the completed trials is stopped while it runs (STOPPED, with the reason and its
curve up to there), the others complete, and the best one is registered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlbus.common.v1 import common_pb2
from mlbus.trainer.v1 import events_pb2 as ev
from mlbus.trainer.v1 import trainer_pb2 as pb

# Logistic regression by SGD, one partial_fit per epoch, reporting the validation log-loss
# after each. A tiny eta0 barely moves from log(2). Each epoch also takes epoch_seconds, as
# on a larger data set: a trial that is not stopped runs epochs x epoch_seconds.
EPOCHS = """
import time

import numpy as np
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import log_loss


def train(data, hyperparameters):
    model = SGDClassifier(
        loss="log_loss", learning_rate="constant", eta0=hyperparameters["eta0"], random_state=0
    )
    classes = np.unique(data.y_train)
    for epoch in range(1, hyperparameters["epochs"] + 1):
        model.partial_fit(data.X_train, data.y_train, classes=classes)
        proba = model.predict_proba(data.X_validation)
        data.report(epoch, log_loss=log_loss(data.y_validation, proba, labels=classes))
        time.sleep(hyperparameters["epoch_seconds"])
    return model
"""


async def test_a_bad_trial_is_stopped_early_and_the_best_registered(
    stack: Any, tmp_path: Path
) -> None:
    data = stack.classification_csv(tmp_path / "tune.csv", rows=240, seed=5)
    validation = stack.classification_csv(tmp_path / "tune-valid.csv", rows=80, seed=6)
    (tmp_path / "sgd.py").write_text(EPOCHS)
    spec = stack.spec(
        data,
        validation_uri=str(validation),
        algorithm="custom",
        script_uri=str(tmp_path / "sgd.py"),
        target_column="label",
        model_group="tuned-sgd",
        hyperparameters={"epochs": "12", "epoch_seconds": "0.15"},
        # Seed 3: the grid runs eta0 0.1 and 0.05 first (together), then 1e-07.
        seed=3,
    )
    spec.tuning.CopyFrom(
        ev.TuningSpec(
            strategy=ev.SEARCH_STRATEGY_GRID,
            parameters=[
                ev.ParameterRange(
                    name="eta0", categorical=ev.CategoricalRange(values=["0.05", "0.1", "1e-07"])
                )
            ],
            objective_metric="log_loss",
            max_jobs=3,
            max_parallel_jobs=2,
            early_stopping=True,
        )
    )
    submitted = await stack.submit(spec, kind=ev.JOB_KIND_TUNING, experiment="early-stop")
    job = await stack.wait(submitted.job_id, timeout=60)
    assert job.status == ev.JOB_STATUS_COMPLETED, job.reason
    assert (job.tuning.trials_completed, job.tuning.trials_pruned) == (2, 1)
    assert job.tuning.trials_failed == 0

    listed = await stack.stub.ListJobs(
        pb.ListJobsRequest(parent_job_id=job.job_id, page=common_pb2.PageRequest(page_size=10)),
        timeout=10,
    )
    trials = {t.hyperparameters["eta0"]: t for t in listed.jobs}
    assert sorted(t.job_id for t in trials.values()) == [
        f"{job.job_id}-trial-00{i}" for i in (1, 2, 3)
    ]
    assert trials["1e-07"].job_id.endswith("-trial-003"), "the grid order of seed 3 changed"
    bad = trials["1e-07"]
    assert bad.status == ev.JOB_STATUS_STOPPED
    assert bad.reason.startswith("stopped early at iteration ")
    assert "the median of the 2 completed trials at that iteration" in bad.reason
    # Stopped while running: a few of its 12 epochs were reported, and they are kept.
    curve = {h.name: list(h.values) for h in bad.history}["validation_log_loss"]
    assert 1 <= len(curve) < 12, bad.reason
    for good in (trials["0.05"], trials["0.1"]):
        assert good.status == ev.JOB_STATUS_COMPLETED, good.reason
        assert len({h.name: h for h in good.history}["validation_log_loss"].values) == 12
        assert good.metrics["log_loss"] < curve[0]

    # The runs of the experiment show the same, and the best trial is the registered model.
    runs = await stack.stub.ListRuns(
        pb.ListRunsRequest(experiment="early-stop", order_by="log_loss", ascending=True),
        timeout=10,
    )
    by_id = {r.job_id: r for r in runs.runs}
    assert by_id[bad.job_id].status == ev.JOB_STATUS_STOPPED
    assert by_id[bad.job_id].reason == bad.reason
    best = min((trials["0.05"], trials["0.1"]), key=lambda t: t.metrics["log_loss"])
    assert job.tuning.best_trial_job_id == best.job_id
    version = await stack.registry.get_version("tuned-sgd", job.model_version)
    assert version.lineage.training_job_id == best.job_id
    assert version.metrics["log_loss"] == best.metrics["log_loss"]
