import random
from dataclasses import dataclass

import pytest
import torch

from assistant.models.embedded.lm import LMConfig, build_lm
from training.train_lm import (
    IGNORE,
    LMTrainingConfig,
    collate,
    corrupt_user_codes,
    evaluate,
    make_batches,
    reply_loss,
    train_lm,
)


@dataclass
class Seq:
    ids: list[int]
    loss_mask: list[bool]


def copy_task(n: int, seed: int) -> list[Seq]:
    """Prompt: 1 + four 'speech codes' in [10, 30) + 2; reply: the same codes + 3. Only the reply is predicted."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        codes = [rng.randrange(10, 30) for _ in range(4)]
        ids = [1, *codes, 2, *codes, 3]
        out.append(Seq(ids, [False] * 6 + [True] * 5))
    return out


def test_collate_labels_only_reply_tokens():
    seqs = [Seq([1, 5, 6, 7], [False, False, True, True]), Seq([1, 8], [False, True])]
    ids, attention, labels = collate(seqs, [0, 1])
    assert ids.tolist() == [[1, 5, 6, 7], [1, 8, 0, 0]]
    assert attention.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    # position 1 predicts token 6 (a reply token), position 2 predicts 7; position 0 predicts 5 (prompt) -> ignored
    assert labels.tolist() == [[IGNORE, 6, 7, IGNORE], [8, IGNORE, IGNORE, IGNORE]]


def test_reply_loss_of_a_padded_batch_equals_the_loss_of_each_sequence_alone():
    config = LMConfig(
        vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=4, max_positions=64
    )
    model = build_lm(config, seed=0).eval()
    seqs = [Seq([1, 5, 6, 7, 8, 9, 3], [False] * 3 + [True] * 4), Seq([1, 8, 2, 4], [False, False, True, True])]
    with torch.no_grad():
        batch_loss, count = reply_loss(model, *collate(seqs, [0, 1]))
        alone = [reply_loss(model, *collate(seqs, [i])) for i in (0, 1)]
    expected = sum(float(loss) * n for loss, n in alone) / sum(n for _, n in alone)
    assert count == 6 and abs(float(batch_loss) - expected) < 1e-5
    ids, attention, labels = collate(seqs, [0, 1])
    with pytest.raises(ValueError, match="right-padded"):
        reply_loss(model, ids.flip(1), attention.flip(1), labels)


def test_batches_respect_token_budget_and_cover_everything():
    seqs = [Seq([0] * n, [True] * n) for n in (3, 9, 4, 8, 5, 7)]
    batches = make_batches(seqs, batch_tokens=16, rng=random.Random(0))
    assert sorted(i for b in batches for i in b) == list(range(6))
    for batch in batches:
        assert len(batch) * max(len(seqs[i].ids) for i in batch) <= 16 or len(batch) == 1


def test_code_noise_touches_only_input_codes():
    seqs = copy_task(8, 0)
    ids, _, labels = collate(seqs, list(range(8)))
    noisy = corrupt_user_codes(ids, labels, (10, 20), 0.99, torch.Generator().manual_seed(0))
    changed = noisy != ids
    assert changed[:, 1:5].any()  # prompt codes are corrupted
    assert not changed[:, 5:].any()  # reply tokens (targets) never are
    assert ((noisy[:, 1:5] >= 10) & (noisy[:, 1:5] < 30)).all()


@pytest.mark.slow  # training steps: > 10 s
def test_training_learns_the_copy_task_and_keeps_the_best_state():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    config = LMConfig(
        vocab_size=32,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=4,
        max_positions=64,
    )
    train, valid = copy_task(512, 1), copy_task(64, 2)
    settings = LMTrainingConfig(
        max_minutes=0.25,
        lr=3e-3,
        warmup_steps=20,
        batch_tokens=1024,
        eval_every=40,
        patience=0,
        embed_dropout=0.0,
        attention_dropout=0.0,
        code_noise=0.0,
    )
    model, metrics = train_lm(config, train, valid, (10, 20), settings)
    assert not model.training
    first = metrics["history"][0]["valid_loss"]
    assert metrics["best_valid_loss"] < 0.5 * first
    assert abs(evaluate(model, valid, 1024) - metrics["best_valid_loss"]) < 1e-3
