import pytest
import torch
from lm_fixtures import tiny_lm_config

from assistant.lm_engine.model_runner import supports_slot_decoding
from assistant.models.embedded.lm import LMConfig, build_lm
from assistant.models.interfaces import CausalLM


def tiny(vocab_size=300):
    return tiny_lm_config(vocab_size, max_positions=128)


def test_config_validation():
    with pytest.raises(ValueError):
        LMConfig(vocab_size=10, hidden_size=30, num_heads=4)
    with pytest.raises(ValueError):
        LMConfig(vocab_size=0)
    with pytest.raises(ValueError, match="format_version"):
        LMConfig(vocab_size=10, format_version=2)


def test_build_is_seeded_and_is_the_lm_runtime_the_engine_reads():
    cfg = tiny()
    a, b, c = build_lm(cfg, seed=1), build_lm(cfg, seed=1), build_lm(cfg, seed=2)
    wa = a.model.embed_tokens.weight
    assert torch.equal(wa, b.model.embed_tokens.weight) and not torch.equal(wa, c.model.embed_tokens.weight)
    assert isinstance(a, CausalLM) and supports_slot_decoding(a)  # transformers' LLaMA conforms structurally
    assert a.config.vocab_size == cfg.vocab_size and a.config.max_position_embeddings == cfg.max_positions
    ids = torch.tensor([[1, 5, 7, 250]])
    with torch.no_grad():
        assert torch.equal(a(input_ids=ids).logits, b(input_ids=ids).logits)
