"""The playback jitter buffer: received 20 ms frames in, one frame out per tick of the sink's clock.

Network audio arrives unevenly (jitter, bursts, a lost packet now and then) while a speaker plays at its own steady
rate. :class:`JitterBuffer` sits between the two:

- ``push(pcm, seq)`` on arrival. ``seq`` numbers 20 ms slots (:func:`frame_seq` makes it from an RTP timestamp);
  frames are kept in ``seq`` order, whatever order they came in. A frame for a slot already played is late and
  dropped (``late_frames``); a duplicate is ignored. Without a ``seq`` a frame takes the slot after the newest one.
- ``pull()`` once per 20 ms of the sink's clock (the sound card's callback, or :class:`PacedOutput` for a file):
  while *priming* it plays silence until ``target_frames`` of audio are buffered (or the oldest has waited that
  long: a reply shorter than the target still plays); then it plays slot after slot. A slot missing between
  buffered frames (a lost packet, up to ``max_gap_frames`` in a row) is concealed with silence (``concealed_frames``)
  so what follows keeps its time. An empty buffer while playing starves the playout: silence, and priming again;
  when a frame continuing the stream comes before the next one plays, it was an underrun (``underruns``) rather
  than the end of a reply.
  A jump in ``seq`` larger than ``max_gap_frames`` is not loss but a new stretch of audio (after the server's
  idle silence, whose timestamps jump like Opus DTX): it is played at once, the gap is not filled.
- When the buffered span grows past ``max_frames`` (a burst after a stall), the OLDEST audio is dropped
  (``dropped_frames``) until it fits: latency stays bounded instead of drifting upwards with every stall. It is not
  squeezed back to the target in the middle of a stretch (that would cut audio that is playing); the buffer drains
  when the reply ends (the server then goes quiet) and primes to the target again for the next one.
- ``flush()`` drops everything at once (the server said ``interrupted``, or a newer turn replaced the reply) and
  primes again; frames of the flushed slots that arrive later are late and dropped.

``depth_frames`` is how many pulls the buffered audio lasts (gaps it will conceal included). ``on_played`` listeners
see every frame pulled, with its kind (:data:`PLAYED`, ...), in the puller's thread (a sound card's callback thread:
they must be quick). Everything is thread-safe: pushes come from the event loop, pulls from the device thread.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from assistant.rtc_audio import Clock

log = logging.getLogger(__name__)

FRAME_MS = 20
RATE = 48_000
FRAME_SAMPLES = RATE * FRAME_MS // 1000

# What a pulled frame was (the second argument of an on_played listener).
PLAYED = "played"  # a received frame
CONCEALED = "concealed"  # silence in place of a lost frame, within a stretch of audio
PRIMING = "priming"  # silence while the buffer fills (before a stretch of audio, or after it starved)
STARVED = "starved"  # silence: the buffer ran dry while playing (an underrun, or the end of a reply)

# A seq this far behind the playout is not a late frame but a new timeline (a new connection, a wrapped timestamp).
_RESET_BEHIND_FRAMES = 500


def frame_seq(pts: int | None, time_base: Fraction | None) -> int | None:
    """The 20 ms slot of a frame stamped ``pts`` in ``time_base`` (an RTP timestamp of aiortc's decoder), or None
    when the frame carries no timestamp."""
    if pts is None or time_base is None:
        return None
    return round(pts * time_base * 1000 / FRAME_MS)


@dataclass(frozen=True)
class JitterStats:
    depth_frames: int
    underruns: int
    dropped_frames: int
    late_frames: int
    concealed_frames: int
    flushes: int
    frames_in: int
    frames_played: int


class JitterBuffer:
    """See the module docstring. ``target_ms``: audio buffered before playback starts (the cushion against jitter);
    ``max_ms``: the most it may hold before the oldest is dropped (default ``target_ms + 100``); ``max_gap_ms``: the
    longest run of lost frames concealed with silence."""

    def __init__(
        self,
        target_ms: int = 60,
        max_ms: int | None = None,
        max_gap_ms: int = 100,
        frame_samples: int = FRAME_SAMPLES,
    ):
        max_ms = target_ms + 100 if max_ms is None else max_ms
        if target_ms < 0 or max_ms < max(target_ms, FRAME_MS) or max_gap_ms < 0:
            raise ValueError("need 0 <= target_ms <= max_ms, max_ms >= 20 and max_gap_ms >= 0")
        self.target_frames = target_ms // FRAME_MS
        self.max_frames = max_ms // FRAME_MS
        self.max_gap_frames = max_gap_ms // FRAME_MS
        self.frame_samples = frame_samples
        self._silence = np.zeros(frame_samples, dtype=np.int16)
        self._lock = threading.Lock()
        self._seqs: list[int] = []  # buffered slots, ascending
        self._frames: dict[int, np.ndarray] = {}
        self._cursor: int | None = None  # the next slot to play (None: no stream yet, or after a reset)
        self._newest: int | None = None  # the newest slot pushed (numbers frames that come without a seq)
        self._priming = True
        self._primed_pulls = 0  # pulls spent priming with audio waiting
        self._starved_at: int | None = None  # the slot the playout wanted when it ran dry
        self.on_played: list[Callable[[np.ndarray, str], None]] = []
        self.underruns = 0
        self.dropped_frames = 0
        self.late_frames = 0
        self.concealed_frames = 0
        self.flushes = 0
        self.frames_in = 0
        self.frames_played = 0

    # ----- what is buffered

    @property
    def depth_frames(self) -> int:
        with self._lock:
            return self._depth()

    @property
    def depth_ms(self) -> int:
        return self.depth_frames * FRAME_MS

    @property
    def playing(self) -> bool:
        """True while a stretch of audio is playing (not priming or starved)."""
        with self._lock:
            return not self._priming

    def stats(self) -> JitterStats:
        with self._lock:
            return JitterStats(
                depth_frames=self._depth(),
                underruns=self.underruns,
                dropped_frames=self.dropped_frames,
                late_frames=self.late_frames,
                concealed_frames=self.concealed_frames,
                flushes=self.flushes,
                frames_in=self.frames_in,
                frames_played=self.frames_played,
            )

    def _depth(self) -> int:
        """Pulls until the newest buffered frame has played: frames plus the short gaps that will be concealed."""
        depth, slot = 0, self._cursor
        for seq in self._seqs:
            if slot is not None and 0 < seq - slot <= self.max_gap_frames:
                depth += seq - slot
            depth += 1
            slot = seq + 1
        return depth

    # ----- arrival

    def push(self, pcm: np.ndarray, seq: int | None = None) -> None:
        frame = np.asarray(pcm, dtype=np.int16).reshape(-1)
        if frame.size != self.frame_samples:
            raise ValueError(f"jitter buffer frames hold {self.frame_samples} samples, got {frame.size}")
        with self._lock:
            self.frames_in += 1
            if seq is None:
                seq = 0 if self._newest is None else self._newest + 1
            cursor = self._cursor
            if cursor is not None and seq < cursor:
                if cursor - seq <= _RESET_BEHIND_FRAMES:
                    self.late_frames += 1
                    return
                self._reset_timeline()  # far behind: a new timeline, not a late frame
                cursor = None
            if seq in self._frames:
                return  # a duplicate
            if self._starved_at is not None and seq <= self._starved_at + self.max_gap_frames:
                self.underruns += 1  # the stream went on: the playout had run ahead of the network
                self._starved_at = None
            bisect.insort(self._seqs, seq)
            self._frames[seq] = frame.copy()
            self._newest = seq if self._newest is None else max(self._newest, seq)
            while self._depth() > self.max_frames:
                self._drop_oldest()

    def _drop_oldest(self) -> None:
        oldest = self._seqs.pop(0)
        del self._frames[oldest]
        self.dropped_frames += 1
        self._cursor = oldest + 1

    def _reset_timeline(self) -> None:
        self.dropped_frames += len(self._seqs)
        self._seqs.clear()
        self._frames.clear()
        self._cursor = self._newest = self._starved_at = None
        self._priming, self._primed_pulls = True, 0

    # ----- playout

    def pull(self) -> np.ndarray:
        """The next 20 ms to play (int16; silence when there is nothing to play)."""
        with self._lock:
            frame, kind = self._next()
        for listener in self.on_played:
            try:
                listener(frame, kind)
            except Exception:
                log.exception("an on_played listener failed")
        return frame

    def _next(self) -> tuple[np.ndarray, str]:
        if self._priming:
            if not self._seqs:
                return self._silence, PRIMING
            self._primed_pulls += 1
            if self._depth() < self.target_frames and self._primed_pulls <= self.target_frames:
                return self._silence, PRIMING
            self._priming, self._primed_pulls = False, 0
        if not self._seqs:
            self._priming, self._primed_pulls = True, 0
            self._starved_at = self._cursor
            return self._silence, STARVED
        first = self._seqs[0]
        cursor = self._cursor
        if cursor is not None and 0 < first - cursor <= self.max_gap_frames:
            self._cursor = cursor + 1
            self.concealed_frames += 1
            return self._silence, CONCEALED
        # the slot is here, or a new stretch of audio begins (a jump is not filled)
        self._seqs.pop(0)
        frame = self._frames.pop(first)
        self._cursor = first + 1
        self.frames_played += 1
        self._starved_at = None  # whatever follows is judged from here
        return frame, PLAYED

    def flush(self) -> None:
        """Drops everything buffered and primes again; frames of the dropped slots that come later are late."""
        with self._lock:
            self.flushes += 1
            if self._newest is not None:
                self._cursor = self._newest + 1  # the playout never runs past the newest slot pushed
            self._seqs.clear()
            self._frames.clear()
            self._priming, self._primed_pulls = True, 0
            self._starved_at = None

    def reset(self) -> None:
        """Forgets the stream (a new connection starts a new timeline); counts nothing as dropped."""
        with self._lock:
            self._seqs.clear()
            self._frames.clear()
            self._cursor = self._newest = self._starved_at = None
            self._priming, self._primed_pulls = True, 0


class PacedOutput:
    """Drives a :class:`JitterBuffer` into a sink that has no clock of its own (a file, a test's list): every 20 ms of
    ``clock`` it pulls one frame and writes it to ``write``. Deadlines are absolute (``start + n * 20 ms``), so the
    rate does not drift with the loop's latency; after a stall of more than ``max_lag_s`` the clock restarts rather
    than writing a burst."""

    def __init__(
        self,
        buffer: JitterBuffer,
        write: Callable[[np.ndarray], None],
        clock: Clock,
        max_lag_s: float = 0.2,
    ):
        self.buffer = buffer
        self.write = write
        self.clock = clock
        self.max_lag_s = max_lag_s
        self.ticks = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        period = FRAME_MS / 1000
        start = self.clock.now()
        n = 0
        while True:
            n += 1
            wait = start + n * period - self.clock.now()
            if wait > 0:
                await self.clock.sleep(wait)
            elif -wait > self.max_lag_s:
                start, n = self.clock.now(), 0
            frame = self.buffer.pull()
            self.ticks += 1
            try:
                self.write(frame)
            except Exception:
                log.exception("writing played audio failed")

    def cancel(self) -> None:
        """Stops the pacing (nothing is written after this returns: the task only wakes up to end)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
