"""The scheduler: which request holds which KV slot, what to prefill next, which rows decode this step.

Pure bookkeeping (no torch, no threads): the engine loop asks it, once per iteration, to admit waiting requests into
free slots, for the next prefill blocks (at most ``prefill_budget`` prompt tokens, so a joining prompt never stalls
the generating sessions for longer than one bounded block) and for the rows of the next decode step. A request
leaves, and its slot is free for the next iteration, when it finishes or is cancelled.

Slots are handed out lowest first, so generating sessions pack the low slots and a decode step covers a short prefix.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar


class Phase(enum.StrEnum):
    WAITING = "waiting"  # accepted, no slot yet
    PREFILLING = "prefilling"  # has a slot, prompt partly in its KV
    DECODING = "decoding"  # generating one token per step
    DONE = "done"  # finished, cancelled or failed; holds no slot


class BusyError(RuntimeError):
    """Every slot and every waiting place is taken: the caller should retry later or go elsewhere."""


@dataclass(eq=False)
class ScheduledRequest:
    """What the scheduler tracks of one generation; the engine subclasses it with the sampling and delivery parts."""

    prompt: list[int]
    request_id: int = field(default_factory=itertools.count().__next__)
    phase: Phase = Phase.WAITING
    slot: int | None = None
    prefilled: int = 0  # prompt tokens already in the slot's KV
    next_position: int = 0  # where the last chosen token is written by the next decode step
    paused: bool = False  # its consumer is behind: skipped by decode steps until it catches up

    @property
    def prompt_left(self) -> int:
        return len(self.prompt) - self.prefilled

    @property
    def held_slot(self) -> int:
        """The slot of a request that holds one (prefilling or decoding)."""
        if self.slot is None:
            raise RuntimeError(f"request {self.request_id} holds no slot ({self.phase})")
        return self.slot


R = TypeVar("R", bound=ScheduledRequest)


@dataclass
class PrefillBlock(Generic[R]):
    request: R
    start: int
    stop: int

    @property
    def completes_prompt(self) -> bool:
        return self.stop == len(self.request.prompt)


class Scheduler(Generic[R]):
    """Slots, queues and prefill blocks of requests of type ``R`` (the engine's request class)."""

    def __init__(self, max_slots: int, max_waiting: int, prefill_budget: int) -> None:
        if max_slots < 1 or max_waiting < 0 or prefill_budget < 1:
            raise ValueError("need max_slots >= 1, max_waiting >= 0 and prefill_budget >= 1")
        self.max_slots = max_slots
        self.max_waiting = max_waiting
        self.prefill_budget = prefill_budget
        self.waiting: deque[R] = deque()
        self.prefilling: deque[R] = deque()  # FIFO: the oldest prompt finishes first
        self.decoding: dict[int, R] = {}  # slot -> request
        self._free = list(range(max_slots))  # min-heap of free slots
        heapq.heapify(self._free)

    # ------------------------------------------------------------------ occupancy
    @property
    def active(self) -> int:
        """Requests holding a slot."""
        return self.max_slots - len(self._free)

    def has_work(self) -> bool:
        return bool(self.waiting or self.prefilling or any(not r.paused for r in self.decoding.values()))

    # ------------------------------------------------------------------ joining and leaving
    def add(self, request: R) -> None:
        """Queues a new request; raises ``BusyError`` when slots and waiting places are all taken."""
        if len(self.waiting) >= self.max_waiting + len(self._free):
            raise BusyError(f"all {self.max_slots} generation slots and {self.max_waiting} waiting places are taken")
        request.phase = Phase.WAITING
        self.waiting.append(request)

    def admit(self) -> list[R]:
        """Gives free slots to waiting requests (oldest first); returns the requests admitted."""
        admitted = []
        while self.waiting and self._free:
            request = self.waiting.popleft()
            request.slot = heapq.heappop(self._free)
            request.phase = Phase.PREFILLING
            request.prefilled = 0
            self.prefilling.append(request)
            admitted.append(request)
        return admitted

    def remove(self, request: R) -> None:
        """Takes a request out wherever it is (finished, cancelled, failed); its slot is free at once."""
        if request.phase is Phase.WAITING:
            self.waiting.remove(request)
        elif request.phase is Phase.PREFILLING:
            self.prefilling.remove(request)
        elif request.phase is Phase.DECODING:
            del self.decoding[request.held_slot]
        if request.slot is not None:
            heapq.heappush(self._free, request.slot)
            request.slot = None
        request.phase = Phase.DONE

    # ------------------------------------------------------------------ prefill
    def next_prefill_blocks(self) -> list[PrefillBlock[R]]:
        """Prompt blocks to run before the next decode step: at most ``prefill_budget`` tokens in all."""
        budget = self.prefill_budget
        blocks: list[PrefillBlock[R]] = []
        for request in self.prefilling:
            if budget == 0:
                break
            n = min(budget, request.prompt_left)
            blocks.append(PrefillBlock(request, request.prefilled, request.prefilled + n))
            budget -= n
        return blocks

    def prefilled(self, block: PrefillBlock[R]) -> None:
        """Records a block as run; a completed prompt moves its request to decoding."""
        request = block.request
        request.prefilled = block.stop
        if block.completes_prompt:
            self.prefilling.remove(request)
            request.phase = Phase.DECODING
            request.next_position = len(request.prompt)
            self.decoding[request.held_slot] = request

    # ------------------------------------------------------------------ decode
    def decode_rows(self) -> list[R]:
        """The requests that take part in the next decode step, by slot (paused ones sit it out)."""
        return [self.decoding[slot] for slot in sorted(self.decoding) if not self.decoding[slot].paused]
