import dataclasses
import logging

import numpy as np
import pytest
import torch

from assistant.models.embedded.speech import MelCodecConfig, MelRVQCodec
from training.espeak import phoneme_inventory
from training.fit_speech_codec import ContentFitSettings, codec_frames, fit_content_codec, fit_speech_codec
from training.voices import TRAIN_VOICES, synthesize_many, synthesize_many_aligned

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


# ----- the content level 1 ------------------------------------------------------------------------------------------

CONTENT = MelCodecConfig(n_q=3, codebook_size=64, griffin_lim_iters=2, level1_mean_norm=True, content_classes=64,
                         content_channels=32, content_layers=2, content_kernel=5)  # fmt: skip
QUICK = ContentFitSettings(max_steps=60, batch_utterances=8, lr=5e-3, warmup_steps=5, eval_every=20, patience=0,
                           augmented_copies=0, residual_frames=3000, residual_iters=2)  # fmt: skip


@pytest.fixture(scope="module")
def aligned() -> tuple[list, list]:
    train = synthesize_many_aligned([(text, voice, None) for text in SENTENCES for voice in TRAIN_VOICES[:12:2]])
    valid = synthesize_many_aligned([(text, TRAIN_VOICES[13], None) for text in SENTENCES])
    return train, valid


def test_content_codec_learns_phonemes_and_level1_codewords_are_class_means(aligned):
    train, valid = aligned
    codec, metrics = fit_content_codec(train, valid, CONTENT, seed=0, settings=QUICK)
    inventory = metrics["phonemes"]
    assert inventory == phoneme_inventory(train)
    encoder = metrics["encoder"]
    assert encoder["steps"] == 60 and [h["step"] for h in encoder["history"]] == [20, 40, 60]
    assert encoder["history"][-1]["valid_loss"] < encoder["history"][0]["valid_loss"]
    # far above the share of the most common class: the encoder tells phonemes apart in a voice it never heard
    labels = np.concatenate([u.frame_labels(50, inventory) for u in valid])
    assert encoder["valid_frame_accuracy"] > np.bincount(labels).max() / labels.size + 0.1
    # a level-1 codeword is the mean log-mel of the training frames the encoder puts in its class
    wave = torch.from_numpy(train[0].wave)
    log_mel, codes = codec.log_mel(wave), codec.encode(wave)
    frames = torch.cat([codec.log_mel(torch.from_numpy(u.wave)) for u in train])
    classes = torch.cat([codec.encode(torch.from_numpy(u.wave))[0] for u in train])
    common = int(torch.bincount(classes).argmax())
    assert torch.allclose(codec.codebooks[0][common], frames[classes == common].mean(dim=0), atol=1e-4)
    assert codes.shape == (3, log_mel.shape[0])


def test_content_fit_is_seeded_and_refuses_a_plain_config(aligned):
    train, valid = aligned
    few = dataclasses.replace(QUICK, max_steps=5, eval_every=5)
    a, _ = fit_content_codec(train[:6], valid[:2], CONTENT, seed=3, settings=few)
    b, _ = fit_content_codec(train[:6], valid[:2], CONTENT, seed=3, settings=few)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    with pytest.raises(ValueError, match="content_classes"):
        fit_content_codec(train, valid, TINY, seed=0, settings=few)
    with pytest.raises(ValueError, match="do not fit"):
        fit_content_codec(train, valid, dataclasses.replace(CONTENT, content_classes=4), seed=0, settings=few)


def test_augmented_copies_double_the_examples(aligned, caplog):
    train, valid = aligned
    settings = dataclasses.replace(QUICK, max_steps=2, eval_every=2, augmented_copies=1)
    calls = []

    def louder(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        calls.append(len(wave))
        return wave * 0.5

    with caplog.at_level(logging.INFO, logger="training.fit_speech_codec"):
        fit_content_codec(train[:4], valid[:2], CONTENT, seed=0, settings=settings, augment=louder)
    assert len(calls) == 6
    assert any("8 train / 4 valid examples" in record.getMessage() for record in caplog.records)
