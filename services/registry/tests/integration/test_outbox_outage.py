"""The registry does not need the broker to start or to serve, and the outbox delivers
every event once the broker is back: in order per key, each once, to topics recreated with
their catalogue partition counts (a restarted embedded broker has lost them all)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlbus.common.v1 import common_pb2
from mlbus.core.messaging.topics import CONTROL_PARTITIONS
from mlbus.core.settings import KafkaSettings
from mlbus.registry.adapters.event_encoder import registry_topics
from mlbus.registry.v1 import events_pb2 as ev
from mlbus.registry.v1 import registry_pb2 as pb
from mlbus.sdk.local.broker import BrokerProcess, free_port, start_broker

ACTOR = common_pb2.Actor(name="ops")


async def _start_broker(port: int, log: Path) -> BrokerProcess:
    return await asyncio.to_thread(start_broker, port=port, log_path=log)


async def test_events_survive_a_broker_outage(
    start_registry: Any,
    fresh_database_url: str,
    unique_name: Callable[[str], str],
    onnx_linear_model: Any,
    read_events: Any,
    tmp_path: Path,
) -> None:
    port = free_port()
    kafka = KafkaSettings(
        bootstrap_servers=f"127.0.0.1:{port}", topic_namespace=unique_name("ns")[:40]
    )
    group = unique_name("g")
    endpoint = unique_name("e")

    # Nothing listens on the port yet: the registry starts and serves anyway.
    async with start_registry(fresh_database_url, kafka=kafka) as registry:
        topics = registry_topics(registry.catalogue)
        await registry.register(group, onnx_linear_model(seed=0), create_group=True)
        assert await registry.outbox_count(pending_only=True) == 2

        first = await _start_broker(port, tmp_path / "broker-1.log")
        try:
            wanted = set(await registry.outbox_ids(group))
            await read_events(
                kafka.bootstrap_servers,
                topics,
                until=lambda records: wanted <= {r.envelope.id for r in records},
            )

            async def drained() -> bool:
                return await registry.outbox_count(pending_only=True) == 0

            await _wait(drained, "the outbox to drain")
        finally:
            await asyncio.to_thread(first.stop)

        # The broker is gone: changes go on, their events wait in the outbox.
        failures_before = registry.app.relay.failures
        before_outage = set(await registry.outbox_ids(group))
        for seed in (1, 2, 3):
            await registry.register(group, onnx_linear_model(seed=seed))
        await registry.approve(group, 2)
        await registry.stub.SetAlias(
            pb.SetAliasRequest(model_group=group, alias="production", version=2, actor=ACTOR)
        )
        await registry.stub.SetAlias(
            pb.SetAliasRequest(model_group=group, alias="production", version=1, actor=ACTOR)
        )
        await registry.stub.CreateEndpoint(
            pb.CreateEndpointRequest(
                name=endpoint,
                config=pb.EndpointConfigSpec(
                    variants=[
                        ev.EndpointVariant(
                            name="blue",
                            model_group=group,
                            model_version=2,
                            weight=1,
                            instance_count=1,
                        )
                    ]
                ),
                actor=ACTOR,
            )
        )
        for count in (2, 3):
            await registry.stub.UpdateEndpoint(
                pb.UpdateEndpointRequest(
                    name=endpoint,
                    config=pb.EndpointConfigSpec(
                        variants=[
                            ev.EndpointVariant(
                                name="blue",
                                model_group=group,
                                model_version=2,
                                weight=1,
                                instance_count=count,
                            )
                        ]
                    ),
                    actor=ACTOR,
                )
            )
        listed = await registry.stub.ListModelVersions(
            pb.ListModelVersionsRequest(model_group=group)
        )
        assert [v.version for v in listed.model_versions] == [4, 3, 2, 1]

        async def relay_retried() -> bool:
            return registry.app.relay.failures > failures_before

        await _wait(relay_retried, "the relay to try (and fail) while the broker is down")
        group_ids = [i for i in await registry.outbox_ids(group) if i not in before_outage]
        endpoint_ids = await registry.outbox_ids(endpoint)
        assert len(group_ids) == 6
        assert len(endpoint_ids) == 3
        assert await registry.outbox_count(pending_only=True) == 9

        # A new, empty broker on the same address: everything queued arrives.
        second = await _start_broker(port, tmp_path / "broker-2.log")
        try:
            wanted = set(group_ids) | set(endpoint_ids)
            received = await read_events(
                kafka.bootstrap_servers,
                topics,
                until=lambda records: wanted <= {r.envelope.id for r in records},
            )
            ids = [r.envelope.id for r in received]
            assert len(ids) == len(set(ids)), "an event was delivered twice"
            assert set(ids) == wanted
            for key, outbox_order in ((group, group_ids), (endpoint, endpoint_ids)):
                for topic in {r.topic for r in received if r.key == key}:
                    seen = [r.envelope.id for r in received if r.key == key and r.topic == topic]
                    assert seen == [i for i in outbox_order if i in seen], topic
            registered = [
                r.message.version
                for r in received
                if isinstance(r.message, ev.ModelVersionRegistered)
            ]
            assert registered == [2, 3, 4]
            moves = [r.message.version for r in received if isinstance(r.message, ev.AliasMoved)]
            assert moves == [2, 1]
            revisions = [
                r.message.config_revision
                for r in received
                if isinstance(r.message, ev.EndpointConfigUpdated)
            ]
            assert revisions == [1, 2, 3]
            partitions = {(r.topic, r.partition) for r in received}
            assert all(p < CONTROL_PARTITIONS for _, p in partitions)
            counts = await _partition_counts(kafka, topics)
            assert set(counts.values()) == {CONTROL_PARTITIONS}, counts

            async def drained_again() -> bool:
                return await registry.outbox_count(pending_only=True) == 0

            await _wait(drained_again, "the outbox to drain after the outage")
        finally:
            await registry.app.relay.stop()
            await asyncio.to_thread(second.stop)


async def _partition_counts(kafka: KafkaSettings, topics: list[Any]) -> dict[str, int]:
    from mlbus.core.messaging.topics import ensure_topics

    return await ensure_topics(kafka.model_copy(update={"create_topics": False}), topics)


async def _wait(predicate: Any, what: str, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)
