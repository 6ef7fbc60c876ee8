"""Batched speech encoding and decoding: the embedded mel codec's padded ``encode_batch`` gives every utterance exactly
its own codes (so the speech deployment may batch), SpeechTokenizer's padded batch does not (so it is not padded),
and both codecs' ``decode_batch`` equals row-by-row decoding."""

import math

import pytest
import torch

from assistant.models.anygpt.speech import SpeechTokenizer, SpeechTokenizerConfig
from assistant.models.embedded.speech import MelCodecConfig, MelRVQCodec
from assistant.models.loading import ModelSpec, load_models


def _utterances() -> list[torch.Tensor]:
    """Lengths around every edge: shorter than one FFT window, one sample past a hop, whole hops, silence, loud
    and quiet, so that padding would show at the end of each."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for n, gain in ((16000 * 2, 0.3), (7777, 0.05), (321, 0.5), (16000, 0.2), (640, 0.0), (12345, 0.9)):
        t = torch.arange(n) / 16000
        tone = torch.sin(2 * math.pi * (120 + n % 200) * t) * torch.hann_window(n, periodic=False)
        out.append((gain * tone + 0.01 * gain * torch.randn(n, generator=gen)).float())
    return out


@pytest.fixture(scope="module")
def embedded_codec() -> MelRVQCodec:
    codec = load_models(ModelSpec(seed=0), ("codec",)).codec
    assert codec.config.level1_mean_norm  # the shipped codec normalises level 1 per utterance
    return codec


@pytest.mark.parametrize("mean_norm", [True, False])
def test_padded_batch_encoding_gives_every_utterance_its_own_codes(embedded_codec, mean_norm):
    codec = embedded_codec
    if not mean_norm:
        codec = MelRVQCodec(MelCodecConfig(level1_mean_norm=False))
        codec.codebooks.copy_(embedded_codec.codebooks)
    waves = _utterances()
    batch = codec.encode_batch(waves)
    for wave, codes in zip(waves, batch, strict=True):
        alone = codec.encode(wave)
        assert codes.shape == alone.shape == (codec.n_q, math.ceil(wave.numel() / 320))
        assert torch.equal(codes, alone)
    level1 = codec.encode_batch(waves, n_q=1)
    assert all(torch.equal(one, full[:1]) for one, full in zip(level1, batch, strict=True))
    # the same utterance next to a longer one and alone: the padding really happened and changed nothing
    assert torch.equal(codec.encode_batch([waves[2], waves[0]])[0], codec.encode(waves[2]))
    assert codec.encode_batch([]) == []
    with pytest.raises(ValueError):
        codec.encode_batch(waves, n_q=0)
    with pytest.raises(ValueError):
        codec.encode_batch([waves[0][None]])


def test_mel_codec_decode_batch_equals_row_by_row(embedded_codec):
    codes = torch.randint(0, 1024, (3, 8, 30), generator=torch.Generator().manual_seed(1))
    waves = embedded_codec.decode_batch(codes)
    assert waves.shape == (3, 30 * 320)
    for row, wave in zip(codes, waves, strict=True):
        torch.testing.assert_close(wave, embedded_codec.decode(row), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError):
        embedded_codec.decode_batch(codes[0])


def test_speechtokenizer_padding_would_change_codes_so_it_is_not_padded():
    torch.manual_seed(0)
    model = SpeechTokenizer(
        SpeechTokenizerConfig(n_filters=4, dimension=32, semantic_dimension=16, codebook_size=32, n_q=4)
    ).eval()
    long, short = _utterances()[0], _utterances()[3]
    padded = torch.stack([long, torch.nn.functional.pad(short, (0, long.numel() - short.numel()))])[:, None]
    batch = model.encode(padded)  # [n_q, 2, F_long]
    alone = model.encode(short)  # [n_q, F_short]
    assert torch.equal(batch[:, 0], model.encode(long))  # the longest row is untouched ...
    assert not torch.equal(batch[:, 1, : alone.shape[1]], alone)  # ... a padded one is not: reflect pads, BiLSTM
    codes = torch.randint(0, 32, (2, 4, 12), generator=torch.Generator().manual_seed(2))
    waves = model.decode_batch(codes)  # equal lengths, nothing padded: fine
    for row, wave in zip(codes, waves, strict=True):
        torch.testing.assert_close(wave, model.decode(row), rtol=1e-4, atol=1e-5)
