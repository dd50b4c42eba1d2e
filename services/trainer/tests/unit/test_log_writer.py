"""The log writer of a running job: lines reach the store in order and once, a write in
progress when the job ends is finished rather than cancelled, and a store that refuses a
write gets the same lines again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, cast

import pytest

from mlbus.trainer.domain.executor import LogWriter
from mlbus.trainer.domain.models import LogLine


class Store:
    """append_logs only: records the batches; can hold a write open or refuse some."""

    def __init__(self, *, refuse: int = 0) -> None:
        self.batches: list[list[tuple[int, str]]] = []
        self.refuse = refuse
        self.calls = 0
        self.writing = asyncio.Event()
        self.gate: asyncio.Event | None = None

    async def append_logs(self, job_id: str, lines: Sequence[LogLine]) -> None:
        assert job_id == "job-1"
        self.calls += 1
        self.writing.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.refuse:
            self.refuse -= 1
            raise OSError("database is locked")
        self.batches.append([(x.number, x.text) for x in lines])

    @property
    def stored(self) -> list[tuple[int, str]]:
        return [line for batch in self.batches for line in batch]


def writer(store: Store, **options: Any) -> LogWriter:
    defaults: dict[str, Any] = {"first": 1, "interval_s": 0.01, "max_chars": 100}
    return LogWriter(cast(Any, store), "job-1", **(defaults | options))


async def test_closing_during_a_write_finishes_it_and_stores_the_later_lines() -> None:
    store = Store()
    store.gate = asyncio.Event()
    logs = writer(store)
    logs.start()
    logs.write("input staged")
    await asyncio.wait_for(store.writing.wait(), 5)  # the periodic write holds that line
    logs.write("[mlbus] process ended (exit status 0) after 1.0s")
    closing = asyncio.create_task(logs.close())
    await asyncio.sleep(0.05)
    assert not closing.done()  # it waits for the write in progress
    store.gate.set()
    await asyncio.wait_for(closing, 5)
    assert store.stored == [
        (1, "input staged"),
        (2, "[mlbus] process ended (exit status 0) after 1.0s"),
    ]
    assert logs.pending == 0


async def test_a_refused_write_is_tried_again_with_the_same_lines() -> None:
    store = Store(refuse=2)
    logs = writer(store, interval_s=0.001)
    for i in range(3):
        logs.write(f"line {i}")
    await logs.close()  # never started: close writes everything
    assert store.calls == 3
    assert store.stored == [(1, "line 0"), (2, "line 1"), (3, "line 2")]


async def test_lines_the_store_keeps_refusing_are_reported_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = Store(refuse=10)
    logs = writer(store, interval_s=0.001, close_attempts=3)
    logs.write("a")
    logs.write("b")
    with caplog.at_level(logging.ERROR):
        await logs.close()
    assert store.calls == 3
    assert store.stored == []
    assert "job job-1: 2 log lines could not be stored and are lost" in caplog.text


async def test_long_lines_are_cut_and_numbers_continue_from_the_first() -> None:
    store = Store()
    logs = writer(store, first=41, max_chars=5)
    logs.write("0123456789")
    logs.write("ok")
    await logs.close()
    assert store.stored == [(41, "01234 [cut]"), (42, "ok")]


async def test_cancelling_the_closer_does_not_cancel_the_final_write() -> None:
    store = Store()
    store.gate = asyncio.Event()
    logs = writer(store)
    logs.write("last line")
    closing = asyncio.create_task(logs.close())
    await asyncio.wait_for(store.writing.wait(), 5)
    closing.cancel()  # e.g. the trainer stopping, out of patience with the job
    with pytest.raises(asyncio.CancelledError):
        await closing
    store.gate.set()
    for _ in range(100):
        if store.stored:
            break
        await asyncio.sleep(0.01)
    assert store.stored == [(1, "last line")]
