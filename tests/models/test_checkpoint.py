"""Our one checkpoint format (``<name>.json`` + ``<name>.safetensors``) and the one config reader: every model of ours
saves and loads through them, strictly; every loader's state-dict check names the file, the key and both shapes, and
nothing half-loads."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from assistant.models.checkpoint import (
    load_checkpoint,
    load_state_dict_strict,
    read_torch_state_dict,
    save_checkpoint,
    weights_path,
)
from assistant.models.config_io import ConfigError, config_from_dict, read_config, read_json_object
from assistant.models.embedded.image import ImageCodecConfig, ImageDetokenizer
from assistant.models.embedded.lm import LMConfig, build_lm
from assistant.models.embedded.music import MusicCodecConfig, MusicDetokenizer
from assistant.models.embedded.speech import MelCodecConfig, MelRVQCodec
from assistant.models.soundstorm import SoundStorm, SoundStormConfig

TINY = {
    "codec": (MelCodecConfig(n_q=4, codebook_size=64, griffin_lim_iters=2), MelRVQCodec),
    "acoustic": (SoundStormConfig.tiny(n_q=4, sdpa=True), SoundStorm),
    "image": (ImageCodecConfig(codebook_size=64, image_size=32, code_dim=8, channels=32), ImageDetokenizer),
    "music": (MusicCodecConfig(codebook_size=16, griffin_lim_iters=2), MusicDetokenizer),
    "lm": (
        LMConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_heads=4, num_kv_heads=2, max_positions=64),
        build_lm,
    ),
}


def _perturbed(module: nn.Module) -> nn.Module:
    """Weights that differ from any fresh build, so a round trip that silently re-initialised would show."""
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.25)
    return module


@pytest.mark.parametrize("name", list(TINY))
def test_every_model_of_ours_round_trips_through_the_one_format(tmp_path, name):
    config, build = TINY[name]
    model = _perturbed(build(config))
    save_checkpoint(tmp_path, name, config, model)
    assert json.loads((tmp_path / f"{name}.json").read_text())["format_version"] == config.format_version
    loaded = load_checkpoint(tmp_path, name, type(config), build)
    assert not loaded.training
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_a_config_that_disagrees_with_its_weights_names_the_key(tmp_path):
    config, build = TINY["codec"]
    save_checkpoint(tmp_path, "codec", config, build(config))
    data = json.loads((tmp_path / "codec.json").read_text())
    (tmp_path / "codec.json").write_text(json.dumps({**data, "n_q": 5}))
    with pytest.raises(ConfigError, match=r"codec\.safetensors: key 'codebooks' has shape \(4, 64, 80\)"):
        load_checkpoint(tmp_path, "codec", MelCodecConfig, MelRVQCodec)
    (tmp_path / "codec.json").write_text(json.dumps({**data, "bogus": 1}))
    with pytest.raises(ConfigError, match=r"codec\.json: unknown MelCodecConfig key 'bogus'"):
        load_checkpoint(tmp_path, "codec", MelCodecConfig, MelRVQCodec)
    (tmp_path / "codec.json").write_text(json.dumps({**data, "format_version": 7}))
    with pytest.raises(ConfigError, match=r"codec\.json: invalid MelCodecConfig: format_version 7"):
        load_checkpoint(tmp_path, "codec", MelCodecConfig, MelRVQCodec)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("net.to_logits.2.bias"), r"missing key 'net\.to_logits\.2\.bias'"),
        (lambda s: s.__setitem__("extra.weight", torch.zeros(1)), "unexpected key 'extra.weight'"),
    ],
)
def test_a_weights_file_with_a_wrong_key_does_not_load(tmp_path, edit, message):
    config, build = TINY["acoustic"]
    save_checkpoint(tmp_path, "acoustic", config, build(config))
    weights = load_file(str(weights_path(tmp_path, "acoustic")))
    edit(weights)
    save_file(weights, str(weights_path(tmp_path, "acoustic")))
    with pytest.raises(ConfigError, match=rf"acoustic\.safetensors: {message}"):
        load_checkpoint(tmp_path, "acoustic", SoundStormConfig, SoundStorm)


def test_the_lm_config_reads_the_committed_layout_and_validates(tmp_path):
    path = tmp_path / "lm.json"
    path.write_text(json.dumps({"format_version": 1, "vocab_size": 300, "hidden_size": 32, "num_heads": 4}))
    assert read_config(path, LMConfig) == LMConfig(vocab_size=300, hidden_size=32, num_heads=4)
    for bad, match in (
        ({"format_version": 99, "vocab_size": 300}, "format_version 99"),
        ({"vocab_size": 10, "hidden_size": 30, "num_heads": 4}, "not divisible"),
        ({"vocab_size": 0}, "positive int"),
    ):
        path.write_text(json.dumps(bad))
        with pytest.raises(ConfigError, match=match):
            read_config(path, LMConfig)
    lc = TINY["lm"][0].to_llama_config()
    assert (lc.vocab_size, lc.hidden_size, lc.num_hidden_layers, lc.num_key_value_heads) == (300, 32, 2, 2)


def test_the_config_reader_names_the_file_for_every_kind_of_bad_file(tmp_path):
    with pytest.raises(ConfigError, match=r"absent\.json: file not found"):
        read_json_object(tmp_path / "absent.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"broken\.json: invalid JSON"):
        read_json_object(tmp_path / "broken.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match=r"list\.json: expected a JSON object, got list"):
        read_json_object(tmp_path / "list.json")
    assert issubclass(ConfigError, ValueError)  # callers that catch ValueError keep working


def test_config_from_dict_turns_lists_into_tuples_and_takes_overrides():
    from assistant.models.anygpt.image import SeedTokenizerConfig

    config = config_from_dict(SeedTokenizerConfig, {"image_down": [16, 8], "embed_dim": 4}, "x", with_encoder=False)
    assert config.image_down == (16, 8) and config.embed_dim == 4 and config.with_encoder is False
    with pytest.raises(ConfigError, match="x: expected an object"):
        config_from_dict(SeedTokenizerConfig, [1], "x")


# ----- the strict state-dict check every loader shares ----------------------------------------------------------------
def small() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))


def test_a_matching_state_dict_loads_and_casts_to_the_module_dtype(tmp_path):
    source = small()
    path = tmp_path / "ckpt.dev"
    torch.save({k: v.double() for k, v in source.state_dict().items()}, path)
    target = small()
    load_state_dict_strict(target, read_torch_state_dict(path), path)
    assert all(
        torch.equal(a.float(), b)
        for a, b in zip(source.state_dict().values(), target.state_dict().values(), strict=True)
    )
    assert target[0].weight.dtype == torch.float32


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("1.bias"), "missing key '1.bias'"),
        (lambda s: s.__setitem__("2.weight", torch.zeros(4)), "unexpected key '2.weight'"),
        (
            lambda s: s.__setitem__("0.weight", torch.zeros(4, 5)),
            r"key '0.weight' has shape \(4, 5\), expected \(4, 3\)",
        ),
    ],
)
def test_a_bad_state_dict_names_file_and_key_and_leaves_the_module_untouched(tmp_path, edit, message):
    state = {k: torch.full_like(v, 7.0) for k, v in small().state_dict().items()}
    edit(state)
    path = tmp_path / "model.pt"
    torch.save(state, path)
    target = small()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ConfigError, match=f"{path.name}.*{message}"):
        load_state_dict_strict(target, read_torch_state_dict(path), path)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_unreadable_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        read_torch_state_dict(tmp_path / "absent.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="garbage.pt: not a readable torch state dict"):
        read_torch_state_dict(garbage)
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(ConfigError, match="expected a mapping"):
        read_torch_state_dict(listed)
