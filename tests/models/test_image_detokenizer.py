import io
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from assistant.models.checkpoint import load_checkpoint, save_checkpoint
from assistant.models.config_io import read_config
from assistant.models.embedded import EMBEDDED_DIR
from assistant.models.embedded.image import ImageCodecConfig, ImageDetokenizer
from assistant.models.interfaces import ImageCodec, fit_token_count

IMG = ImageCodecConfig(tokens_per_image=32, codebook_size=64, image_size=32, code_dim=8, channels=32)


def test_config_geometry_and_validation():
    default = ImageCodecConfig()
    assert (default.grid, default.levels, default.codes_per_level) == (4, 2, 512)
    assert default.tokens_per_image == default.grid**2 * default.levels == 32
    with pytest.raises(ValueError):
        ImageCodecConfig(tokens_per_image=30)  # 15 cells: not a square grid
    with pytest.raises(ValueError):
        ImageCodecConfig(image_size=48)
    with pytest.raises(ValueError):
        ImageCodecConfig(format_version=1)


def test_png_decodes_to_configured_size():
    model = ImageDetokenizer(IMG)
    png = model.decode_png(list(range(32)))
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (32, 32) and image.mode == "RGB"
    assert np.asarray(image).std() > 0  # not a flat image
    assert model.decode_pixels(list(range(32))).shape == (32, 32, 3)


def test_encode_gives_valid_level_ordered_codes_and_is_deterministic():
    model = ImageDetokenizer(IMG).eval()
    pixels = np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    codes = model.encode(pixels)
    assert len(codes) == 32 and codes == model.encode(pixels)
    per_level = np.array(codes).reshape(16, 2)  # cell-major, level-minor
    assert np.all((0 <= per_level[:, 0]) & (per_level[:, 0] < 32)) and np.all(per_level[:, 1] >= 32)
    assert np.all(per_level[:, 1] < 64)
    assert Image.open(io.BytesIO(model.decode_png(codes))).size == (32, 32)
    batch = np.stack([pixels[:32, :32], np.zeros((32, 32, 3), np.uint8)])
    assert model.encode_batch(batch)[0].tolist() == model.encode(pixels[:32, :32])


def test_encode_is_local_per_cell():
    model = ImageDetokenizer(IMG).eval()
    a = np.zeros((32, 32, 3), np.uint8)
    b = a.copy()
    b[:8, :8] = 255  # only cell (0, 0) changes
    ca, cb = model.encode(a), model.encode(b)
    assert ca[2:] == cb[2:] and ca[:2] != cb[:2]


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


def test_image_save_load_round_trip_and_the_image_codec_interface(tmp_path):
    model = ImageDetokenizer(IMG)
    save_checkpoint(tmp_path, "image", IMG, model)
    loaded = load_checkpoint(tmp_path, "image", ImageCodecConfig, ImageDetokenizer)
    assert loaded.decode_png(list(range(32))) == model.decode_png(list(range(32)))
    assert torch.equal(loaded.codebook, model.codebook)
    assert isinstance(loaded, ImageCodec)
    assert (loaded.tokens_per_image, loaded.codebook_size, loaded.image_size, loaded.input_size) == (32, 64, 32, 32)


def test_embedded_config_builds():
    config = read_config(EMBEDDED_DIR / "image.json", ImageCodecConfig)
    assert config.tokens_per_image == 32 and config.codebook_size == 1024 and config.image_size == 64
