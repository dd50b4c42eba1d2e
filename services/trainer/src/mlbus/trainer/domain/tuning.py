"""Tuning jobs: Optuna picks hyperparameters (random, grid or TPE), each trial is a training
job of the same experiment run on this replica, bad trials are stopped early by the median
rule, and the best trial's model is registered.

Optuna runs in-process with an in-memory study (ask and tell): the trials' state is in the
jobs table, so nothing of the study needs to outlive the tuning job.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import statistics
from typing import Any

from mlbus.trainer.domain.executor import Executor, RunningJob
from mlbus.trainer.domain.models import (
    Job,
    JobKind,
    JobResult,
    JobStatus,
    ParameterRange,
    TuningProgress,
    TuningSpec,
    utcnow,
)
from mlbus.trainer.domain.scheduler import Scheduler
from mlbus.trainer.ports import JobStore, MakeEvent

log = logging.getLogger(__name__)


def grid_values(p: ParameterRange, points: int) -> list[Any]:
    """The values of one range in a grid search."""
    if p.kind == "categorical":
        return list(p.values)
    if p.kind == "integer":
        lo, hi = int(p.min), int(p.max)
        if hi - lo + 1 <= points:
            return list(range(lo, hi + 1))
    if p.log:
        values = [
            math.exp(math.log(p.min) + i * (math.log(p.max) - math.log(p.min)) / (points - 1))
            for i in range(points)
        ]
    else:
        values = [p.min + i * (p.max - p.min) / (points - 1) for i in range(points)]
    if p.kind == "integer":
        return sorted({round(v) for v in values})
    return values


def grid_size(tuning: TuningSpec) -> int:
    """How many combinations a grid search has."""
    return math.prod(len(grid_values(p, tuning.grid_points)) for p in tuning.parameters)


def _text(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _grid_sampler(space: dict[str, list[Any]], seed: int) -> Any:
    """Optuna's grid sampler, without its call of ``Study.stop()`` once every grid point
    has been told: that call only works inside ``Study.optimize()``, and raised out of the
    last ``tell`` here (failing the job). The coordinator starts no more trials than the
    grid has."""
    import optuna

    class GridSampler(optuna.samplers.GridSampler):
        def after_trial(self, *args: Any, **kwargs: Any) -> None:
            return None

    return GridSampler(space, seed=seed)


class TuningCoordinator:
    """Runs tuning jobs (see the module docstring)."""

    def __init__(
        self, store: JobStore, executor: Executor, scheduler: Scheduler, *, make_event: MakeEvent
    ) -> None:
        self.store = store
        self.executor = executor
        self.scheduler = scheduler
        self.make_event = make_event

    def _study(self, tuning: TuningSpec, seed: int) -> tuple[Any, dict[str, Any], int]:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        distributions: dict[str, Any] = {}
        for p in tuning.parameters:
            if p.kind == "continuous":
                distributions[p.name] = optuna.distributions.FloatDistribution(
                    p.min, p.max, log=p.log
                )
            elif p.kind == "integer":
                distributions[p.name] = optuna.distributions.IntDistribution(
                    int(p.min), int(p.max), log=p.log
                )
            else:
                distributions[p.name] = optuna.distributions.CategoricalDistribution(list(p.values))
        trials = tuning.max_jobs
        if tuning.strategy == "grid":
            space = {p.name: grid_values(p, tuning.grid_points) for p in tuning.parameters}
            sampler: Any = _grid_sampler(space, seed)
            for p in tuning.parameters:
                if p.kind != "categorical":
                    # Grid points are given as a categorical choice among the grid values.
                    distributions[p.name] = optuna.distributions.CategoricalDistribution(
                        space[p.name]
                    )
            trials = min(trials, grid_size(tuning))
        elif tuning.strategy == "bayesian":
            sampler = optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=max(1, min(5, trials // 3))
            )
        else:
            sampler = optuna.samplers.RandomSampler(seed=seed)
        pruner: Any = (
            optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
            if tuning.early_stopping
            else optuna.pruners.NopPruner()
        )
        study = optuna.create_study(direction=tuning.direction, sampler=sampler, pruner=pruner)
        return study, distributions, trials

    async def _progress(self, job: Job, progress: TuningProgress) -> None:
        await self.store.transition(
            job.job_id,
            expect=[JobStatus.RUNNING],
            holder=self.scheduler.trainer_id,
            result=JobResult(tuning=progress),
        )

    async def run(self, job: Job, handle: RunningJob) -> None:
        """Run the tuning job ``job`` (PENDING, claimed by this replica) to its end."""
        started = await self.executor.start(job)
        if started is None:
            return
        tuning = job.spec.tuning
        assert tuning is not None
        try:
            await self._run(started, tuning, handle)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("tuning job %s failed", job.job_id)
            if not handle.abandoned:
                await self.executor.finish(
                    started, JobStatus.FAILED, f"tuning failed: {type(exc).__name__}: {exc}"
                )

    async def _run(self, job: Job, tuning: TuningSpec, handle: RunningJob) -> None:
        import optuna

        study, distributions, total = self._study(tuning, job.spec.seed)
        metric = tuning.objective_metric
        progress = TuningProgress(trials_total=total)
        active: dict[asyncio.Task[Job | None], tuple[Any, RunningJob]] = {}
        counter = itertools.count(1)
        results: dict[str, Job] = {}
        first_failure = ""
        started_trials = 0
        suffix = f"-a{job.attempts}" if job.attempts > 1 else ""
        try:
            while True:
                while (
                    not handle.stop_reason
                    and started_trials < total
                    and len(active) < tuning.max_parallel_jobs
                ):
                    trial = study.ask(distributions)
                    started_trials += 1
                    trial_id = f"{job.job_id}{suffix}-trial-{next(counter):03d}"
                    params = {
                        **job.spec.hyperparameters,
                        **{k: _text(v) for k, v in trial.params.items()},
                    }
                    spec = job.spec.model_copy(
                        update={"hyperparameters": params, "model_group": "", "tuning": None}
                    )
                    trial_job = Job(
                        job_id=trial_id,
                        kind=JobKind.TRAINING,
                        experiment=job.experiment,
                        spec=spec,
                        actor=job.actor,
                        create_time=utcnow(),
                        parent_job_id=job.job_id,
                        trainer_id=self.scheduler.trainer_id,
                    )
                    stored, _ = await self.store.insert(trial_job, self.make_event)
                    child = RunningJob(trial_id)
                    child.on_iteration = self._pruning(trial, child, metric)
                    handle.children.append(child)
                    task = asyncio.create_task(
                        self.executor.run(stored, child), name=f"mlbus-trial-{trial_id}"
                    )
                    active[task] = (trial, child)
                if not active:
                    break
                done, _ = await asyncio.wait(active, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    trial, child = active.pop(task)
                    handle.children.remove(child)
                    ended = task.result() if not task.cancelled() else None
                    value = ended.result.metrics.get(metric) if ended is not None else None
                    if (
                        ended is not None
                        and ended.status == JobStatus.COMPLETED
                        and value is not None
                    ):
                        study.tell(trial, value)
                        results[ended.job_id] = ended
                        progress = progress.model_copy(
                            update={"trials_completed": progress.trials_completed + 1}
                        )
                    elif child.pruned and (ended is None or ended.status == JobStatus.STOPPED):
                        # Pruned only if the early stop cut it short: a trial that completed or
                        # failed first ended as it did.
                        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                        progress = progress.model_copy(
                            update={"trials_pruned": progress.trials_pruned + 1}
                        )
                    else:
                        study.tell(trial, state=optuna.trial.TrialState.FAIL)
                        progress = progress.model_copy(
                            update={"trials_failed": progress.trials_failed + 1}
                        )
                        if ended is not None and not first_failure:
                            first_failure = f"{ended.job_id}: {ended.reason}"
                best = self._best(results, metric, tuning.direction)
                if best is not None:
                    progress = progress.model_copy(
                        update={
                            "best_trial_job_id": best.job_id,
                            "best_objective": best.result.metrics[metric],
                        }
                    )
                if not handle.abandoned:
                    await self._progress(job, progress)
        finally:
            # Cancelled (the trainer stopping, out of patience) or failed midway: its trials
            # end with it instead of running on, unowned, against a closing database.
            for task in active:
                task.cancel()
            if active:
                await asyncio.gather(*active, return_exceptions=True)
        if handle.abandoned:
            return
        if handle.stop_reason:
            await self.executor.finish(
                job, JobStatus.STOPPED, handle.stop_reason, JobResult(tuning=progress)
            )
            return
        best = self._best(results, metric, tuning.direction)
        if best is None:
            reason = f"no trial completed ({progress.trials_failed} failed, {progress.trials_pruned} stopped early)"
            if first_failure:
                reason += f"; first failure: {first_failure}"
            await self.executor.finish(job, JobStatus.FAILED, reason, JobResult(tuning=progress))
            return
        result = best.result.model_copy(update={"tuning": progress})
        if job.spec.model_group:
            try:
                group, version = await self.executor.register(
                    job,
                    best.result,
                    model_path=None,
                    lineage_job_id=best.job_id,
                    tags={"mlbus.tuning_job": job.job_id, "mlbus.trial": best.job_id},
                )
            except Exception as exc:
                await self.executor.finish(job, JobStatus.FAILED, str(exc), result)
                return
            result = result.model_copy(update={"model_group": group, "model_version": version})
        await self.executor.finish(job, JobStatus.COMPLETED, "", result)

    @staticmethod
    def _best(results: dict[str, Job], metric: str, direction: str) -> Job | None:
        if not results:
            return None
        sign = 1.0 if direction == "maximize" else -1.0
        return max(results.values(), key=lambda j: sign * j.result.metrics[metric])

    @staticmethod
    def _pruning(trial: Any, child: RunningJob, metric: str) -> Any:
        import optuna

        better = max if trial.study.direction == optuna.study.StudyDirection.MAXIMIZE else min
        best = math.nan

        def on_iteration(step: int, values: dict[str, float]) -> None:
            nonlocal best
            value = values.get(metric)
            if value is None or child.stop_reason or not math.isfinite(value):
                return
            best = value if math.isnan(best) else better(best, value)
            trial.report(value, step)
            if not trial.should_prune():
                return
            child.pruned = True
            # The median rule compares the trial's best value so far with the median of the
            # completed trials' values at this iteration.
            completed = trial.study.get_trials(
                deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)
            )
            at_step = [
                t.intermediate_values[step] for t in completed if step in t.intermediate_values
            ]
            median = f"{statistics.median(at_step):.4g}, " if at_step else ""
            child.stop(
                f"stopped early at iteration {step}: its best {metric} so far, {best:.4g}, is "
                f"worse than {median}the median of the {len(at_step)} completed trials at that "
                "iteration"
            )

        return on_iteration
