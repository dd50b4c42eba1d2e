"""Eager first steps for coroutines: Python 3.12's eager tasks, on 3.11.

:func:`start_eagerly` runs a coroutine's first step at once, in the caller, and makes a task
of it only if it has to wait. A coroutine that finishes without waiting costs no task and
no turn of the event loop (the inference worker answers most streamed requests this way).
One that waits continues in a task of its own, so cancelling the caller from then on does
not reach it (the router writes to a shared stream this way: a cancelled write would end
the whole stream, with every other caller's request on it).
"""

from __future__ import annotations

import asyncio
import collections.abc
import contextvars
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")


class _Resumed(collections.abc.Coroutine[Any, Any, T]):
    """``coro``, which has taken its first step and now waits on ``waiting_on`` (what that
    step yielded), as a coroutine a task can run: the task's first step gets
    ``waiting_on``; everything else the task sends or throws goes to ``coro``.

    A task cancelled before its first step throws the cancellation into ``coro`` as well.
    Wrapping ``coro`` in an ``async def`` would not: a task cancelled before it started
    never enters its coroutine, so ``coro``'s handlers and ``finally`` blocks would not run.
    """

    __slots__ = ("_coro", "_started", "_waiting_on")

    def __init__(self, coro: Coroutine[Any, Any, T], waiting_on: Any) -> None:
        self._coro = coro
        self._waiting_on = waiting_on
        self._started = False

    def send(self, value: Any) -> Any:
        if not self._started:
            self._started = True
            return self._waiting_on
        return self._coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        self._started = True
        if val is None and tb is None:
            return self._coro.throw(typ)
        return self._coro.throw(typ, val, tb)

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, Any, T]:
        """Awaited directly instead of run by a task: the same steps."""
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            try:
                waiting_on = self.throw(thrown) if thrown is not None else self.send(sent)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            thrown = None
            try:
                sent = yield waiting_on
            except BaseException as exc:
                thrown = exc


def start_eagerly(
    coro: Coroutine[Any, Any, T],
    *,
    context: contextvars.Context | None = None,
    name: str | None = None,
) -> tuple[asyncio.Task[T] | None, T | None]:
    """Take ``coro``'s first step now (in ``context`` when given, else the caller's).

    Returns ``(None, result)`` when it finished in that step, else ``(task, None)``: the task
    carries it on from where it waits (in ``context``, or a copy of the caller's). An
    exception raised in the first step is raised here."""
    try:
        waiting_on = context.run(coro.send, None) if context is not None else coro.send(None)
    except StopIteration as done:
        return None, done.value
    loop = asyncio.get_running_loop()
    return loop.create_task(_Resumed(coro, waiting_on), name=name, context=context), None
