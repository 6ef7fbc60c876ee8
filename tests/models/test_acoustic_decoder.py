import pytest
import torch

from assistant.models.checkpoint import load_checkpoint, save_checkpoint
from assistant.models.embedded.acoustic import AcousticDecoder, AcousticDecoderConfig
from assistant.models.interfaces import AcousticModel

TINY = AcousticDecoderConfig(n_q=4, codebook_size=32, dim=32, depth=2, heads=2, dim_head=16, conv_kernel=5)


def test_logits_shape_and_mask_id():
    model = AcousticDecoder(TINY).eval()
    semantic = torch.randint(0, 32, (2, 11))
    acoustic = torch.full((2, 3, 11), TINY.mask_id)
    acoustic[:, 0, :4] = 5
    logits = model(semantic, acoustic)
    assert logits.shape == (2, 11, 3, 32)
    assert torch.isfinite(logits).all()
    assert TINY.mask_id == 32 and TINY.n_acoustic == 3


def test_bidirectional_attention_sees_future_frames():
    model = AcousticDecoder(TINY).eval()
    semantic = torch.randint(0, 32, (1, 12), generator=torch.Generator().manual_seed(1))
    acoustic = torch.full((1, 3, 12), TINY.mask_id)
    base = model(semantic, acoustic)
    changed = semantic.clone()
    changed[0, -1] = (changed[0, -1] + 1) % 32
    assert not torch.allclose(model(changed, acoustic)[0, 0], base[0, 0])


def test_seeded_init_is_deterministic_and_config_validates():
    a, b = AcousticDecoder(TINY), AcousticDecoder(TINY)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    with pytest.raises(ValueError):
        AcousticDecoderConfig(conv_kernel=4)
    with pytest.raises(ValueError):
        AcousticDecoderConfig(n_q=1)
    with pytest.raises(ValueError):
        AcousticDecoder(TINY)(torch.zeros(1, 5, dtype=torch.long), torch.zeros(1, 2, 5, dtype=torch.long))


def test_a_saved_decoder_predicts_the_same_logits_and_is_an_acoustic_model(tmp_path):
    model = AcousticDecoder(TINY).eval()
    save_checkpoint(tmp_path, "acoustic", TINY, model)
    loaded = load_checkpoint(tmp_path, "acoustic", AcousticDecoderConfig, AcousticDecoder)
    semantic = torch.randint(0, 32, (1, 7))
    acoustic = torch.randint(0, 33, (1, 3, 7))
    assert torch.equal(model(semantic, acoustic), loaded(semantic, acoustic))
    assert isinstance(loaded, AcousticModel)
    assert (loaded.n_q, loaded.codebook_size, loaded.semantic_vocab, loaded.mask_id) == (4, 32, 32, 32)


def test_level_logits_equal_the_matching_slice_of_forward():
    model = AcousticDecoder(TINY).eval()
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
