"""The call's audio, both ways: the assistant's voice out (:class:`ReplyAudioTrack`) and the caller's voice in,
converted for the VAD (:class:`InboundAudio`). Neither knows about turns or the data channel."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

import av
import numpy as np

from assistant.audio import OUTPUT_FRAME_SAMPLES, SAMPLE_RATE, FrameSplitter
from assistant.rtc_audio import REAL_TIME, Clock, MonoResampler, PacedAudioTrack

logger = logging.getLogger(__name__)


class ReplyAudioTrack(PacedAudioTrack):
    """The assistant's voice: 20 ms s16 mono frames at 16 kHz, paced by their pts (see
    :class:`~assistant.rtc_audio.PacedAudioTrack`; ``clock`` is injectable).

    Idle (no reply open and nothing queued), the track sends one silent frame every ``idle_frame_interval_s``
    instead of fifty a second, as Opus DTX would: an idle session then costs the server (and its caller) almost no
    encoding, encryption and packets, which is what lets one machine hold many open calls. A frame put while idle
    leaves at once, stamped with the time it leaves (the RTP clock jumps over the gap, as after DTX silence).
    ``idle_frame_interval_s=None`` sends silence continuously.

    Producers ``await put(pcm)`` into a bounded queue (backpressure). ``clear()`` drops everything queued
    (interrupt), and a ``put`` still waiting for room when ``clear()`` is called drops its frame too: what was put
    for a reply that was cleared never plays. ``wait_played()`` resolves once every frame put so far has left the
    track or was cleared.

    Metrics hooks: ``begin_reply(on_first_played)`` calls ``on_first_played()`` when the reply's first frame leaves
    the track (not when it is cleared first). Between ``begin_reply()`` and ``end_reply()`` (or ``clear()``), once
    the reply's first frame has left, every silent frame sent because the queue was empty is an underrun: counted in
    ``underruns`` (runs) and ``underrun_frames``, and reported to ``on_underrun(started, seconds)``.
    """

    def __init__(
        self,
        max_queued_frames: int = 25,
        sample_rate: int = SAMPLE_RATE,
        frame_samples: int = OUTPUT_FRAME_SAMPLES,
        idle_frame_interval_s: float | None = 0.4,
        *,
        clock: Clock = REAL_TIME,
    ):
        if max_queued_frames < 1:
            raise ValueError("max_queued_frames must be >= 1")
        if idle_frame_interval_s is not None and idle_frame_interval_s <= 0:
            raise ValueError("idle_frame_interval_s must be > 0 or None")
        if sample_rate <= 0 or frame_samples <= 0 or frame_samples * 1000 % sample_rate:
            raise ValueError(f"{frame_samples}-sample frames at {sample_rate} Hz are not a whole number of ms")
        # a stall of more than 0.2 s restarts the clock rather than sending a burst
        super().__init__(sample_rate, frame_samples * 1000 // sample_rate, clock=clock, max_lag_s=0.2)
        self.idle_frame_interval_s = idle_frame_interval_s
        self._frame_queued = asyncio.Event()  # wakes an idle next_pcm() when a frame is put
        self.max_queued_frames = max_queued_frames
        self._queue: deque[np.ndarray] = deque()
        self._room = asyncio.Event()  # set while the queue has room (wakes a waiting put)
        self._room.set()
        self._clears = 0  # times clear() ran: a put that waited across one drops its frame
        self._silence = np.zeros(frame_samples, dtype=np.int16)
        self._put_count = 0  # frames accepted so far
        self._done_count = 0  # frames that left the track or were dropped by clear()
        self._waiters: list[tuple[int, asyncio.Future]] = []
        self.frames_sent = 0  # non-silent frames handed to the encoder
        self.underruns = 0  # runs of silence sent in the middle of a reply (see begin_reply)
        self.underrun_frames = 0
        self.on_underrun: Callable[[bool, float], None] | None = None
        self._sent_watch: tuple[int, Callable[[], None]] | None = None
        self._reply_open = False  # between begin_reply() and end_reply()/clear()
        self._reply_playing = False  # a frame of the open reply has left the track
        self._in_underrun = False

    @property
    def queued_frames(self) -> int:
        return len(self._queue)

    async def put(self, pcm: np.ndarray) -> None:
        """Queues one frame, waiting while the queue is full. The frame is dropped when the track stops or is
        cleared while it waits."""
        pcm = np.asarray(pcm)
        if pcm.dtype != np.int16 or pcm.shape != (self.frame_samples,):
            raise ValueError(f"reply frames must be int16[{self.frame_samples}], got {pcm.dtype}{list(pcm.shape)}")
        clears = self._clears
        while len(self._queue) >= self.max_queued_frames and self.readyState == "live":
            self._room.clear()
            await self._room.wait()
            if self._clears != clears:
                return  # cleared while it waited: it belonged to what was cleared
        if self.readyState != "live":
            return
        self._queue.append(pcm)
        self._put_count += 1
        self._frame_queued.set()

    def clear(self) -> int:
        """Drops every queued frame (and the frame of a ``put`` waiting for room); returns how many were queued."""
        dropped = len(self._queue)
        self._queue.clear()
        self._clears += 1
        self._room.set()
        self._done_count = self._put_count
        self._sent_watch = None  # the frame it waited for will never leave
        self._reply_open = False
        self._wake_waiters()
        return dropped

    def begin_reply(self, on_first_played: Callable[[], None] | None = None) -> None:
        """A reply's audio starts being put: a dry queue after its first frame left counts as an underrun.
        ``on_first_played()`` is called when the next frame put leaves the track (not when it is cleared first)."""
        self._reply_open = True
        self._reply_playing = False
        self._in_underrun = False
        self._sent_watch = (self._put_count + 1, on_first_played) if on_first_played is not None else None

    def end_reply(self) -> None:
        """The reply has put its last frame: the queue running dry from now on is the reply's end, not an underrun."""
        self._reply_open = False

    async def wait_played(self, timeout: float | None = None) -> bool:
        """Waits until the frames put so far have been sent (or cleared). False on timeout."""
        target = self._put_count
        if self._done_count >= target or self.readyState != "live":
            return True
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((target, future))
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._waiters = [(t, f) for t, f in self._waiters if f is not future]

    def _wake_waiters(self, everyone: bool = False) -> None:
        for target, future in self._waiters:
            if (everyone or self._done_count >= target) and not future.done():
                future.set_result(None)

    async def next_pcm(self) -> np.ndarray:
        """The next queued frame, or silence when the queue is empty (idle: after up to ``idle_frame_interval_s``)."""
        if not self._queue and not self._reply_open and self.idle_frame_interval_s is not None:
            await self._wait_while_idle(self.idle_frame_interval_s)
        if not self._queue:
            if self._reply_open and self._reply_playing:
                self._count_underrun()
            return self._silence
        pcm = self._queue.popleft()
        self._room.set()
        self._done_count += 1
        self.frames_sent += 1
        self._wake_waiters()
        self._frame_left()
        return pcm

    async def _wait_while_idle(self, interval: float) -> None:
        """Waits for a frame or the idle interval, then moves the clock to now (the frames not sent are skipped)."""
        self._frame_queued.clear()
        if not self._queue:
            queued = asyncio.ensure_future(self._frame_queued.wait())
            timeout = asyncio.ensure_future(self.clock.sleep(interval))
            try:
                await asyncio.wait((queued, timeout), return_when=asyncio.FIRST_COMPLETED)
            finally:
                queued.cancel()
                timeout.cancel()
        self.skip_to_now()

    def _frame_left(self) -> None:
        if self._reply_open:
            self._reply_playing = True
            self._in_underrun = False
        watch = self._sent_watch
        if watch is not None and self._done_count >= watch[0]:
            self._sent_watch = None
            try:
                watch[1]()
            except Exception:
                logger.exception("reply track: the first-played callback failed")

    def _count_underrun(self) -> None:
        started = not self._in_underrun
        self._in_underrun = True
        self.underruns += started
        self.underrun_frames += 1
        if self.on_underrun is not None:
            try:
                self.on_underrun(started, self.frame_samples / self.sample_rate)
            except Exception:
                logger.exception("reply track: the underrun callback failed")

    def stop(self) -> None:
        super().stop()
        self._room.set()  # a waiting put sees the track stopped and drops its frame
        self._wake_waiters(everyone=True)


# ---------------------------------------------------------------------------------------------------------
# inbound audio


class InboundAudio:
    """WebRTC frames (any rate/layout/sample format) -> 16 kHz mono s16 frames of ``frame_samples`` for the VAD,
    through :class:`~assistant.rtc_audio.MonoResampler` (which rebuilds its resampler when the caller's codec changes
    mid-call and starts over after a frame it could not convert)."""

    def __init__(self, sample_rate: int = SAMPLE_RATE, frame_samples: int = OUTPUT_FRAME_SAMPLES):
        self.sample_rate = sample_rate
        self._mono = MonoResampler(sample_rate, np.int16)
        self._splitter = FrameSplitter(frame_samples, dtype=np.int16)

    @property
    def format_changes(self) -> int:
        """Times the input format (rate, layout, sample format) changed after the first frame."""
        return self._mono.format_changes

    def push(self, frame: av.AudioFrame) -> list[np.ndarray]:
        """Returns whole int16 frames at ``sample_rate``. Raises on a frame that cannot be converted (the caller
        decides what a bad frame costs); the next good frame converts normally."""
        return self._splitter.push(self._mono.convert(frame))
