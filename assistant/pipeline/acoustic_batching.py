"""Batched acoustic decoding: chunks of concurrent sessions share model calls (no ray; the in-process backend and the
Ray deployment both run one ``AcousticBatcher``).

``AcousticBatcher.decode(request)`` queues a :class:`~assistant.decoding.maskgit.ChunkRequest` and returns its
(codes, wave). One worker task on the event loop collects queued requests into a *round* and runs the round in ONE
worker thread, so model calls never overlap:

- A round closes when it holds ``max_batch`` requests, or when its oldest request has waited ``window_s``; a request
  that finds the batcher idle with nothing else queued goes at once (it never waits for company). Requests that
  arrive while a round runs queue up and form the next round, so under load batches form without any added wait;
  the collection wait itself is bounded by ``window_s``, for the first chunk of a turn as for any other. (A request
  that arrives while a round runs also waits for that round: there is one worker thread.)
- First chunks of a turn (no context: a listener is waiting for the answer's first audio) are taken into a round
  ahead of continuation chunks (which have the previous chunk's audio still playing), and their shape groups run
  first within the round.
- Within a round, ``ChunkedAcousticDecoder.decode_chunks`` semantics apply per shape group: requests whose tensors
  have equal shapes (chunk length, context length, prompt length) are stacked into one fill call and one codec
  decode; different shapes run as separate calls in the same round. Nothing is padded (padding would change the
  conformer's attention and convolution outputs). Each group's callers are answered as soon as the group is done.
- Randomness is per request (each ``ChunkRequest`` carries its generator), so a chunk decodes to the same codes
  whether it runs alone or batched.

``stats()`` returns an :class:`AcousticBatchStats` for metrics and autoscaling (queue depth, batches, mean batch size,
last round's model seconds, audio seconds produced and the acoustic real-time factor).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from assistant.decoding.maskgit import ChunkRequest


class BatchDecoder(Protocol):
    """What the batcher needs of a decoder (``ChunkedAcousticDecoder`` has it)."""

    hop: int
    sample_rate: int

    def batch_key(self, request: ChunkRequest) -> tuple: ...

    def decode_chunks(self, requests: Sequence[ChunkRequest]) -> list[tuple[Tensor, Tensor]]: ...


@dataclass(frozen=True)
class AcousticBatchStats:
    """A snapshot of an ``AcousticBatcher``.

    queue_depth: requests waiting for a round. in_flight: requests of the round that runs now.
    batches: rounds run. model_calls: shape groups run (one fill call + one codec decode each). requests: chunks
    taken into rounds. mean_batch_size: requests / batches. last_call_s: model seconds of the last round.
    busy_s: model seconds
    of all rounds. audio_s: seconds of audio produced. real_time_factor: busy_s / audio_s (model seconds per second of
    audio; below 1 the replica decodes faster than real time, 0 before any audio).
    """

    queue_depth: int
    in_flight: int
    batches: int
    model_calls: int
    requests: int
    mean_batch_size: float
    last_call_s: float
    busy_s: float
    audio_s: float

    @property
    def real_time_factor(self) -> float:
        return self.busy_s / self.audio_s if self.audio_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"real_time_factor": self.real_time_factor}


@dataclass(eq=False)
class _Pending:
    request: ChunkRequest
    future: asyncio.Future
    arrival: float
    first: bool  # first chunk of a turn (no context)


class AcousticBatcher:
    """Collects ``decode`` requests of concurrent callers into rounds of batched model calls (see the module doc).

    ``window_s``: the longest a queued request waits for others before its round closes (default 5 ms).
    ``max_batch``: the most requests in one round. Both may be changed between rounds.
    The batcher serves one event loop at a time (it follows the loop of the latest caller, as a fresh ``asyncio.run``
    in tests does); ``close`` stops its worker.
    """

    def __init__(self, decoder: BatchDecoder, *, window_s: float = 0.005, max_batch: int = 8) -> None:
        self.decoder = decoder
        self.window_s = window_s
        self.max_batch = max_batch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="acoustic-batch")
        self._queue: deque[_Pending] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup = asyncio.Event()  # replaced with the loop (an Event binds to the loop it first waits on)
        self._task: asyncio.Task | None = None
        self._in_flight = 0
        self._stats_lock = threading.Lock()  # counters are updated in the worker thread, read anywhere
        self._batches = self._calls = self._requests = 0
        self._last_call_s = self._busy_s = self._audio_s = 0.0
        self._closed = False

    # ------------------------------------------------------------------ settings
    @property
    def window_s(self) -> float:
        return self._window_s

    @window_s.setter
    def window_s(self, value: float) -> None:
        if not value >= 0:
            raise ValueError(f"window_s must be >= 0, got {value}")
        self._window_s = float(value)

    @property
    def max_batch(self) -> int:
        return self._max_batch

    @max_batch.setter
    def max_batch(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"max_batch must be >= 1, got {value}")
        self._max_batch = int(value)

    # ------------------------------------------------------------------ public
    async def decode(self, request: ChunkRequest) -> tuple[Tensor, Tensor]:
        """(codes ``[n_q, t]``, wave ``[t * hop]``) of one chunk, decoded in a round with whatever else is queued.
        Cancelling the caller drops a request that has not run yet."""
        if self._closed:
            raise RuntimeError("the acoustic batcher is closed")
        loop = self._ensure_worker()
        future = loop.create_future()
        self._queue.append(_Pending(request, future, loop.time(), request.context is None))
        self._wakeup.set()
        return await future

    def stats(self) -> AcousticBatchStats:
        """A snapshot; a caller that has its result sees its round and group counted."""
        with self._stats_lock:
            return AcousticBatchStats(
                queue_depth=sum(1 for p in list(self._queue) if not p.future.done()),
                in_flight=self._in_flight,
                batches=self._batches,
                model_calls=self._calls,
                requests=self._requests,
                mean_batch_size=self._requests / self._batches if self._batches else 0.0,
                last_call_s=self._last_call_s,
                busy_s=self._busy_s,
                audio_s=self._audio_s,
            )

    def close(self) -> None:
        """Stops the worker; queued requests fail with ``RuntimeError``. Idempotent."""
        self._closed = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._fail_queued(RuntimeError("the acoustic batcher is closed"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ worker
    def _ensure_worker(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # A new event loop (the old one is finished): whatever was queued there can no longer be answered.
            self._queue.clear()
            self._loop, self._wakeup, self._task = loop, asyncio.Event(), None
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name="acoustic-batcher")
        return loop

    def _prune(self) -> None:
        """Drops queued requests whose caller has gone (cancelled)."""
        if any(p.future.done() for p in self._queue):
            self._queue = deque(p for p in self._queue if not p.future.done())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self._collect(loop)
                batch = self._take()
                if not batch:
                    continue
                self._in_flight = len(batch)
                try:
                    await loop.run_in_executor(self._executor, self._run_round, batch, loop)
                except Exception as exc:
                    for pending in batch:
                        if not pending.future.done():
                            pending.future.set_exception(exc)
                finally:
                    self._in_flight = 0
        except BaseException as exc:  # cancelled (close) or a bug: nobody queued may hang
            self._fail_queued(exc if isinstance(exc, Exception) else RuntimeError("the acoustic batcher stopped"))
            raise

    async def _collect(self, loop: asyncio.AbstractEventLoop) -> None:
        """Waits until a round should close (see the module doc)."""
        wakeup = self._wakeup
        while True:
            self._prune()
            if self._queue:
                break
            wakeup.clear()
            await wakeup.wait()
        if len(self._queue) == 1:
            return  # alone on an idle batcher: no wait
        deadline = self._queue[0].arrival + self.window_s
        while True:
            self._prune()
            remaining = deadline - loop.time()
            if len(self._queue) >= self.max_batch or remaining <= 0 or not self._queue:
                return
            wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), remaining)

    def _take(self) -> list[_Pending]:
        """Up to ``max_batch`` queued requests: first chunks of a turn first, then in arrival order."""
        self._prune()
        ordered = sorted(self._queue, key=lambda p: not p.first)  # stable: arrival order within each kind
        batch = ordered[: self.max_batch]
        taken = {id(p) for p in batch}
        self._queue = deque(p for p in self._queue if id(p) not in taken)
        return batch

    def _run_round(self, batch: list[_Pending], loop: asyncio.AbstractEventLoop) -> None:
        """In the worker thread: one decode_chunks call per shape group; each group's callers are answered when it
        is done (after the stats count it)."""
        groups: dict[tuple, list[_Pending]] = {}
        for pending in batch:
            groups.setdefault(self.decoder.batch_key(pending.request), []).append(pending)
        order = sorted(groups.values(), key=lambda g: (not any(p.first for p in g), min(p.arrival for p in g)))
        with self._stats_lock:
            self._batches += 1
            self._requests += len(batch)
        seconds = 0.0
        for group in order:
            start = time.perf_counter()
            results, error, audio = None, None, 0.0
            try:
                with torch.inference_mode():
                    results = self.decoder.decode_chunks([p.request for p in group])
                audio = sum(wave.shape[-1] for _, wave in results) / self.decoder.sample_rate
            except Exception as exc:
                error = exc
            elapsed = time.perf_counter() - start
            seconds += elapsed
            with self._stats_lock:
                self._calls += 1
                self._busy_s += elapsed
                self._audio_s += audio
                self._last_call_s = seconds  # the round so far
            self._answer(loop, group, results, error)

    @staticmethod
    def _answer(
        loop: asyncio.AbstractEventLoop,
        group: list[_Pending],
        results: list[tuple[Tensor, Tensor]] | None,
        error: BaseException | None,
    ) -> None:
        def deliver() -> None:
            for index, pending in enumerate(group):
                if pending.future.done():  # the caller was cancelled meanwhile
                    continue
                if error is not None:
                    pending.future.set_exception(error)
                else:
                    assert results is not None  # without an error the decoder answered every request
                    pending.future.set_result(results[index])

        with contextlib.suppress(RuntimeError):  # the event loop is closed: nobody is waiting any more
            loop.call_soon_threadsafe(deliver)

    def _fail_queued(self, error: BaseException) -> None:
        queued, self._queue = list(self._queue), deque()
        for pending in queued:
            if not pending.future.done() and not pending.future.get_loop().is_closed():
                pending.future.set_exception(error)
