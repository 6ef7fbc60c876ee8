"""The NumPy decode step computes what the torch step computes: the same logits and the same KV cache, whatever the
rows, positions, idle rows and grouped heads; models it cannot run keep the torch step."""

import pytest
import torch
from lm_fixtures import make_runner_lm

from assistant.lm_engine.model_runner import SlotModelRunner
from assistant.lm_engine.numpy_decode import supports_numpy_decode


def _runners(model, **kwargs):
    fast = SlotModelRunner(model, numpy_decode=True, **kwargs)
    plain = SlotModelRunner(model, numpy_decode=False, **kwargs)
    assert fast.uses_numpy_decode and not plain.uses_numpy_decode
    return fast, plain


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_numpy_steps_match_torch_steps_with_rows_at_different_positions_and_an_idle_row(kv_heads):
    model = make_runner_lm(kv_heads)
    fast, plain = _runners(model, max_slots=4, capacity=48)
    gen = torch.Generator().manual_seed(kv_heads)
    prompts = {0: 11, 2: 3, 3: 20}  # slot -> prompt length; slot 1 stays idle
    for runner in (fast, plain):
        for slot, length in prompts.items():
            runner.prefill(slot, torch.randint(0, 97, (length,), generator=torch.Generator().manual_seed(slot)), 0)
    for step in range(6):
        tokens = torch.randint(0, 97, (4,), generator=gen)
        positions = torch.full((4,), fast.idle_position)
        for slot, length in prompts.items():
            positions[slot] = length + step
        expected = plain.decode(tokens, positions)
        got = fast.decode(tokens, positions)
        for slot in prompts:  # the idle row's output is ignored by contract
            torch.testing.assert_close(got[slot], expected[slot], atol=1e-5, rtol=1e-5)
    for fast_keys, plain_keys in zip(fast.keys + fast.values, plain.keys + plain.values, strict=True):
        for slot, length in prompts.items():
            torch.testing.assert_close(fast_keys[slot, :, : length + 6], plain_keys[slot, :, : length + 6])


def test_a_batch_below_the_slot_count_and_a_narrow_span():
    """Rows 0..B-1 only, attending over the live prefix (the engine passes the longest row's position + 1)."""
    model = make_runner_lm(2)
    fast, plain = _runners(model, max_slots=6, capacity=40)
    for runner in (fast, plain):
        runner.prefill(0, torch.arange(9) % 97, 0)
        runner.prefill(1, torch.arange(4) % 97 + 50, 0)
    tokens, positions = torch.tensor([7, 8]), torch.tensor([9, 4])
    torch.testing.assert_close(
        fast.decode(tokens, positions, span=10), plain.decode(tokens, positions, span=10), atol=1e-5, rtol=1e-5
    )


def test_models_the_numpy_step_cannot_run_keep_the_torch_step():
    bf16 = make_runner_lm(2).to(torch.bfloat16)
    assert not supports_numpy_decode(bf16)
    assert not SlotModelRunner(bf16, max_slots=1, capacity=16, numpy_decode=True).uses_numpy_decode

    gelu = make_runner_lm(2)
    gelu.config.hidden_act = "gelu"
    assert not supports_numpy_decode(gelu)
    assert not supports_numpy_decode(torch.nn.Linear(2, 2))
    assert supports_numpy_decode(make_runner_lm(2))
