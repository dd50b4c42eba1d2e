"""The deployment controller: reconciles running worker processes to endpoint plans.

One reconcile loop per endpoint applies the newest plan it was given (stale revisions are
ignored, so events may arrive twice or out of order). An update is blue/green:

1. workers whose spec is unchanged are kept (a weight change restarts nothing); the others
   are started and must answer health SERVING (model loaded and warmed) — a worker that
   exits or stays unready is retried ``worker_start_attempts`` times, and if the new
   revision cannot come up the old one keeps serving;
2. the endpoint's route is replaced in one assignment, so each request sees either the old
   or the new configuration;
3. workers no longer routed drain: they take no new requests, and are stopped (SIGTERM,
   then SIGKILL after a grace) once their outstanding requests reached zero or the drain
   timeout passed.

A worker that exits while serving leaves its pool at once (the front door then routes to
the others, retrying once on UNAVAILABLE) and is replaced with backoff.

A variant that scales to zero (``scale_to_zero_after_seconds``, or SERVERLESS mode) is
deployed like any other, then watched by the endpoint's scaler: once it has had no
real-time request, no request in flight and an empty queue (asynchronous requests and batch
chunks: its workers' consumer lag) for its idle time, its workers drain and stop while the
variant stays routed with no instance. The next real-time request starts its workers and
waits for the first to be ready (within the call's deadline); queued work makes the scaler
start them on its next poll. Nothing is lost in between: queued records wait in their topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from typing import Any, Protocol

from mlbus.core.settings import GrpcSettings
from mlbus.router.adapters.workers import EXIT_LOAD_FAILED, WorkerClient, WorkerProcess
from mlbus.router.domain.deployment import EndpointPlan, VariantPlan, WorkerSpec
from mlbus.router.domain.routing import Instance, Route, RoutingTable, VariantPool
from mlbus.router.metrics import RouterMetrics

log = logging.getLogger(__name__)


class WorkerBackend(Protocol):
    """Starts worker processes (the local process backend; a Kubernetes one later)."""

    async def spawn(self, spec: WorkerSpec, instance_id: str) -> WorkerProcess:
        """Start one worker for ``spec``."""
        ...


class QueueDepth(Protocol):
    """Queued work of an endpoint (its workers' consumer lag)."""

    async def depth(self, endpoint: str) -> int | None:
        """Records waiting for ``endpoint``'s workers; None when it cannot be read."""
        ...


@dataclass(frozen=True, slots=True)
class ControllerSettings:
    """Timings of the controller (from RouterSettings)."""

    ready_timeout_s: float = 120.0
    start_attempts: int = 3
    drain_timeout_s: float = 30.0
    stop_grace_s: float = 10.0
    restart_backoff_s: float = 1.0
    restart_backoff_max_s: float = 30.0
    #: Seconds between the scaler's looks at idleness and queue depth.
    scale_poll_interval_s: float = 1.0
    #: Idle time of a SERVERLESS variant that sets none.
    serverless_idle_s: float = 300.0
    #: Most worker processes at once over every endpoint (0: no limit).
    max_workers: int = 0


class WorkerState(StrEnum):
    """Where a managed worker is in its life."""

    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(eq=False)
class ManagedWorker:
    """A worker the controller runs, with its routing instance."""

    id: str
    spec: WorkerSpec
    state: WorkerState = WorkerState.STARTING
    process: WorkerProcess | None = None
    instance: Instance | None = None
    pool: VariantPool | None = None
    restarts: int = 0
    error: str = ""
    watcher: asyncio.Task[None] | None = None

    def describe(self) -> dict[str, Any]:
        """A JSON-able view for status output."""
        return {
            "id": self.id,
            "variant": self.spec.variant,
            "model_group": self.spec.model_group,
            "model_version": self.spec.model_version,
            "shadow": self.spec.shadow,
            "state": self.state.value,
            "address": self.instance.address if self.instance else "",
            "pid": self.process.pid if self.process else 0,
            "outstanding": self.instance.outstanding if self.instance else 0,
            "restarts": self.restarts,
            "error": self.error,
        }


@dataclass(eq=False)
class _Scaler:
    """Scale-to-zero state of one routed variant."""

    pool: VariantPool
    plan: VariantPlan
    idle_s: float
    #: When its workers last came up (the idle timer never starts earlier).
    up_at: float
    #: Set while the pool has an instance; cold starts wait on it.
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    #: The scale-up in flight, if any.
    task: asyncio.Task[bool] | None = None
    scale_downs: int = 0
    scale_ups: int = 0

    def describe(self) -> dict[str, Any]:
        return {
            "variant": self.pool.name,
            "scale_to_zero_after_s": self.idle_s,
            "instances": len(self.pool.instances),
            "scaled_to_zero": not self.pool.instances,
            "scaling_up": self.task is not None and not self.task.done(),
            "scale_ups": self.scale_ups,
            "scale_downs": self.scale_downs,
        }


@dataclass(eq=False)
class _Endpoint:
    name: str
    desired: EndpointPlan | None = None
    #: Highest revision seen (plans or deletion); older ones are stale.
    revision: int = 0
    deleted: bool = False
    applied: EndpointPlan | None = None
    workers: list[ManagedWorker] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    status: str = "pending"
    error: str = ""
    #: Variants of the routed revision that scale to zero, by name.
    scalers: dict[str, _Scaler] = field(default_factory=dict)
    scale_task: asyncio.Task[None] | None = None
    #: Last queue depth read (None: unknown), and when the queue last held work.
    queue_depth: int | None = 0
    queue_busy_at: float = 0.0


class DeploymentController:
    """Runs the workers of every endpoint and keeps the routing table pointing at them."""

    def __init__(
        self,
        table: RoutingTable,
        backend: WorkerBackend,
        *,
        grpc_settings: GrpcSettings,
        settings: ControllerSettings,
        metrics: RouterMetrics,
        client_factory: Callable[[str, GrpcSettings], WorkerClient] = WorkerClient,
        queue_depth: QueueDepth | None = None,
    ) -> None:
        self.table = table
        self.queue_depth = queue_depth
        self.backend = backend
        self.grpc_settings = grpc_settings
        self.settings = settings
        self.metrics = metrics
        self._client_factory = client_factory
        self._endpoints: dict[str, _Endpoint] = {}
        #: Rejections of a version in a revision whose plan has not arrived yet (the
        #: rejection and the configuration travel on different topics), by endpoint and
        #: revision; applied to that plan when it comes.
        self._rejections: dict[str, dict[int, list[tuple[str, int, str]]]] = {}
        self._serial = itertools.count(1)
        self._background: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._changed = asyncio.Condition()

    # --- inputs ----------------------------------------------------------------------

    def submit(self, plan: EndpointPlan) -> bool:
        """Ask for ``plan``; False (ignored) when an equal or newer revision was seen."""
        state = self._state(plan.endpoint)
        if plan.revision <= state.revision:
            return False
        early = self._rejections.get(plan.endpoint, {})
        for group, version, reason in early.pop(plan.revision, []):
            plan = plan.without_version(group, version, reason)
        for stale in [r for r in early if r < plan.revision]:
            del early[stale]
        if not early:
            self._rejections.pop(plan.endpoint, None)
        state.revision = plan.revision
        state.desired = plan
        state.deleted = False
        self._wake(state)
        return True

    def delete(self, endpoint: str, revision: int) -> bool:
        """Stop serving ``endpoint`` (its workers drain); ignored when stale."""
        state = self._state(endpoint)
        if revision < state.revision:
            return False
        state.revision = revision
        state.desired = None
        state.deleted = True
        self._wake(state)
        return True

    def degrade(
        self, endpoint: str, revision: int, model_group: str, model_version: int, reason: str
    ) -> bool:
        """Stop serving a rejected version on ``endpoint`` (same revision, fewer variants).
        A rejection for a revision not seen yet is kept and applied to its plan on arrival
        (it would otherwise deploy the rejected version)."""
        state = self._endpoints.get(endpoint)
        if revision > (state.revision if state is not None else 0):
            early = self._rejections.setdefault(endpoint, {})
            early.setdefault(revision, []).append((model_group, model_version, reason))
            return True
        if state is None or state.desired is None or state.desired.revision != revision:
            return False
        plan = state.desired.without_version(model_group, model_version, reason)
        if plan == state.desired:
            return False
        state.desired = plan
        self._wake(state)
        return True

    # --- status ----------------------------------------------------------------------

    def describe(self) -> list[dict[str, Any]]:
        """Every endpoint's revision, status and workers (JSON-able)."""
        out = []
        for name in sorted(self._endpoints):
            state = self._endpoints[name]
            out.append(
                {
                    "endpoint": name,
                    "desired_revision": state.desired.revision if state.desired else 0,
                    "applied_revision": state.applied.revision if state.applied else 0,
                    "deleted": state.deleted,
                    "status": state.status,
                    "error": state.error,
                    "workers": [w.describe() for w in state.workers],
                    "scaling": [sc.describe() for sc in state.scalers.values()],
                    "queue_depth": state.queue_depth,
                }
            )
        return out

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` holds after some controller change (for tests, CLIs)."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(predicate), timeout)
            except TimeoutError:
                return False
        return True

    def applied_revision(self, endpoint: str) -> int:
        """Revision now routed for ``endpoint`` (0 if none)."""
        state = self._endpoints.get(endpoint)
        return state.applied.revision if state and state.applied else 0

    # --- lifecycle -------------------------------------------------------------------

    async def stop(self) -> None:
        """Stop every reconcile loop and worker (router shutdown)."""
        self._stopping = True
        tasks: list[asyncio.Task[Any]] = [
            s.task for s in self._endpoints.values() if s.task is not None
        ]
        tasks += [s.scale_task for s in self._endpoints.values() if s.scale_task is not None]
        tasks += [
            sc.task
            for s in self._endpoints.values()
            for sc in s.scalers.values()
            if sc.task is not None
        ]
        tasks += list(self._background)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        workers = [w for s in self._endpoints.values() for w in s.workers]
        for state in self._endpoints.values():
            self.table.remove(state.name)
        await asyncio.gather(*(self._stop_worker(w) for w in workers), return_exceptions=True)

    # --- internals -------------------------------------------------------------------

    def _state(self, endpoint: str) -> _Endpoint:
        state = self._endpoints.get(endpoint)
        if state is None:
            state = self._endpoints[endpoint] = _Endpoint(endpoint)
        return state

    def _wake(self, state: _Endpoint) -> None:
        if self._stopping:
            return
        state.wake.set()
        if state.task is None or state.task.done():
            state.task = asyncio.create_task(self._loop(state), name=f"reconcile-{state.name}")

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _spawn_task(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _loop(self, state: _Endpoint) -> None:
        while not self._stopping:
            await state.wake.wait()
            state.wake.clear()
            try:
                if state.deleted:
                    await self._teardown(state)
                elif state.desired is not None and state.desired is not state.applied:
                    await self._rollout(state, state.desired)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                state.status = "failed"
                state.error = f"reconcile failed: {exc}"
                log.exception("reconcile failed", extra={"endpoint": state.name})
            await self._notify()

    async def _rollout(self, state: _Endpoint, plan: EndpointPlan) -> None:
        state.status = "deploying"
        self.table.mark_pending(
            plan.endpoint,
            f"revision {plan.revision} is being deployed (workers starting); retry shortly",
        )
        log.info("deploying", extra={"endpoint": plan.endpoint, "revision": plan.revision})
        started = time.monotonic()
        # Only READY workers are reused: a STARTING one belongs to a replacement in flight,
        # which drains itself when its pool is no longer routed.
        by_spec: dict[WorkerSpec, list[ManagedWorker]] = {}
        for w in state.workers:
            if w.state is WorkerState.READY:
                by_spec.setdefault(w.spec, []).append(w)
        wanted = sum(
            max(vp.instances_wanted - len(by_spec.get(vp.spec, [])), 0)
            for vp in plan.all_variants()
        )
        limit = self.settings.max_workers
        running = self.running_workers()
        if limit and wanted and running + wanted > limit:
            self._rollout_failed(
                state,
                plan,
                f"revision {plan.revision} needs {wanted} more worker processes, but this "
                f"router runs {running} of at most {limit} (ROUTER_MAX_WORKERS); lower the "
                "variants' instance_count or raise the limit",
            )
            return
        assigned: list[tuple[VariantPlan, list[ManagedWorker]]] = []
        new: list[ManagedWorker] = []
        for vp in plan.all_variants():
            reuse = by_spec.get(vp.spec, [])
            workers = [reuse.pop(0) for _ in range(min(len(reuse), vp.instances_wanted))]
            while len(workers) < vp.instances_wanted:
                worker = ManagedWorker(id=self._new_id(vp.spec), spec=vp.spec)
                state.workers.append(worker)
                new.append(worker)
                workers.append(worker)
            assigned.append((vp, workers))
        kept = {w for _, ws in assigned for w in ws}
        results = await asyncio.gather(*(self._bring_up(state, w) for w in new))
        pending = [w for _, ws in assigned for w in ws if w.state is not WorkerState.READY]
        if not all(results) or pending:
            if state.desired is plan:
                failed = [w for w in new if w.state is not WorkerState.READY]
                reasons = "; ".join(f"{w.id}: {w.error}" for w in failed if w.error)
                self._rollout_failed(
                    state,
                    plan,
                    f"revision {plan.revision} did not come up: {reasons or 'not ready'}",
                )
            for w in new:
                self._spawn_task(self._drain(state, w), f"drain-{w.id}")
            return
        pools: list[VariantPool] = []
        routed: list[tuple[VariantPlan, VariantPool]] = []
        for vp, workers in assigned:
            pool = VariantPool(
                name=vp.name,
                model_group=vp.spec.model_group,
                model_version=vp.spec.model_version,
                weight=vp.weight,
                max_concurrency=vp.spec.max_concurrency,
            )
            for w in workers:
                w.pool = pool
                assert w.instance is not None
                pool.instances.append(w.instance)
            pools.append(pool)
            routed.append((vp, pool))
        shadow = pools.pop() if plan.shadow is not None else None
        route = Route(
            endpoint=plan.endpoint,
            revision=plan.revision,
            variants=tuple(pools),
            shadow=shadow,
            shadow_percent=plan.shadow_percent,
            blocked_reason=plan.blocked_reason,
        )
        self.table.set(route)
        self._set_up_scaling(state, routed)
        state.applied = plan
        state.status = "blocked" if plan.blocked_reason else "serving"
        state.error = plan.blocked_reason
        log.info(
            "endpoint serving",
            extra={
                "endpoint": plan.endpoint,
                "revision": plan.revision,
                "variants": route.variant_names(),
                "started_workers": len(new),
                "kept_workers": len(kept) - len(new),
                "duration_s": round(time.monotonic() - started, 3),
            },
        )
        for w in list(state.workers):
            if w not in kept and w.state in (WorkerState.STARTING, WorkerState.READY):
                self._spawn_task(self._drain(state, w), f"drain-{w.id}")
        self._update_gauges()

    async def _teardown(self, state: _Endpoint) -> None:
        self.table.remove(state.name)
        state.scalers = {}
        self.metrics.set_queue_depth(state.name, None)
        state.applied = None
        state.status = "deleted"
        log.info("endpoint deleted; draining its workers", extra={"endpoint": state.name})
        await asyncio.gather(*(self._drain(state, w) for w in list(state.workers)))
        self._update_gauges()

    def _rollout_failed(self, state: _Endpoint, plan: EndpointPlan, error: str) -> None:
        """``plan`` is not deployed: the previous revision (if any) keeps serving; the
        endpoint's status and its requests (while it has no route) say why."""
        state.status = "failed" if state.applied is None else "serving (update failed)"
        state.error = error
        log.error(
            "deployment failed; the previous revision keeps serving",
            extra={"endpoint": plan.endpoint, "revision": plan.revision, "error": error},
        )
        self.metrics.deployment_failed(plan.endpoint)
        self.table.mark_pending(plan.endpoint, error)  # a routed endpoint keeps its route

    def running_workers(self) -> int:
        """Worker processes starting or serving now, over every endpoint."""
        return sum(
            1
            for state in self._endpoints.values()
            for w in state.workers
            if w.state in (WorkerState.STARTING, WorkerState.READY)
        )

    def _new_id(self, spec: WorkerSpec) -> str:
        return f"{spec.endpoint}/{spec.variant}/{next(self._serial)}"

    async def _bring_up(self, state: _Endpoint, worker: ManagedWorker) -> bool:
        """Start ``worker`` until it is SERVING, up to ``start_attempts`` times."""
        cfg = self.settings
        for attempt in range(1, cfg.start_attempts + 1):
            if self._stopping or worker.state is WorkerState.DRAINING:
                return False
            worker.state = WorkerState.STARTING
            try:
                process = await self.backend.spawn(worker.spec, worker.id)
            except OSError as exc:
                worker.error = f"cannot start: {exc}"
                log.error("worker spawn failed", extra={"instance": worker.id, "error": str(exc)})
                await asyncio.sleep(cfg.restart_backoff_s)
                continue
            worker.process = process
            client = await self._connect(process)
            if client is not None:
                worker.instance = Instance(id=worker.id, address=process.address, client=client)
                worker.state = WorkerState.READY
                worker.error = ""
                worker.watcher = asyncio.create_task(
                    self._watch(state, worker), name=f"watch-{worker.id}"
                )
                log.info(
                    "worker ready",
                    extra={
                        "instance": worker.id,
                        "pid": process.pid,
                        "address": process.address,
                        "startup_s": round(time.monotonic() - process.started_at, 3),
                    },
                )
                return True
            code = process.returncode
            if code is None:
                worker.error = (
                    f"not SERVING within {cfg.ready_timeout_s:.0f}s"
                    if process.address
                    else f"not listening within {cfg.ready_timeout_s:.0f}s (no port in "
                    f"{process.port_file})"
                )
                await process.stop(cfg.stop_grace_s)
            else:
                kind = (
                    "model load failed"
                    if code == EXIT_LOAD_FAILED
                    else f"exited with status {code}"
                )
                worker.error = f"{kind}: {process.log_tail(3)}"
            log.error(
                "worker did not become ready",
                extra={
                    "instance": worker.id,
                    "attempt": attempt,
                    "error": worker.error,
                    "log_file": str(process.log_path),
                },
            )
            if attempt < cfg.start_attempts:
                await asyncio.sleep(cfg.restart_backoff_s * 2 ** (attempt - 1))
        worker.state = WorkerState.FAILED
        return False

    async def _connect(self, process: WorkerProcess) -> WorkerClient | None:
        """A client of the started worker once it listens and reports SERVING; None when
        it exited or ran out of ``ready_timeout_s`` first."""
        deadline = time.monotonic() + self.settings.ready_timeout_s
        if not await process.bound(self.settings.ready_timeout_s) or self._stopping:
            return None
        client = self._client_factory(process.address, self.grpc_settings)
        if await self._wait_ready(process, client, deadline):
            return client
        await client.close()
        return None

    async def _wait_ready(
        self, process: WorkerProcess, client: WorkerClient, deadline: float
    ) -> bool:
        delay = 0.02
        while time.monotonic() < deadline and not self._stopping:
            if process.returncode is not None:
                return False
            if await client.serving(timeout=1.0):
                # Connect the forwarding channel now, not on the first routed request.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(client.channel.channel_ready(), 5.0)
                return process.returncode is None
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.25)
        return False

    async def _watch(self, state: _Endpoint, worker: ManagedWorker) -> None:
        assert worker.process is not None
        code = await worker.process.wait()
        if worker.state is not WorkerState.READY or self._stopping:
            return
        lived = time.monotonic() - worker.process.started_at
        worker.state = WorkerState.FAILED
        worker.error = f"exited with status {code} while serving"
        pool = worker.pool
        if worker.instance is not None:
            worker.instance.healthy = False
            if pool is not None and worker.instance in pool.instances:
                pool.instances.remove(worker.instance)
            # Not closed at once: closing a channel cancels its in-flight calls, whose
            # requests would then get no answer; on a dead worker they fail UNAVAILABLE
            # by themselves and are retried on another instance.
            self._spawn_task(self._close_when_idle(worker.instance), f"close-{worker.id}")
        log.warning(
            "worker exited while serving; replacing it",
            extra={
                "instance": worker.id,
                "exit_status": code,
                "lived_s": round(lived, 1),
                "log_tail": worker.process.log_tail(3),
            },
        )
        self.metrics.worker_restarted(worker.spec.endpoint, worker.spec.variant)
        restarts = 0 if lived > 60 else worker.restarts + 1
        if worker in state.workers:
            state.workers.remove(worker)
        self._update_gauges()
        await self._notify()
        self._spawn_task(self._replace(state, worker, pool, restarts), f"replace-{worker.id}")

    async def _replace(
        self, state: _Endpoint, old: ManagedWorker, pool: VariantPool | None, restarts: int
    ) -> None:
        cfg = self.settings
        delay = min(cfg.restart_backoff_s * 2 ** max(restarts - 1, 0), cfg.restart_backoff_max_s)
        if restarts > 1:
            await asyncio.sleep(delay)
        if not self._pool_is_live(state, pool):
            return
        worker = ManagedWorker(id=self._new_id(old.spec), spec=old.spec, restarts=restarts)
        state.workers.append(worker)
        if await self._bring_up(state, worker) and self._pool_is_live(state, pool):
            assert pool is not None
            assert worker.instance is not None
            worker.pool = pool
            pool.instances.append(worker.instance)
            log.info("worker replaced", extra={"instance": worker.id, "replaces": old.id})
        else:
            await self._drain(state, worker)
            if self._pool_is_live(state, pool):
                # Keep trying with backoff: a variant must not stay short of workers.
                self._spawn_task(
                    self._replace(state, worker, pool, restarts + 1), f"replace-{worker.id}"
                )
        self._update_gauges()
        await self._notify()

    async def _close_when_idle(self, instance: Instance, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while instance.outstanding > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        with contextlib.suppress(Exception):
            await instance.client.close()

    def _pool_is_live(self, state: _Endpoint, pool: VariantPool | None) -> bool:
        route = self.table.find(state.name)
        return (
            not self._stopping
            and pool is not None
            and route is not None
            and any(p is pool for p in route.pools())
        )

    async def _drain(self, state: _Endpoint, worker: ManagedWorker) -> None:
        if worker.state in (WorkerState.DRAINING, WorkerState.STOPPED):
            return
        worker.state = WorkerState.DRAINING
        inst = worker.instance
        if inst is not None:
            inst.healthy = False
            if worker.pool is not None and inst in worker.pool.instances:
                worker.pool.instances.remove(inst)
            deadline = time.monotonic() + self.settings.drain_timeout_s
            # outstanding is a plain counter the hot path bumps; polling it here keeps the
            # request path free of per-call event bookkeeping.
            while inst.outstanding > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        await self._stop_worker(worker)
        if worker in state.workers:
            state.workers.remove(worker)
        self._update_gauges()
        await self._notify()

    async def _stop_worker(self, worker: ManagedWorker) -> None:
        worker.state = WorkerState.STOPPED
        if worker.watcher is not None and not worker.watcher.done():
            worker.watcher.cancel()
        if worker.instance is not None:
            with contextlib.suppress(Exception):
                await worker.instance.client.close()
        if worker.process is not None:
            code = await worker.process.stop(self.settings.stop_grace_s)
            log.info("worker stopped", extra={"instance": worker.id, "exit_status": code})

    # --- scale to zero ------------------------------------------------------------------

    def _set_up_scaling(
        self, state: _Endpoint, routed: list[tuple[VariantPlan, VariantPool]]
    ) -> None:
        """Scalers for the variants of a newly routed revision that scale to zero."""
        now = time.monotonic()
        scalers: dict[str, _Scaler] = {}
        for vp, pool in routed:
            idle = vp.idle_shutdown_s(self.settings.serverless_idle_s)
            if idle <= 0:
                continue
            scaler = _Scaler(pool=pool, plan=vp, idle_s=idle, up_at=now)
            if pool.instances:
                scaler.ready.set()
            pool.cold_start = partial(self._cold_start, state, scaler)
            scalers[vp.name] = scaler
        state.scalers = scalers
        if not scalers:
            self.metrics.set_queue_depth(state.name, None)
        elif state.scale_task is None or state.scale_task.done():
            state.scale_task = asyncio.create_task(
                self._scale_loop(state), name=f"scale-{state.name}"
            )

    async def _scale_loop(self, state: _Endpoint) -> None:
        while not self._stopping and state.scalers:
            await asyncio.sleep(self.settings.scale_poll_interval_s)
            try:
                await self._scale_tick(state)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scaler failed; retrying", extra={"endpoint": state.name})

    async def _scale_tick(self, state: _Endpoint) -> None:
        route = self.table.find(state.name)
        if route is None or not state.scalers:
            return
        depth = await self.queue_depth.depth(state.name) if self.queue_depth else 0
        state.queue_depth = depth
        self.metrics.set_queue_depth(state.name, depth)
        now = time.monotonic()
        if depth != 0:  # unknown (None) counts as busy: never scale down blind
            state.queue_busy_at = now
        routed = route.pools()
        up = any(pool.instances for pool in route.variants)
        for scaler in list(state.scalers.values()):
            pool = scaler.pool
            if not any(p is pool for p in routed):
                continue
            if scaler.task is not None and not scaler.task.done():
                continue
            if pool.instances:
                last_busy = max(pool.last_request, state.queue_busy_at, scaler.up_at)
                in_flight = any(inst.outstanding for inst in pool.instances)
                if not in_flight and depth == 0 and now - last_busy >= scaler.idle_s:
                    self._scale_down(state, scaler, idle_for=now - last_busy)
            elif depth and not up:
                # Queued work and no production worker to consume it: start this one.
                self._scale_up(state, scaler, reason=f"{depth} queued record(s)")
                up = True
        await self._notify()

    def _scale_down(self, state: _Endpoint, scaler: _Scaler, *, idle_for: float) -> None:
        pool = scaler.pool
        workers = [w for w in state.workers if w.pool is pool and w.state is WorkerState.READY]
        log.info(
            "scaling variant to zero",
            extra={
                "endpoint": state.name,
                "variant": pool.name,
                "idle_s": round(idle_for, 1),
                "workers": [w.id for w in workers],
            },
        )
        scaler.ready.clear()
        scaler.scale_downs += 1
        self.metrics.scaled(state.name, pool.name, "down")
        for w in workers:
            # Out of the pool now, so no request picks it while its drain task starts.
            if w.instance is not None:
                w.instance.healthy = False
                if w.instance in pool.instances:
                    pool.instances.remove(w.instance)
            self._spawn_task(self._drain(state, w), f"drain-{w.id}")

    def _scale_up(self, state: _Endpoint, scaler: _Scaler, *, reason: str) -> asyncio.Task[bool]:
        if scaler.task is None or scaler.task.done():
            scaler.task = asyncio.create_task(
                self._bring_up_scaled(state, scaler, reason), name=f"scale-up-{scaler.pool.name}"
            )
        return scaler.task

    async def _bring_up_scaled(self, state: _Endpoint, scaler: _Scaler, reason: str) -> bool:
        pool, vp = scaler.pool, scaler.plan
        started = time.monotonic()
        log.info(
            "scaling variant up from zero",
            extra={"endpoint": state.name, "variant": pool.name, "reason": reason},
        )

        async def one() -> bool:
            worker = ManagedWorker(id=self._new_id(vp.spec), spec=vp.spec)
            state.workers.append(worker)
            if await self._bring_up(state, worker) and self._pool_is_live(state, pool):
                assert worker.instance is not None
                worker.pool = pool
                pool.instances.append(worker.instance)
                scaler.ready.set()
                self._update_gauges()
                return True
            self._spawn_task(self._drain(state, worker), f"drain-{worker.id}")
            return False

        results = await asyncio.gather(*(one() for _ in range(vp.instances_wanted)))
        seconds = time.monotonic() - started
        if any(results):
            scaler.up_at = time.monotonic()
            scaler.scale_ups += 1
            self.metrics.scaled(state.name, pool.name, "up", cold_start_s=seconds)
            log.info(
                "variant scaled up",
                extra={
                    "endpoint": state.name,
                    "variant": pool.name,
                    "workers": sum(results),
                    "cold_start_s": round(seconds, 3),
                },
            )
        else:
            log.error(
                "variant could not scale up from zero",
                extra={"endpoint": state.name, "variant": pool.name, "seconds": round(seconds, 1)},
            )
        await self._notify()
        return any(results)

    async def _cold_start(self, state: _Endpoint, scaler: _Scaler, timeout: float) -> bool:
        """Called by the front door for a request to a variant with no instance."""
        if scaler.pool.instances:
            return True
        if not self._pool_is_live(state, scaler.pool):
            return False
        task = self._scale_up(state, scaler, reason="real-time request")
        waiter = asyncio.ensure_future(scaler.ready.wait())
        try:
            await asyncio.wait({waiter, task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        return bool(scaler.pool.instances)

    def _update_gauges(self) -> None:
        counts: dict[tuple[str, str], int] = {}
        for state in self._endpoints.values():
            for w in state.workers:
                key = (state.name, w.spec.variant)
                counts[key] = counts.get(key, 0) + (w.state is WorkerState.READY)
        self.metrics.set_ready_workers(counts)
