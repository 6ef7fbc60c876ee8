"""The speech stage's encoding of questions: augmentation seeded per request, clean copies from the same synthesis."""

import numpy as np

from assistant.models.embedded.speech import MelCodecConfig, MelRVQCodec
from training.pipeline import _encode_all
from training.voices import ASSISTANT_VOICE, voice_by_name

REQUESTS = [
    ("what is two plus two", ASSISTANT_VOICE, None),
    ("draw a red circle", voice_by_name("f2-mid"), 170),
    ("good morning", voice_by_name("klatt-low"), None),
    ("play a slow happy tune", voice_by_name("m5-mid"), 150),
]


def test_augmented_codes_do_not_depend_on_batching_and_clean_copies_equal_a_clean_encoding():
    codec = MelRVQCodec(MelCodecConfig(n_q=2, codebook_size=16, griffin_lim_iters=1))
    codes, clean = _encode_all(codec, REQUESTS, augment_seed=7, keep_clean=[1, 3])
    one_by_one, _ = _encode_all(codec, REQUESTS, augment_seed=7, batch=1)
    assert all(np.array_equal(a, b) for a, b in zip(codes, one_by_one, strict=True))
    plain, none_kept = _encode_all(codec, REQUESTS)
    assert none_kept == {}
    assert set(clean) == {1, 3}
    assert np.array_equal(clean[1], plain[1]) and np.array_equal(clean[3], plain[3])
    # at least one question was degraded (30% are left clean): augmentation reached the codes
    assert any(not np.array_equal(a, b) for a, b in zip(codes, plain, strict=True))
    assert all(c.dtype == np.int16 and c.shape[0] == 2 for c in codes)
