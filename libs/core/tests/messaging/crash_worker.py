"""A consumer process for the crash-resume test: handles slowly, logs what it handled.

Usage: python crash_worker.py BOOTSTRAP TOPIC PARTITIONS GROUP OUTFILE
Each handled record appends "partition offset event-id" to OUTFILE (flushed at once), so the
test sees exactly what was handled before it SIGKILLs this process.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, TextIO

from google.protobuf import wrappers_pb2

from mlbus.core.messaging import Event, EventConsumer, Topic
from mlbus.core.settings import KafkaSettings

#: Short session so the killed member is expired quickly (join ≈ session/2 on the embedded broker).
CRASH_TEST_SETTINGS = {
    "session_timeout_ms": 3000,
    "heartbeat_interval_ms": 500,
    "max_poll_records": 10,
}


async def main(bootstrap: str, topic_name: str, partitions: int, group: str, out: TextIO) -> None:
    # Short session so the killed member expires quickly (a join takes session/2 on the
    # embedded broker); small polls so commits come often.
    settings = KafkaSettings(
        bootstrap_servers=bootstrap,
        session_timeout_ms=3000,
        heartbeat_interval_ms=500,
        max_poll_records=10,
    )
    topic = Topic(
        name=topic_name, message_type=wrappers_pb2.StringValue, partitions=partitions, key="id"
    )

    async def handle(event: Event[Any]) -> None:
        out.write(f"{event.partition} {event.offset} {event.id}\n")
        out.flush()
        await asyncio.sleep(0.02)  # simulated work, so the test can kill us mid-stream

    consumer = EventConsumer(
        settings, group_id=group, topics=[topic], handler=handle, source="crash-worker"
    )
    await consumer.run()


if __name__ == "__main__":
    bootstrap, topic_name, partitions, group, out_path = sys.argv[1:6]
    with open(out_path, "a", buffering=1) as out_file:
        asyncio.run(main(bootstrap, topic_name, int(partitions), group, out_file))
