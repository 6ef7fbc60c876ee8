"""The LM engine: one loop that steps every active generation of a replica together (continuous batching).

    engine = LMEngine(model, vocab, settings, LMEngineConfig(max_slots=64))
    request = engine.submit(prompt_ids, force_modality=None, seed=0)   # BusyError at capacity
    for token in request.tokens(): ...          # or: async for chunk in request.chunks(): ...
    request.cancel()                            # its slot is free by the next step
    engine.close()

Each iteration of the loop (in its own thread): drop cancelled requests, admit waiting ones into free KV slots,
prefill at most ``prefill_budget`` prompt tokens (a joining session's prompt is chunked so it never stalls the
others for long; a prompt that completes samples its first token at once), then run ONE decode step over every
generating slot and choose each row's next token (:func:`assistant.decoding.reply_sampling.select_tokens`: AnyGPT's
per-modality settings and the reply grammar, row by row, vectorised).

Delivery is bounded: a request whose consumer holds ``max_backlog`` undelivered tokens sits out decode steps until
it catches up (backpressure: a slow acoustic decoder pauses its own session, not the batch).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from threadpoolctl import threadpool_limits

from assistant.decoding.lm_sampler import GenerationSettings
from assistant.decoding.reply_sampling import ReplyState, mark_seen, select_tokens
from assistant.lm_engine.model_runner import DEFAULT_BUCKETS, SlotModelRunner
from assistant.lm_engine.scheduler import BusyError, Phase, PrefillBlock, ScheduledRequest, Scheduler
from assistant.models.interfaces import CausalLM
from assistant.vocab import Modality, UnifiedVocab

log = logging.getLogger(__name__)

FINISH_STOP = "stop"  # a stop id was generated
FINISH_LENGTH = "length"  # the token budget or the slot's capacity ran out
FINISH_CANCELLED = "cancelled"
FINISH_PREFILLED = "prefilled"  # max_new_tokens=0: the prompt is in the KV, nothing generated

# Engines whose loop thread runs. A loop thread still parked when the interpreter exits aborts the process (torch's
# native teardown meets a thread it cannot join: "terminate called without an active exception"), so whatever was not
# closed is closed at exit.
_RUNNING: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_running_engines() -> None:
    for engine in list(_RUNNING):
        engine.close()


@dataclass(frozen=True)
class LMEngineConfig:
    """max_slots: generations decoded together (each holds ``slot_capacity`` positions of KV cache).
    max_waiting: accepted requests that may wait for a slot; beyond that ``submit`` raises ``BusyError``.
    slot_capacity: positions per slot, prompt and reply together (None: the model's maximum).
    prefill_budget: prompt tokens prefilled between two decode steps.
    max_backlog: undelivered tokens per request before it is paused.
    cuda_graphs / graph_buckets: capture decode steps for these batch sizes on CUDA (ignored on CPU).
    cpu_threads: on a CPU device, torch's intra-op threads and NumPy's BLAS threads, set when the loop starts. Each
        has ONE such setting per process, so this sets them for the whole process (None leaves them alone). Model work
        off the main thread runs best with few: on 2 cores a decode step of the embedded model at batch 8 took 8.4 ms
        on the main thread with 2 threads, but 15.4 ms on the loop thread with 2 and 10.8 ms with 1.
    numpy_decode: decode steps of a float32 model on the CPU run in NumPy (``SlotModelRunner``); False keeps torch's.
    prefix_reuse_min_tokens: a new prompt that starts with at least this many tokens a freed slot still holds (the
        conversation so far: the last turn's prompt and reply) reuses their KV instead of prefilling them again
        (``Scheduler``); 0 turns reuse off.
    """

    max_slots: int = 8
    max_waiting: int = 8
    slot_capacity: int | None = None
    prefill_budget: int = 256
    max_backlog: int = 256
    cuda_graphs: bool = True
    graph_buckets: tuple[int, ...] = DEFAULT_BUCKETS
    cpu_threads: int | None = 1
    numpy_decode: bool = True
    prefix_reuse_min_tokens: int = 32

    def __post_init__(self) -> None:
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ValueError(f"cpu_threads must be >= 1 or None, got {self.cpu_threads}")
        for name in ("max_slots", "prefill_budget", "max_backlog"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_waiting < 0:
            raise ValueError(f"max_waiting must be >= 0, got {self.max_waiting}")
        if self.prefix_reuse_min_tokens < 0:
            raise ValueError(f"prefix_reuse_min_tokens must be >= 0, got {self.prefix_reuse_min_tokens}")
        if self.slot_capacity is not None and self.slot_capacity < 2:
            raise ValueError(f"slot_capacity must be >= 2, got {self.slot_capacity}")


_END = object()


class GenerationRequest(ScheduledRequest):
    """One generation: scheduled by the engine, consumed by one reader (blocking ``tokens`` or async ``chunks``)."""

    def __init__(self, engine: LMEngine, prompt: list[int], state: ReplyState, limit: int) -> None:
        super().__init__(prompt=prompt)
        self.engine = engine
        self.state = state
        self.limit = limit
        self.reply: list[int] = []  # the tokens chosen so far
        self.finish_reason: str | None = None
        self.error: BaseException | None = None
        self.submitted_at = time.perf_counter()
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self._items: deque = deque()  # tokens, then _END or an exception
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._notify_async: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._async_woken = False  # an async reader's event is set (or about to be) and it has not read since
        self.cancelled = False

    @property
    def generated(self) -> int:
        """Tokens chosen so far."""
        return len(self.reply)

    @property
    def last_token(self) -> int | None:
        """The latest chosen token: the next decode step feeds it back."""
        return self.reply[-1] if self.reply else None

    # ------------------------------------------------------------------ engine side
    def _push(self, item: object) -> None:
        with self._lock:
            self._items.append(item)
            self._ready.notify_all()
            # One cross-thread wake-up per read: an async reader that was already woken takes this item too.
            waiters = [] if self._async_woken else list(self._notify_async)
            self._async_woken = bool(waiters)
        for loop, event in waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that event loop is closed: its reader is gone
                pass

    def figures(self) -> dict:
        """Time to first token, and decoding speed after it (tokens/s of this request alone)."""
        ttft = None if self.first_token_at is None else self.first_token_at - self.submitted_at
        rate = None
        if self.first_token_at is not None and self.finished_at is not None and self.generated > 1:
            span = self.finished_at - self.first_token_at
            rate = (self.generated - 1) / span if span > 0 else None
        return {
            "prompt": len(self.prompt),
            "generated": self.generated,
            "ttft_s": ttft,
            "tokens_per_s": rate,
            "finish": self.finish_reason,
        }

    @property
    def backlog(self) -> int:
        return len(self._items)

    # ------------------------------------------------------------------ reader side
    def cancel(self) -> None:
        """Stops the generation; idempotent. The engine frees the slot before its next step."""
        if not self.cancelled:
            self.cancelled = True
            self.engine._wake()

    def _take(self) -> list:
        with self._lock:
            was_full = len(self._items) >= self.engine.config.max_backlog
            items = list(self._items)
            self._items.clear()
        if was_full or self.paused:
            self.engine._wake()  # the engine may be sitting this request out: there is room again
        return items

    def tokens(self, timeout: float | None = None) -> Iterator[int]:
        """Blocking iterator over the generated ids; raises the engine's error if generation failed."""
        while True:
            with self._lock:
                if not self._items and not self._ready.wait_for(lambda: bool(self._items), timeout=timeout):
                    raise TimeoutError(f"no token within {timeout} s")
            for item in self._take():
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item

    async def chunks(self) -> AsyncIterator[list[int]]:
        """Async iterator of id lists: the first as soon as it exists, then whatever accumulated meanwhile."""
        event = asyncio.Event()
        with self._lock:
            self._notify_async.append((asyncio.get_running_loop(), event))
        try:
            while True:
                event.clear()
                with self._lock:
                    self._async_woken = False
                items = self._take()
                if not items:
                    await event.wait()
                    continue
                chunk: list[int] = []
                for item in items:
                    if item is _END:
                        if chunk:
                            yield chunk
                        return
                    if isinstance(item, BaseException):
                        if chunk:
                            yield chunk
                        raise item
                    chunk.append(item)
                yield chunk
        finally:
            with self._lock:
                self._notify_async = [w for w in self._notify_async if w[1] is not event]


@dataclass
class EngineStats:
    steps: int = 0
    tokens: int = 0
    prefill_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens whose KV came from an earlier request (not prefilled)
    rejected: int = 0
    completed: int = 0
    cancelled: int = 0
    failed: int = 0
    last_step_s: float = 0.0
    last_batch_size: int = 0
    step_s_total: float = 0.0
    batch_sizes: dict[int, int] = field(default_factory=dict)  # decode steps per batch size
    step_s_by_batch: dict[int, float] = field(default_factory=dict)  # their total time
    recent: deque = field(default_factory=lambda: deque(maxlen=1024))  # figures of the last finished requests


class LMEngine:
    """Continuous batching over a :class:`SlotModelRunner`; thread-safe ``submit`` from any thread or event loop."""

    def __init__(
        self, model: CausalLM, vocab: UnifiedVocab, settings: GenerationSettings, config: LMEngineConfig | None = None
    ) -> None:
        self.config = config or LMEngineConfig()
        self.vocab = vocab
        self.settings = settings
        cfg = self.config
        self.runner = SlotModelRunner(
            model,
            cfg.max_slots,
            cfg.slot_capacity,
            cuda_graphs=cfg.cuda_graphs,
            buckets=cfg.graph_buckets,
            numpy_decode=cfg.numpy_decode,
        )
        if self.runner.vocab_size < vocab.size:
            raise ValueError(
                f"the model's {self.runner.vocab_size} output rows do not cover the vocabulary's {vocab.size}"
            )
        self.device = self.runner.device
        self.scheduler: Scheduler[GenerationRequest] = Scheduler(
            cfg.max_slots, cfg.max_waiting, cfg.prefill_budget, reuse_min_tokens=cfg.prefix_reuse_min_tokens
        )
        self.seen = torch.zeros(
            cfg.max_slots, vocab.size, dtype=torch.bool, device=self.device
        )  # [S, V] ids in context
        self.stats_counters = EngineStats()
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._inbox: list[GenerationRequest] = []
        self._closed = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ public
    @property
    def capacity(self) -> int:
        return self.runner.capacity

    def submit(
        self,
        prompt_ids: Sequence[int],
        *,
        force_modality: Modality | None = None,
        seed: int | None = None,
        max_new_tokens: int | None = None,
    ) -> GenerationRequest:
        """Queues a generation. Raises ``ValueError`` for a bad prompt and ``BusyError`` at capacity.

        ``max_new_tokens=0`` only prefills: the request ends (finish reason "prefilled", no token) once the prompt is
        in its slot's KV, which the slot keeps for prefix reuse, so a later prompt that starts the same way prefills
        only the rest (a user's question prefilled while they are still speaking)."""
        if self._closed:
            raise RuntimeError("the LM engine is closed")
        prompt = [self.vocab.check_id(int(i)) for i in prompt_ids]
        if not prompt:
            raise ValueError("empty prompt")
        if len(prompt) > self.capacity - 1:
            raise ValueError(f"prompt of {len(prompt)} tokens leaves no room to reply in a slot of {self.capacity}")
        if force_modality is not None and prompt[-1] != self.vocab.range_of(force_modality).start_id:
            raise ValueError(f"force_modality={force_modality.value} but the prompt does not end with its start marker")
        limit = self.settings.total_limit if max_new_tokens is None else int(max_new_tokens)
        if limit < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {limit}")
        state = ReplyState(self.vocab, self.settings, seed=seed, force_modality=force_modality, device=self.device)
        request = GenerationRequest(self, prompt, state, limit)
        with self._lock:
            try:
                self.scheduler.add(request)
            except BusyError:
                self.stats_counters.rejected += 1
                raise
            self._inbox.append(request)
            self._ensure_thread()
            self._wakeup.notify()
        return request

    def stats(self) -> dict:
        """Occupancy and speed figures (the keys ``ServingMetrics.observe_lm`` reads)."""
        s = self.stats_counters
        with self._lock:
            active, waiting = self.scheduler.active, len(self.scheduler.waiting)
        return {
            "active_slots": active,
            "max_slots": self.config.max_slots,
            "waiting": waiting,
            "steps": s.steps,
            "last_step_s": s.last_step_s,
            "mean_step_s": s.step_s_total / s.steps if s.steps else 0.0,
            "last_batch_size": s.last_batch_size,
            "tokens": s.tokens,
            "prefill_tokens": s.prefill_tokens,
            "reused_tokens": s.reused_tokens,
            "rejected": s.rejected,
            "completed": s.completed,
            "cancelled": s.cancelled,
            "failed": s.failed,
        }

    def warmup(self) -> None:
        """Captures the CUDA graphs now (no-op on CPU) so no session's first step pays for it. Only before the first
        ``submit``: once the loop runs, it captures a bucket itself the first time it needs one."""
        with self._lock:
            if self._thread is None:
                self.runner.capture_all()

    def close(self) -> None:
        """Stops the loop; every unfinished request ends with a RuntimeError."""
        with self._lock:
            self._closed = True
            self._wakeup.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        _RUNNING.discard(self)

    # ------------------------------------------------------------------ loop
    def _wake(self) -> None:
        with self._lock:
            self._wakeup.notify()

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="lm-engine", daemon=True)
            self._thread.start()
            _RUNNING.add(self)

    def _loop(self) -> None:
        if self.device.type == "cpu" and self.config.cpu_threads is not None:
            torch.set_num_threads(self.config.cpu_threads)
            # NumPy's OpenBLAS too (the NumPy decode step): left at one thread per core, a step at one session used
            # 1.8 cores and took longer (3.3 ms against 2.6), its idle workers spinning beside the acoustic decoder.
            threadpool_limits(self.config.cpu_threads, user_api="blas")
        while True:
            with self._lock:
                while not self._closed and not self._runnable():
                    self._wakeup.wait()
                if self._closed:
                    self._fail_all(RuntimeError("the LM engine was closed"))
                    return
                self._inbox.clear()
                self._drop_cancelled()
                admitted = self.scheduler.admit()
                blocks = self.scheduler.next_prefill_blocks()
                rows = self._resume_and_rows()
            try:
                with torch.inference_mode():
                    for request in admitted:
                        self._reset_seen(request)
                        self._reuse_prefix(request)
                    for block in blocks:
                        self._prefill(block)
                    if rows:
                        self._decode(rows)
            except Exception as exc:
                log.exception("LM engine step failed")
                with self._lock:
                    for request in [*(b.request for b in blocks), *rows]:
                        if request.phase is not Phase.DONE:
                            self._finish(request, error=exc)

    def _runnable(self) -> bool:
        if self._inbox:
            return True
        scheduler = self.scheduler
        if any(r.cancelled for r in (*scheduler.waiting, *scheduler.prefilling, *scheduler.decoding.values())):
            return True
        if scheduler.waiting and scheduler.active < scheduler.max_slots:
            return True
        if scheduler.prefilling:
            return True
        return any(not self._behind(r) for r in scheduler.decoding.values())

    def _behind(self, request: GenerationRequest) -> bool:
        return request.backlog >= self.config.max_backlog

    def _resume_and_rows(self) -> list[GenerationRequest]:
        for request in self.scheduler.decoding.values():
            request.paused = self._behind(request)
        return self.scheduler.decode_rows()

    def _drop_cancelled(self) -> None:
        scheduler = self.scheduler
        for request in [*scheduler.waiting, *scheduler.prefilling, *scheduler.decoding.values()]:
            if request.cancelled:
                self._finish(request, reason=FINISH_CANCELLED)

    def _fail_all(self, error: BaseException) -> None:
        scheduler = self.scheduler
        for request in [*scheduler.waiting, *scheduler.prefilling, *scheduler.decoding.values()]:
            self._finish(request, error=error)

    def _finish(
        self, request: GenerationRequest, reason: str | None = None, error: BaseException | None = None
    ) -> None:
        """Called with the lock held: frees the slot (keeping what its KV holds for prefix reuse, unless the request
        failed) and ends the reader's stream."""
        self.scheduler.remove(request, held=self._kv_tokens(request) if error is None else ())
        request.finish_reason = reason if error is None else "error"
        request.error = error
        request.finished_at = time.perf_counter()
        self.stats_counters.recent.append(request.figures())
        if error is not None:
            self.stats_counters.failed += 1
        elif reason == FINISH_CANCELLED:
            self.stats_counters.cancelled += 1
        else:
            self.stats_counters.completed += 1
        request._push(error if error is not None else _END)

    def _kv_tokens(self, request: GenerationRequest) -> list[int]:
        """The tokens whose KV the request's slot holds at positions 0, 1, ...: the prompt prefilled so far, and when
        decoding every token fed back (the last chosen one never was). Never the idle rows' position."""
        if request.phase is Phase.PREFILLING:
            return request.prompt[: request.prefilled]
        if request.phase is Phase.DECODING:
            fed = min(request.next_position, self.runner.idle_position)
            return (request.prompt + request.reply)[:fed]
        return []

    # ------------------------------------------------------------------ model work (no lock held)
    def _reuse_prefix(self, request: GenerationRequest) -> None:
        if request.reuse_from is not None:
            self.runner.copy_prefix(request.reuse_from, request.held_slot, request.reused)
        self.stats_counters.reused_tokens += request.reused

    def _reset_seen(self, request: GenerationRequest) -> None:
        row = self.seen[request.slot]
        row.zero_()
        row[torch.tensor(request.prompt, device=self.device)] = True

    def _prefill(self, block: PrefillBlock[GenerationRequest]) -> None:
        request = block.request
        ids = torch.tensor(request.prompt[block.start : block.stop], dtype=torch.long, device=self.device)
        logits = self.runner.prefill(request.held_slot, ids, block.start)  # [V]
        self.stats_counters.prefill_tokens += block.stop - block.start
        with self._lock:
            if request.phase is Phase.DONE:
                return
            self.scheduler.prefilled(block)
        if block.completes_prompt and request.limit == 0:  # a prefill only: the slot keeps its KV for reuse
            with self._lock:
                if request.phase is not Phase.DONE:
                    self._finish(request, reason=FINISH_PREFILLED)
        elif block.completes_prompt:  # the prompt's last logits give the first token at once
            slots = torch.tensor([request.slot], device=self.device)
            token = select_tokens(logits[None, : self.vocab.size], [request.state], self.seen[slots])
            self._accept([request], slots, token)

    def _decode(self, rows: list[GenerationRequest]) -> None:
        runner = self.runner
        n_rows = rows[-1].held_slot + 1  # the step covers slots 0..highest generating slot
        tokens = torch.zeros(n_rows, dtype=torch.long)
        positions = torch.full((n_rows,), runner.idle_position, dtype=torch.long)
        for request in rows:
            assert request.last_token is not None  # decoding: its prompt's last logits chose a first token
            tokens[request.held_slot] = request.last_token
            positions[request.held_slot] = request.next_position
        span = max(r.next_position for r in rows) + 1
        started = time.perf_counter()
        logits = runner.decode(tokens.to(self.device), positions.to(self.device), span=span)  # [n_rows, V]
        slots = torch.tensor([r.slot for r in rows], device=self.device)
        chosen = select_tokens(logits[slots, : self.vocab.size], [r.state for r in rows], self.seen[slots])
        for request in rows:
            request.next_position += 1
        self._accept(rows, slots, chosen)
        elapsed = time.perf_counter() - started
        s = self.stats_counters
        s.steps += 1
        s.last_step_s = elapsed
        s.step_s_total += elapsed
        s.last_batch_size = len(rows)
        s.batch_sizes[len(rows)] = s.batch_sizes.get(len(rows), 0) + 1
        s.step_s_by_batch[len(rows)] = s.step_s_by_batch.get(len(rows), 0.0) + elapsed

    def _accept(self, rows: list[GenerationRequest], slots: torch.Tensor, chosen: torch.Tensor) -> None:
        """Delivers each row's chosen token and ends the requests that are done."""
        seen = self.seen[slots]
        mark_seen(seen, chosen)
        self.seen[slots] = seen
        stop_ids = self.vocab.stop_ids
        for request, token in zip(rows, chosen.tolist(), strict=True):
            request.state.advance(token)
            request.reply.append(token)
            self.stats_counters.tokens += 1
            if request.first_token_at is None:
                request.first_token_at = time.perf_counter()
            request._push(token)
            reason = None
            if token in stop_ids or request.state.finished:
                reason = FINISH_STOP
            elif request.generated >= request.limit or request.next_position >= self.capacity:
                reason = FINISH_LENGTH
            if reason is not None or request.cancelled:
                with self._lock:
                    if request.phase is not Phase.DONE:
                        self._finish(request, reason=reason or FINISH_CANCELLED)


__all__ = ["BusyError", "GenerationRequest", "LMEngine", "LMEngineConfig"]
