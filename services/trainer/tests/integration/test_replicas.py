"""Two trainer replicas on one broker and one database share the jobs of the job topic
through their consumer group: the group splits the requests between them, each job is
claimed and run by exactly one replica, none is lost, and both do some of the work.

The jobs are processing jobs (a child process that imports little, about a second each
here) whose script records every run in a ledger file: the scheduling is the same for
every kind of job, and the ledger shows what ran, independently of the trainer's records.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import select

from mlbus.common.v1 import common_pb2
from mlbus.core.messaging import EventProducer
from mlbus.core.rpc import create_channel, wait_for_ready
from mlbus.trainer.adapters import tables as t
from mlbus.trainer.app import TrainerApp, build_app
from mlbus.trainer.domain.service import Submission
from mlbus.trainer.v1 import events_pb2 as ev
from mlbus.trainer.v1 import trainer_pb2 as pb
from mlbus.trainer.v1 import trainer_pb2_grpc

JOBS = 6

LEDGER = """
from pathlib import Path

def process(input_path, output_dir, arguments):
    with open(arguments["ledger"], "a") as ledger:
        ledger.write(arguments["job"] + "\\n")
    (Path(output_dir) / "done.txt").write_text(arguments["job"])
"""


async def test_two_replicas_share_the_topic_jobs(stack: Any, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    # A topic namespace of their own: the module's trainer does not see these requests.
    kafka = stack.kafka.model_copy(update={"topic_namespace": f"replicas-{run}"})
    apps: list[TrainerApp] = []
    accepted: dict[str, list[str]] = {}
    for name in ("a", "b"):
        settings = stack.settings.model_copy(
            update={
                "kafka": kafka,
                "database_url": f"sqlite:///{tmp_path / 'shared.db'}",
                "trainer_id": f"replica-{name}-{run}",
                "consumer_group": f"replicas-{run}",
                "max_concurrent_jobs": 1,
                "home": tmp_path / name,
            }
        )
        app = build_app(settings)
        accept = app.service.accept

        # Which replica the consumer group delivered each request to.
        async def recording(
            submission: Submission, accept: Any = accept, who: str = settings.trainer_id
        ) -> Any:
            accepted.setdefault(submission.job_id, []).append(who)
            return await accept(submission)

        app.service.accept = recording  # type: ignore[method-assign]
        apps.append(app)
    try:
        ports = await asyncio.gather(*(app.start() for app in apps))
        partitions = apps[0].catalogue.job_requested.partitions

        def split() -> bool:
            held = [{tp.partition for tp in app.consumer.assignment} for app in apps]
            return all(held) and not held[0] & held[1] and len(held[0] | held[1]) == partitions

        await stack.wait_until(split, timeout=30, what="the group to split the partitions")
        owner = {tp.partition: app.trainer_id for app in apps for tp in app.consumer.assignment}

        data = stack.classification_csv(tmp_path / "raw.csv", rows=20)
        (tmp_path / "ledger.py").write_text(LEDGER)
        ledger = tmp_path / "ledger.txt"
        job_ids = [f"shared-{run}-{i}" for i in range(JOBS)]
        async with EventProducer(kafka, source="test") as producer:
            for i, job_id in enumerate(job_ids):
                spec = stack.spec(
                    data,
                    script_uri=str(tmp_path / "ledger.py"),
                    output_uri=str(tmp_path / "out" / job_id),
                    hyperparameters={"ledger": str(ledger), "job": job_id},
                )
                request = ev.JobRequested(
                    job_id=job_id,
                    kind=ev.JOB_KIND_PROCESSING,
                    experiment="replicas",
                    spec=spec,
                    actor=common_pb2.Actor(name="bob"),
                )
                # Every partition gets two requests, so each replica receives some.
                await producer.publish(
                    apps[0].catalogue.job_requested, request, key=job_id, partition=i % partitions
                )

        channel = create_channel(f"127.0.0.1:{ports[1]}", stack.settings.grpc)
        try:
            await wait_for_ready(channel, timeout=10)
            stub = trainer_pb2_grpc.TrainerServiceStub(channel)
            jobs = [await stack.wait(job_id, timeout=60, stub=stub) for job_id in job_ids]
            # One child process per job: its log has one "process ended" line.
            ends = {
                job_id: [
                    x.text
                    async for r in stub.StreamJobLogs(
                        pb.StreamJobLogsRequest(job_id=job_id), timeout=10
                    )
                    for x in r.lines
                    if x.text.startswith("[mlbus] process ended")
                ]
                for job_id in job_ids
            }
        finally:
            await channel.close(None)

        for job in jobs:
            assert job.status == ev.JOB_STATUS_COMPLETED, (job.job_id, job.reason)
            assert job.attempts == 1
        # Every job's script ran exactly once.
        assert sorted(ledger.read_text().split()) == sorted(job_ids)
        for job_id in job_ids:
            assert (tmp_path / "out" / job_id / "done.txt").read_text() == job_id
        # The group delivered each request to the replica holding its partition.
        for i, job_id in enumerate(job_ids):
            assert owner[i % partitions] in accepted[job_id]
        ran = Counter(job.trainer_id for job in jobs)
        assert set(ran) == {app.trainer_id for app in apps}, ran

        # Each job was started once and ended once, by the replica that holds it: its
        # status events (written with each change) are PENDING, RUNNING, COMPLETED.
        async with apps[0].database.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(t.outbox.c.job_id, t.outbox.c.trainer_id, t.outbox.c.payload).order_by(
                        t.outbox.c.id
                    )
                )
            ).all()
        changes: dict[str, list[tuple[int, str]]] = {}
        for job_id, writer, payload in rows:
            status = ev.JobStatusChanged.FromString(payload).status
            changes.setdefault(job_id, []).append((status, writer))
        for job in jobs:
            statuses = [s for s, _ in changes[job.job_id]]
            assert statuses == [
                ev.JOB_STATUS_PENDING,
                ev.JOB_STATUS_RUNNING,
                ev.JOB_STATUS_COMPLETED,
            ], job.job_id
            assert {w for _, w in changes[job.job_id][1:]} == {job.trainer_id}
        assert {job_id: len(lines) for job_id, lines in ends.items()} == dict.fromkeys(job_ids, 1)
    finally:
        for app in reversed(apps):
            await app.stop()
