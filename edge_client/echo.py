"""Acoustic echo cancellation for the edge client: the assistant's voice, leaking from the speaker into the
microphone, is taken out of the uplink before it is sent (and before the client's own VAD).

Why here: the server owns barge-in. Its VAD listens to the client's uplink, and speech it hears while a reply plays
interrupts the reply. On a device with a loudspeaker the reply comes back through the microphone, so without
cancellation the assistant interrupts itself; with it, the user's own voice must still get through.

How (numpy only, block-wise, no per-sample Python loops):

- **Reference** (:meth:`EchoCanceller.on_played`): a listener of the playback jitter buffer
  (:attr:`edge_client.jitter.JitterBuffer.on_played`), so the canceller sees every 20 ms frame at the moment the
  device (the sound card's callback, or :class:`~edge_client.jitter.PacedOutput` on the pacing clock) takes it to
  play: silence, concealment and flushed replies included. Tapping there, rather than where frames are handed to the
  sink, needs no model of the queue in between. Frames are laid end to end on a timeline of 48 kHz sample positions
  of ``clock``; the capture frames likewise (each one ends when it is read). Both are continuous streams of one
  sound card, so scheduling jitter and the bursts after a stall must not move them: a stream is re-anchored to the
  clock only when it runs early, or stays late by more than ``anchor_tolerance_s`` for a whole second (dropped
  frames, an output that restarted).
- **Rate**: both are taken to 16 kHz (all the server listens to) by windowed-sinc FFT filters that keep state
  across frames; the work is done there in 20 ms blocks.
- **Linear canceller**: a partitioned-block frequency-domain adaptive filter (overlap-save, 320-sample blocks,
  640-point FFTs, gradient-constrained, the step normalised per bin by the reference power over the filter's span),
  ``tail_ms`` long (480 ms). There is no bulk-delay estimator: the filter is long enough to hold what the timeline
  does not account for (output and input latency, the acoustic path: up to ~300 ms) plus a room's reverberation
  (~150-180 ms). Nothing has to be re-estimated or re-aligned when the delay changes; the cost is 24 partitions.
  The step is shared out in proportion to where the filter's weight is (a proportionate update: the empty
  partitions before the bulk delay do not soak it up), which roughly halves the time to converge.
- **Residual model and double talk**: in blocks of echo alone, the canceller learns what is left in its error as
  two energy ratios: to the echo estimate (``leak``, about 1/ERLE once converged) and to the reference energy over
  the filter's span (a bound that needs no converged filter, so it covers the start). Until playback has filled the
  span, the residual is assumed as loud as the playback. A block whose error is more than 6 dB over the predicted
  residual (and the noise) is double talk: the filter freezes, and nothing is learnt until 160 ms after the last
  such block (the tail of a word must not teach the model that the residual is loud). The ratios rise by at most
  1 dB per block (slower than a voice trips the rule) and fall over ~1 s. But an error louder than predicted that
  follows the echo estimate (correlation over 0.5) is no voice: the echo path changed (the volume, the device's
  place). Then the filter adapts at full step, the ratios jump to what is measured, and the suppressor's margin is
  four times larger for a second.
- **Residual echo suppressor**: a 320-point sqrt-Hann STFT with a 10 ms hop over the canceller's error. Per band,
  the same two ratios (learnt per band) give the residual echo power of each bin: the larger of ``leak * |Y|^2``
  (the echo estimate's power, decaying 6 dB per 150 ms for the reverberation) and ``reference_leak * span power``.
  Gain ``max(floor, 1 - overestimate * residual / |E|^2)`` with a 9 dB margin (3 dB once double talk has lasted
  60 ms: a voice is there, and a turn is starting anyway); it rises at once (the first syllable of a barge-in) and
  falls over ~30 ms. What it takes away is replaced by noise at the bin's noise floor (comfort noise): spectral holes
  that follow the playback are a changing sound, and a VAD hears them.
- **Full band out**: what the canceller and suppressor removed at 16 kHz is interpolated back to 48 kHz and
  subtracted from the microphone frame, delayed alike: the user's voice keeps its full band, and with no playback
  the frame passes unchanged, 15 ms later (10 ms of STFT overlap, 5 ms of resampling filters).

Measured (tests/edge_client/test_edge_echo.py and the same sweep over more rooms: espeak-ng speech at -18 dBFS played
through a random 150 ms room tail after a 60-300 ms bulk delay, the echo 10-20 dB under the playback, microphone
noise at -65 dBFS, judged in the 16 kHz band by the server's own endpointer):

- echo alone: 24-32 dB less echo after the first 2 s of playback (whole output, worst of 24 rooms 24.1 dB; over the
  blocks judged echo-only 33-43 dB with the suppressor, 10-15 dB for the linear filter alone averaged over a 10 s
  reply, 20-29 dB once converged); the endpointer never starts a turn on it, from the first frame on;
- the user talking over it (6-12 dB louder than the echo): the voice comes through within 0.7-2.4 dB of its level
  alone (4 dB for a voice no louder than the echo) and the endpointer starts the turn within 20 ms of when it does on
  the voice alone (~100 ms after the voice begins);
- the volume changed mid-reply (+3 dB, -6 dB): followed within ~1 s, no turn started; a sudden much louder echo
  (+6 dB) or a new path can leak for a moment and start one (in one of four +6 dB steps and one of two new paths
  tried);
- the whole client over loopback WebRTC, its speaker feeding its microphone (an 80 ms, -12 dB room): with the
  canceller the server never hears the answer's echo as speech (~39 dB over echo-only blocks); without it the same
  call interrupts itself; the user's barge-in is heard and the reply interrupted ~0.3 s after the voice begins;
- cost: ~0.8 ms per 20 ms frame (median) on one core of a shared AMD EPYC, the whole capture path included; a
  Raspberry Pi 4 runs small-array numpy code about 5-8x slower: ~4-7 ms, within the 20 ms a frame lasts.

:meth:`EchoCanceller.stats` gives the figures for ``session.json`` (``audio.echo``): ERLE of the linear canceller and
with the suppressor over the blocks judged echo-only, the seconds of playback, of echo alone, of double talk and of a
changed echo path, the cost per frame and the re-anchorings of the two streams.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_client.audio_io import CAPTURE_RATE, FRAME_SAMPLES

INTERNAL_RATE = 16_000
DECIMATION = CAPTURE_RATE // INTERNAL_RATE  # 3
BLOCK = FRAME_SAMPLES // DECIMATION  # 320 samples at 16 kHz: one capture frame
_PCM16_SCALE = 32768.0
# The suppressor's bands: the first bin of each (50 Hz bins of the 320-point STFT at 16 kHz).
_SUPPRESSOR_BAND_STARTS = (0, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128)


@dataclass(frozen=True)
class EchoConfig:
    """
    tail_ms: length of the adaptive filter: the delay the timeline does not account for plus the room's
        reverberation must fit (480 ms: ~300 ms of delay and a 180 ms tail).
    anchor_tolerance_s: how far the reference or capture stream may drift from its timeline for a whole second
        before it is re-anchored.
    warmup_s: playback heard with the larger step before the filter settles to its steady step.
    suppression_floor_db: the most the suppressor takes off a bin (comfort noise fills in what it takes).
    overestimate: how much the suppressor over-estimates the residual echo: the safety margin that keeps what is
        left of the echo from starting a turn.
    double_talk_overestimate: the same once someone has talked over the playback for 60 ms (until 160 ms after
        they stop): a turn is starting anyway, and the margin would cost the voice more than it protects.
    """

    tail_ms: int = 480
    anchor_tolerance_s: float = 0.03
    warmup_s: float = 0.6
    suppression_floor_db: float = -40.0
    overestimate: float = 8.0
    double_talk_overestimate: float = 2.0

    def __post_init__(self) -> None:
        if not 40 <= self.tail_ms <= 2000:
            raise ValueError("tail_ms must be 40..2000")
        if self.anchor_tolerance_s <= 0:
            raise ValueError("anchor_tolerance_s must be > 0")
        if self.warmup_s < 0:
            raise ValueError("warmup_s must be >= 0")
        if self.suppression_floor_db > 0:
            raise ValueError("suppression_floor_db must be <= 0")
        if self.overestimate <= 0 or self.double_talk_overestimate <= 0:
            raise ValueError("overestimate and double_talk_overestimate must be > 0")

    @property
    def partitions(self) -> int:
        return max(1, math.ceil(self.tail_ms * INTERNAL_RATE / 1000 / BLOCK))


# ---------------------------------------------------------------------------------------------------------
# 48 kHz <-> 16 kHz with state: consecutive frames resample as one stream (an edge click at every frame would be
# echo the adaptive filter cannot model)


def _lowpass(taps: int, cutoff: float, beta: float) -> np.ndarray:
    """Kaiser-windowed sinc, ``cutoff`` in cycles per sample, unit gain at DC."""
    n = np.arange(taps) - (taps - 1) / 2
    h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(taps, beta)
    return h / h.sum()


# Flat to 7.3 kHz (0.01 dB), -23 dB at 8 kHz, under -67 dB above 8.2 kHz; odd length: a whole-sample group delay
# (120 samples, 2.5 ms).
_RESAMPLE_TAPS = 241
_RESAMPLE_DELAY = (_RESAMPLE_TAPS - 1) // 2
_RESAMPLE_FILTER = _lowpass(_RESAMPLE_TAPS, cutoff=0.5 / DECIMATION * 0.97, beta=7.0)


class _FirStream:
    """FIR filtering of a 48 kHz stream, ``FRAME_SAMPLES`` at a time (overlap-save: one FFT pair per frame)."""

    def __init__(self, taps: np.ndarray):
        self._history = np.zeros(len(taps) - 1, dtype=np.float32)
        self._size = FRAME_SAMPLES + len(taps) - 1
        self._response = np.fft.rfft(taps.astype(np.float32), self._size)

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        x = np.concatenate([self._history, frame])
        self._history = x[FRAME_SAMPLES:]
        return np.fft.irfft(np.fft.rfft(x) * self._response, self._size)[-FRAME_SAMPLES:].astype(np.float32)


class _Decimator:
    """48 kHz -> 16 kHz, one capture frame at a time."""

    def __init__(self) -> None:
        self._lowpass = _FirStream(_RESAMPLE_FILTER)

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        return self._lowpass(frame)[::DECIMATION]


class _Interpolator:
    """16 kHz -> 48 kHz, one block at a time (zeros between the samples, then the same low-pass, times 3)."""

    def __init__(self) -> None:
        self._lowpass = _FirStream(_RESAMPLE_FILTER * DECIMATION)
        self._stuffed = np.zeros(FRAME_SAMPLES, dtype=np.float32)

    def __call__(self, block: np.ndarray) -> np.ndarray:
        self._stuffed[::DECIMATION] = block
        return self._lowpass(self._stuffed)


# ---------------------------------------------------------------------------------------------------------
# the timeline both streams are placed on


class _StreamAnchor:
    """Places consecutive frames of one continuous stream on the timeline: end to end, re-anchored to the clock only
    when the stream runs early (by more than ``tolerance``) or stays late (by more than ``tolerance``, through a
    whole ``window`` of frames). Scheduling jitter and the bursts that follow a stall move nothing."""

    def __init__(self, tolerance: int, window: int):
        self.tolerance = tolerance
        self.window = window
        self.next: int | None = None  # where the next frame goes
        self.reanchors = 0
        self._least_late: int | None = None
        self._frames_seen = 0

    def place(self, expected_now: int, samples: int) -> int:
        """``expected_now``: where the clock says this frame is now. Returns where it goes."""
        if self.next is None:
            self.next = expected_now
        lateness = expected_now - self.next
        if lateness < -self.tolerance:
            self._reanchor(expected_now)
        else:
            self._least_late = lateness if self._least_late is None else min(self._least_late, lateness)
            self._frames_seen += 1
            if self._frames_seen >= self.window:
                if self._least_late > self.tolerance:
                    self._reanchor(self.next + self._least_late)
                self._least_late, self._frames_seen = None, 0
        start = self.next
        self.next = start + samples
        return start

    def _reanchor(self, position: int) -> None:
        self.next = position
        self.reanchors += 1
        self._least_late, self._frames_seen = None, 0


class _Timeline:
    """Played audio at 48 kHz by timeline position, in a bounded ring; zeros where nothing was played (or nothing is
    known yet). Written from the device's thread, read from the event loop: every access holds the lock."""

    def __init__(self, seconds: float = 4.0):
        self.size = 1 << math.ceil(math.log2(seconds * CAPTURE_RATE))
        self._ring = np.zeros(self.size, dtype=np.float32)
        self._lock = threading.Lock()
        self.written_end: int | None = None  # positions from here on hold nothing yet

    def _store(self, start: int, values: np.ndarray) -> None:
        first = start % self.size
        n1 = min(values.size, self.size - first)
        self._ring[first : first + n1] = values[:n1]
        self._ring[: values.size - n1] = values[n1:]

    def write(self, start: int, samples: np.ndarray) -> None:
        with self._lock:
            if samples.size > self.size:
                start, samples = start + samples.size - self.size, samples[-self.size :]
            end = self.written_end
            if end is not None and end < start:  # nothing was played in between: silence
                gap = min(start - end, self.size)
                self._store(start - gap, np.zeros(gap, dtype=np.float32))
            self._store(start, samples)
            self.written_end = start + samples.size if end is None else max(end, start + samples.size)

    def read(self, start: int, stop: int) -> np.ndarray:
        out = np.zeros(stop - start, dtype=np.float32)
        with self._lock:
            if self.written_end is None:
                return out
            lo, hi = max(start, self.written_end - self.size), min(stop, self.written_end)
            if hi > lo:
                first = lo % self.size
                n1 = min(hi - lo, self.size - first)
                out[lo - start : lo - start + n1] = self._ring[first : first + n1]
                out[lo - start + n1 : hi - start] = self._ring[: hi - lo - n1]
        return out


# ---------------------------------------------------------------------------------------------------------
# the 16 kHz core


class _AdaptiveFilter:
    """Partitioned-block frequency-domain NLMS (overlap-save). ``filter(x_block)`` returns the echo estimate for the
    block; ``adapt(error_block, step)`` then updates the partitions."""

    PROPORTION = 0.5  # how much of the step is shared out by the partitions' weight (the rest evenly)

    def __init__(self, partitions: int, block: int = BLOCK):
        self.block = block
        self.partitions = partitions
        bins = block + 1
        self.weights = np.zeros((partitions, bins), dtype=np.complex64)
        self._spectra = np.zeros((partitions, bins), dtype=np.complex64)  # a ring; _newest is the latest block
        self._powers = np.zeros((partitions, bins), dtype=np.float32)  # their |X|^2
        self._newest = 0
        self._current = self._spectra
        self._current_powers = self._powers
        self._previous = np.zeros(block, dtype=np.float32)
        self._zeros = np.zeros(block, dtype=np.float32)
        # keeps the step bounded in bins the reference barely excites (about -70 dBFS over the span)
        self.regularisation = np.float32(2 * block * 1e-7)

    def filter(self, reference: np.ndarray) -> np.ndarray:
        self._newest = (self._newest + 1) % self.partitions
        spectrum = np.fft.rfft(np.concatenate([self._previous, reference]))
        self._previous = reference
        self._spectra[self._newest] = spectrum
        self._powers[self._newest] = spectrum.real**2 + spectrum.imag**2
        order = (self._newest - np.arange(self.partitions)) % self.partitions  # newest block first
        self._current, self._current_powers = self._spectra[order], self._powers[order]
        estimate = np.fft.irfft(np.einsum("pk,pk->k", self._current, self.weights), 2 * self.block)
        return estimate[self.block :].astype(np.float32)

    def span_power(self) -> np.ndarray:
        """Per bin: the reference's power summed over the filter's span."""
        return self._powers.sum(axis=0)

    def adapt(self, error: np.ndarray, step: float) -> None:
        """Proportionate: partitions that hold more of the path get more of the step (a bulk delay leaves the first
        partitions near zero; they should not soak it up). ``step`` 1 is a full normalised step."""
        error_spectrum = np.fft.rfft(np.concatenate([self._zeros, error]))
        norms = np.sqrt((self.weights.real**2 + self.weights.imag**2).sum(axis=1))
        share = (1 - self.PROPORTION) / self.partitions + self.PROPORTION * norms / (norms.sum() + 1e-12)
        weighted_power = share @ self._current_powers + self.regularisation
        self.weights += (share[:, None] * np.conj(self._current)) * (np.float32(step) * error_spectrum / weighted_power)
        # gradient constraint: each partition stays a causal block-long filter (linear, not circular, convolution);
        # applying it to only some partitions per block saves little and costs robustness in double talk
        taps = np.fft.irfft(self.weights, 2 * self.block, axis=1)
        taps[:, self.block :] = 0
        self.weights = np.fft.rfft(taps, axis=1).astype(np.complex64)


class _Stft:
    """320-point sqrt-Hann analysis and synthesis with a 160-sample hop (the overlap-add reconstructs exactly), a block
    at a time: the two frames that end in each 320-sample block are analysed and synthesised together."""

    SIZE = 320
    HOP = 160
    FRAMES = BLOCK // HOP

    def __init__(self) -> None:
        self.window = np.sqrt(np.hanning(self.SIZE + 1)[:-1]).astype(np.float32)
        self._overlap = np.zeros(self.SIZE - self.HOP, dtype=np.float32)

    def analyse(self, tail: np.ndarray, block: np.ndarray) -> np.ndarray:
        """``tail``: the last ``SIZE - HOP`` samples before ``block``. Returns the frames' spectra, [FRAMES, bins]."""
        frames = np.lib.stride_tricks.sliding_window_view(np.concatenate([tail, block]), self.SIZE)[:: self.HOP]
        return np.fft.rfft(frames * self.window, axis=1)

    def synthesise(self, spectra: np.ndarray) -> np.ndarray:
        """The ``BLOCK`` samples these frames complete."""
        frames = np.fft.irfft(spectra, self.SIZE, axis=1).astype(np.float32) * self.window
        out = np.empty(BLOCK, dtype=np.float32)
        for i, frame in enumerate(frames):
            out[i * self.HOP : (i + 1) * self.HOP] = self._overlap[: self.HOP] + frame[: self.HOP]
            self._overlap = np.concatenate([self._overlap[self.HOP :], frame[self.HOP :]])
        return out


def _power(spectrum: np.ndarray) -> np.ndarray:
    return (spectrum.real**2 + spectrum.imag**2).astype(np.float32)


def _follow_up_fast(current: float, measured: float, rise: float, fall: float) -> float:
    """A residual ratio's next value: up towards a higher measurement by at most the factor ``rise`` (fast, yet
    slower than a voice makes the double-talk rule trip), down to a lower one by ``fall`` of the way (slowly:
    over-suppressing for a moment costs little, letting echo through starts a turn)."""
    if measured > current:
        return min(measured, current * rise)
    return current + fall * (measured - current)


class _EchoCore:
    """The 16 kHz canceller and suppressor: ``process(mic, reference)`` (BLOCK samples each) returns the cleaned
    microphone, one STFT hop late, and the linear canceller's error (for the statistics)."""

    DOUBLE_TALK_RATIO = 4.0  # error over the predicted residual (and noise) that means someone is talking: 6 dB
    HANGOVER_BLOCKS = 8  # adaptation and learning stay frozen this long after double talk (160 ms)
    # Correlation of the error with the echo estimate that tells a misfit path from a voice (a voice over the
    # playback reaches ~0.3 now and then; a volume step gives ~1)
    PATH_CHANGE_CORRELATION = 0.5
    UNSURE_BLOCKS = 50  # after a path change the residual model is unsure for a second: 4x the margin
    LEAK_KNOWN_BLOCKS = 10  # echo-only blocks learnt before the echo-estimate ratio is trusted
    VOICE_BLOCKS = 3  # double talk this long (60 ms) is a voice: the suppressor spares it

    def __init__(self, config: EchoConfig):
        self.config = config
        partitions = config.partitions
        self.filter = _AdaptiveFilter(partitions)
        self.stft = _Stft()
        bins = _Stft.SIZE // 2 + 1
        self._error_tail = np.zeros(_Stft.SIZE - _Stft.HOP, dtype=np.float32)  # the error just before the block
        self._echo_tail = np.zeros(_Stft.SIZE - _Stft.HOP, dtype=np.float32)  # ... and the echo estimate
        self._warmup_blocks = config.warmup_s * INTERNAL_RATE / BLOCK
        # block energies (sums of squared 16 kHz samples over a block)
        self._span_energies = np.zeros(partitions)  # the reference's, for each block of the filter's span
        self._newest_block = 0
        self._error_energy = 0.0  # smoothed over ~40 ms
        self._echo_energy = 0.0
        self._noise_energy = 0.0  # the microphone's floor: a minimum tracker
        self._learnt_error = 0.0  # smoothed over echo-only blocks (~200 ms)
        self._learnt_echo = 0.0
        self._learnt_reference = 0.0
        self.leak = 1.0  # residual / echo estimate energy
        self.reference_leak = 1.0  # residual / reference energy: the echo may be as loud as the playback at first
        self._leak_blocks = 0
        self.far_end_active = False
        self.far_end_blocks = 0
        self.double_talk = False
        self.double_talk_blocks = 0
        self.voice = False  # someone is talking over the playback (double talk that lasts)
        self.path_changed = False  # this block's error says the echo path changed (see _judge_double_talk)
        self.path_change_blocks = 0
        self._unsure = 0  # blocks left of the extra margin after a path change
        self._error_echo = 0.0  # smoothed sum of error x echo estimate (their correlation, not normalised)
        self._hangover = 0
        self._double_talk_run = 0
        # the suppressor
        starts = np.array(_SUPPRESSOR_BAND_STARTS)
        self._band_starts = starts
        self._band_of_bin = np.repeat(np.arange(starts.size), np.diff([*starts, bins]))
        self._band_error = np.zeros(starts.size, dtype=np.float32)
        self._band_echo = np.zeros(starts.size, dtype=np.float32)
        self._band_reference = np.zeros(starts.size, dtype=np.float32)
        self._band_leak = np.ones(starts.size, dtype=np.float32)
        self._band_reference_leak = np.ones(starts.size, dtype=np.float32)
        self._band_rise = np.float32(10 ** (1 / 10))  # per block: 1 dB
        self._echo_decayed = np.zeros(bins, dtype=np.float32)
        hops_per_second = INTERNAL_RATE / _Stft.HOP
        self._echo_decay = np.float32(10 ** (-6 / 10 / (0.15 * hops_per_second)))  # 6 dB per 150 ms
        self._span_scale = np.float32(1 / partitions)  # any fixed scale would do: the ratios learn it away
        self._gain = np.ones(bins, dtype=np.float32)
        self._floor = np.float32(10 ** (config.suppression_floor_db / 20))
        self._smoothed_error = np.zeros(bins, dtype=np.float32)
        self._bin_noise = np.zeros(bins, dtype=np.float32)
        self._noise_started = False
        self._noise_rise = np.float32(10 ** (2 / 10 / (INTERNAL_RATE / BLOCK)))  # 2 dB/s
        self._rng = np.random.default_rng(0)

    # ----- state

    @property
    def span_heard(self) -> bool:
        """Playback has lasted the filter's whole span: until then its echo may still be on its way (the bulk
        delay), and an echo-free error would teach the residual model that there is none."""
        return self.far_end_blocks >= self.config.partitions

    @property
    def echo_only(self) -> bool:
        """What the microphone hears now is echo (and noise) alone, as far as can be told."""
        return self.far_end_active and self.span_heard and self._hangover == 0

    # ----- a block

    def process(self, mic: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        echo = self.filter.filter(reference)
        error = mic - echo
        self._newest_block = (self._newest_block + 1) % self._span_energies.size
        self._span_energies[self._newest_block] = float(np.dot(reference, reference))
        span_energy = float(self._span_energies.mean())
        self._error_energy += 0.5 * (float(np.dot(error, error)) - self._error_energy)
        self._echo_energy += 0.5 * (float(np.dot(echo, echo)) - self._echo_energy)
        self._error_echo += 0.5 * (float(np.dot(error, echo)) - self._error_echo)
        self._track_noise(float(np.dot(mic, mic)))
        self.far_end_active = span_energy > BLOCK * 1e-7  # playback above about -70 dBFS within the span
        if self.far_end_active:
            self.far_end_blocks += 1
            self._judge_double_talk(span_energy)
            if self.echo_only:
                self._learn(span_energy)
            step = self._step()
            if step > 0:
                self.filter.adapt(error, step)
        else:
            self.double_talk, self.voice, self.path_changed = False, False, False
            self._hangover, self._double_talk_run = 0, 0
        return self._suppress(error, echo), error

    def _track_noise(self, mic_energy: float) -> None:
        if self._noise_energy == 0.0 or mic_energy < self._noise_energy:
            self._noise_energy = mic_energy
        else:  # rises ~3 dB/s: speech never lifts it much, a louder room does in time
            self._noise_energy *= 1.014

    def _predicted_residual(self, span_energy: float) -> float:
        bound = self.reference_leak * span_energy
        if self._leak_blocks < self.LEAK_KNOWN_BLOCKS:
            return bound
        return max(self.leak * self._echo_energy, bound)

    def _judge_double_talk(self, span_energy: float) -> None:
        expected = self._predicted_residual(span_energy) + 2 * self._noise_energy
        # An error louder than predicted is a voice, or an echo path the filter no longer fits (the device moved,
        # the volume changed). A voice has nothing to do with the echo estimate; a misfit leaves an error that
        # follows it (a louder echo: the estimate's own shape), and the residual model must follow it at once.
        self.path_changed = (
            self._error_energy > expected
            and self._leak_blocks >= self.LEAK_KNOWN_BLOCKS
            and self._echo_energy > 2 * self._noise_energy
            and abs(self._error_echo) > self.PATH_CHANGE_CORRELATION * np.sqrt(self._error_energy * self._echo_energy)
        )
        talking = self._error_energy > self.DOUBLE_TALK_RATIO * expected and not self.path_changed
        if self.path_changed:
            self.path_change_blocks += 1
            self._hangover = 0
            self._unsure = self.UNSURE_BLOCKS
        self._double_talk_run = self._double_talk_run + 1 if talking else 0
        self.double_talk = talking
        if talking:
            self.double_talk_blocks += 1
            self._hangover = self.HANGOVER_BLOCKS
        elif self._hangover > 0:
            self._hangover -= 1
        if self._unsure > 0 and not self.path_changed:
            self._unsure -= 1
        # a voice lasts: one or two loud blocks are more likely a burst of residual the filter got wrong
        if self._double_talk_run >= self.VOICE_BLOCKS:
            self.voice = True
        elif self._hangover == 0:
            self.voice = False

    def _learn(self, span_energy: float) -> None:
        rate = 0.5 if self.path_changed else 0.1  # ~200 ms; a changed path is echo for certain: follow it at once
        self._learnt_error += rate * (self._error_energy - self._learnt_error)
        self._learnt_echo += rate * (self._echo_energy - self._learnt_echo)
        self._learnt_reference += rate * (span_energy - self._learnt_reference)
        rise = np.inf if self.path_changed else 1.25
        if self._learnt_echo > 0:
            measured = min(max(self._learnt_error / self._learnt_echo, 1e-4), 1e3)
            self.leak = _follow_up_fast(self.leak, measured, rise=rise, fall=0.02)
            self._leak_blocks += 1
        if self._learnt_reference > 0:
            measured = min(max(self._learnt_error / self._learnt_reference, 1e-5), 10.0)
            self.reference_leak = _follow_up_fast(self.reference_leak, measured, rise=rise, fall=0.02)

    def _step(self) -> float:
        """The adaptive filter's step for this block (0: frozen)."""
        if self.path_changed or self.far_end_blocks < self._warmup_blocks:
            return 1.0
        return 0.6 if self._hangover == 0 else 0.0

    # ----- the suppressor

    def _suppress(self, error: np.ndarray, echo: np.ndarray) -> np.ndarray:
        tail = _Stft.SIZE - _Stft.HOP
        error_spectra = self.stft.analyse(self._error_tail, error)  # [frames, bins]
        echo_power = _power(self.stft.analyse(self._echo_tail, echo))
        self._error_tail, self._echo_tail = error[-tail:], echo[-tail:]
        error_power = _power(error_spectra)
        decayed = np.empty_like(echo_power)
        for i, power in enumerate(echo_power):
            self._echo_decayed = np.maximum(power, self._echo_decayed * self._echo_decay)
            decayed[i] = self._echo_decayed
        # the reference's power over the filter's span, per bin (every other 25 Hz bin of the adaptive filter)
        span_power = self.filter.span_power()[:: BLOCK // _Stft.HOP] * self._span_scale
        mean_error_power = error_power.mean(axis=0)
        self._track_bin_noise(mean_error_power)
        if self.echo_only:
            self._learn_bands(mean_error_power, decayed.mean(axis=0), span_power)
        residual = self._band_reference_leak[self._band_of_bin] * span_power
        if self._leak_blocks >= self.LEAK_KNOWN_BLOCKS:
            residual = np.maximum(self._band_leak[self._band_of_bin] * decayed, residual)
        # while someone talks over the playback, what is left of the echo cannot start a turn (one is starting):
        # the voice matters more than the margin
        overestimate = self.config.double_talk_overestimate if self.voice else self.config.overestimate
        if self._unsure and not self.voice:
            overestimate *= 4
        gain = np.minimum(np.maximum(1 - overestimate * residual / (error_power + 1e-10), self._floor), 1)
        gains = np.empty_like(error_power)
        for i, wanted in enumerate(gain):
            # rise at once (the first syllable of a barge-in), fall over ~30 ms (less musical noise)
            self._gain = np.where(wanted > self._gain, wanted, 0.7 * self._gain + 0.3 * wanted)
            gains[i] = self._gain
        # what is taken away is replaced by noise at the floor, so the output's noise stays steady
        fill = np.sqrt(self._bin_noise * (1 - gains**2) / 2)
        comfort = (self._rng.standard_normal(fill.shape) + 1j * self._rng.standard_normal(fill.shape)) * fill
        return self.stft.synthesise(error_spectra * gains + comfort)

    def _track_bin_noise(self, error_power: np.ndarray) -> None:
        """Per-bin noise floor: the minimum of the smoothed power, rising 2 dB/s while nothing lower comes."""
        if not self._noise_started:
            self._smoothed_error[:] = error_power
            self._bin_noise[:] = error_power
            self._noise_started = True
        self._smoothed_error += 0.5 * (error_power - self._smoothed_error)
        self._bin_noise = np.minimum(self._bin_noise * self._noise_rise, self._smoothed_error + 1e-12)

    def _learn_bands(self, error_power: np.ndarray, echo_power: np.ndarray, span_power: np.ndarray) -> None:
        rate = np.float32(0.5 if self.path_changed else 0.1)  # per block: ~200 ms (see _learn)
        rise = np.float32(np.inf) if self.path_changed else self._band_rise
        starts = self._band_starts
        self._band_error += rate * (np.add.reduceat(error_power, starts) - self._band_error)
        self._band_echo += rate * (np.add.reduceat(echo_power, starts) - self._band_echo)
        self._band_reference += rate * (np.add.reduceat(span_power, starts) - self._band_reference)
        for ratios, denominator, low, high in (
            (self._band_leak, self._band_echo, 1e-4, 1e3),
            (self._band_reference_leak, self._band_reference, 1e-5, 10.0),
        ):
            measured = np.minimum(np.maximum(self._band_error / (denominator + 1e-12), low), high)
            ratios[:] = np.where(
                measured > ratios, np.minimum(measured, ratios * rise), ratios + 0.02 * (measured - ratios)
            )


# ---------------------------------------------------------------------------------------------------------
# the canceller the client uses


class EchoCanceller:
    """Takes the played audio's echo out of 48 kHz capture frames (see the module docstring).

    ``on_played(pcm, kind)``: a :class:`~edge_client.jitter.JitterBuffer` listener: each frame as the device takes it
    to play (int16 or float, 48 kHz mono); any thread. ``process(frame)``: a 960-sample float32 capture frame in, the
    cleaned frame out (event loop). ``clock``: seconds, the clock that paces both streams.
    """

    def __init__(self, config: EchoConfig | None = None, clock: Callable[[], float] = time.monotonic):
        self.config = config or EchoConfig()
        self.clock = clock
        self._t0 = clock()
        tolerance = round(self.config.anchor_tolerance_s * CAPTURE_RATE)
        window = CAPTURE_RATE // FRAME_SAMPLES  # frames in one second
        self._timeline = _Timeline()
        self._played = _StreamAnchor(tolerance, window)
        self._captured = _StreamAnchor(tolerance, window)
        self._play_lock = threading.Lock()
        self._mic_down = _Decimator()
        self._reference_down = _Decimator()
        self._up = _Interpolator()
        self.core = _EchoCore(self.config)
        # the microphone at 48 kHz, delayed like what is subtracted from it: resampling there and back, one STFT hop
        self._delay = DECIMATION * _Stft.HOP + 2 * _RESAMPLE_DELAY
        self._mic_history = np.zeros(self._delay, dtype=np.float32)
        self._mic16_history = np.zeros(_Stft.HOP, dtype=np.float32)
        # statistics
        self.frames = 0
        self.seconds_processing = 0.0
        self._echo_blocks = 0  # blocks judged echo only: what the ERLE figures are measured over
        self._echo_mic_energy = 0.0
        self._echo_error_energy = 0.0
        self._echo_out_energy = 0.0

    @property
    def latency_samples(self) -> int:
        """How much later (48 kHz samples) a sound comes out of :meth:`process` than it went in."""
        return self._delay

    def _position(self) -> int:
        return round((self.clock() - self._t0) * CAPTURE_RATE)

    # ----- the playback side

    def on_played(self, pcm: np.ndarray, kind: str = "played") -> None:
        samples = np.asarray(pcm).reshape(-1)
        samples = samples.astype(np.float32) / _PCM16_SCALE if samples.dtype == np.int16 else samples.astype(np.float32)
        with self._play_lock:  # the sound card's thread, or the event loop
            start = self._played.place(self._position(), samples.size)
            self._timeline.write(start, samples)

    # ----- the capture side

    def process(self, frame: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        frame = np.asarray(frame, dtype=np.float32).reshape(-1)
        if frame.size != FRAME_SAMPLES:
            raise ValueError(f"capture frames must hold {FRAME_SAMPLES} samples, got {frame.size}")
        start = self._captured.place(self._position() - FRAME_SAMPLES, FRAME_SAMPLES)  # the frame ends now
        reference48 = self._timeline.read(start, start + FRAME_SAMPLES)
        mic16 = self._mic_down(frame)
        cleaned16, error16 = self.core.process(mic16, self._reference_down(reference48))
        # what was taken off, aligned with the cleaned output (one STFT hop late), back at 48 kHz
        mic16_late = np.concatenate([self._mic16_history, mic16])
        self._mic16_history = mic16_late[BLOCK:]
        removed16 = mic16_late[:BLOCK] - cleaned16
        mic48_late = np.concatenate([self._mic_history, frame])
        self._mic_history = mic48_late[FRAME_SAMPLES:]
        out = mic48_late[:FRAME_SAMPLES] - self._up(removed16)
        if self.core.echo_only:
            self._echo_blocks += 1
            self._echo_mic_energy += float(np.dot(mic16, mic16))
            self._echo_error_energy += float(np.dot(error16, error16))
            self._echo_out_energy += float(np.dot(cleaned16, cleaned16))
        self.frames += 1
        self.seconds_processing += time.perf_counter() - started
        return out

    # ----- figures

    def stats(self) -> dict[str, Any]:
        """ERLE (dB) of the linear canceller and with the suppressor over the blocks judged echo only (the
        microphone's noise counts in both, so a quiet echo bounds them), the seconds of playback, of echo alone, of
        double talk and of a changed echo path, the cost per frame and the re-anchorings of the two streams."""

        def ratio_db(a: float, b: float) -> float | None:
            return round(10 * math.log10(a / b), 1) if a > 0 and b > 0 else None

        block_s = BLOCK / INTERNAL_RATE
        return {
            "erle_db": ratio_db(self._echo_mic_energy, self._echo_error_energy),
            "erle_suppressed_db": ratio_db(self._echo_mic_energy, self._echo_out_energy),
            "echo_only_s": round(self._echo_blocks * block_s, 2),
            "playback_s": round(self.core.far_end_blocks * block_s, 2),
            "double_talk_s": round(self.core.double_talk_blocks * block_s, 2),
            "path_change_s": round(self.core.path_change_blocks * block_s, 2),
            "ms_per_frame": round(1000 * self.seconds_processing / self.frames, 3) if self.frames else None,
            "reanchors": {"playback": self._played.reanchors, "capture": self._captured.reanchors},
        }
