"""The espeak-ng voice catalogue: training voices, held-out voices, the assistant's own voice, and synthesis.

A ``Voice`` is an espeak-ng language voice plus a variant (``en-us+f2``), a pitch and a base speed. The held-out
voices use espeak variants that never occur among the training voices, so evaluating on them measures speaker
generalisation, not memorised timbre. Every variant listed here was kept only if the pocketsphinx sentence judge
understands its original espeak audio (whisper, croak and robot-like variants are left out).

``ASSISTANT_VOICE`` reads every spoken reply of the LM at a fixed pitch and speed, so the level-1 codes of a reply are a
deterministic function of its sentence.
"""

from __future__ import annotations

import functools
import shutil
import struct
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from assistant.audio import SAMPLE_RATE, resample
from training import espeak
from training.specs import Voice

ESPEAK = "espeak-ng"
LANGUAGE = "en-us"


def _voice(name: str, variant: str, pitch: int, speed: int) -> Voice:
    return Voice(name=name, espeak=f"{LANGUAGE}+{variant}", pitch=pitch, speed=speed)


# Training voices: 18 espeak variants (12 male, 6 female), several at two or three pitches, base speeds 150-175 wpm.
TRAIN_VOICES: tuple[Voice, ...] = (
    _voice("adam-low", "adam", 35, 160),
    _voice("adam-high", "adam", 60, 170),
    _voice("benjamin-low", "benjamin", 35, 165),
    _voice("benjamin-high", "benjamin", 60, 155),
    _voice("caleb-mid", "caleb", 45, 170),
    _voice("edward-low", "edward", 35, 160),
    _voice("edward-high", "edward", 60, 175),
    _voice("grandpa-mid", "grandpa", 45, 150),
    _voice("klatt-low", "klatt", 35, 165),
    _voice("klatt-high", "klatt", 60, 160),
    _voice("klatt4-mid", "klatt4", 50, 170),
    _voice("m2-low", "m2", 35, 165),
    _voice("m2-high", "m2", 60, 175),
    _voice("m5-mid", "m5", 45, 160),
    _voice("m6-low", "m6", 35, 170),
    _voice("m6-high", "m6", 60, 160),
    _voice("sandro-mid", "sandro", 50, 165),
    _voice("max-mid", "max", 45, 175),
    _voice("f2-low", "f2", 45, 165),
    _voice("f2-mid", "f2", 58, 175),
    _voice("f2-high", "f2", 70, 160),
    _voice("f4-low", "f4", 45, 170),
    _voice("f4-high", "f4", 70, 165),
    _voice("f5-low", "f5", 45, 160),
    _voice("f5-mid", "f5", 58, 170),
    _voice("f5-high", "f5", 70, 175),
    _voice("linda-mid", "linda", 50, 165),
    _voice("anika-mid", "anika", 55, 170),
    _voice("aunty-mid", "aunty", 55, 160),
)

# Held-out voices: variants that no training voice uses (4 male, 3 female), one pitch each.
HELDOUT_VOICES: tuple[Voice, ...] = (
    _voice("edward2-mid", "edward2", 45, 165),
    _voice("klatt3-mid", "klatt3", 50, 160),
    _voice("m7-mid", "m7", 45, 170),
    _voice("michel-mid", "michel", 50, 165),
    _voice("f1-mid", "f1", 50, 165),
    _voice("f3-mid", "f3", 50, 170),
    _voice("belinda-mid", "belinda", 50, 160),
)

# The voice of every spoken reply (fixed pitch and speed): the training voice the judge recognises best
# (adam-low and edward-low: 40/40 sentences; f2-low and m6-low: 38/40).
ASSISTANT_VOICE: Voice = next(voice for voice in TRAIN_VOICES if voice.name == "adam-low")


def variant_of(voice: Voice) -> str:
    """The espeak variant of a voice (``"en-us+f2"`` -> ``"f2"``; no variant -> ``""``)."""
    return voice.espeak.partition("+")[2]


def voice_by_name(name: str) -> Voice:
    """The catalogue voice called ``name`` (training, held-out or the assistant voice)."""
    for voice in (*TRAIN_VOICES, *HELDOUT_VOICES, ASSISTANT_VOICE):
        if voice.name == name:
            return voice
    known = ", ".join(v.name for v in (*TRAIN_VOICES, *HELDOUT_VOICES))
    raise KeyError(f"unknown voice {name!r}; known: {known}")


@functools.cache
def installed_variants() -> frozenset[str]:
    """Variant file names espeak-ng knows (``espeak-ng --voices=variant``); espeak silently ignores unknown ones."""
    if shutil.which(ESPEAK) is None:
        raise RuntimeError(f"{ESPEAK} is not installed (apt-get install espeak-ng)")
    listing = subprocess.run([ESPEAK, "--voices=variant"], capture_output=True, text=True, check=True).stdout
    variants = set()
    for line in listing.splitlines()[1:]:
        for field in line.split():
            if field.startswith("!v/"):
                variants.add(field[3:])
    return frozenset(variants)


def synthesize(text: str, voice: Voice, speed: int | None = None) -> np.ndarray:
    """``text`` read by ``voice`` (at ``speed`` words per minute, default the voice's own) -> float32 [T] at 16 kHz."""
    if not text or not text.strip():
        raise ValueError("cannot synthesize empty text")
    speed = voice.speed if speed is None else int(speed)
    if not 80 <= speed <= 450:
        raise ValueError(f"speed must be in [80, 450] words per minute, got {speed}")
    variant = variant_of(voice)
    if variant and variant not in installed_variants():
        raise ValueError(f"voice {voice.name!r}: espeak-ng has no variant {variant!r}")
    command = [ESPEAK, "-v", voice.espeak, "-p", str(voice.pitch), "-s", str(speed), "--stdout"]
    try:
        result = subprocess.run(command, input=text.encode("utf-8"), capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ValueError(f"espeak-ng failed for voice {voice.name!r}: {exc}") from exc
    if result.returncode != 0:
        message = result.stderr.decode("utf-8", "replace").strip()
        raise ValueError(f"espeak-ng failed for voice {voice.name!r} (exit {result.returncode}): {message}")
    rate, pcm = _parse_wav(result.stdout)
    if pcm.size == 0:
        raise ValueError(f"espeak-ng produced no audio for {text!r} in voice {voice.name!r}")
    return resample(pcm.astype(np.float32) / 32768.0, rate, SAMPLE_RATE)


def synthesize_many(requests: Sequence[tuple[str, Voice, int | None]], workers: int = 2) -> list[np.ndarray]:
    """``synthesize`` over (text, voice, speed) requests, in order; espeak runs as subprocesses on ``workers``
    threads."""
    if workers < 1:
        raise ValueError("workers must be >= 1")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda request: synthesize(*request), requests))


def synthesize_aligned(text: str, voice: Voice, speed: int | None = None) -> espeak.AlignedSpeech:
    """``synthesize`` together with the phonemes the wave is made of and when each starts (``training.espeak``)."""
    return _with_timings(synthesize(text, voice, speed), text, voice, speed)


def synthesize_many_aligned(requests: Sequence[tuple[str, Voice, int | None]]) -> list[espeak.AlignedSpeech]:
    """``synthesize_aligned`` over (text, voice, speed) requests, in order; the waves on ``synthesize_many``'s
    threads."""
    waves = synthesize_many(requests)
    return [_with_timings(wave, *request) for wave, request in zip(waves, requests, strict=True)]


def _with_timings(wave: np.ndarray, text: str, voice: Voice, speed: int | None) -> espeak.AlignedSpeech:
    return espeak.AlignedSpeech(wave, espeak.phoneme_timings(text, voice, voice.speed if speed is None else int(speed)))


def _parse_wav(data: bytes) -> tuple[int, np.ndarray]:
    """Mono 16-bit RIFF WAV bytes -> (sample rate, int16 samples). espeak's streamed header has bogus sizes, so the
    data chunk is taken to run to the end of the stream."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("espeak-ng output is not a WAV stream")
    offset, rate = 12, None
    while offset + 8 <= len(data):
        chunk_id, size = data[offset : offset + 4], struct.unpack("<I", data[offset + 4 : offset + 8])[0]
        body = offset + 8
        if chunk_id == b"fmt ":
            fmt, channels, rate, _, _, bits = struct.unpack("<HHIIHH", data[body : body + 16])
            if fmt != 1 or channels != 1 or bits != 16:
                raise ValueError(f"unexpected espeak-ng WAV format (fmt {fmt}, {channels} ch, {bits} bit)")
        elif chunk_id == b"data":
            if rate is None:
                raise ValueError("espeak-ng WAV has no fmt chunk before its data")
            samples = data[body : body + ((len(data) - body) // 2) * 2]
            return rate, np.frombuffer(samples, dtype="<i2")
        offset = body + size + (size & 1)
    raise ValueError("espeak-ng WAV has no data chunk")
