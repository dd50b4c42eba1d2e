"""A tuning job cancelled while its trials run (the trainer stopping, out of patience with
trials that ignore their stop) takes its trials with it: none runs on, unowned. The jobs
store is real (SQLite); the trials' executor is a stand-in whose runs wait until
cancelled, which is the case a real trial reaches only after ignoring SIGTERM."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from mlbus.trainer.adapters.database import Database, SqlJobStore
from mlbus.trainer.domain.executor import RunningJob
from mlbus.trainer.domain.models import Job, JobKind, JobSpec, ParameterRange, TuningSpec
from mlbus.trainer.domain.tuning import TuningCoordinator


class Trials:
    """Executor stand-in: each run waits for ever and records how it ended."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.cancelled: list[str] = []

    async def run(self, job: Job, running: RunningJob) -> Job | None:
        self.started.append(job.job_id)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.append(job.job_id)
            raise
        return None


async def test_cancelling_a_tuning_job_cancels_its_running_trials(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'jobs.db'}")
    await database.start(migrate=True)
    try:
        store = SqlJobStore(database, "replica-a")
        trials = Trials()
        coordinator = TuningCoordinator(
            store,
            cast(Any, trials),
            cast(Any, SimpleNamespace(trainer_id="replica-a")),
            make_event=lambda job: (f"{job.job_id}/{job.status.value}", b""),
        )
        tuning = TuningSpec(
            parameters=(ParameterRange(name="alpha", kind="continuous", min=0.1, max=1.0),),
            objective_metric="r2",
            max_jobs=6,
            max_parallel_jobs=3,
        )
        job = Job(
            job_id="tune-1",
            kind=JobKind.TUNING,
            experiment="exp",
            spec=JobSpec(algorithm="ridge", input_uri="/x.csv", target_column="y", tuning=tuning),
            actor="alice",
            create_time=datetime.now(UTC),
        )
        running = asyncio.create_task(coordinator._run(job, tuning, RunningJob("tune-1")))
        for _ in range(200):
            if len(trials.started) == 3:
                break
            await asyncio.sleep(0.01)
        assert len(trials.started) == 3  # max_parallel_jobs at once
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        assert running.cancelled()
        assert sorted(trials.cancelled) == sorted(trials.started)
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("mlbus-trial-")]
    finally:
        await database.aclose()
