import torch

from training.codec_eval import collapse_repeats, level1_sequences, normalised_edit_distance, voice_invariance
from training.voices import ASSISTANT_VOICE, voice_by_name


def test_collapse_and_edit_distance():
    assert collapse_repeats([5, 5, 7, 7, 7, 5]) == [5, 7, 5]
    assert collapse_repeats([]) == []
    assert normalised_edit_distance([1, 2, 3], [1, 2, 3]) == 0.0
    assert normalised_edit_distance([1, 2, 3], [4, 5, 6]) == 1.0
    assert normalised_edit_distance([1, 2, 3, 4], [1, 3, 4]) == 0.25  # one deletion over the longer length
    assert normalised_edit_distance([], []) == 0.0 and normalised_edit_distance([], [1]) == 1.0


class _LoudnessCodec:
    """Level 1 = a crude loudness class per frame: voice-dependent, a stand-in to check the bookkeeping."""

    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        frames = wave[: wave.shape[0] // 320 * 320].reshape(-1, 320)
        classes = (frames.pow(2).mean(dim=1).sqrt() * 40).long().clamp(max=9)
        return classes[None]


def test_invariance_counts_every_pair():
    sentences = ["good morning", "what is two plus two"]
    readers = [ASSISTANT_VOICE, voice_by_name("f2-mid"), voice_by_name("klatt-low")]
    sequences = level1_sequences(_LoudnessCodec(), sentences, readers)  # type: ignore[arg-type]
    assert set(sequences) == {(s, v.name) for s in sentences for v in readers}
    result = voice_invariance(sequences, sentences, readers)
    assert result.pairs == (2 * 3, 3 * 1)
    assert 0.0 <= result.same_sentence <= 1.0 and 0.0 <= result.different_sentences <= 1.0
    same = voice_invariance({k: [1, 2] for k in sequences}, sentences, readers)
    assert same.same_sentence == 0.0 and same.different_sentences == 0.0
