"""Checks the end-to-end tests share: what the committed models reliably do, whatever they answer."""

from __future__ import annotations

import functools


@functools.cache
def domain_words() -> frozenset[str]:
    from training import domain

    return frozenset(domain.vocabulary())


def assert_domain_sentence(text: str, what: str) -> None:
    """``text`` is a non-empty sentence of the domain's words (lower case, single spaces): well-formed, whatever it
    says."""
    assert text and text == " ".join(text.split()), f"{what}: {text!r}"
    unknown = [w for w in text.split(" ") if w not in domain_words()]
    assert not unknown, f"{what} {text!r} has words outside the domain: {unknown}"


def assert_speech_length(seconds: float, reply: str) -> None:
    """Speech of a plausible length for ``reply``: the assistant's voice reads 160 words a minute (0.375 s a word);
    the models' speech may run slower or faster, within a factor of 2.5 either way."""
    from training import voices

    expected = len(reply.split()) * 60.0 / voices.ASSISTANT_VOICE.speed
    assert expected / 2.5 <= seconds <= 2.5 * expected + 0.5, f"{seconds:.2f} s of speech for {reply!r}"


def audible_seconds(wave, rate: int, window_s: float = 0.02, floor: float = 1e-3) -> float:
    """How long ``wave`` sounds: its ``window_s`` windows with a sample above ``floor``, in seconds. Gaps where a
    stream ran dry (a loaded machine over WebRTC) do not count."""
    import numpy as np

    size = int(window_s * rate)
    n = len(wave) // size
    windows = np.abs(np.asarray(wave[: n * size])).reshape(n, size)
    return float((windows.max(axis=1) > floor).sum() * window_s)
