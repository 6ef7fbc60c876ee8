import json
import math

import pytest
import torch

from assistant.models.checkpoint_io import CheckpointError
from assistant.models.speech_codec import MelCodecConfig, MelRVQCodec, SpeechCodec, htk_mel_filterbank

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
    errors = codec.fit_codebooks(frames, iters=5)
    after = (codec.dequantise(codec.quantise(frames)) - frames).pow(2).mean()
    assert after < before and errors.shape == (2,)


def test_save_load_round_trip_and_strict_failure(tmp_path):
    codec = MelRVQCodec(TINY)
    codec.codebooks.add_(1.0)
    codec.save(tmp_path / "c")
    loaded = MelRVQCodec.load(tmp_path / "c")
    assert loaded.config == TINY and torch.equal(loaded.codebooks, codec.codebooks)
    wave = _voiced(0.3)
    assert torch.equal(loaded.encode(wave), codec.encode(wave))

    # a checkpoint whose config says more levels than its tensor holds -> error naming the key
    cfg_path = tmp_path / "c" / "config.json"
    payload = json.loads(cfg_path.read_text())
    payload["config"]["n_q"] = 5
    cfg_path.write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match="codebooks"):
        MelRVQCodec.load(tmp_path / "c")
    payload["config"]["bogus"] = 1
    cfg_path.write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match="bogus"):
        MelRVQCodec.load(tmp_path / "c")
