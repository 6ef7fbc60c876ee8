"""The asyncio tasks an object runs in the background and cancels when it closes: the turn controller's turns and
starter (:mod:`assistant.pipeline.turns`), a WebRTC session's track readers (:mod:`assistant.webrtc.session`).

No task is dropped unseen: each is kept until it ends, one that fails is logged, and closing cancels every task
still running and logs any that ignores its cancellation for longer than the grace period.

Imports neither torch nor aiortc.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any


class BackgroundTasks:
    """One owner's running tasks. ``label`` names the owner in log lines (``"session 3f2a..."``), on the owner's
    ``logger``; ``len()`` is how many tasks still run."""

    def __init__(self, label: str, logger: logging.Logger) -> None:
        self.label = label
        self._logger = logger
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Runs ``coro`` as one of the owner's tasks."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._logger.error("%s: a task failed", self.label, exc_info=task.exception())

    async def cancel_all(self, grace_s: float) -> None:
        """Cancels every running task and waits up to ``grace_s`` for them to end; one still running then is
        logged (and left: nothing more can be done about it from here)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            for task in pending:
                self._logger.error("%s: a task ignored its cancellation: %r", self.label, task)
