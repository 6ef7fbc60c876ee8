"""The scheduler: which request holds which KV slot, what to prefill next, which rows decode this step.

Pure bookkeeping (no torch, no threads): the engine loop asks it, once per iteration, to admit waiting requests into
free slots, for the next prefill blocks (at most ``prefill_budget`` prompt tokens, so a joining prompt never stalls
the generating sessions for longer than one bounded block) and for the rows of the next decode step. A request
leaves, and its slot is free for the next iteration, when it finishes or is cancelled.

Slots are handed out lowest first, so generating sessions pack the low slots and a decode step covers a short prefix.

Prefix reuse: a freed slot keeps the tokens whose KV it still holds (the engine says which when it removes a request:
a conversation's prompt and reply). A new prompt that starts with at least ``reuse_min_tokens`` of them is admitted
with that much of its prompt already in place: the engine copies those positions' KV from the freed slot into the
request's own slot (``reuse_from``) and prefills only the rest. KV at a position depends only on the tokens up to it,
so the reused part is what prefill would write. Turn N of a conversation starts with turn N-1's prompt and reply, so
its history is not prefilled again; a speculative start thrown away leaves its history for the next one.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections import deque
from collections.abc import Sequence
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
    reused: int = 0  # of which came from an earlier request's KV (prefix reuse)
    reuse_from: int | None = None  # the free slot the engine copies them from (None: none, or already in this slot)
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

    def __init__(self, max_slots: int, max_waiting: int, prefill_budget: int, reuse_min_tokens: int = 0) -> None:
        if max_slots < 1 or max_waiting < 0 or prefill_budget < 1 or reuse_min_tokens < 0:
            raise ValueError("need max_slots >= 1, max_waiting >= 0, prefill_budget >= 1 and reuse_min_tokens >= 0")
        self.max_slots = max_slots
        self.max_waiting = max_waiting
        self.prefill_budget = prefill_budget
        self.reuse_min_tokens = reuse_min_tokens  # 0: no prefix reuse
        self._held: dict[int, list[int]] = {}  # free slot -> the tokens whose KV it still holds
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
            source, reused = self._longest_held_prefix(request.prompt)
            slot = heapq.heappop(self._free)  # lowest first even when the KV to reuse is elsewhere: it is copied
            self._held.pop(slot, None)  # this slot's KV is rewritten from here on
            request.slot = slot
            request.phase = Phase.PREFILLING
            request.prefilled = request.reused = reused
            request.reuse_from = source if reused and source != slot else None
            self.prefilling.append(request)
            admitted.append(request)
        return admitted

    def _longest_held_prefix(self, prompt: list[int]) -> tuple[int | None, int]:
        """The free slot whose held tokens start ``prompt`` the longest, and how many of them it may reuse (at least
        one prompt token is always left to prefill: its logits choose the first reply token)."""
        if not self.reuse_min_tokens:
            return None, 0
        best_slot, best = None, 0
        for slot, held in self._held.items():
            common = _common_prefix(held, prompt)
            if common > best:
                best_slot, best = slot, common
        best = min(best, len(prompt) - 1)
        if best < self.reuse_min_tokens:
            return None, 0
        return best_slot, best

    def remove(self, request: R, held: Sequence[int] = ()) -> None:
        """Takes a request out wherever it is (finished, cancelled, failed); its slot is free at once. ``held``: the
        tokens whose KV the slot holds at positions 0, 1, ... (kept for prefix reuse; empty: nothing reusable)."""
        if request.phase is Phase.WAITING:
            self.waiting.remove(request)
        elif request.phase is Phase.PREFILLING:
            self.prefilling.remove(request)
        elif request.phase is Phase.DECODING:
            del self.decoding[request.held_slot]
        if request.slot is not None:
            if self.reuse_min_tokens and len(held) >= self.reuse_min_tokens:
                self._held[request.slot] = list(held)
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


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
