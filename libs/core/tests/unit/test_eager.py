"""start_eagerly: a coroutine's first step runs in the caller; one that waits goes on in a
task of its own, out of reach of the caller's cancellation."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from mlbus.core.eager import start_eagerly

where: contextvars.ContextVar[str] = contextvars.ContextVar("where", default="caller")


async def test_a_coroutine_that_never_waits_finishes_in_the_call() -> None:
    steps: list[str] = []

    async def quick() -> int:
        steps.append("ran")
        return 7

    task, result = start_eagerly(quick())
    assert (task, result) == (None, 7)
    assert steps == ["ran"]  # before the caller awaited anything


async def test_one_that_waits_continues_in_its_own_task_past_the_callers_cancellation() -> None:
    gate = asyncio.Event()
    steps: list[str] = []

    async def slow() -> str:
        steps.append("first step")
        await gate.wait()
        steps.append("after the wait")
        return "done"

    started: list[asyncio.Task[str] | None] = []

    async def caller() -> None:
        task, result = start_eagerly(slow())
        assert result is None
        started.append(task)
        await asyncio.sleep(30)

    calling = asyncio.ensure_future(caller())
    await asyncio.sleep(0)
    assert steps == ["first step"]
    calling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await calling
    gate.set()
    task = started[0]
    assert task is not None
    assert await asyncio.wait_for(task, 5) == "done"
    assert steps == ["first step", "after the wait"]


async def test_cancelling_the_task_reaches_the_coroutine() -> None:
    cleaned = asyncio.Event()

    async def waits() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            cleaned.set()

    task, _ = start_eagerly(waits())
    assert task is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned.is_set()


async def test_the_first_step_and_the_task_run_in_the_given_context() -> None:
    context = contextvars.copy_context()
    context.run(where.set, "own")
    seen: list[str] = []

    async def look() -> None:
        seen.append(where.get())
        await asyncio.sleep(0)
        seen.append(where.get())

    task, _ = start_eagerly(look(), context=context)
    assert task is not None
    await task
    assert seen == ["own", "own"]
    assert where.get() == "caller"


async def test_an_error_in_the_first_step_is_raised_to_the_caller() -> None:
    async def bad() -> None:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        start_eagerly(bad())


async def test_awaiting_a_resumed_coroutine_directly_steps_it_the_same_way() -> None:
    from mlbus.core.eager import _Resumed

    async def twice() -> int:
        await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        return 2

    coro = twice()
    waiting_on = coro.send(None)
    assert await _Resumed(coro, waiting_on) == 2
