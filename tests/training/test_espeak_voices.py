import numpy as np
import pytest

from training.specs import Voice
from training.voices import (
    ASSISTANT_VOICE,
    HELDOUT_VOICES,
    TRAIN_VOICES,
    installed_variants,
    synthesize,
    synthesize_many,
    variant_of,
    voice_by_name,
)

FEMALE_VARIANTS = {"f1", "f2", "f3", "f4", "f5", "linda", "anika", "belinda", "aunty", "steph", "Annie", "Alicia"}


def test_catalogue_sizes_names_and_split_by_variant():
    assert len(TRAIN_VOICES) >= 24 and len(HELDOUT_VOICES) >= 6
    names = [v.name for v in (*TRAIN_VOICES, *HELDOUT_VOICES)]
    assert len(names) == len(set(names))
    train_variants = {variant_of(v) for v in TRAIN_VOICES}
    heldout_variants = {variant_of(v) for v in HELDOUT_VOICES}
    assert not train_variants & heldout_variants
    for split in (train_variants, heldout_variants):
        assert split & FEMALE_VARIANTS and split - FEMALE_VARIANTS  # both genders in both splits
    assert (train_variants | heldout_variants) <= installed_variants()
    assert ASSISTANT_VOICE in TRAIN_VOICES
    assert voice_by_name(ASSISTANT_VOICE.name) is ASSISTANT_VOICE
    with pytest.raises(KeyError, match="nobody"):
        voice_by_name("nobody")


def test_synthesize_gives_16k_float32_of_plausible_length():
    wave = synthesize("what is six plus three", ASSISTANT_VOICE)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert 0.8 < wave.shape[0] / 16000 < 4.0
    assert 0.05 < float(np.abs(wave).max()) <= 1.0
    text = "six plus three is nine"
    slow, fast = synthesize_many([(text, ASSISTANT_VOICE, 120), (text, ASSISTANT_VOICE, 240)])
    assert slow.shape[0] > 1.5 * fast.shape[0]
    # deterministic
    assert np.array_equal(wave, synthesize("what is six plus three", ASSISTANT_VOICE))


def test_synthesize_rejects_empty_text_and_unknown_variants():
    with pytest.raises(ValueError, match="empty"):
        synthesize("   ", ASSISTANT_VOICE)
    with pytest.raises(ValueError, match="nosuchvariant"):
        synthesize("hello", Voice("x", "en-us+nosuchvariant"))
    with pytest.raises(ValueError, match="speed"):
        synthesize("hello", ASSISTANT_VOICE, speed=20)
