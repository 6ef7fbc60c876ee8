import pytest
import torch
from lm_fixtures import make_runner_lm

from assistant.lm_engine.model_runner import SlotModelRunner, supports_slot_decoding

ATOL = dict(atol=1e-4, rtol=1e-4)


def _reference(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids[None]).logits[0]  # [T, V]


@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("static_shapes", [False, True])
def test_chunked_prefill_and_decode_give_the_logits_of_the_full_forward(kv_heads, static_shapes):
    model = make_runner_lm(kv_heads)
    ids = torch.randint(0, 97, (40,), generator=torch.Generator().manual_seed(0))
    reference = _reference(model, ids)
    runner = SlotModelRunner(model, max_slots=3, capacity=48, static_shapes=static_shapes)
    slot, prompt = 2, 13
    runner.prefill(slot, ids[:5], 0)  # a prompt prefilled in two blocks
    torch.testing.assert_close(runner.prefill(slot, ids[5:prompt], 5), reference[prompt - 1], **ATOL)
    for t in range(prompt, len(ids)):
        tokens = torch.zeros(slot + 1, dtype=torch.long)
        positions = torch.full((slot + 1,), runner.idle_position)
        tokens[slot], positions[slot] = ids[t], t
        torch.testing.assert_close(runner.decode(tokens, positions)[slot], reference[t], **ATOL)


def test_rows_at_different_positions_decode_independently():
    """Three sequences of different lengths step together; each matches its own full forward, and an idle row in
    the middle (a slot still prefilling) neither disturbs them nor is disturbed."""
    model = make_runner_lm(kv_heads=2)
    gen = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, 97, (n,), generator=gen) for n in (20, 9, 30)]
    refs = [_reference(model, s) for s in seqs]
    runner = SlotModelRunner(model, max_slots=4, capacity=40)
    prompts = [12, 4, 25]
    for slot in (0, 2, 3):
        i = (0, 2, 3).index(slot)
        runner.prefill(slot, seqs[i][: prompts[i]], 0)
    waiting = torch.randint(0, 97, (6,), generator=gen)
    runner.prefill(1, waiting, 0)  # slot 1 holds a half-prefilled prompt and sits out the steps
    for step in range(5):
        tokens = torch.zeros(4, dtype=torch.long)
        positions = torch.full((4,), runner.idle_position)
        for i, slot in enumerate((0, 2, 3)):
            tokens[slot], positions[slot] = seqs[i][prompts[i] + step], prompts[i] + step
        logits = runner.decode(tokens, positions)
        for i, slot in enumerate((0, 2, 3)):
            torch.testing.assert_close(logits[slot], refs[i][prompts[i] + step], **ATOL)
    rest = torch.randint(0, 97, (3,), generator=gen)
    full = torch.cat([waiting, rest])
    torch.testing.assert_close(runner.prefill(1, rest, 6), _reference(model, full)[-1], **ATOL)


def test_buckets_and_limits():
    model = make_runner_lm(positions=16)
    runner = SlotModelRunner(model, max_slots=5, buckets=(1, 2, 4, 8), static_shapes=True)
    assert runner.capacity == 16  # the model's positions
    assert [runner.bucket_for(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 4, 5]
    assert SlotModelRunner(model, max_slots=5).bucket_for(3) == 3  # eager CPU steps run at the exact size
    with pytest.raises(ValueError, match="exceeds the slot capacity"):
        runner.prefill(0, torch.arange(17) % 97, 0)
    with pytest.raises(IndexError):
        runner.prefill(5, torch.arange(2), 0)
    with pytest.raises(ValueError):
        runner.bucket_for(6)


def test_other_models_are_not_claimed():
    assert not supports_slot_decoding(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError):
        SlotModelRunner(torch.nn.Linear(2, 2), max_slots=1)
