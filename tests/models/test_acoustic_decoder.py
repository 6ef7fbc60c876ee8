"""The embedded family's acoustic decoder is AnyGPT's ``SoundStorm`` class at a small size (``acoustic.json`` read as a
``SoundStormConfig``): its sizes, its seeded init through the embedded loader, our checkpoint format, and the
interface at the settings the embedded family uses (``sdpa``)."""

import dataclasses
import shutil

import pytest
import torch

from assistant.models.checkpoint import load_checkpoint, save_checkpoint
from assistant.models.config_io import ConfigError, read_config
from assistant.models.embedded import EMBEDDED_DIR
from assistant.models.embedded.loader import GENERATION_FILE, TOKENIZER_DIR, load_embedded
from assistant.models.interfaces import AcousticModel
from assistant.models.soundstorm import SoundStorm, SoundStormConfig

TINY = SoundStormConfig.tiny(n_q=4, sdpa=True)


def _embedded_config() -> SoundStormConfig:
    return read_config(EMBEDDED_DIR / "acoustic.json", SoundStormConfig)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_the_embedded_config_is_a_small_soundstorm():
    cfg = _embedded_config()
    expected = dict(n_q=8, codebook_size=1024, semantic_vocab=1024, dim=64, depth=2, heads=4, dim_head=16)
    expected |= dict(ff_mult=2, conv_expansion=1, conv_kernel=15, sdpa=True, format_version=1)
    assert {name: getattr(cfg, name) for name in expected} == expected
    with torch.device("meta"):  # sizes only
        model = SoundStorm(cfg)
    assert 1_100_000 <= sum(p.numel() for p in model.parameters()) <= 1_200_000


def test_logits_shape_and_mask_id():
    model = SoundStorm(TINY).eval()
    semantic = torch.randint(0, 32, (2, 11))
    acoustic = torch.full((2, 3, 11), TINY.mask_id)
    acoustic[:, 0, :4] = 5
    logits = model(semantic, acoustic)
    assert logits.shape == (2, 11, 3, 32)
    assert torch.isfinite(logits).all()
    assert TINY.mask_id == 32 and TINY.n_acoustic == 3


def test_bidirectional_attention_sees_future_frames():
    model = SoundStorm(TINY).eval()
    semantic = torch.randint(0, 32, (1, 12), generator=torch.Generator().manual_seed(1))
    acoustic = torch.full((1, 3, 12), TINY.mask_id)
    base = model(semantic, acoustic)
    changed = semantic.clone()
    changed[0, -1] = (changed[0, -1] + 1) % 32
    assert not torch.allclose(model(changed, acoustic)[0, 0], base[0, 0])


def test_seeded_init_is_deterministic_and_config_validates():
    assert _same(SoundStorm(TINY), SoundStorm(TINY))
    assert not _same(SoundStorm(TINY), SoundStorm(dataclasses.replace(TINY, seed=1)))
    with pytest.raises(ValueError, match="format_version 2"):
        dataclasses.replace(TINY, format_version=2)
    with pytest.raises(ValueError):
        SoundStormConfig(n_q=1)
    with pytest.raises(ValueError):
        SoundStorm(TINY)(torch.zeros(1, 5, dtype=torch.long), torch.zeros(1, 2, 5, dtype=torch.long))


def test_the_embedded_loader_builds_the_seeded_soundstorm_when_no_weights_exist(tmp_path):
    for name in ("acoustic.json", GENERATION_FILE):
        shutil.copy(EMBEDDED_DIR / name, tmp_path / name)
    shutil.copytree(EMBEDDED_DIR / TOKENIZER_DIR, tmp_path / TOKENIZER_DIR)
    bundle = load_embedded(tmp_path, seed=3, parts=("acoustic",))
    model = bundle.acoustic
    assert isinstance(model, SoundStorm) and bundle.weights_loaded == () and not model.training
    cfg = _embedded_config()
    assert model.config == dataclasses.replace(cfg, seed=cfg.seed + 3)  # the load seed is added to the config's
    assert _same(model, SoundStorm(dataclasses.replace(cfg, seed=cfg.seed + 3)))
    again = load_embedded(tmp_path, seed=3, parts=("acoustic",)).acoustic
    assert _same(model, again)
    other = load_embedded(tmp_path, seed=4, parts=("acoustic",)).acoustic
    assert not _same(model, other)


def test_a_saved_decoder_predicts_the_same_logits_and_is_an_acoustic_model(tmp_path):
    model = SoundStorm(TINY).eval()
    save_checkpoint(tmp_path, "acoustic", TINY, model)
    loaded = load_checkpoint(tmp_path, "acoustic", SoundStormConfig, SoundStorm)
    assert loaded.config == TINY
    semantic = torch.randint(0, 32, (1, 7))
    acoustic = torch.randint(0, 33, (1, 3, 7))
    assert torch.equal(model(semantic, acoustic), loaded(semantic, acoustic))
    assert isinstance(loaded, AcousticModel)
    assert (loaded.n_q, loaded.codebook_size, loaded.semantic_vocab, loaded.mask_id) == (4, 32, 32, 32)
    (tmp_path / "acoustic.json").write_text((tmp_path / "acoustic.json").read_text().replace('"dim": 32', '"dim": 48'))
    with pytest.raises(ConfigError, match=r"acoustic\.safetensors: key"):
        load_checkpoint(tmp_path, "acoustic", SoundStormConfig, SoundStorm)


def test_level_logits_equal_the_matching_slice_of_forward():
    model = SoundStorm(TINY).eval()
    semantic = torch.randint(0, 32, (3, 9), generator=torch.Generator().manual_seed(2))
    acoustic = torch.randint(0, 33, (3, 3, 9), generator=torch.Generator().manual_seed(3))
    full = model(semantic, acoustic)  # [B, T, Q, K]
    levels = torch.tensor([2, 0, 1])
    part = model.level_logits(semantic, acoustic, levels, start=4)  # [B, T - 4, K]
    assert part.shape == (3, 5, 32)
    for row, level in enumerate(levels.tolist()):
        assert torch.allclose(part[row], full[row, 4:, level], atol=1e-5)
    assert torch.allclose(model.level_logits(semantic, acoustic, 1), full[:, :, 1], atol=1e-5)
    with pytest.raises(ValueError):
        model.level_logits(semantic, acoustic, 3)


def test_sdpa_attention_equals_the_explicit_one():
    semantic = torch.randint(0, 32, (2, 10), generator=torch.Generator().manual_seed(4))
    acoustic = torch.randint(0, 33, (2, 3, 10), generator=torch.Generator().manual_seed(5))
    fused = SoundStorm(TINY).eval()
    explicit = SoundStorm(dataclasses.replace(TINY, sdpa=False)).eval()
    assert _same(fused, explicit)  # the same weights: sdpa changes only how attention is computed
    torch.testing.assert_close(fused(semantic, acoustic), explicit(semantic, acoustic), rtol=1e-5, atol=1e-5)
