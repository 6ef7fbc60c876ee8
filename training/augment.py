"""Augmentation of synthesized questions as they reach the server over WebRTC.

The embedded assistant learns from espeak-ng speech (16 kHz mono float32 in [-1, 1]); in real use a question is spoken
in a room (reverberation), over background noise, at some microphone gain, and crosses WebRTC as Opus. :func:`augment`
imitates that chain on a clean utterance:

1. reverberation: a synthetic room impulse response (a direct-path impulse followed by exponentially decaying noise
   with the drawn RT60, at the drawn direct-to-reverberant ratio, unit energy), convolved and cut to the input length so
   the direct path stays at sample 0;
2. additive white, pink or brown noise at the drawn SNR, relative to the speech power over the non-silent part;
3. a gain, then saturation to [-1, 1] (what an int16 capture does before the encoder);
4. an Opus round trip at the drawn bit rate (:func:`opus_round_trip`: 20 ms frames at 48 kHz, codec delay removed);
5. clipping to [-1, 1].

Each step happens with its own probability, and with probability ``clean_probability`` nothing happens at all. The
output always has the input's length and stays time-aligned with it (no step shifts the signal by more than a sample
or two at 16 kHz), so frame labels computed on the clean wave at 50 Hz stay valid. Timing is never changed.

Everything is a pure function of its arguments: the randomness comes only from the ``numpy.random.Generator`` passed
in, so the same seed gives the same output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np
import scipy.fft
from scipy.signal import fftconvolve

from assistant.audio import SAMPLE_RATE, WEBRTC_SAMPLE_RATE, resample

if TYPE_CHECKING:
    import av

NOISE_COLOURS = ("white", "pink", "brown")  # spectral power ~ 1, 1/f, 1/f**2
# the bit rates the Opus encoder accepts (RFC 6716: 6 kbit/s to 510 kbit/s)
OPUS_MIN_BITRATE = 6_000
OPUS_MAX_BITRATE = 510_000
OPUS_FRAME_MS = 20  # what WebRTC sends
# speech power for the SNR is measured over 20 ms frames no more than this far below the loudest frame
ACTIVE_FLOOR_DB = 40.0
_LN_1000 = 3.0 * math.log(10.0)  # an RT60 is the time the amplitude takes to fall by 60 dB, a factor of 1000


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"AugmentConfig.{name} must be a probability in [0, 1], got {value!r}")


def _check_range(name: str, value: tuple[float, float], low: float | None = None, high: float | None = None) -> None:
    if len(value) != 2:
        raise ValueError(f"AugmentConfig.{name} must be a (low, high) pair, got {value!r}")
    a, b = value
    if not (math.isfinite(a) and math.isfinite(b)):
        raise ValueError(f"AugmentConfig.{name} must be finite, got {value!r}")
    if a > b:
        raise ValueError(f"AugmentConfig.{name} must be (low, high) with low <= high, got {value!r}")
    if low is not None and a < low:
        raise ValueError(f"AugmentConfig.{name} must not go below {low}, got {value!r}")
    if high is not None and b > high:
        raise ValueError(f"AugmentConfig.{name} must not go above {high}, got {value!r}")


@dataclass(frozen=True)
class AugmentConfig:
    """What :func:`augment` may do to an utterance. Ranges are ``(low, high)`` pairs, drawn uniformly (inclusive)."""

    clean_probability: float = 0.25
    """Share of utterances returned untouched (no step at all)."""
    noise_probability: float = 0.5
    """Chance of additive noise on an utterance that is not left clean."""
    snr_db: tuple[float, float] = (5.0, 30.0)
    """Signal-to-noise ratio in dB: speech power over the non-silent part against the noise's power."""
    noise_colours: tuple[str, ...] = NOISE_COLOURS
    """Noise colours drawn from, equally likely: white (flat), pink (power ~ 1/f), brown (power ~ 1/f**2)."""
    reverb_probability: float = 0.4
    """Chance of room reverberation on an utterance that is not left clean."""
    rt60_s: tuple[float, float] = (0.15, 0.6)
    """Reverberation time in seconds: how long the room's tail takes to decay by 60 dB."""
    direct_to_reverb_db: tuple[float, float] = (0.0, 12.0)
    """Energy of the direct path against the energy of the reverberant tail, in dB (higher: drier)."""
    gain_db: tuple[float, float] = (-12.0, 6.0)
    """Gain in dB applied to every utterance that is not left clean (then saturated to [-1, 1])."""
    opus_probability: float = 0.5
    """Chance of an Opus round trip on an utterance that is not left clean."""
    opus_bitrate: tuple[int, int] = (12_000, 32_000)
    """Opus target bit rate in bit/s (integers)."""
    opus_complexity: int = 10
    """Opus encoder complexity, 0 (cheapest) to 10: FFmpeg's default, what the aiortc edge client encodes with
    (libwebrtc uses 9 on desktops, 5 on phones). Encoding is most of an utterance's cost; 5 saves about 25 %, 0 about
    45 %, but below 7 libopus skips its speech/music analysis and codes more like a phone than a desktop does."""
    sample_rate: int = SAMPLE_RATE
    """Sample rate of the waves in Hz."""

    def __post_init__(self) -> None:
        for name in ("clean_probability", "noise_probability", "reverb_probability", "opus_probability"):
            _check_probability(name, getattr(self, name))
        _check_range("snr_db", self.snr_db)
        _check_range("rt60_s", self.rt60_s)
        if self.rt60_s[0] <= 0:
            raise ValueError(f"AugmentConfig.rt60_s must be positive, got {self.rt60_s!r}")
        if self.rt60_s[1] > 10.0:
            raise ValueError(
                f"AugmentConfig.rt60_s must be at most 10 s (a room, not a cathedral), got {self.rt60_s!r}"
            )
        _check_range("direct_to_reverb_db", self.direct_to_reverb_db)
        _check_range("gain_db", self.gain_db)
        _check_range("opus_bitrate", self.opus_bitrate, OPUS_MIN_BITRATE, OPUS_MAX_BITRATE)
        if not all(isinstance(b, int) for b in self.opus_bitrate):
            raise ValueError(f"AugmentConfig.opus_bitrate must be integers in bit/s, got {self.opus_bitrate!r}")
        if not self.noise_colours:
            raise ValueError("AugmentConfig.noise_colours must name at least one colour")
        unknown = [c for c in self.noise_colours if c not in NOISE_COLOURS]
        if unknown:
            raise ValueError(f"AugmentConfig.noise_colours: unknown colours {unknown}, known are {NOISE_COLOURS}")
        if not (isinstance(self.opus_complexity, int) and 0 <= self.opus_complexity <= 10):
            raise ValueError(f"AugmentConfig.opus_complexity must be an integer in 0..10, got {self.opus_complexity!r}")
        if not (isinstance(self.sample_rate, int) and self.sample_rate > 0):
            raise ValueError(f"AugmentConfig.sample_rate must be a positive integer, got {self.sample_rate!r}")


DEFAULT_CONFIG = AugmentConfig()


def _as_wave(wave: np.ndarray) -> np.ndarray:
    """A float32 copy of a 1-D wave (ValueError on anything else)."""
    x = np.array(wave, dtype=np.float32)  # always a copy: callers may keep their input
    if x.ndim != 1:
        raise ValueError(f"a wave is 1-D (mono samples), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("the wave holds NaN or infinite samples")
    return x


def _energy(x: np.ndarray) -> float:
    """Sum of squares, without BLAS: ``np.dot`` hands a vector this short to OpenBLAS's threads, which costs
    milliseconds on a busy machine (measured 16 ms for 32k samples on 2 loaded cores, against 0.08 ms here)."""
    return float(np.einsum("i,i->", x, x))


# -- reverberation ----------------------------------------------------------------------------------------------------


def room_impulse_response(
    rt60_s: float, direct_to_reverb_db: float, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """A synthetic room impulse response of unit energy (float64).

    Sample 0 is the direct path; samples 1 .. RT60 are Gaussian noise under an exponential envelope that falls by
    60 dB over ``rt60_s``, scaled so that direct energy / tail energy is ``direct_to_reverb_db``. At the ratios used
    here (>= 0 dB) the direct path is by far the largest tap, so convolving does not move the speech in time.
    """
    if rt60_s <= 0:
        raise ValueError(f"rt60_s must be positive, got {rt60_s}")
    length = max(2, math.ceil(rt60_s * sample_rate))
    t = np.arange(1, length) / sample_rate
    tail = rng.standard_normal(length - 1) * np.exp(-_LN_1000 * t / rt60_s)
    tail *= math.sqrt(10.0 ** (-direct_to_reverb_db / 10.0) / _energy(tail))
    rir = np.empty(length)
    rir[0] = 1.0
    rir[1:] = tail
    return rir / math.sqrt(_energy(rir))


def reverberate(wave: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """``wave`` convolved with ``rir``, cut to the length of ``wave`` (the tail past its end is dropped), float32."""
    x = np.asarray(wave, dtype=np.float32)
    if x.size == 0:
        return x.copy()
    return fftconvolve(x, np.asarray(rir, dtype=np.float32))[: x.size].astype(np.float32)


# -- noise ------------------------------------------------------------------------------------------------------------


def coloured_noise(n: int, colour: str, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of zero-mean noise of unit power (float64): white, pink (power ~ 1/f) or brown (~ 1/f**2).

    Pink and brown come from white Gaussian noise shaped in the frequency domain (amplitude ~ 1/sqrt(f) or 1/f), with
    the DC bin removed. (scipy.fft: numpy's FFT, pocketfft, in its faster C++ form.)
    """
    if colour not in NOISE_COLOURS:
        raise ValueError(f"unknown noise colour {colour!r}, known are {NOISE_COLOURS}")
    if n <= 0:
        return np.zeros(0)
    white = rng.standard_normal(n)
    if colour == "white" or n < 2:
        noise = white - white.mean()
    else:
        spectrum = scipy.fft.rfft(white)
        f = np.arange(1, spectrum.size, dtype=np.float64)  # in bins: the scale drops out with the normalisation
        spectrum[0] = 0.0
        spectrum[1:] /= np.sqrt(f) if colour == "pink" else f
        noise = scipy.fft.irfft(spectrum, n)
    power = _energy(noise) / n
    return noise / math.sqrt(power) if power > 0 else noise


def active_power(wave: np.ndarray, sample_rate: int = SAMPLE_RATE, floor_db: float = ACTIVE_FLOOR_DB) -> float:
    """Mean power of ``wave`` over its non-silent part: the 20 ms frames whose power is within ``floor_db`` of the
    loudest frame's. 0.0 for an empty or all-zero wave."""
    x = np.asarray(wave, dtype=np.float64)
    if x.size == 0:
        return 0.0
    hop = max(1, sample_rate // 50)
    frames = -(-x.size // hop)
    squares = np.zeros(frames * hop)
    squares[: x.size] = x * x
    energy = squares.reshape(frames, hop).sum(axis=1)
    lengths = np.full(frames, hop)
    lengths[-1] = x.size - (frames - 1) * hop
    power = energy / lengths
    loudest = float(power.max())
    if loudest <= 0.0:
        return 0.0
    active = power >= loudest * 10.0 ** (-floor_db / 10.0)
    return float(energy[active].sum() / lengths[active].sum())


def add_noise(
    wave: np.ndarray, snr_db: float, rng: np.random.Generator, colour: str = "white", sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """``wave`` plus ``colour`` noise at ``snr_db`` below the wave's :func:`active_power` (float32). A silent wave gets
    no noise (there is no speech level to refer to)."""
    x = np.asarray(wave, dtype=np.float32)
    speech = active_power(x, sample_rate)
    if speech <= 0.0:
        return x.copy()
    noise = coloured_noise(x.size, colour, rng)
    noise *= math.sqrt(speech / 10.0 ** (snr_db / 10.0))
    return (x + noise).astype(np.float32)


# -- Opus -------------------------------------------------------------------------------------------------------------


def _opus_pre_skip(extradata: bytes | None) -> int:
    """The pre-skip (samples at 48 kHz) announced in the encoder's OpusHead (RFC 7845, section 5.1)."""
    if not extradata or len(extradata) < 12 or extradata[:8] != b"OpusHead":
        raise RuntimeError(f"the Opus encoder gave no OpusHead to read its pre-skip from: {extradata!r}")
    return int.from_bytes(extradata[10:12], "little")


def _frame_samples(frame: av.AudioFrame) -> np.ndarray:
    """A decoded mono frame -> float32 samples in [-1, 1)."""
    data = frame.to_ndarray().reshape(-1)
    if data.dtype == np.int16:
        return data.astype(np.float32) / np.float32(32768.0)
    return data.astype(np.float32, copy=False)


def opus_round_trip(wave: np.ndarray, bitrate: int, sample_rate: int = SAMPLE_RATE, complexity: int = 10) -> np.ndarray:
    """``wave`` encoded with Opus (libopus through PyAV) and decoded again: float32, same length, time-aligned.

    As in WebRTC: mono, 48 kHz (resampled there and back with scipy's polyphase filter, which has no delay), 20 ms
    frames, VoIP application, variable bit rate around ``bitrate`` bit/s. The last partial frame is padded with zeros
    and the encoder is flushed, so every input sample comes back.

    Delay: the encoder runs ``pre_skip`` samples ahead (312 at 48 kHz, 6.5 ms: libopus's lookahead), announced in its
    OpusHead. FFmpeg's decoder drops those samples itself when given that header (its first frame comes back short by
    ``pre_skip``); whatever it did not drop is dropped here, so the output starts at the input's sample 0. What is
    left, measured by cross-correlation at 16 kHz: espeak speech and vowel-like signals (SILK/hybrid modes) come back
    0.8-1.4 samples early (under 0.1 ms; partly the phase of the encoder's VoIP high-pass), CELT within 0.1 sample.
    A constant shift would not fit both modes, so none is applied.

    The VoIP high-pass (below ~100 Hz) and SILK's coarser high band mean waveform correlation with the input is only
    about 0.9 on speech at 24 kbit/s even though the spectrum is well kept.
    """
    x = _as_wave(wave)
    if not (isinstance(bitrate, int | np.integer) and OPUS_MIN_BITRATE <= bitrate <= OPUS_MAX_BITRATE):
        raise ValueError(f"Opus bit rates are integers in {OPUS_MIN_BITRATE}..{OPUS_MAX_BITRATE} bit/s, got {bitrate}")
    if not 0 <= complexity <= 10:
        raise ValueError(f"Opus complexity is 0..10, got {complexity}")
    if x.size == 0:
        return x
    import av  # PyAV, here rather than at the top: a GPU machine training from a copied stage cache may lack it

    rate = WEBRTC_SAMPLE_RATE
    x48 = np.clip(resample(x, sample_rate, rate), -1.0, 1.0).astype(np.float32)
    n48 = x48.size

    encoder = av.codec.CodecContext.create("libopus", "w")
    encoder.sample_rate = rate
    encoder.layout = "mono"
    encoder.format = "flt"
    encoder.bit_rate = int(bitrate)
    encoder.time_base = Fraction(1, rate)
    encoder.options = {
        "application": "voip",
        "frame_duration": str(OPUS_FRAME_MS),
        "vbr": "on",
        "compression_level": str(complexity),
    }
    encoder.open()
    pre_skip = _opus_pre_skip(encoder.extradata)
    decoder = av.codec.CodecContext.create("libopus", "r")
    decoder.sample_rate = rate
    decoder.layout = "mono"
    decoder.format = "flt"
    decoder.extradata = encoder.extradata

    step = rate * OPUS_FRAME_MS // 1000
    padded = np.zeros(-(-n48 // step) * step, dtype=np.float32)
    padded[:n48] = x48
    packets = []
    for start in range(0, padded.size, step):
        frame = av.AudioFrame.from_ndarray(padded[start : start + step].reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        frame.time_base = Fraction(1, rate)
        packets.extend(encoder.encode(frame))
    packets.extend(encoder.encode(None))  # flush: the lookahead's worth of samples still inside the encoder

    chunks: list[np.ndarray] = []
    for packet in [*packets, None]:
        chunks.extend(_frame_samples(frame) for frame in decoder.decode(packet))
    if not chunks:
        raise RuntimeError("the Opus decoder returned no audio")
    # the first packet carries a full frame; the decoder trims what it knows of the pre-skip from the first frame
    dropped = max(0, step - chunks[0].size)
    lead = max(0, pre_skip - dropped)
    decoded = np.concatenate(chunks)[lead : lead + n48]
    if decoded.size < n48:
        decoded = np.concatenate([decoded, np.zeros(n48 - decoded.size, dtype=np.float32)])
    out = resample(decoded, rate, sample_rate)
    if out.size != x.size:  # resample_poly gives ceil(n * up / down): equal here, but never trust a round trip
        out = np.concatenate([out, np.zeros(max(0, x.size - out.size), dtype=np.float32)])[: x.size]
    return out.astype(np.float32, copy=False)


# -- the chain --------------------------------------------------------------------------------------------------------


def augment(wave: np.ndarray, rng: np.random.Generator, config: AugmentConfig = DEFAULT_CONFIG) -> np.ndarray:
    """A randomly degraded copy of ``wave`` (16 kHz mono, float32 in [-1, 1]): same length, time-aligned, float32.

    With probability ``config.clean_probability`` the copy is untouched. Otherwise: reverberation, noise, gain (with
    saturation), Opus and clipping, each step with its probability (gain always), in that order. Only ``rng`` supplies
    randomness: the same generator state gives the same output.
    """
    x = _as_wave(wave)
    if rng.random() < config.clean_probability:
        return x
    sr = config.sample_rate
    if rng.random() < config.reverb_probability:
        rt60 = float(rng.uniform(*config.rt60_s))
        drr = float(rng.uniform(*config.direct_to_reverb_db))
        x = reverberate(x, room_impulse_response(rt60, drr, rng, sr))
    if rng.random() < config.noise_probability:
        colour = config.noise_colours[int(rng.integers(len(config.noise_colours)))]
        x = add_noise(x, float(rng.uniform(*config.snr_db)), rng, colour, sr)
    gain = 10.0 ** (float(rng.uniform(*config.gain_db)) / 20.0)
    x = np.clip(x * np.float32(gain), -1.0, 1.0)  # a capture saturates before the encoder ever sees it
    if rng.random() < config.opus_probability:
        low, high = config.opus_bitrate
        x = opus_round_trip(x, int(rng.integers(low, high + 1)), sr, config.opus_complexity)
    return np.clip(x, -1.0, 1.0).astype(np.float32, copy=False)
