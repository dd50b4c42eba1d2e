"""Registering trained models through the SDK's asyncio registry client."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlbus.core.errors import DeadlineExceeded, MlbusError, Unavailable
from mlbus.core.settings import GrpcSettings
from mlbus.sdk.registry import AsyncRegistryClient

log = logging.getLogger(__name__)


class RegistrationError(Exception):
    """The registry refused the model or stayed unreachable; the job's FAILED reason."""


@dataclass(frozen=True, slots=True)
class Registered:
    """Where the model landed."""

    model_group: str
    version: int


class RegistryRegistrar:
    """Registers a job's ONNX model (PENDING_MANUAL_APPROVAL) with its lineage; the job's
    submitter is the registrant, so someone else approves it."""

    def __init__(
        self,
        target: str,
        *,
        timeout_s: float,
        attempts: int,
        grpc: GrpcSettings,
        backoff_s: float = 0.5,
    ) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.grpc = grpc
        self.backoff_s = backoff_s

    async def register(
        self,
        *,
        actor: str,
        model_group: str,
        model: Path | None,
        artifact_uri: str = "",
        expected_sha256: str = "",
        metrics: Mapping[str, float],
        hyperparameters: Mapping[str, str],
        lineage: Mapping[str, Any],
        baseline: Mapping[str, Any] | None,
        tags: Mapping[str, str],
        request_id: str,
        description: str,
    ) -> Registered:
        """Register once (``request_id`` makes a retry return the first result)."""
        delay = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            client = AsyncRegistryClient(
                self.target,
                actor=actor,
                timeout=self.timeout_s,
                transfer_timeout=self.timeout_s,
                settings=self.grpc,
            )
            try:
                version = await client.register(
                    model,
                    group=model_group,
                    artifact_uri=artifact_uri,
                    expected_sha256=expected_sha256,
                    metrics=dict(metrics),
                    hyperparameters=dict(hyperparameters),
                    lineage=dict(lineage),
                    baseline=dict(baseline) if baseline else None,
                    tags=dict(tags),
                    description=description,
                    request_id=request_id,
                    create_group=True,
                )
                return Registered(version.model_group, version.version)
            except (Unavailable, DeadlineExceeded) as exc:
                # Retried with the same request_id: a registration that did commit before
                # its answer was lost (a deadline) is returned, not made twice.
                if attempt == self.attempts:
                    raise RegistrationError(
                        f"registry at {self.target} unavailable after {attempt} attempts: "
                        f"{exc.code.name}: {exc.message}"
                    ) from exc
                log.warning(
                    "registry unavailable (attempt %d of %d): %s", attempt, self.attempts, exc
                )
            except MlbusError as exc:
                raise RegistrationError(
                    f"registration in {model_group!r} failed: {exc.code.name}: {exc.message}"
                ) from exc
            finally:
                await client.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
        raise AssertionError("unreachable")
