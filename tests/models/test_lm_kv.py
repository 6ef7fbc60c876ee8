import pytest
import torch

from assistant.models.lm import LMConfig, build_lm
from assistant.models.lm_kv import LeanLlamaDecoder, supports_lean_decoding


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_lean_decoder_gives_the_logits_of_the_full_forward(kv_heads):
    config = LMConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_layers=3, num_heads=4,
                      num_kv_heads=kv_heads, max_positions=64)
    model = build_lm(config, seed=3)
    ids = torch.randint(0, 97, (40,), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference = model(input_ids=ids[None]).logits[0]  # [T, V]
    decoder = LeanLlamaDecoder(model, capacity=8)  # small: the cache has to grow twice
    prompt = 13
    torch.testing.assert_close(decoder.prefill(ids[:prompt]), reference[prompt - 1], atol=1e-4, rtol=1e-4)
    for t in range(prompt, len(ids)):
        torch.testing.assert_close(decoder.step(int(ids[t])), reference[t], atol=1e-4, rtol=1e-4)
    assert decoder.length == len(ids)


def test_lean_decoder_refuses_more_positions_than_the_model_has_and_a_second_prefill():
    model = build_lm(LMConfig(vocab_size=11, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                              num_kv_heads=2, max_positions=6), seed=0)
    decoder = LeanLlamaDecoder(model)
    decoder.prefill(torch.arange(5))
    with pytest.raises(RuntimeError, match="already holds"):
        decoder.prefill(torch.arange(2))
    decoder.step(1)
    with pytest.raises(ValueError, match="exceeds the model's 6 positions"):
        decoder.step(2)


def test_other_models_are_not_claimed():
    assert not supports_lean_decoding(torch.nn.Linear(2, 2))
