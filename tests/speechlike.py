"""Sounds the VAD calls speech, for tests that need a caller to talk without synthesizing words.

The endpointer (``assistant.endpointing``) starts a turn only on voiced audio with a pitch, as a person's voice has:
a noise burst is a cough to it. ``voiced_like`` is a buzzy harmonic source (a glottal-like pitch of 120-160 Hz) with a
syllable-rate envelope and a little breath noise: webrtcvad and the pitch rule both call it speech.
"""

from __future__ import annotations

import numpy as np


def voiced_like(seconds: float, rng: np.random.Generator | None = None, rate: int = 16000) -> np.ndarray:
    rng = rng if rng is not None else np.random.default_rng(0)
    t = np.arange(int(rate * seconds)) / rate
    f0 = 140 + 20 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    wave = sum(np.sin(k * phase) / k for k in range(1, 12) if 160 * k < rate / 2)
    wave = wave * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t) ** 2) + 0.01 * rng.standard_normal(t.size)
    return (0.3 * wave / np.max(np.abs(wave))).astype(np.float32)
