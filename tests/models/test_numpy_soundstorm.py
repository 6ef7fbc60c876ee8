"""The acoustic network's NumPy forward (``assistant.models.numpy_soundstorm``) computes SoundStorm's logits: against
the torch model on tiny configs (both attention paths, batches, every level), through the MaskGIT fill (same codes),
on the embedded default's trained weights, and it reads the weights as views, so a model changed in place stays in
step. Models it cannot run keep their torch forward."""

import pytest
import torch
from soundstorm_fixtures import soundstorm_inputs as _inputs
from soundstorm_fixtures import tiny_soundstorm as _tiny

from assistant.decoding.maskgit import ChunkedAcousticDecoder, fill_acoustic_levels
from assistant.models.loading import ModelSpec, load_models
from assistant.models.numpy_soundstorm import NumpySoundStorm, numpy_network, supports_numpy_network


@pytest.fixture(scope="module")
def embedded_bundle():
    return load_models(ModelSpec(seed=0), ("acoustic", "codec"))


@pytest.mark.parametrize("sdpa", [False, True])
@pytest.mark.parametrize("conv_kernel", [5, 6])  # odd and even kernels pad differently
def test_the_numpy_logits_are_the_torch_logits(sdpa, conv_kernel):
    model = _tiny(seed=3, sdpa=sdpa, conv_kernel=conv_kernel)
    fast = numpy_network(model)
    assert isinstance(fast, NumpySoundStorm)
    semantic, acoustic = _inputs(model.config, batch=3, length=23, seed=4)
    with torch.no_grad():
        for level, start in [(0, 0), (model.config.n_acoustic - 1, 7), (torch.tensor([2, 0, 5]), 20)]:
            want = model.level_logits(semantic, acoustic, level, start)
            got = fast.level_logits(semantic, acoustic, level, start)
            assert got.shape == want.shape and got.dtype == torch.float32
            torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(fast(semantic, acoustic), model(semantic, acoustic))  # forward is the model's
    with pytest.raises(ValueError):
        fast.level_logits(semantic, acoustic, model.config.n_acoustic)


def test_the_fill_picks_the_same_codes_with_either_forward():
    model = _tiny(seed=5)
    fast = numpy_network(model)
    cfg = model.config
    gen = torch.Generator().manual_seed(6)
    prompt = torch.randint(0, cfg.codebook_size, (cfg.n_q, 12), generator=gen)
    for seed in range(4):
        semantic = torch.randint(0, cfg.semantic_vocab, (10,), generator=gen)
        want = fill_acoustic_levels(model, semantic, prompt=prompt, generator=torch.Generator().manual_seed(seed))
        got = fill_acoustic_levels(fast, semantic, prompt=prompt, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(got, want)


def test_the_embedded_default_decodes_the_same_chunks_with_either_forward(embedded_bundle):
    model, codec = embedded_bundle.acoustic, embedded_bundle.codec
    assert supports_numpy_network(model)
    torch_decoder = ChunkedAcousticDecoder(model, codec)
    numpy_decoder = ChunkedAcousticDecoder(numpy_network(model), codec)
    gen = torch.Generator().manual_seed(7)
    prompt = torch.randint(0, model.codebook_size, (model.n_q, 40), generator=gen)
    semantic = torch.randint(0, 60, (30,), generator=gen)
    want_codes, want_wave = torch_decoder.decode_utterance(semantic, prompt, 10, torch.Generator().manual_seed(1))
    got_codes, got_wave = numpy_decoder.decode_utterance(semantic, prompt, 10, torch.Generator().manual_seed(1))
    assert torch.equal(got_codes, want_codes)
    torch.testing.assert_close(got_wave, want_wave)


def test_the_weights_are_read_in_place():
    model = _tiny(seed=8)
    fast = numpy_network(model)
    semantic, acoustic = _inputs(model.config, batch=1, length=9, seed=9)
    before = fast.level_logits(semantic, acoustic, 1).clone()
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(1.5)
        want = model.level_logits(semantic, acoustic, 1)
    got = fast.level_logits(semantic, acoustic, 1)
    assert not torch.allclose(got, before)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_models_it_cannot_run_keep_their_torch_forward():
    half = _tiny().to(torch.bfloat16)
    assert not supports_numpy_network(half) and numpy_network(half) is half
    other_eps = _tiny()
    other_eps.net.conformer.layers[0].post_norm.eps = 1e-6
    assert not supports_numpy_network(other_eps)
    assert not supports_numpy_network(object())
