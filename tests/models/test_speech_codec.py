import json
import math

import pytest
import torch

from assistant.models.checkpoint import load_checkpoint, save_checkpoint
from assistant.models.config_io import ConfigError
from assistant.models.embedded.speech import MelCodecConfig, MelRVQCodec
from assistant.models.interfaces import SpeechCodec
from assistant.modules.spectral import htk_mel_filterbank
from training.fit_speech_codec import fit_speech_codebooks

TINY = MelCodecConfig(n_q=4, codebook_size=64, griffin_lim_iters=16)


def _voiced(seconds: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(int(16000 * seconds)) / 16000
    wave = sum(0.2 / k * torch.sin(2 * math.pi * 140 * k * t) for k in range(1, 8))
    wave = wave * (0.6 + 0.4 * torch.sin(2 * math.pi * 2.5 * t))
    return (wave + 0.005 * torch.randn(t.shape, generator=gen)).float()


def test_default_config_rates_and_validation():
    cfg = MelCodecConfig()
    assert (cfg.sample_rate, cfg.hop, cfg.frame_rate, cfg.n_q, cfg.codebook_size) == (16000, 320, 50, 8, 1024)
    with pytest.raises(ValueError):
        MelCodecConfig(hop=300)
    with pytest.raises(ValueError):
        MelCodecConfig(n_mels=1000)


def test_one_second_gives_50_frames_of_8_levels():
    codec = MelRVQCodec(MelCodecConfig(griffin_lim_iters=4))
    assert isinstance(codec, SpeechCodec)
    codes = codec.encode(_voiced(1.0))
    assert codes.shape == (8, 50) and codes.dtype == torch.long
    assert int(codes.max()) < 1024 and int(codes.min()) >= 0
    assert codec.encode(torch.zeros(16001)).shape == (8, 51)  # ceil(T / hop)
    wave = codec.decode(codes)
    assert wave.shape == (50 * 320,)
    assert wave.pow(2).mean().sqrt() > 1e-3  # untrained random codebooks decode to audible sound


def test_mel_filterbank_is_htk_triangles_with_unit_area_in_hz():
    fb = htk_mel_filterbank(16000, 1024, 40, 0.0, 8000.0)
    assert fb.shape == (40, 513) and bool((fb >= 0).all())
    # area-normalised: integral over Hz of each triangle is ~1
    area = fb.sum(dim=1) * (8000.0 / 512)
    assert torch.allclose(area[5:], torch.ones(35, dtype=fb.dtype), atol=0.1)


def test_rvq_matches_brute_force_nearest_code():
    codec = MelRVQCodec(TINY)
    log_mel = codec.log_mel(_voiced(0.4))
    codes = codec.quantise(log_mel)
    residual = log_mel.clone()
    for level in range(TINY.n_q):
        for frame in range(log_mel.shape[0]):
            dists = [float(((residual[frame] - c) ** 2).sum()) for c in codec.codebooks[level]]
            assert int(codes[level, frame]) == min(range(len(dists)), key=dists.__getitem__)
        residual = residual - codec.codebooks[level][codes[level]]


def test_exact_codeword_round_trip():
    codec = MelRVQCodec(TINY)
    wanted = torch.tensor([[3, 7, 11], [1, 2, 60], [5, 5, 5], [0, 63, 9]])
    # build the vectors the codes describe; re-quantising them must give the same codes back
    codec.codebooks[1:] *= 0.05  # make deeper levels unambiguous refinements
    vectors = codec.dequantise(wanted)
    assert torch.equal(codec.quantise(vectors), wanted)


def test_chunk_with_left_context_matches_whole_decode():
    codec = MelRVQCodec(TINY)
    codes = codec.encode(_voiced(1.2))
    whole = codec.decode(codes)
    start, end, ctx = 30, 45, 8
    chunk = codec.decode(codes[:, start - ctx : end])[ctx * 320 :]
    assert chunk.shape == ((end - start) * 320,)
    region = whole[start * 320 : end * 320]
    mel_err = (codec.log_mel(chunk)[1:-1] - codec.log_mel(region)[1:-1]).abs().mean()
    assert mel_err < 0.15  # same spectral content (phases may differ: Griffin-Lim)
    rms_ratio = chunk.pow(2).mean().sqrt() / region.pow(2).mean().sqrt()
    assert 0.8 < rms_ratio < 1.25


def test_fit_codebooks_reduces_error():
    codec = MelRVQCodec(MelCodecConfig(n_q=2, codebook_size=16, griffin_lim_iters=2))
    frames = torch.cat([codec.log_mel(_voiced(0.5, seed=s) * (0.5 + s / 4)) for s in range(4)])
    before = (codec.dequantise(codec.quantise(frames)) - frames).pow(2).mean()
    errors = fit_speech_codebooks(codec, frames, iters=5)
    after = (codec.dequantise(codec.quantise(frames)) - frames).pow(2).mean()
    assert after < before and errors.shape == (2,)


def _load(directory) -> MelRVQCodec:
    return load_checkpoint(directory, "codec", MelCodecConfig, MelRVQCodec)


def test_save_load_round_trip_and_strict_failure(tmp_path):
    codec = MelRVQCodec(TINY)
    codec.codebooks.add_(1.0)
    save_checkpoint(tmp_path, "codec", TINY, codec)
    loaded = _load(tmp_path)
    assert loaded.config == TINY and torch.equal(loaded.codebooks, codec.codebooks)
    wave = _voiced(0.3)
    assert torch.equal(loaded.encode(wave), codec.encode(wave))

    # a checkpoint whose config says more levels than its tensor holds -> error naming the key
    cfg_path = tmp_path / "codec.json"
    payload = json.loads(cfg_path.read_text())
    payload["n_q"] = 5
    cfg_path.write_text(json.dumps(payload))
    with pytest.raises(ConfigError, match="codebooks"):
        _load(tmp_path)
    payload["bogus"] = 1
    cfg_path.write_text(json.dumps(payload))
    with pytest.raises(ConfigError, match="bogus"):
        _load(tmp_path)


MEAN_NORM = MelCodecConfig(n_q=3, codebook_size=32, griffin_lim_iters=4, level1_mean_norm=True)


def _utterance(seed: int, pitch: float = 140.0) -> torch.Tensor:
    """Three broadband voiced bursts (harmonics up to 7 kHz) separated by digital silence, like espeak output."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(int(16000 * 0.25)) / 16000
    parts = []
    for k in range(3):
        f0 = pitch * (1.0 + 0.15 * k)
        harmonics = range(1, int(7000 / f0))
        phases = torch.rand(len(harmonics), generator=gen) * 6.0
        burst = sum(0.3 / h**0.5 * torch.sin(2 * math.pi * f0 * h * t + phases[i]) for i, h in enumerate(harmonics))
        burst = burst + 0.01 * torch.randn(t.shape, generator=gen)
        parts += [torch.zeros(1600), burst / burst.abs().max() * 0.7 * torch.hann_window(t.shape[0], periodic=False)]
    return torch.cat(parts + [torch.zeros(1600)]).float()


def _fitted_mean_norm_codec() -> MelRVQCodec:
    codec = MelRVQCodec(MEAN_NORM)
    mels = [codec.log_mel(_utterance(s, pitch=110 + 20 * s) * (0.3 + 0.2 * s)) for s in range(5)]
    fit_speech_codebooks(
        codec, torch.cat(mels), iters=4, level1_frames=torch.cat([codec.level1_input(m) for m in mels])
    )
    return codec


def test_mean_norm_level1_input_is_gain_invariant_and_zero_mean_on_speech():
    codec = MelRVQCodec(MEAN_NORM)
    wave = _utterance(0)
    loud, quiet = codec.level1_input(codec.log_mel(wave)), codec.level1_input(codec.log_mel(wave * 0.2))
    assert (loud - quiet).abs().max() < 1e-3
    plain = codec.log_mel(wave)
    assert (plain - codec.log_mel(wave * 0.2)).abs().max() > 1.0  # the raw log-mel does move with gain
    voiced = plain.mean(1) > plain.mean(1).max() - 2.0
    assert loud[voiced].mean(0).abs().max() < 2.0  # roughly centred (floored bins shift the mean a little)


def test_mean_norm_level1_codes_ignore_gain_and_round_trip_shapes():
    codec = _fitted_mean_norm_codec()
    wave = _utterance(7, pitch=130)
    codes, scaled = codec.encode(wave), codec.encode(wave * 3.0)
    assert codes.shape == (3, math.ceil(wave.shape[0] / 320))
    assert (codes[0] == scaled[0]).float().mean() > 0.95  # level 1: the same content at any loudness
    assert (codes[1:] != scaled[1:]).any()  # the residual levels carry the loudness
    assert codec.decode(codes).shape == (codes.shape[1] * 320,)
    # reconstruction is the sum of codewords and tracks the real (un-normalised) log-mel, loudness included
    for w in (wave, wave * 3.0):
        err = (codec.dequantise(codec.encode(w)) - codec.log_mel(w)).pow(2).mean().sqrt()
        assert err < 1.5


def test_mean_norm_fit_beats_random_codebooks_and_requires_level1_frames():
    codec = MelRVQCodec(MEAN_NORM)
    waves = [_utterance(s, pitch=110 + 20 * s) * (0.3 + 0.2 * s) for s in range(5)]
    frames = torch.cat([codec.log_mel(w) for w in waves])
    before = torch.cat([codec.dequantise(codec.encode(w)) for w in waves]) - frames
    with pytest.raises(ValueError, match="level1_frames"):
        fit_speech_codebooks(codec, frames, iters=2)
    lines = []
    level1 = torch.cat([codec.level1_input(codec.log_mel(w)) for w in waves])
    errors = fit_speech_codebooks(codec, frames, iters=4, level1_frames=level1, progress=lines.append)
    after = torch.cat([codec.dequantise(codec.encode(w)) for w in waves]) - frames
    assert after.pow(2).mean() < 0.5 * before.pow(2).mean()
    assert errors.shape == (3,) and bool((errors[1:] <= errors[:-1] + 1e-6).all())  # each level helps
    assert len(lines) == 3 and "level 1/3" in lines[0]


def test_mean_norm_save_load_keeps_setting_and_codes(tmp_path):
    codec = _fitted_mean_norm_codec()
    save_checkpoint(tmp_path, "codec", MEAN_NORM, codec)
    loaded = _load(tmp_path)
    assert loaded.config.level1_mean_norm and loaded.config == MEAN_NORM
    wave = _utterance(3)
    assert torch.equal(loaded.encode(wave), codec.encode(wave))
    with pytest.raises(ValueError):
        MelCodecConfig(level1_mean_norm=True, silence_margin=0.0)


# ----- the content level 1 ------------------------------------------------------------------------------------------

CONTENT = MelCodecConfig(n_q=3, codebook_size=64, griffin_lim_iters=2, level1_mean_norm=True, content_classes=12,
                         content_channels=16, content_layers=2, content_kernel=3)  # fmt: skip


def test_content_config_validation():
    with pytest.raises(ValueError, match="level1_mean_norm"):
        MelCodecConfig(content_classes=10)
    with pytest.raises(ValueError, match="content_classes"):
        MelCodecConfig(codebook_size=8, level1_mean_norm=True, content_classes=9)
    with pytest.raises(ValueError, match="odd content_kernel"):
        MelCodecConfig(level1_mean_norm=True, content_classes=8, content_kernel=4)
    assert MelRVQCodec(TINY).content_encoder is None


def test_level1_is_the_encoder_class_and_deeper_levels_quantise_the_rest():
    codec = MelRVQCodec(CONTENT).eval()
    wave = _voiced(0.7)
    codes = codec.encode(wave)
    log_mel = codec.log_mel(wave)
    classes = codec.content_encoder(codec.level1_input(log_mel)[None])[0].argmax(-1)
    assert torch.equal(codes[0], classes) and int(codes[0].max()) < CONTENT.content_classes
    residual = log_mel - codec.codebooks[0][codes[0]]
    assert torch.equal(codes[1], torch.cdist(residual, codec.codebooks[1]).argmin(dim=1))
    assert codec.encode(torch.zeros(0)).shape == (3, 0)


def test_content_encoder_scores_a_padded_batch_as_each_utterance_alone():
    codec = MelRVQCodec(CONTENT).eval()
    encoder = codec.content_encoder
    assert encoder is not None
    short, long = torch.randn(7, 80), torch.randn(12, 80)
    batch = torch.zeros(2, 12, 80)
    batch[0, :7], batch[1] = short, long
    with torch.no_grad():
        together = encoder(batch, torch.tensor([7, 12]))
        assert torch.allclose(together[0, :7], encoder(short[None])[0], atol=1e-5)
        assert torch.allclose(together[1], encoder(long[None])[0], atol=1e-5)
    waves = [_voiced(0.5, seed=1), _voiced(0.9, seed=2)]
    assert all(torch.equal(a, codec.encode(w)) for a, w in zip(codec.encode_batch(waves), waves, strict=True))


def test_content_codec_round_trips_through_a_checkpoint(tmp_path):
    codec = MelRVQCodec(CONTENT)
    with torch.no_grad():
        codec.codebooks.normal_()
    save_checkpoint(tmp_path, "codec", CONTENT, codec)
    loaded = load_checkpoint(tmp_path, "codec", MelCodecConfig, MelRVQCodec)
    assert any(key.startswith("content_encoder.") for key in loaded.state_dict())
    wave = _voiced(0.5)
    assert torch.equal(loaded.encode(wave), codec.encode(wave))
