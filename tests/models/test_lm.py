import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from assistant.models.lm import LM_CONFIG_FILE, LM_WEIGHTS_FILE, LMConfig, build_lm, load_lm, save_lm


def tiny(vocab_size=300):
    return LMConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        max_positions=128,
    )


def test_config_validation_and_json(tmp_path):
    with pytest.raises(ValueError):
        LMConfig(vocab_size=10, hidden_size=30, num_heads=4)
    with pytest.raises(ValueError):
        LMConfig(vocab_size=0)
    cfg = tiny()
    cfg.to_json(tmp_path / "c.json")
    assert LMConfig.from_json(tmp_path / "c.json") == cfg
    data = json.loads((tmp_path / "c.json").read_text())
    data["format_version"] = 99
    (tmp_path / "c.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="format_version"):
        LMConfig.from_json(tmp_path / "c.json")
    lc = cfg.to_llama_config()
    assert (lc.vocab_size, lc.hidden_size, lc.num_hidden_layers, lc.num_key_value_heads) == (300, 32, 2, 2)
    assert LMConfig.embedded(1000).hidden_size == 128


def test_build_is_seeded_and_save_load_round_trip(tmp_path):
    cfg = tiny()
    a, b, c = build_lm(cfg, seed=1), build_lm(cfg, seed=1), build_lm(cfg, seed=2)
    wa = a.model.embed_tokens.weight
    assert torch.equal(wa, b.model.embed_tokens.weight) and not torch.equal(wa, c.model.embed_tokens.weight)
    save_lm(a, cfg, tmp_path)
    loaded, cfg2 = load_lm(tmp_path)
    assert cfg2 == cfg
    ids = torch.tensor([[1, 5, 7, 250]])
    with torch.no_grad():
        assert torch.allclose(a(input_ids=ids).logits, loaded(input_ids=ids).logits)


def test_load_strict_names_key(tmp_path):
    cfg = tiny()
    save_lm(build_lm(cfg, seed=0), cfg, tmp_path)
    path = tmp_path / LM_WEIGHTS_FILE
    state = load_file(str(path))
    key = "model.layers.1.mlp.up_proj.weight"
    del state[key]
    save_file(state, str(path))
    with pytest.raises(KeyError, match=r"model\.safetensors.*model\.layers\.1\.mlp\.up_proj\.weight"):
        load_lm(tmp_path)
    state[key] = torch.zeros(3, 3)
    save_file(state, str(path))
    with pytest.raises(ValueError, match="up_proj.weight"):
        load_lm(tmp_path)
    state[key] = torch.zeros(64, 32)
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(path))
    with pytest.raises(KeyError, match="extra.weight"):
        load_lm(tmp_path)
    assert (tmp_path / LM_CONFIG_FILE).is_file()
