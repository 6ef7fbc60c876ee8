"""Seeded random initialisations draw on the CPU, whatever torch's default device: a model built under
``with torch.device("cuda")`` gets the same weights as on the CPU (a CPU generator cannot fill CUDA tensors, which
once broke SoundStorm on a GPU). The meta device stands in for CUDA here: as there, a tensor made without an
explicit device would not be a CPU tensor."""

import dataclasses

import pytest
import torch

from assistant.models.config_io import read_config
from assistant.models.embedded import EMBEDDED_DIR
from assistant.models.embedded.image import ImageCodecConfig, ImageDetokenizer
from assistant.models.embedded.music import MusicCodecConfig, MusicDetokenizer
from assistant.models.embedded.speech import MelCodecConfig, MelRVQCodec
from assistant.models.soundstorm import SoundStorm, SoundStormConfig


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].device.type == "cpu" and torch.equal(a[key], b[key]), key


def test_soundstorm_init_does_not_depend_on_the_default_device():
    model = SoundStorm(SoundStormConfig.tiny(seed=7))
    reference = _state(model)
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
    with torch.device("meta"):
        model.reset_parameters()  # draws must not follow the default device
    _assert_same(reference, _state(model))
    with torch.device("cpu"):
        _assert_same(reference, _state(SoundStorm(SoundStormConfig.tiny(seed=7))))
    other = _state(SoundStorm(SoundStormConfig.tiny(seed=8)))
    assert not torch.equal(reference["net.heads.0.weight"], other["net.heads.0.weight"])  # the seed does matter


def test_a_meta_build_skips_the_init_and_keeps_the_layout():
    with torch.device("meta"):
        model = SoundStorm(SoundStormConfig.tiny())
    assert all(p.is_meta for p in model.parameters())
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in SoundStorm(SoundStormConfig.tiny()).state_dict().items()
    }


@pytest.mark.parametrize(
    "name, config_cls, model_cls, init",
    [
        ("acoustic", SoundStormConfig, SoundStorm, "reset_parameters"),
        ("image", ImageCodecConfig, ImageDetokenizer, "_init_weights"),
    ],
)
def test_embedded_weight_inits_do_not_depend_on_the_default_device(name, config_cls, model_cls, init):
    config = read_config(EMBEDDED_DIR / f"{name}.json", config_cls)
    model = model_cls(config)
    reference = _state(model)
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
    with torch.device("meta"):
        getattr(model, init)()
    _assert_same(reference, _state(model))
    changed = model_cls(dataclasses.replace(config, seed=config.seed + 1))
    assert any(not torch.equal(reference[k], v) for k, v in _state(changed).items())


@pytest.mark.parametrize(
    "name, config_cls, model_cls",
    [
        ("music", MusicCodecConfig, MusicDetokenizer),
        ("codec", MelCodecConfig, MelRVQCodec),
    ],
)
def test_embedded_codebooks_follow_the_default_device_with_the_same_values(name, config_cls, model_cls):
    model = model_cls(read_config(EMBEDDED_DIR / f"{name}.json", config_cls))
    reference = model._random_codebooks()
    assert reference.device.type == "cpu"
    with torch.device("meta"):
        moved = model._random_codebooks()  # drawn on the CPU, then placed where the module is being built
    assert moved.is_meta and moved.shape == reference.shape
    assert torch.equal(reference, model._random_codebooks())  # seeded: the same draw every time
