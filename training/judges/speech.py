"""Speech judge: does a wave say the expected sentence? (pocketsphinx, bundled en-us acoustic model)

The judge picks which of the domain's sentences a wave says: a JSGF grammar lists every sentence (lower-case words,
no punctuation), so recognition is a forced choice. Settings from shared/reference/embedded-default-feasibility.md:
no filler words, no noise removal, audio peak-normalised to 0.7 and fed as 16 kHz int16. When the decoder cannot
reach the end of a sentence it returns a partial hypothesis, which counts as wrong.

This module shares no code with the models (it must not import ``assistant.models``): it is an outside referee.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence

import numpy as np

SAMPLE_RATE = 16_000
PEAK = 0.7
_GRAMMAR_NAME = "domain"


def normalise_sentence(text: str) -> str:
    """Lower-case words, punctuation dropped: ``"What is 6?"`` -> ``"what is 6"`` (digits are kept as words)."""
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


def edit_distance(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Levenshtein distance: the fewest insertions, deletions and substitutions that turn ``a`` into ``b``."""
    previous = list(range(len(b) + 1))  # distances from a[:0]
    for i, x in enumerate(a, start=1):
        current = [i] + [0] * len(b)
        for j, y in enumerate(b, start=1):
            current[j] = min(
                previous[j] + 1,  # deletion
                current[j - 1] + 1,  # insertion
                previous[j - 1] + (x != y),  # substitution / match
            )
        previous = current
    return previous[-1]


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level Levenshtein distance / number of reference words (both normalised first).

    An empty reference gives 0.0 for an empty hypothesis and 1.0 otherwise.
    """
    ref = normalise_sentence(reference).split()
    hyp = normalise_sentence(hypothesis).split()
    if not ref:
        return 0.0 if not hyp else 1.0
    return edit_distance(ref, hyp) / len(ref)


def to_judge_pcm(wave: np.ndarray) -> bytes:
    """float wave at 16 kHz -> peak-normalised (0.7) int16 bytes; silence stays silence."""
    wave = np.asarray(wave, dtype=np.float64).reshape(-1)
    peak = float(np.abs(wave).max()) if wave.size else 0.0
    if peak > 0.0:
        wave = wave * (PEAK / peak)
    return (np.clip(wave, -1.0, 1.0) * 32767.0).astype(np.int16).tobytes()


class SentenceJudge:
    """Forced choice among ``sentences`` with pocketsphinx. Not thread-safe: one judge per thread."""

    def __init__(self, sentences: Sequence[str]) -> None:
        from pocketsphinx import Config, Decoder  # imported here: only the training extra installs it

        normalised = sorted({normalise_sentence(s) for s in sentences} - {""})
        if not normalised:
            raise ValueError("SentenceJudge needs at least one non-empty sentence")
        config = Config(lm=None, fsgusefiller=False, remove_noise=False, samprate=SAMPLE_RATE, loglevel="FATAL")
        self._decoder = Decoder(config)
        words = sorted({w for s in normalised for w in s.split()})
        unknown = [w for w in words if self._decoder.lookup_word(w) is None]
        if unknown:
            raise ValueError(f"words not in the pocketsphinx dictionary: {', '.join(unknown)}")
        alternatives = "\n    | ".join(normalised)
        grammar = f"#JSGF V1.0;\ngrammar {_GRAMMAR_NAME};\npublic <sentence> = ( {alternatives} );\n"
        self._decoder.add_jsgf_string(_GRAMMAR_NAME, grammar)
        self._decoder.activate_search(_GRAMMAR_NAME)
        self.sentences: tuple[str, ...] = tuple(normalised)

    def transcribe(self, wave: np.ndarray) -> str:
        """float32 wave at 16 kHz -> the recognised words ("" when nothing was recognised)."""
        pcm = to_judge_pcm(wave)
        if not pcm:
            return ""
        self._decoder.start_utt()
        self._decoder.process_raw(pcm, no_search=False, full_utt=True)
        self._decoder.end_utt()
        hyp = self._decoder.hyp()
        return normalise_sentence(hyp.hypstr) if hyp is not None else ""

    def is_correct(self, wave: np.ndarray, expected: str) -> bool:
        """Whether the wave is recognised as exactly ``expected`` (after normalisation)."""
        return self.transcribe(wave) == normalise_sentence(expected)
