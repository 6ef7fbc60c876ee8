import numpy as np
import pytest

from training.judges.speech import SentenceJudge, normalise_sentence, to_judge_pcm, word_error_rate
from training.voices import ASSISTANT_VOICE, synthesize

SENTENCES = ("what is six plus three", "six plus three is nine", "i see a big red circle", "draw a small blue star")


def test_word_error_rate_counts_substitutions_insertions_deletions():
    assert word_error_rate("six plus three is nine", "six plus three is nine") == 0.0
    assert word_error_rate("six plus three is nine", "six plus two is nine") == pytest.approx(1 / 5)
    assert word_error_rate("six plus three", "six plus plus three") == pytest.approx(1 / 3)  # one insertion
    assert word_error_rate("six plus three", "six three") == pytest.approx(1 / 3)  # one deletion
    assert word_error_rate("a b", "c d e f") == pytest.approx(4 / 2)  # can exceed 1
    assert word_error_rate("What is SIX?", "what is six") == 0.0  # normalised
    assert word_error_rate("", "") == 0.0 and word_error_rate("", "x") == 1.0


def test_normalisation_and_peak_scaling():
    assert normalise_sentence("  I see a Big, red circle! ") == "i see a big red circle"
    pcm = np.frombuffer(to_judge_pcm(np.array([0.0, 0.01, -0.02])), dtype=np.int16)
    assert int(np.abs(pcm).max()) == int(0.7 * 32767)
    assert to_judge_pcm(np.zeros(4)) == bytes(8)


def test_judge_recognises_espeak_sentence_and_rejects_mismatched_audio():
    judge = SentenceJudge(SENTENCES)
    wave = synthesize("i see a big red circle", ASSISTANT_VOICE)
    assert judge.transcribe(wave) == "i see a big red circle"
    assert judge.is_correct(wave, "I see a big red circle.")
    assert not judge.is_correct(wave, "what is six plus three")
    other = synthesize("six plus three is nine", ASSISTANT_VOICE)
    assert not judge.is_correct(other, "i see a big red circle")
    assert judge.transcribe(np.zeros(0, dtype=np.float32)) == ""


def test_unknown_words_are_named():
    with pytest.raises(ValueError, match="blorptastic"):
        SentenceJudge(["what is blorptastic"])
