"""espeak-ng's phoneme timings (libespeak-ng in process) paired with the command line's wave."""

import numpy as np
import pytest

from training.espeak import AlignedSpeech, phoneme_inventory, phoneme_timings
from training.voices import ASSISTANT_VOICE, synthesize, synthesize_aligned, synthesize_many_aligned, voice_by_name

TEXT = "what is seven plus two"


def test_timings_start_at_zero_rise_and_end_inside_the_wave():
    speech = synthesize_aligned(TEXT, ASSISTANT_VOICE)
    starts = [start for start, _ in speech.phonemes]
    assert starts[0] == 0.0 and starts == sorted(starts)
    assert starts[-1] < speech.wave.shape[0] / 16000
    symbols = [symbol for _, symbol in speech.phonemes if not symbol.startswith("_")]
    assert symbols[:3] == ["w", "V", "t"]  # "what"
    assert np.array_equal(speech.wave, synthesize(TEXT, ASSISTANT_VOICE))  # the wave is the command line's


def test_a_slower_reading_stretches_the_timings_and_pitch_barely_moves_them():
    voice = voice_by_name("f2-mid")
    slow = phoneme_timings(TEXT, voice, 120)
    fast = phoneme_timings(TEXT, voice, 240)
    assert [s for _, s in slow] == [s for _, s in fast]
    assert slow[-1][0] > 1.5 * fast[-1][0]
    higher = phoneme_timings(TEXT, voice.__class__(voice.name, voice.espeak, voice.pitch + 20, voice.speed), 160)
    same = phoneme_timings(TEXT, voice, 160)
    assert [s for _, s in higher] == [s for _, s in same]
    assert max(abs(a - b) for (a, _), (b, _) in zip(higher, same, strict=True)) < 0.01  # well within a 20 ms frame


def test_frame_labels_cover_every_codec_frame_with_silence_around_the_speech():
    speech = synthesize_aligned(TEXT, ASSISTANT_VOICE)
    inventory = phoneme_inventory([speech])
    labels = speech.frame_labels(50, inventory)
    assert labels.shape == (-(-speech.wave.shape[0] // 320),)
    assert labels[0] == inventory["w"] and labels[-1] == 0  # espeak ends on a pause
    # every phoneme of the sentence owns at least one frame, in order
    runs = [int(label) for i, label in enumerate(labels) if label and (i == 0 or labels[i - 1] != label)]
    assert runs == [inventory[s] for _, s in speech.phonemes if not s.startswith("_")]


def test_inventory_is_sorted_and_unknown_phonemes_are_silence():
    a = AlignedSpeech(np.zeros(1600, np.float32), ((0.0, "b"), (0.02, "a"), (0.05, "_:"), (0.07, "z")))
    inventory = phoneme_inventory([a])
    assert inventory == {"a": 1, "b": 2, "z": 3}
    assert a.frame_labels(50, inventory).tolist() == [2, 1, 1, 0, 3]
    assert a.frame_labels(50, {"a": 1}).tolist() == [0, 1, 1, 0, 0]


def test_many_keeps_the_order():
    requests = [(TEXT, ASSISTANT_VOICE, None), ("good morning", voice_by_name("f2-mid"), 170)]
    out = synthesize_many_aligned(requests)
    assert [len(o.wave) for o in out] == [len(synthesize(t, v, s)) for t, v, s in requests]


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_text_is_refused(text):
    with pytest.raises(ValueError, match="empty"):
        synthesize_aligned(text, ASSISTANT_VOICE)
