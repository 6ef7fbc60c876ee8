import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from assistant.models.checkpoint import load_checkpoint, save_checkpoint, weights_path
from assistant.models.config_io import ConfigError
from assistant.models.embedded.music import MusicCodecConfig, MusicDetokenizer
from assistant.models.interfaces import MusicCodec
from assistant.modules.music_tokens import flatten_codes, realign_tokens, unflatten_tokens
from training.fit_music_codec import fit_music_codebooks

MUSIC = MusicCodecConfig(n_codebooks=4, codebook_size=16, n_fft=1024, griffin_lim_iters=4)  # hop 640


def _tone(seconds: float = 1.0, f0: float = 440.0, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.4 * np.sin(2 * np.pi * f0 * t) * np.minimum(t / 0.01, 1.0)).astype(np.float32)


# ----- flattening ----------------------------------------------------------------------------------------------
def test_flatten_is_frame_major_with_level_offsets_and_round_trips():
    codes = torch.tensor([[1, 2], [3, 4], [5, 6], [7, 8]])
    tokens = flatten_codes(codes, 16)
    assert tokens == [1, 16 + 3, 32 + 5, 48 + 7, 2, 16 + 4, 32 + 6, 48 + 8]
    assert torch.equal(unflatten_tokens(tokens, 4, 16), codes)
    random_codes = torch.randint(0, 16, (4, 25), generator=torch.Generator().manual_seed(0))
    assert torch.equal(unflatten_tokens(flatten_codes(random_codes, 16), 4, 16), random_codes)


def test_unflatten_realigns_after_a_dropped_token():
    codes = torch.randint(0, 16, (4, 5), generator=torch.Generator().manual_seed(1))
    tokens = flatten_codes(codes, 16)
    del tokens[2 * 4 + 1]  # frame 2 loses its level-1 token
    fixed, repairs = realign_tokens(tokens, 4, 16)
    assert fixed.shape == (4, 5) and repairs == 1
    keep = [0, 1, 3, 4]
    assert torch.equal(fixed[:, keep], codes[:, keep])
    assert fixed[1, 2] == codes[1, 1]  # filled from the previous frame
    assert torch.equal(fixed[[0, 2, 3], 2], codes[[0, 2, 3], 2])


def test_unflatten_repeated_level_starts_a_new_frame():
    # frame 0 complete; frame 1 stops after level 1 and level 1 repeats -> frame 1 closed, new frame from the repeat
    tokens = [1, 16 + 2, 32 + 3, 48 + 4, 5, 16 + 6, 16 + 7, 32 + 8, 48 + 9]
    fixed, repairs = realign_tokens(tokens, 4, 16)
    assert fixed.T.tolist() == [[1, 2, 3, 4], [5, 6, 3, 4], [5, 7, 8, 9]]
    assert repairs == 3
    with pytest.raises(ValueError):
        unflatten_tokens([64], 4, 16)
    assert unflatten_tokens([], 4, 16).shape == (4, 0)


# ----- codec ---------------------------------------------------------------------------------------------------
def test_music_decode_encode_shapes_and_ranges():
    model = MusicDetokenizer(MUSIC)
    assert MUSIC.hop == 640 and MUSIC.vocab_size == 64 and MusicCodecConfig().vocab_size == 1024
    codes = torch.randint(0, 16, (4, 10), generator=torch.Generator().manual_seed(0))
    wave = model.decode(flatten_codes(codes, 16))
    assert wave.dtype == np.float32 and wave.shape == (10 * 640,) and np.abs(wave).max() <= 1.0
    assert wave.std() > 0  # the unfitted codebooks still play tones
    tokens = model.encode(wave)
    assert len(tokens) == 40 and all(0 <= t < 64 for t in tokens)
    assert [t // 16 for t in tokens[:8]] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert model.encode_codes(np.zeros(641, dtype=np.float32)).shape == (4, 2)
    assert model.decode([]).shape == (0,) and model.encode(np.zeros(0, dtype=np.float32)) == []
    with pytest.raises(ValueError):
        model.decode_codes(torch.full((4, 3), 16))
    with pytest.raises(ValueError):
        model.encode(np.zeros((2, 100), dtype=np.float32))


def test_encode_is_deterministic_and_fit_lowers_the_error():
    model = MusicDetokenizer(MUSIC)
    waves = [_tone(0.5, f0) for f0 in (220.0, 330.0, 440.0, 550.0)]
    features = torch.cat([model.log_magnitude(w) for w in waves])  # [N, n_freq]
    before = (model.dequantise(model.quantise(features)) - features).pow(2).mean().sqrt()
    errors = fit_music_codebooks(model, features, iters=4, seed=0)
    after = (model.dequantise(model.quantise(features)) - features).pow(2).mean().sqrt()
    assert errors.shape == (4,) and bool((errors[1:] <= errors[:-1] + 1e-6).all())
    assert after < 0.5 * before and float(errors[-1]) == pytest.approx(float(after), rel=1e-3, abs=1e-4)
    assert model.encode(waves[2]) == model.encode(waves[2].copy())
    with pytest.raises(ValueError, match="at least 16 frames"):
        fit_music_codebooks(model, features[:8])


def test_fitted_codec_keeps_the_pitch():
    model = MusicDetokenizer(MUSIC)
    waves = [_tone(0.6, f0) for f0 in (261.63, 392.0)]
    fit_music_codebooks(model, torch.cat([model.log_magnitude(w) for w in waves]), iters=4)
    decoded = model.decode(model.encode(waves[1]))
    spectrum = np.abs(np.fft.rfft(decoded[2000:8000] * np.hanning(6000)))
    assert abs(np.argmax(spectrum) * 16000 / 6000 - 392.0) < 11.0  # within half a semitone


def test_music_save_load_round_trip_and_strict_error(tmp_path):
    model = MusicDetokenizer(MUSIC)
    save_checkpoint(tmp_path, "music", MUSIC, model)
    loaded = load_checkpoint(tmp_path, "music", MusicCodecConfig, MusicDetokenizer)
    assert isinstance(loaded, MusicCodec) and (loaded.vocab_size, loaded.sample_rate) == (64, 16000)
    tokens = flatten_codes(torch.randint(0, 16, (4, 6)), 16)
    assert np.array_equal(loaded.decode(tokens), model.decode(tokens))
    path = weights_path(tmp_path, "music")
    assert set(load_file(str(path))) == {"codebooks"}  # the window and the STFT are derived, not saved
    weights = load_file(str(path))
    weights["codebooks"] = torch.zeros(4, 16, 3)
    save_file(weights, str(path))
    with pytest.raises(ConfigError, match="codebooks"):
        load_checkpoint(tmp_path, "music", MusicCodecConfig, MusicDetokenizer)


def test_one_residual_quantiser_gives_the_codes_of_level_by_level_subtraction():
    """The music codec quantises with the shared ``residual_quantize`` (the speech codec's: later levels match the
    frame minus the sum of the codewords so far), where it once subtracted one codeword after another. The two
    differ only in float rounding; on the committed codec and the synthesized training tunes they pick the same
    codes."""
    from assistant.models.loading import ModelSpec, load_models
    from assistant.modules.quantization import nearest_codes
    from training.music import music_specs, synthesize

    codec = load_models(ModelSpec(), ("music",)).music
    for spec in music_specs(1)[::9]:
        features = codec.log_magnitude(synthesize(spec, codec.sample_rate))  # [T, n_freq]
        residual, expected = features.float(), []
        for book in codec.codebooks:
            index = nearest_codes(residual, book)[0]
            residual = residual - book[index]
            expected.append(index)
        assert torch.equal(codec.quantise(features), torch.stack(expected)), spec


def test_config_validation():
    with pytest.raises(ValueError):
        MusicCodecConfig(frame_rate=30)  # does not divide 16000
    with pytest.raises(ValueError):
        MusicCodecConfig(n_fft=512)  # shorter than the 640-sample hop
    with pytest.raises(ValueError):
        MusicCodecConfig(format_version=1)
    with pytest.raises(ValueError):
        MusicCodecConfig(log_floor=0.0)
