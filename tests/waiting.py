"""Waiting on a condition in async tests: poll until it holds, fail with a message after a deadline (never assert an
absence after a fixed sleep)."""

import asyncio
import time


async def until(condition, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.02)
