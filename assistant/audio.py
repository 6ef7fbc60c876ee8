"""Audio constants and helpers shared by the server, the engine and the edge client (numpy only, no torch)."""

from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000  # speech codec, engine input and engine output
CODEC_HOP = 320  # samples per codec frame: 16000 / 320 = 50 frames per second
CODEC_FRAME_RATE = SAMPLE_RATE // CODEC_HOP  # 50 Hz, one level-1 speech token per frame
OUTPUT_FRAME_MS = 20
OUTPUT_FRAME_SAMPLES = SAMPLE_RATE * OUTPUT_FRAME_MS // 1000  # 320 samples per 20 ms output frame
WEBRTC_SAMPLE_RATE = 48_000  # Opus in WebRTC always runs at 48 kHz
MAX_INPUT_SECONDS = 60.0


class AudioFormatError(ValueError):
    """Audio that cannot be used: unreadable, empty, too long, or of an unsupported layout."""


def resample(wave: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    if from_rate <= 0 or to_rate <= 0:
        raise AudioFormatError(f"sample rates must be positive, got {from_rate} -> {to_rate}")
    wave = np.asarray(wave, dtype=np.float32)
    if from_rate == to_rate or wave.size == 0:
        return wave
    from scipy.signal import resample_poly  # imported here: scipy.signal costs ~1.5 s at edge-client start-up

    g = gcd(from_rate, to_rate)
    return resample_poly(wave, to_rate // g, from_rate // g).astype(np.float32)


def read_wav(path: str | Path, sample_rate: int = SAMPLE_RATE, max_seconds: float = MAX_INPUT_SECONDS) -> np.ndarray:
    """Reads any soundfile-readable file as float32 mono at ``sample_rate``."""
    import soundfile  # here: the engine itself needs no audio files (a GPU benchmark machine may lack libsndfile)

    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioFormatError(f"cannot read audio file {path}: {exc}") from None
    if data.shape[0] == 0:
        raise AudioFormatError(f"audio file {path} holds no samples")
    if data.shape[0] / rate > max_seconds:
        raise AudioFormatError(f"audio file {path} is {data.shape[0] / rate:.1f} s long; the limit is {max_seconds} s")
    return resample(data.mean(axis=1), rate, sample_rate)


def decode_wav_bytes(data: bytes, max_seconds: float = MAX_INPUT_SECONDS) -> tuple[np.ndarray, int]:
    """A sound file held in memory (a tune a user sent) as float32 mono (channels averaged) at its own rate, and that
    rate. Raises ``AudioFormatError`` for bytes soundfile cannot read, no samples, or more than ``max_seconds``."""
    import io

    import soundfile

    try:
        wave, rate = soundfile.read(io.BytesIO(bytes(data)), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError, TypeError, ValueError) as exc:
        raise AudioFormatError(f"cannot read the sound file: {exc}") from None
    if wave.shape[0] == 0:
        raise AudioFormatError("the sound file holds no samples")
    if wave.shape[0] / rate > max_seconds:
        raise AudioFormatError(f"the sound file is {wave.shape[0] / rate:.1f} s long; the limit is {max_seconds:g} s")
    return np.ascontiguousarray(wave.mean(axis=1), dtype=np.float32), int(rate)


def write_wav(path: str | Path, wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    import soundfile

    soundfile.write(str(path), np.asarray(wave, dtype=np.float32), sample_rate, subtype="PCM_16")


def float_to_pcm16(wave: np.ndarray) -> np.ndarray:
    return (np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0) * 32767.0).astype(np.int16)


def pcm16_to_float(pcm: np.ndarray | bytes) -> np.ndarray:
    if isinstance(pcm, (bytes, bytearray, memoryview)):
        pcm = np.frombuffer(pcm, dtype=np.int16)
    return np.asarray(pcm, dtype=np.float32) / 32768.0


class FrameSplitter:
    """Turns arbitrary-length pushes into exact ``frame_samples`` frames (VAD and the 20 ms output path need them)."""

    def __init__(self, frame_samples: int, dtype: type = np.float32):
        if frame_samples <= 0:
            raise ValueError("frame_samples must be positive")
        self.frame_samples = frame_samples
        self.dtype = np.dtype(dtype)
        self._pending = np.zeros(0, dtype=self.dtype)

    def push(self, wave: np.ndarray) -> list[np.ndarray]:
        buf = np.concatenate([self._pending, np.asarray(wave, dtype=self.dtype)])
        n = len(buf) // self.frame_samples
        frames = [buf[i * self.frame_samples : (i + 1) * self.frame_samples] for i in range(n)]
        self._pending = buf[n * self.frame_samples :]
        return frames

    def flush(self, pad: bool = True) -> list[np.ndarray]:
        """Returns the remainder as a last frame (zero-padded) and empties the splitter."""
        rest, self._pending = self._pending, np.zeros(0, dtype=self.dtype)
        if rest.size == 0 or not pad:
            return []
        return [np.pad(rest, (0, self.frame_samples - rest.size))]

    def clear(self) -> None:
        self._pending = np.zeros(0, dtype=self.dtype)

    @property
    def pending_samples(self) -> int:
        return int(self._pending.size)


def join_utterances(
    first: np.ndarray, second: np.ndarray, sample_rate: int = SAMPLE_RATE, gap_s: float = 0.2, quiet_db: float = 40.0
) -> np.ndarray:
    """``first`` then ``second`` (float32 mono) as one utterance with a ``gap_s`` pause between them: the quiet at the
    end of ``first`` and at the start of ``second`` (20 ms blocks ``quiet_db`` under the louder one's loudest block)
    is cut to half the gap on each side. An endpointer's utterance carries its end-of-turn silence and a pre-roll;
    joined as they are, a question continued after a pause would hold a half-second silence in its middle."""
    first, second = np.asarray(first, dtype=np.float32), np.asarray(second, dtype=np.float32)
    block = max(1, sample_rate // 50)

    def block_levels(wave: np.ndarray) -> np.ndarray:
        n = wave.size // block
        if n == 0:
            return np.zeros(0)
        return np.sqrt(np.mean(wave[: n * block].reshape(n, block) ** 2, axis=1))

    levels_first, levels_second = block_levels(first), block_levels(second)
    peak = max(float(levels_first.max(initial=0.0)), float(levels_second.max(initial=0.0)))
    if peak <= 0:
        return np.concatenate([first, second])
    floor = peak * 10 ** (-quiet_db / 20)
    keep = int(round(gap_s / 2 * sample_rate))
    loud_first = np.flatnonzero(levels_first > floor)
    end = first.size if loud_first.size == 0 else min(first.size, (int(loud_first[-1]) + 1) * block + keep)
    loud_second = np.flatnonzero(levels_second > floor)
    start = 0 if loud_second.size == 0 else max(0, int(loud_second[0]) * block - keep)
    return np.concatenate([first[:end], second[start:]])
