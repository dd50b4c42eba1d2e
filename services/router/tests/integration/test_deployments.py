"""The deployment controller with real worker processes: blue/green updates under load,
crash replacement, deletion, rejected versions, and start-up from the registry's API."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from typing import Any

import grpc
import numpy as np
import pytest

from mlbus.core.rpc import create_channel, wait_for_ready
from mlbus.inference.v2 import grpc_service_pb2_grpc as pb_grpc
from mlbus.router.app import build_app

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]


class Load:
    """Clients sending continuously through the router; records every outcome."""

    def __init__(self, stack: Any, endpoint: str, clients: int = 4) -> None:
        self.stack = stack
        self.endpoint = endpoint
        self.clients = clients
        self.ok = 0
        self.failures: list[str] = []
        self.versions: list[str] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _client(self) -> None:
        x = np.ones((1, 4), dtype=np.float32)
        deadline = time.monotonic() + 120  # bounded even if the test forgets to stop it
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                response = await self.stack.infer(self.endpoint, x, timeout=10)
            except grpc.aio.AioRpcError as exc:
                self.failures.append(f"{exc.code().name}: {exc.details()}")
            else:
                self.ok += 1
                self.versions.append(response.parameters["model_version"].string_param)
            await asyncio.sleep(0.002)

    def __enter__(self) -> Load:
        self._tasks = [asyncio.create_task(self._client()) for _ in range(self.clients)]
        return self

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


async def test_blue_green_update_under_load_fails_no_request(
    stack: Any, endpoint_name: str
) -> None:
    v1 = await stack.model(endpoint_name, seed=11)
    v2 = await stack.model(endpoint_name, seed=12)
    await stack.create(
        endpoint_name,
        [{"name": "main", "model_group": endpoint_name, "model_version": v1, "instance_count": 2}],
    )
    old_pids = {w["pid"] for w in stack.workers(endpoint_name)}
    assert len(old_pids) == 2
    with Load(stack, endpoint_name) as load:
        await stack.wait_until(lambda: load.ok >= 50, timeout=30, what="load running")
        updated = await stack.registry.update_endpoint(
            endpoint_name,
            [
                {
                    "name": "main",
                    "model_group": endpoint_name,
                    "model_version": v2,
                    "instance_count": 2,
                }
            ],
        )
        await stack.deployed(endpoint_name, updated.current_config.revision)
        # The old workers drain and exit; traffic goes on meanwhile.
        await stack.wait_until(
            lambda: not old_pids & {w["pid"] for w in stack.workers(endpoint_name)},
            timeout=30,
            what="old workers stopped",
        )
        before = load.ok
        await stack.wait_until(lambda: load.ok >= before + 50, timeout=30, what="load after update")
        await load.stop()
    assert load.failures == []
    assert load.versions[0] == str(v1)
    assert load.versions[-1] == str(v2)
    # Once the switch happened, nothing went back to the old version.
    switch = load.versions.index(str(v2))
    tail = load.versions[switch + 50 :]
    assert tail
    assert set(tail) == {str(v2)}
    for pid in old_pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_weight_change_keeps_running_workers(stack: Any, endpoint_name: str) -> None:
    v1 = await stack.model(endpoint_name, seed=13)
    v2 = await stack.model(endpoint_name, seed=14)
    variants = [
        {"name": "a", "model_group": endpoint_name, "model_version": v1, "weight": 50},
        {"name": "b", "model_group": endpoint_name, "model_version": v2, "weight": 50},
    ]
    await stack.create(endpoint_name, variants)
    pids = sorted(w["pid"] for w in stack.workers(endpoint_name))
    variants[0]["weight"] = 99
    variants[1]["weight"] = 1
    updated = await stack.registry.update_endpoint(endpoint_name, variants)
    await stack.deployed(endpoint_name, updated.current_config.revision)
    assert sorted(w["pid"] for w in stack.workers(endpoint_name)) == pids
    route = stack.router.table.get(endpoint_name)
    assert [(p.name, p.weight) for p in route.variants] == [("a", 99), ("b", 1)]
    x = np.ones((1, 4), dtype=np.float32)
    seen = [
        (await stack.infer(endpoint_name, x)).parameters["variant"].string_param for _ in range(60)
    ]
    assert seen.count("a") >= 50


async def test_killed_worker_is_routed_around_and_replaced(stack: Any, endpoint_name: str) -> None:
    version = await stack.model(endpoint_name, seed=15)
    await stack.create(
        endpoint_name,
        [
            {
                "name": "main",
                "model_group": endpoint_name,
                "model_version": version,
                "instance_count": 2,
            }
        ],
    )
    workers = stack.workers(endpoint_name)
    victim = workers[0]["pid"]
    restarts = stack.router.metrics.stats.worker_restarts
    with Load(stack, endpoint_name) as load:
        await stack.wait_until(lambda: load.ok >= 50, timeout=30, what="load running")
        os.kill(victim, signal.SIGKILL)

        def replaced() -> bool:
            now = stack.workers(endpoint_name)
            return len([w for w in now if w["state"] == "ready"]) == 2 and victim not in {
                w["pid"] for w in now
            }

        await stack.wait_until(replaced, timeout=60, what="a replacement worker")
        before = load.ok
        await stack.wait_until(
            lambda: load.ok >= before + 50, timeout=30, what="load after restart"
        )
        await load.stop()
    assert stack.router.metrics.stats.worker_restarts == restarts + 1
    # Requests in flight on the killed worker were retried on the other one.
    assert load.failures == []


async def test_deleting_an_endpoint_stops_its_workers(stack: Any, endpoint_name: str) -> None:
    version = await stack.model(endpoint_name, seed=16)
    await stack.create(
        endpoint_name, [{"name": "main", "model_group": endpoint_name, "model_version": version}]
    )
    pids = [w["pid"] for w in stack.workers(endpoint_name)]
    await stack.registry.delete_endpoint(endpoint_name)
    await stack.wait_until(
        lambda: not stack.workers(endpoint_name), timeout=30, what="workers stopped"
    )
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.infer(endpoint_name, np.ones((1, 4), dtype=np.float32))
    assert info.value.code() is grpc.StatusCode.NOT_FOUND


async def test_force_rejected_version_stops_serving(stack: Any, endpoint_name: str) -> None:
    version = await stack.model(endpoint_name, seed=17)
    await stack.create(
        endpoint_name, [{"name": "main", "model_group": endpoint_name, "model_version": version}]
    )
    x = np.ones((1, 4), dtype=np.float32)
    await stack.infer(endpoint_name, x)
    await stack.registry.reject(endpoint_name, version, reason="leaks PII", force=True)

    async def refused() -> bool:
        try:
            await stack.infer(endpoint_name, x)
        except grpc.aio.AioRpcError as exc:
            return exc.code() is grpc.StatusCode.FAILED_PRECONDITION
        return False

    await stack.wait_until(refused, timeout=30, what="the rejected version to stop serving")
    await stack.wait_until(
        lambda: not stack.workers(endpoint_name), timeout=30, what="workers stopped"
    )


async def test_max_concurrency_is_enforced_with_resource_exhausted(
    stack: Any, endpoint_name: str
) -> None:
    version = await stack.model(endpoint_name, seed=18)
    await stack.create(
        endpoint_name,
        [
            {
                "name": "main",
                "model_group": endpoint_name,
                "model_version": version,
                "max_concurrency": 1,
            }
        ],
    )
    x = np.ones((20_000, 4), dtype=np.float32)  # big enough to overlap concurrent calls
    results = await asyncio.gather(
        *(stack.infer(endpoint_name, x) for _ in range(24)), return_exceptions=True
    )
    codes = [r.code() for r in results if isinstance(r, grpc.aio.AioRpcError)]
    ok = [r for r in results if not isinstance(r, BaseException)]
    assert ok
    assert codes
    assert set(codes) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert stack.workers(endpoint_name)[0]["outstanding"] == 0


async def test_router_started_later_deploys_from_the_registry_api(
    stack: Any, endpoint_name: str
) -> None:
    version = await stack.model(endpoint_name, seed=19)
    await stack.create(
        endpoint_name, [{"name": "main", "model_group": endpoint_name, "model_version": version}]
    )
    # A second router on a bus namespace that never saw the registry's events: all it knows
    # comes from the registry's ListEndpoints.
    kafka = stack.settings.kafka.model_copy(
        update={"topic_namespace": f"late-{uuid.uuid4().hex[:8]}"}
    )
    settings = stack.settings.model_copy(
        update={"kafka": kafka, "home": stack.home / "late", "controller_group_id": "late-router"}
    )
    late = build_app(settings)
    port = await late.start()
    channel = create_channel(f"127.0.0.1:{port}", settings.grpc)
    try:
        await wait_for_ready(channel, timeout=10)
        ok = await late.controller.wait_for(
            lambda: late.controller.applied_revision(endpoint_name) >= 1, 60
        )
        assert ok, late.controller.describe()
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        x = np.ones((2, 4), dtype=np.float32)
        response = await stub.ModelInfer(stack.request(endpoint_name, x), timeout=10)
        np.testing.assert_allclose(stack.output(response), stack.reference(19, x), rtol=1e-5)
        pids = [w["pid"] for w in late.controller.describe()[0]["workers"]]
    finally:
        with contextlib.suppress(Exception):
            await channel.close(None)
        await late.stop()
    # Stopping the router stops its workers.
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
