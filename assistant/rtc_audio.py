"""Audio between aiortc and numpy: one converter for decoded frames and one paced track (numpy, av and aiortc only).

Shared by everything that speaks WebRTC audio — the server's session, the edge client, the benchmark caller and the
test fakes — so a frame is converted one way and a track is paced one way:

- :func:`frame_to_mono`: any decoded ``av.AudioFrame`` (u8/s16/s32/flt/dbl, packed or planar, any number of
  channels, any rate) -> mono ``float32`` in [-1, 1) or ``int16`` at rate ``rate``. Stateless: fine for a whole
  buffer, or when the rate does not change (what Opus decodes is already 48 kHz).
- :class:`MonoResampler`: the same for a stream of 20 ms frames whose rate does change, through one libswresample
  state, so consecutive pieces resample without edge clicks.
- :func:`pcm_frame`: mono samples -> an s16 mono ``av.AudioFrame`` stamped with ``pts`` and ``time_base = 1/rate``.
- :class:`PacedAudioTrack`: a ``MediaStreamTrack`` that sends fixed-size frames from :meth:`PacedAudioTrack.next_pcm`
  paced by their timestamps against a clock (injectable, so tests need no wall-clock bounds).

This module imports neither torch nor ray.
"""

from __future__ import annotations

import asyncio
import time
from abc import abstractmethod
from fractions import Fraction
from typing import Protocol

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from assistant.audio import WEBRTC_SAMPLE_RATE, float_to_pcm16, resample

# ---------------------------------------------------------------------------------------------------------
# frames -> mono samples

_PCM16_SCALE = 32768.0  # int16 <-> float: x / 32768 and back is exact for every int16 value


def _to_float(samples: np.ndarray) -> np.ndarray:
    """Samples of any PCM dtype -> float (float32, or float64 for the wide integers) in [-1, 1)."""
    if samples.dtype == np.uint8:  # u8 PCM is offset binary: 128 is silence
        return (samples.astype(np.float32) - 128.0) / 128.0
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / _PCM16_SCALE
    if np.issubdtype(samples.dtype, np.signedinteger):
        return samples.astype(np.float64) / (float(np.iinfo(samples.dtype).max) + 1.0)
    if np.issubdtype(samples.dtype, np.floating):
        return samples
    raise ValueError(f"unsupported audio sample type {samples.dtype}")


def _channels_first(frame: av.AudioFrame) -> np.ndarray:
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if frame.format.is_planar:
        return data.reshape(channels, -1)
    return data.reshape(-1, channels).T  # interleaved -> [C, n]


def _cast(mono: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype == np.float32:
        return np.asarray(mono, dtype=np.float32)
    # float32 suffices: the samples are float32 already and scaling by a power of two is exact
    scaled = np.asarray(mono, dtype=np.float32) * np.float32(_PCM16_SCALE)
    np.rint(scaled, out=scaled)
    np.clip(scaled, -32768, 32767, out=scaled)
    return scaled.astype(np.int16)


def _output_dtype(dtype: type | np.dtype | str) -> np.dtype:
    out = np.dtype(dtype)
    if out not in (np.dtype(np.float32), np.dtype(np.int16)):
        raise ValueError(f"mono audio comes as float32 or int16, not {out}")
    return out


def frame_to_mono(
    frame: av.AudioFrame, rate: int | None = None, dtype: type | np.dtype | str = np.float32
) -> np.ndarray:
    """A decoded frame -> mono samples (the mean of its channels) at ``rate`` (None: the frame's own rate).

    ``dtype`` float32 gives [-1, 1); int16 gives int16 units (an s16 frame at its own rate comes back exactly).
    Resampling is stateless here (scipy's polyphase filter per call): for a stream of short frames whose rate must
    change, use :class:`MonoResampler`.
    """
    out = _output_dtype(dtype)
    channels = _to_float(_channels_first(frame))  # [C, n]
    # summed row by row: .mean(axis=0) over the transposed interleaved layout is a strided reduction, several times
    # slower, and this runs for every 20 ms frame of every caller
    mono = channels[0].copy()
    for row in channels[1:]:
        mono += row
    if len(channels) > 1:
        mono /= len(channels)
    if rate is not None and rate != frame.sample_rate:
        mono = resample(mono, frame.sample_rate, rate)
    return _cast(mono, out)


class MonoResampler:
    """A stream of decoded frames -> mono samples at ``rate`` (float32 or int16), with libswresample's filter state
    kept across frames. ``convert(frame)`` returns what the resampler has ready (a few samples may lag one frame).

    The caller's codec may change mid-call (renegotiation, a browser switching devices): a frame whose rate differs
    from the previous frame's gets a fresh resampler (libswresample refuses frames unlike its first one);
    ``format_changes`` counts every change of rate, layout or sample format after the first frame. A frame that
    cannot be converted raises; the next one starts over with a fresh resampler.
    """

    def __init__(self, rate: int, dtype: type | np.dtype | str = np.int16):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.dtype = _output_dtype(dtype)
        self._resampler: av.AudioResampler | None = None
        self._input_rate: int | None = None
        self._input_format: tuple[int, str, str] | None = None
        self.format_changes = 0

    def convert(self, frame: av.AudioFrame) -> np.ndarray:
        input_format = (frame.sample_rate, frame.layout.name, frame.format.name)
        if self._input_format is not None and input_format != self._input_format:
            self.format_changes += 1
        self._input_format = input_format
        try:
            return self._convert(frame)
        except Exception:
            self._resampler, self._input_rate, self._input_format = None, None, None  # start over on the next frame
            raise

    def _convert(self, frame: av.AudioFrame) -> np.ndarray:
        mono = frame_to_mono(frame)  # float32 at the frame's rate
        if frame.sample_rate == self.rate:
            self._resampler, self._input_rate = None, None
            return _cast(mono, self.dtype)
        if self._resampler is None or self._input_rate != frame.sample_rate:
            # libswresample keeps filter state across calls, so 20 ms pieces resample without edge clicks; a new
            # input rate needs a new resampler (the old one's state belongs to the old rate).
            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=self.rate)
            self._input_rate = frame.sample_rate
        source = av.AudioFrame.from_ndarray(np.ascontiguousarray(mono).reshape(1, -1), format="flt", layout="mono")
        source.sample_rate = frame.sample_rate
        pieces = [piece.to_ndarray().reshape(-1) for piece in self._resampler.resample(source)]
        return _cast(np.concatenate(pieces) if pieces else np.zeros(0, np.float32), self.dtype)


# ---------------------------------------------------------------------------------------------------------
# samples -> frames, paced


def pcm_frame(pcm: np.ndarray, sample_rate: int, pts: int | None = None) -> av.AudioFrame:
    """Mono samples (int16, or float in [-1, 1] through :func:`assistant.audio.float_to_pcm16`) -> an s16 mono frame
    with ``time_base = 1/sample_rate``."""
    pcm = np.asarray(pcm).reshape(-1)
    if pcm.dtype != np.int16:
        pcm = float_to_pcm16(pcm)
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = sample_rate
    frame.time_base = Fraction(1, sample_rate)
    if pts is not None:
        frame.pts = pts
    return frame


class Clock(Protocol):
    """What pacing needs of time: a monotonic ``now()`` in seconds and a way to wait."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class RealTimeClock:
    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


REAL_TIME = RealTimeClock()


class PacedAudioTrack(MediaStreamTrack):
    """An audio track of ``frame_ms`` frames of s16 mono at ``sample_rate``, frame ``n`` stamped ``pts = n *
    frame_samples`` (``time_base = 1/sample_rate``) and, when ``paced``, handed out no earlier than ``start + pts /
    sample_rate`` on ``clock`` (the first frame at once). Unpaced, a source with its own real-time clock (a
    microphone) sets the rate.

    Subclasses implement :meth:`next_pcm`: the next frame's samples (int16 or float, ``frame_samples`` of them), or
    None to end the track. A track that falls more than ``max_lag_s`` behind (a stalled loop) restarts its clock
    instead of sending a burst to catch up; None always catches up. :meth:`skip_to_now` moves the timestamps over a
    gap in which no frames were sent (as after Opus DTX silence).
    """

    kind = "audio"

    def __init__(
        self,
        sample_rate: int = WEBRTC_SAMPLE_RATE,
        frame_ms: int = 20,
        *,
        clock: Clock = REAL_TIME,
        paced: bool = True,
        max_lag_s: float | None = None,
    ):
        super().__init__()
        if sample_rate <= 0 or frame_ms <= 0 or sample_rate * frame_ms % 1000:
            raise ValueError(f"{frame_ms} ms frames at {sample_rate} Hz are not a whole number of samples")
        if max_lag_s is not None and max_lag_s <= 0:
            raise ValueError("max_lag_s must be > 0 or None")
        self.sample_rate = sample_rate
        self.frame_samples = sample_rate * frame_ms // 1000
        self.clock = clock
        self.paced = paced
        self.max_lag_s = max_lag_s
        self.frame_count = 0  # frames handed out so far
        self._pts = 0
        self._start: float | None = None

    @property
    def pts(self) -> int:
        """The timestamp the next frame will carry."""
        return self._pts

    @abstractmethod
    async def next_pcm(self) -> np.ndarray | None:
        """The next frame's samples (int16, one frame long), or None when the source has ended. Every subclass
        implements it."""

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self.paced:
            await self._pace()
        pcm = await self.next_pcm()
        if pcm is None:
            self.stop()
            raise MediaStreamError
        pcm = np.asarray(pcm).reshape(-1)
        if pcm.size != self.frame_samples:
            raise ValueError(f"audio frames must hold {self.frame_samples} samples, got {pcm.size}")
        frame = pcm_frame(pcm, self.sample_rate, self._pts)
        self._pts += self.frame_samples
        self.frame_count += 1
        return frame

    async def _pace(self) -> None:
        now = self.clock.now()
        if self._start is None:
            self._start = now
            return
        wait = self._start + self._pts / self.sample_rate - now
        if wait > 0:
            await self.clock.sleep(wait)
        elif self.max_lag_s is not None and -wait > self.max_lag_s:
            self._start = now - self._pts / self.sample_rate  # restart the clock rather than burst

    def skip_to_now(self) -> None:
        """Stamps the next frame with the current time: the whole frames of the gap since the last one are skipped."""
        if self._start is None:
            return
        skipped = int((self.clock.now() - self._start) * self.sample_rate) - self._pts
        if skipped > 0:
            self._pts += skipped - skipped % self.frame_samples
