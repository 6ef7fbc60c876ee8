"""Waiting in async tests without betting on the machine's speed.

- ``until(condition)``: poll until a condition holds, fail with a message after a deadline (never assert an absence
  after a fixed sleep).
- ``run_in_virtual_time(main)``: run a coroutine on an event loop whose clock (``loop.time()``, which ``asyncio.sleep``,
  ``asyncio.wait_for`` and ``asyncio.timeout`` use) moves only when every task waits on a timer, and then jumps
  straight to the next one. Deadlines and sleeps take no real time and the times a test reads from ``loop.time()``
  are exact, however loaded the machine is: a test can assert "failed at the 0.05 s deadline" instead of "within
  1 s of wall clock". Work in a thread (``asyncio.to_thread``, ``run_in_executor``) is waited for in real time with
  the clock stopped. For code under test that only uses the loop's clock and does no real network I/O.
"""

from __future__ import annotations

import asyncio
import selectors
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# A virtual-time loop with nothing to run, no timer and no thread at work is stuck for good; it gives up after this
# long of real time (pytest-timeout would end the test anyway, later and with less to say).
STUCK_AFTER_S = 30.0


async def until(condition, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.02)


class _JumpingSelector(selectors.DefaultSelector):
    """Polls the real selector without blocking; when nothing is ready and the loop would sleep until its next timer,
    moves the loop's virtual clock there instead."""

    def __init__(self, loop: VirtualClockLoop):
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None):
        events = super().select(0)
        if events or timeout == 0:
            return events
        if self._loop.executor_jobs:  # a thread is working: wait for it in real time, the clock stopped
            return super().select(None if timeout is None else STUCK_AFTER_S)
        if timeout is None:  # no timer: only a thread's or a signal's wake-up can come
            events = super().select(STUCK_AFTER_S)
            if not events:
                raise RuntimeError("every task waits, with no timer set and no thread at work: stuck for good")
            return events
        self._loop.advance(timeout)
        return []


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop on a virtual clock (see the module's docstring); starts at 0.0."""

    def __init__(self) -> None:
        self._virtual_now = 0.0
        self.executor_jobs = 0
        super().__init__(selector=_JumpingSelector(self))

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        self._virtual_now += max(0.0, seconds)

    def run_in_executor(self, executor, func, *args):
        future = super().run_in_executor(executor, func, *args)
        self.executor_jobs += 1

        def finished(_):
            self.executor_jobs -= 1

        future.add_done_callback(finished)
        return future


def run_in_virtual_time(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on a ``VirtualClockLoop``."""
    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        return runner.run(main)
