"""Mirroring a sample of an endpoint's requests to its shadow variant, off the response path.

The caller's response is already on its way when the copy is sent; the shadow's answer is
only compared with production's (latency, error, largest output difference) and recorded
in metrics. At most ``max_in_flight`` copies are outstanding; beyond that copies are
dropped and counted, so a slow shadow never costs the production path memory or time.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from typing import Any

import grpc

from mlbus.inference.v2 import grpc_service_pb2 as pb
from mlbus.router.api.outputs import decode_outputs, max_abs_diff
from mlbus.router.domain.routing import VariantPool
from mlbus.router.metrics import RouterMetrics

log = logging.getLogger(__name__)


class ShadowMirror:
    """Sends mirrored requests to shadow pools and records how they compare."""

    def __init__(
        self,
        metrics: RouterMetrics,
        *,
        max_in_flight: int,
        timeout_s: float,
        rng: random.Random | None = None,
    ) -> None:
        self.metrics = metrics
        self.max_in_flight = max_in_flight
        self.timeout_s = timeout_s
        self._rng = rng or random.Random()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        """Mirrored requests not answered yet."""
        return len(self._tasks)

    def submit(
        self,
        endpoint: str,
        pool: VariantPool,
        request: bytes,
        production: bytes,
        metadata: Sequence[tuple[str, str]],
    ) -> None:
        """Mirror ``request`` to ``pool``; ``production`` is the response the caller got."""
        if len(self._tasks) >= self.max_in_flight:
            self.metrics.shadow_dropped(endpoint, pool.name)
            return
        instance = pool.pick(self._rng)
        if instance is None:
            self.metrics.shadow_dropped(endpoint, pool.name)
            return
        instance.outstanding += 1
        task = asyncio.create_task(
            self._mirror(endpoint, pool, instance, request, production, metadata)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _mirror(
        self,
        endpoint: str,
        pool: VariantPool,
        instance: Any,
        request: bytes,
        production: bytes,
        metadata: Sequence[tuple[str, str]],
    ) -> None:
        started = time.perf_counter()
        try:
            response = await instance.client.infer(
                request, timeout=self.timeout_s, metadata=tuple(metadata)
            )
        except grpc.aio.AioRpcError as exc:
            self.metrics.shadow_result(
                endpoint, pool.name, seconds=time.perf_counter() - started, error=True, diff=None
            )
            log.debug(
                "shadow request failed", extra={"endpoint": endpoint, "code": exc.code().name}
            )
            return
        finally:
            instance.outstanding -= 1
        seconds = time.perf_counter() - started
        try:
            diff: float | None = max_abs_diff(
                decode_outputs(pb.ModelInferResponse.FromString(production)),
                decode_outputs(pb.ModelInferResponse.FromString(response)),
            )
        except Exception:
            log.warning("cannot compare shadow output", exc_info=True, extra={"endpoint": endpoint})
            diff = None
        self.metrics.shadow_result(endpoint, pool.name, seconds=seconds, error=False, diff=diff)

    async def stop(self) -> None:
        """Cancel the copies still in flight."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
