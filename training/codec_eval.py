"""How well the speech codec's level 1 carries content: voice invariance and round-trip intelligibility.

Voice invariance (the figure behind issue 13): level-1 sequences with repeats collapsed, compared by edit distance
normalised by the longer sequence. One sentence read by different voices should give nearly the same sequence; two
different sentences read by one voice should not. Round trip: the codec's decode of its own encode, judged by the
pocketsphinx sentence judge against the same judge on the original audio.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from assistant.models.interfaces import SpeechCodec
from training import voices
from training.judges.speech import SentenceJudge, edit_distance
from training.specs import Voice


def collapse_repeats(codes: Sequence[int]) -> list[int]:
    """``[5, 5, 7, 7, 7, 5]`` -> ``[5, 7, 5]``: durations differ between voices, the sequence of units should not."""
    return [code for code, _ in itertools.groupby(codes)]


def normalised_edit_distance(a: Sequence[int], b: Sequence[int]) -> float:
    """Levenshtein distance divided by the longer length (0 = equal, 1 = nothing in common); 0 for two empties."""
    if not a and not b:
        return 0.0
    return edit_distance(a, b) / max(len(a), len(b))


@dataclass(frozen=True)
class Invariance:
    same_sentence: float  # mean distance, one sentence in two different voices
    different_sentences: float  # mean distance, two different sentences in one voice
    pairs: tuple[int, int]  # how many pairs each mean is over


@torch.no_grad()
def level1_sequences(codec: SpeechCodec, sentences: Sequence[str], readers: Sequence[Voice]) -> dict:
    """``{(sentence, voice name): collapsed level-1 sequence}`` of every sentence in every voice."""
    out = {}
    for sentence in sentences:
        for voice in readers:
            wave = torch.from_numpy(voices.synthesize(sentence, voice))
            out[(sentence, voice.name)] = collapse_repeats(codec.encode(wave)[0].tolist())
    return out


def voice_invariance(sequences: dict, sentences: Sequence[str], readers: Sequence[Voice]) -> Invariance:
    same = [
        normalised_edit_distance(sequences[(s, a.name)], sequences[(s, b.name)])
        for s in sentences
        for a, b in itertools.combinations(readers, 2)
    ]
    different = [
        normalised_edit_distance(sequences[(s, v.name)], sequences[(t, v.name)])
        for v in readers
        for s, t in itertools.combinations(sentences, 2)
    ]
    return Invariance(float(np.mean(same)), float(np.mean(different)), (len(same), len(different)))


# Sentences from every task family, fixed here before any training (not picked by what a codec gets right).
TEST_SENTENCES: tuple[str, ...] = (
    "what is seven plus two",
    "what sound does a cow make",
    "draw a red circle",
    "play a slow happy tune",
    "good morning",
    "what is the capital of france",
    "how many legs does a spider have",
    "say the little dog runs fast",
)


@dataclass(frozen=True)
class RoundTrip:
    original: float  # share of utterances the judge recognises in the original audio
    decoded: float  # ... in the codec's decode of its own codes


@torch.no_grad()
def round_trip_intelligibility(codec: SpeechCodec, sentences: Sequence[str], readers: Sequence[Voice]) -> RoundTrip:
    """Every sentence in every voice, judged by the pocketsphinx sentence judge (grammar: ``sentences``) before and
    after ``codec.decode(codec.encode(wave))``."""
    judge = SentenceJudge(sentences)
    original, decoded = [], []
    for sentence in sentences:
        for voice in readers:
            wave = voices.synthesize(sentence, voice)
            original.append(judge.is_correct(wave, sentence))
            round_trip = codec.decode(codec.encode(torch.from_numpy(wave))).numpy()
            decoded.append(judge.is_correct(round_trip, sentence))
    return RoundTrip(float(np.mean(original)), float(np.mean(decoded)))


def codec_report(codec: SpeechCodec, sentences: Sequence[str] = TEST_SENTENCES) -> dict:
    """Voice invariance among training voices, among held-out voices and across the two, and the round trip on
    held-out voices: the figures ``benchmarks/speech_codec.py`` prints and ``make eval-mini`` records."""
    train = voices.TRAIN_VOICES[::4]  # 8 of them, both sexes
    heldout = voices.HELDOUT_VOICES
    sequences = level1_sequences(codec, sentences, (*train, *heldout))
    report = {
        "training_voices": voice_invariance(sequences, sentences, train).__dict__,
        "heldout_voices": voice_invariance(sequences, sentences, heldout).__dict__,
        "all_voices": voice_invariance(sequences, sentences, (*train, *heldout)).__dict__,
    }
    report["round_trip_heldout"] = round_trip_intelligibility(codec, sentences, heldout).__dict__
    return report
