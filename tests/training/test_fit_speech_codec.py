import logging

import numpy as np
import pytest
import torch

from assistant.models.embedded.speech import MelCodecConfig, MelRVQCodec
from training.fit_speech_codec import codec_frames, fit_speech_codec
from training.voices import TRAIN_VOICES, synthesize_many

TINY = MelCodecConfig(n_q=3, codebook_size=32, griffin_lim_iters=2, level1_mean_norm=True)
SENTENCES = ("what is six plus three", "six plus three is nine", "i see a big red circle", "draw a small blue star")


@pytest.fixture(scope="module")
def waves() -> list[np.ndarray]:
    requests = [(text, voice, None) for text in SENTENCES for voice in TRAIN_VOICES[::7]]
    return synthesize_many(requests)


def _rmse(codec: MelRVQCodec, waves: list[np.ndarray]) -> float:
    frames, _ = codec_frames(codec, waves)
    quantised = torch.cat([codec.dequantise(codec.encode(torch.from_numpy(w))) for w in waves])
    return float((quantised - frames).pow(2).mean().sqrt())


def test_fit_reduces_reconstruction_error_vs_random_codebooks(waves, caplog):
    with caplog.at_level(logging.INFO, logger="training.fit_speech_codec"):
        codec = fit_speech_codec(waves, TINY, seed=0, max_frames=2000, iters=4)
    assert codec.config == TINY
    assert _rmse(codec, waves) < 0.5 * _rmse(MelRVQCodec(TINY), waves)
    assert any("level 3/3" in record.getMessage() for record in caplog.records)


def test_fit_is_seeded_and_level1_sees_normalised_frames(waves):
    a = fit_speech_codec(waves, TINY, seed=1, max_frames=1500, iters=2)
    b = fit_speech_codec(waves, TINY, seed=1, max_frames=1500, iters=2)
    assert torch.equal(a.codebooks, b.codebooks)
    frames, level1 = codec_frames(a, waves)

    def level1_error(vectors: torch.Tensor) -> float:
        distances = torch.cdist(vectors, a.codebooks[0])  # [N, K]
        return float(distances.min(dim=1).values.pow(2).mean())

    # level 1 is fitted on the normalised frames, not on the raw (strongly negative) log-mel
    assert level1_error(level1) < 0.25 * level1_error(frames)


def test_fit_rejects_too_few_frames(waves):
    with pytest.raises(ValueError, match="max_frames"):
        fit_speech_codec(waves, TINY, seed=0, max_frames=10)
