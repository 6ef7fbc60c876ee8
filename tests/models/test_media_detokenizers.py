import io
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from assistant.models.checkpoint_io import CheckpointError
from assistant.models.image_detokenizer import ImageCodecConfig, ImageDetokenizer, fit_token_count
from assistant.models.music_detokenizer import (
    MusicCodecConfig,
    MusicDetokenizer,
    flatten_codes,
    realign_tokens,
    unflatten_tokens,
)

IMG = ImageCodecConfig(tokens_per_image=32, codebook_size=64, image_size=32, code_dim=8, channels=32)
MUSIC = MusicCodecConfig(n_codebooks=4, codebook_size=16, dim=16, channels=8)


# ----- image ---------------------------------------------------------------------------------------------------
def test_png_decodes_to_configured_size():
    model = ImageDetokenizer(IMG)
    png = model.decode_png(list(range(32)))
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (32, 32) and image.mode == "RGB"
    assert np.asarray(image).std() > 0  # not a flat image


def test_image_encode_gives_valid_codes():
    model = ImageDetokenizer(IMG)
    pixels = np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    codes = model.encode(pixels)
    assert len(codes) == 32 and all(0 <= c < 64 for c in codes)
    assert Image.open(io.BytesIO(model.decode_png(codes))).size == (32, 32)


def test_image_token_count_policy(caplog):
    model = ImageDetokenizer(IMG)
    with pytest.raises(ValueError, match="no tokens"):
        model.decode_png([], strict=False)
    with pytest.raises(ValueError, match="31 tokens, expected exactly 32"):
        model.decode_png([1] * 31)
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        model.decode_png([64] * 32)
    with caplog.at_level(logging.WARNING):
        padded, adjusted = fit_token_count([1, 2, 3], 5, strict=False)
    assert padded == [1, 2, 3, 3, 3] and adjusted and "padded" in caplog.text
    assert fit_token_count(list(range(7)), 5, strict=False) == ([0, 1, 2, 3, 4], True)
    assert fit_token_count([4] * 5, 5) == ([4] * 5, False)
    assert model.decode_png([5] * 40, strict=False)[:4] == b"\x89PNG"


def test_image_save_load_round_trip_and_strict_error(tmp_path):
    model = ImageDetokenizer(IMG)
    model.save(tmp_path / "img")
    loaded = ImageDetokenizer.load(tmp_path / "img")
    assert loaded.decode_png(list(range(32))) == model.decode_png(list(range(32)))
    weights = load_file(str(tmp_path / "img" / "model.safetensors"))
    weights["extra.weight"] = torch.zeros(1)
    save_file(weights, str(tmp_path / "img" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="extra.weight"):
        ImageDetokenizer.load(tmp_path / "img")


# ----- music ---------------------------------------------------------------------------------------------------
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


def test_music_decode_encode_shapes():
    model = MusicDetokenizer(MUSIC)
    codes = torch.randint(0, 16, (4, 10), generator=torch.Generator().manual_seed(0))
    wave = model.decode(flatten_codes(codes, 16))
    assert wave.dtype == np.float32 and wave.shape == (10 * 320,) and np.abs(wave).max() <= 1.0
    assert np.abs(wave).std() > 0
    tokens = model.encode(wave)
    assert len(tokens) == 40 and all(0 <= t < 64 for t in tokens)
    assert model.encode_codes(np.zeros(321, dtype=np.float32)).shape == (4, 2)


def test_music_save_load_round_trip_and_strict_error(tmp_path):
    model = MusicDetokenizer(MUSIC)
    model.save(tmp_path / "mus")
    loaded = MusicDetokenizer.load(tmp_path / "mus")
    tokens = flatten_codes(torch.randint(0, 16, (4, 6)), 16)
    assert np.array_equal(loaded.decode(tokens), model.decode(tokens))
    weights = load_file(str(tmp_path / "mus" / "model.safetensors"))
    weights["code_embed"] = torch.zeros(4, 16, 3)
    save_file(weights, str(tmp_path / "mus" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="code_embed"):
        MusicDetokenizer.load(tmp_path / "mus")
    with pytest.raises(ValueError):
        MusicCodecConfig(strides=(4, 4, 4, 4))
