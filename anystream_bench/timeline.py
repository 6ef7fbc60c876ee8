"""One answer's audio as the listener got it, and the figures every mode of the benchmark reports from it.

A turn's :class:`AnswerTimeline` holds ``t0`` (the end of the user's speech, ``time.monotonic()``) and every answer
audio frame with its arrival time, peak and RMS (int16 units, so the thresholds mean the same at 16 and 48 kHz).

Definitions (the same for the WebRTC clients and the in-process sessions):

- **loud frame**: RMS >= ``loud_rms`` (default 300, about -40 dBFS).
- **TTFA** (time to first audio): arrival of the first loud frame after ``t0`` minus ``t0``.
- **answer span**: from the first loud frame's arrival to the end of the last loud frame (its arrival plus its
  duration).
- **answer audio**: the frames between the first and the last loud frame (both included) that are not digital
  silence (peak > ``silence_peak``, default 16): what the server had to say. The WebRTC server sends exact zeros when
  it has nothing (Opus keeps them at or near zero), while speech, even its pauses, is never that quiet. In-process
  and engine-only every frame the engine yields counts (``silence_peak`` -1): the engine sends no filler.
- **answer RTF**: answer span / answer audio seconds. Over WebRTC the server paces its audio, so 1.0 is a seamless
  answer and every underrun adds to it; in-process the engine's frames arrive as fast as they are made, so below 1.0
  the engine runs ahead of real time.
- **underrun**: a simulated player starts playing the answer audio when its first loud frame arrives and plays each
  frame for its duration, back to back. Whenever the next answer-audio frame arrives more than ``underrun_gap_s``
  (default 60 ms) after the player ran out, that wait is one underrun; ``underrun_s`` sums those waits. Over WebRTC
  this counts the server's mid-reply silence and network stalls alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

LOUD_RMS = 300.0
SILENCE_PEAK = 16
UNDERRUN_GAP_S = 0.060


@dataclass
class Thresholds:
    loud_rms: float = LOUD_RMS
    silence_peak: int = SILENCE_PEAK
    underrun_gap_s: float = UNDERRUN_GAP_S


@dataclass
class AnswerTimeline:
    t0: float
    frames: list[tuple[float, int, float, float]] = field(default_factory=list)  # (arrival, peak, rms, seconds)

    def add(self, arrival: float, pcm: np.ndarray, sample_rate: int) -> None:
        samples = np.asarray(pcm).astype(np.float64).reshape(-1)
        if samples.size == 0:
            return
        peak = int(np.abs(samples).max())
        rms = float(np.sqrt(np.mean(samples**2)))
        self.frames.append((arrival, peak, rms, samples.size / sample_rate))

    def figures(self, thresholds: Thresholds | None = None) -> dict[str, Any]:
        """TTFA, answer audio, span, RTF and underruns as defined in the module docstring (None where no loud frame
        arrived)."""
        th = thresholds or Thresholds()
        frames = [f for f in self.frames if f[0] >= self.t0]
        loud = [i for i, f in enumerate(frames) if f[2] >= th.loud_rms]
        if not loud:
            return {
                "ttfa_s": None,
                "answer_audio_s": 0.0,
                "answer_span_s": 0.0,
                "rtf": None,
                "underruns": 0,
                "underrun_s": 0.0,
                "frames": len(frames),
            }
        first, last = loud[0], loud[-1]
        audio = [f for f in frames[first : last + 1] if f[1] > th.silence_peak]
        audio_s = sum(f[3] for f in audio)
        span_s = frames[last][0] + frames[last][3] - frames[first][0]
        underruns, underrun_s = 0, 0.0
        play_end = audio[0][0] + audio[0][3]
        for arrival, _, _, seconds in audio[1:]:
            wait = arrival - play_end
            if wait > th.underrun_gap_s:
                underruns += 1
                underrun_s += wait
            play_end = max(play_end, arrival) + seconds
        return {
            "ttfa_s": frames[first][0] - self.t0,
            "answer_audio_s": audio_s,
            "answer_span_s": span_s,
            "rtf": span_s / audio_s if audio_s > 0 else None,
            "underruns": underruns,
            "underrun_s": underrun_s,
            "frames": len(frames),
        }


def percentile(values: list[float], q: float) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def spread(values: list[float]) -> dict[str, float | None]:
    """p50 / p95 / p99 / mean / max of the finite values (None for each when there are none)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return {
        "p50": percentile(finite, 50),
        "p95": percentile(finite, 95),
        "p99": percentile(finite, 99),
        "mean": float(np.mean(finite)) if finite else None,
        "max": max(finite) if finite else None,
        "n": len(finite),
    }
