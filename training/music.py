"""Numpy synthesis of a ``MusicSpec``: a short monophonic tune, float32 at 16 kHz.

One note per beat at ``spec.bpm``. The clip holds a whole number of beats chosen per tempo (``BEATS``) so that it
stays near 3 s: at the music codec's 25 Hz x 4 levels = 100 tokens/s that is at most 320 tokens, which the tiny LM
can generate (AnyGPT's Encodec runs at 50 Hz x 4 = 200 tokens/s; halving the frame rate is the CPU compromise).

Melodies are scale degrees built so that a key-agnostic pitch-class judge can hear the mode: every melody starts
on the tonic (or its octave), ends on the tonic, and leans on the tonic triad, with the third (major 3rd or minor
3rd, the one degree that tells the modes apart among the triad notes) sounding on several beats.
``variant`` picks one of ``N_VARIANTS`` melodies and a transposition (variant 0 = the canonical tune in C; larger
variants wrap around). Registers put the tonic near C3 / C4 / C5; timbres differ in harmonics and envelope, and
every note starts with a clear onset (the organ and the flute leave a short gap before the next note).
"""

from __future__ import annotations

import itertools

import numpy as np

from training.specs import MODES, REGISTERS, TEMPOS_BPM, TIMBRES, MusicSpec

SAMPLE_RATE = 16000
BEATS: dict[str, int] = {"slow": 4, "medium": 5, "fast": 8}  # 3.0 s, 2.73 s, 3.2 s
PEAK = 0.5  # peak amplitude of every clip

# Semitones above the tonic for scale degrees 1..8 (natural minor).
_DEGREES: dict[str, tuple[int, ...]] = {
    "major": (0, 2, 4, 5, 7, 9, 11, 12),
    "minor": (0, 2, 3, 5, 7, 8, 10, 12),
}
# Degree patterns (1 = tonic, 8 = its octave). A clip of n beats plays the first n - 1 degrees, then the tonic.
_MELODIES: tuple[tuple[int, ...], ...] = (
    (1, 3, 5, 3, 8, 5, 3),
    (1, 5, 3, 1, 3, 5, 3),
    (1, 3, 2, 1, 5, 4, 3),
    (8, 5, 3, 5, 8, 2, 3),
)
_TRANSPOSE: tuple[int, ...] = (0, 2, -3, 5)  # semitones, per melody index
N_VARIANTS = len(_MELODIES)
_TONIC_MIDI: dict[str, int] = {"low": 48, "middle": 60, "high": 72}  # C3, C4, C5


def music_specs(variants: int = N_VARIANTS) -> list[MusicSpec]:
    """Every tempo x mode x register x timbre, for variants ``0 .. variants - 1``."""
    return [
        MusicSpec(tempo, mode, register, timbre, variant)
        for tempo, mode, register, timbre, variant in itertools.product(
            TEMPOS_BPM, MODES, REGISTERS, TIMBRES, range(variants)
        )
    ]


def melody_midi(spec: MusicSpec) -> list[int]:
    """MIDI note numbers of the tune, one per beat."""
    index = spec.variant % N_VARIANTS
    tonic = _TONIC_MIDI[spec.register] + _TRANSPOSE[index]
    beats = BEATS[spec.tempo]
    degrees = list(_MELODIES[index][: beats - 1]) + [1]
    return [tonic + _DEGREES[spec.mode][d - 1] for d in degrees]


def duration_seconds(spec: MusicSpec) -> float:
    return BEATS[spec.tempo] * 60.0 / spec.bpm


def synthesize(spec: MusicSpec, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The tune of ``spec`` as float32 ``[round(duration * sample_rate)]`` with peak ``PEAK`` (deterministic)."""
    beat = 60.0 / spec.bpm
    total = int(round(duration_seconds(spec) * sample_rate))
    wave = np.zeros(total, dtype=np.float64)
    for i, midi in enumerate(melody_midi(spec)):
        start = int(round(i * beat * sample_rate))
        length = min(int(round(beat * sample_rate)), total - start)
        wave[start : start + length] += _note(spec.timbre, 440.0 * 2.0 ** ((midi - 69) / 12.0), length, sample_rate)
    wave *= PEAK / max(float(np.abs(wave).max()), 1e-9)
    return wave.astype(np.float32)


def _note(timbre: str, f0: float, length: int, sample_rate: int) -> np.ndarray:
    """One note filling ``length`` samples (its beat), with its own attack and release inside."""
    t = np.arange(length) / sample_rate  # [S]
    nyquist = sample_rate / 2.0
    if timbre == "piano":
        harmonics = [(k, 1.0 / k**1.3, 3.0 + 1.5 * k) for k in range(1, 9)]  # (number, amplitude, decay 1/s)
        attack, gate = 0.004, 0.95
    elif timbre == "organ":
        harmonics = [(k, a, 0.0) for k, a in zip((1, 2, 3, 4, 6, 8), (1.0, 0.8, 0.6, 0.45, 0.3, 0.2), strict=True)]
        attack, gate = 0.01, 0.8
    elif timbre == "flute":
        harmonics = [(1, 1.0, 0.6), (2, 0.12, 1.0), (3, 0.04, 1.5)]
        attack, gate = 0.04, 0.8
    else:
        raise ValueError(f"unknown timbre {timbre!r}; known: {', '.join(TIMBRES)}")
    tone = np.zeros(length)
    for k, amplitude, decay in harmonics:
        if k * f0 < nyquist * 0.95:
            tone += amplitude * np.exp(-decay * t) * np.sin(2.0 * np.pi * k * f0 * t)
    # Envelope: linear attack, hold until the gate, 20 ms linear release, silence until the next beat.
    release = 0.02
    end = gate * length / sample_rate
    envelope = np.clip(t / attack, 0.0, 1.0) * np.clip((end - t) / release, 0.0, 1.0)
    return tone * envelope
