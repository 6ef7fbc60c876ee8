"""Reconnecting after a dropped connection: when to try again, and how often.

:func:`keep_connected` runs one connection after another through ``connect()`` until one ends the call
(:class:`Finished`) or the attempts run out. A connection that is lost (:class:`Lost`) is followed by a wait of
:class:`Backoff`'s delay: exponential from ``initial_s`` (0.5 s) doubling up to ``max_s`` (10 s), each delay shortened
by a random share of up to ``jitter`` (so that devices that lost the same server do not all come back at the same
instant). A connection that got as far as the server's ``ready`` starts the count again; one the server refused
for good (``permanent``: a 4xx other than 429) is not retried. Time is whatever ``sleep`` waits on (the event loop's,
or a test's).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Finished:
    """The call is over (done, stopped, timed out, or it failed in a way no reconnection mends)."""

    code: int
    reason: str


@dataclass(frozen=True)
class Lost:
    """The connection dropped (or a new one could not be set up).

    ready: it had reached the server's ``ready`` (a working connection that was lost, not a failed attempt).
    permanent: trying again cannot help (the server refused the offer for what it is).
    """

    reason: str
    ready: bool = False
    permanent: bool = False


class Backoff:
    """``delay(n)`` before the n-th attempt in a row (n >= 1): ``min(max_s, initial_s * 2**(n-1))`` times a random
    factor in ``[1 - jitter, 1]``."""

    def __init__(
        self, initial_s: float = 0.5, max_s: float = 10.0, jitter: float = 0.5, rng: random.Random | None = None
    ):
        if not 0 < initial_s <= max_s or not 0 <= jitter < 1:
            raise ValueError("need 0 < initial_s <= max_s and 0 <= jitter < 1")
        self.initial_s = initial_s
        self.max_s = max_s
        self.jitter = jitter
        self.rng = rng or random.Random()

    def ceiling(self, attempt: int) -> float:
        """The delay before attempt ``attempt`` without jitter."""
        return min(self.max_s, self.initial_s * 2.0 ** min(max(attempt, 1) - 1, 60))

    def delay(self, attempt: int) -> float:
        return self.ceiling(attempt) * (1.0 - self.jitter * self.rng.random())


async def keep_connected(
    connect: Callable[[], Awaitable[Finished | Lost]],
    *,
    attempts: int | None,
    backoff: Backoff,
    sleep: Callable[[float], Awaitable[None]],
    on_retry: Callable[[Lost, int, float], None] | None = None,
) -> Finished | Lost:
    """Connects until a connection finishes the call. ``attempts``: reconnections allowed in a row after a loss
    (None: no limit, 0: none). ``on_retry(lost, attempt, delay_s)`` is told before each wait. Returns the
    :class:`Finished` outcome, or the last :class:`Lost` when it gave up."""
    failures = 0
    while True:
        outcome = await connect()
        if isinstance(outcome, Finished):
            return outcome
        if outcome.ready:
            failures = 0  # that connection worked: a new run of attempts
        failures += 1
        if outcome.permanent or (attempts is not None and failures > attempts):
            return outcome
        delay = backoff.delay(failures)
        if on_retry is not None:
            on_retry(outcome, failures, delay)
        await sleep(delay)
