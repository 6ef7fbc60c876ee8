import math
import random
from dataclasses import dataclass

import pytest
import torch

import training.train_lm as train_lm_module
from assistant.models.embedded.lm import LMConfig, build_lm
from training.optim import EarlyStopping
from training.train_lm import (
    IGNORE,
    LMTrainingConfig,
    collate,
    corrupt_user_codes,
    evaluate,
    make_batches,
    planned_steps,
    reply_loss,
    train_lm,
)

TINY = LMConfig(
    vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, num_kv_heads=2, max_positions=64
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
        max_steps=240,
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
    assert metrics["steps"] <= 240 and metrics["seconds"] > 0 and metrics["tokens_per_s"] > 0


def test_config_budgets_are_steps_and_epochs():
    assert LMTrainingConfig().max_steps == 6000 and LMTrainingConfig().max_epochs is None
    assert not hasattr(LMTrainingConfig(), "max_minutes")
    with pytest.raises(ValueError):
        LMTrainingConfig(max_steps=0)
    with pytest.raises(ValueError):
        LMTrainingConfig(max_epochs=0.0)
    assert planned_steps(LMTrainingConfig(max_steps=500), batches_per_epoch=40) == 500
    assert planned_steps(LMTrainingConfig(max_steps=500, max_epochs=2.5), batches_per_epoch=40) == 100
    assert planned_steps(LMTrainingConfig(max_steps=50, max_epochs=2.5), batches_per_epoch=40) == 50
    assert planned_steps(LMTrainingConfig(max_epochs=0.01), batches_per_epoch=40) == 1


def test_early_stopping_counts_validation_passes_without_improvement():
    stopper = EarlyStopping(patience=2, min_delta=0.01)
    assert stopper.update(10, 3.0) and stopper.update(20, 2.0)
    assert not stopper.update(30, 1.995)  # within min_delta: not an improvement
    assert not stopper.should_stop
    assert not stopper.update(40, 2.5) and stopper.should_stop
    assert (stopper.best, stopper.best_step) == (2.0, 20)
    never = EarlyStopping(patience=0)
    never.update(1, 1.0)
    assert not any(never.update(step, 2.0) for step in range(2, 10)) and not never.should_stop


def _small_settings(**changes) -> LMTrainingConfig:
    base = dict(max_steps=6, warmup_steps=2, batch_tokens=64, eval_every=3, patience=0, seed=3)
    return LMTrainingConfig(**{**base, **changes})


def test_same_seed_same_weights_and_the_model_comes_back_on_cpu_in_float32():
    torch.set_num_threads(1)
    train, valid = copy_task(48, 1), copy_task(8, 2)
    torch.manual_seed(11)
    first, metrics = train_lm(TINY, train, valid, (10, 20), _small_settings())
    after = torch.rand(3)
    torch.manual_seed(11)
    assert torch.equal(torch.rand(3), after)  # the caller's generator is left as it was
    torch.rand(5)  # a different global RNG state: the run seeds its own dropout
    second, _ = train_lm(TINY, train, valid, (10, 20), _small_settings())
    assert metrics["steps"] == metrics["planned_steps"] == 6 and not metrics["stopped_early"]
    assert [r["step"] for r in metrics["history"]] == [3, 6]
    assert set(metrics["history"][0]) == {"step", "epoch", "train_loss", "valid_loss", "seconds"}
    assert metrics["device"] == "cpu" and metrics["config"]["device"] == "cpu"
    state, other = first.state_dict(), second.state_dict()
    assert all(
        v.device.type == "cpu" and (not v.is_floating_point() or v.dtype == torch.float32) for v in state.values()
    )
    assert state.keys() == other.keys() and all(torch.equal(state[k], other[k]) for k in state)
    assert not first.training
    different, _ = train_lm(TINY, train, valid, (10, 20), _small_settings(seed=4))
    assert not all(torch.equal(state[k], different.state_dict()[k]) for k in state)


def test_max_epochs_ends_the_run_after_that_many_passes():
    torch.set_num_threads(1)
    train, valid = copy_task(48, 1), copy_task(8, 2)
    per_epoch = len(make_batches(train, 64, random.Random(0), TINY.max_positions))
    _, metrics = train_lm(TINY, train, valid, (10, 20), _small_settings(max_steps=1000, max_epochs=1.5, eval_every=100))
    assert metrics["batches_per_epoch"] == per_epoch
    assert metrics["steps"] == metrics["planned_steps"] == math.ceil(1.5 * per_epoch)
    assert metrics["epochs"] == pytest.approx(metrics["steps"] / per_epoch, abs=1e-3)
    assert metrics["history"][-1]["step"] == metrics["steps"]  # a validation pass at the last step


def test_a_validation_loss_that_stops_improving_stops_the_loop_and_the_best_weights_come_back(monkeypatch):
    torch.set_num_threads(1)
    losses = iter([3.0, 2.0, 1.5, 1.6, 1.55, 1.7, 0.1, 0.1])  # best at pass 3; passes 4-6 do not improve
    snapshots: list[dict[str, torch.Tensor]] = []

    def scripted(model, sequences, batch_tokens):
        snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return next(losses)

    monkeypatch.setattr(train_lm_module, "evaluate", scripted)
    train, valid = copy_task(48, 1), copy_task(8, 2)
    model, metrics = train_lm(TINY, train, valid, (10, 20), _small_settings(max_steps=100, eval_every=2, patience=3))
    assert metrics["stopped_early"] and metrics["steps"] == 12 and len(metrics["history"]) == 6
    assert metrics["best_step"] == 6 and metrics["best_valid_loss"] == 1.5
    assert [r["valid_loss"] for r in metrics["history"]] == [3.0, 2.0, 1.5, 1.6, 1.55, 1.7]
    best, last = snapshots[2], snapshots[-1]
    state = model.state_dict()
    assert all(torch.equal(state[k], best[k]) for k in state)
    assert not all(torch.equal(state[k], last[k]) for k in state)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_on_cuda_returns_a_cpu_float32_model():
    train, valid = copy_task(48, 1), copy_task(8, 2)
    model, metrics = train_lm(TINY, train, valid, (10, 20), _small_settings(device="cuda"))
    assert metrics["device"].startswith("cuda") and metrics["steps"] == 6
    assert all(v.device.type == "cpu" for v in model.state_dict().values())
    assert all(v.dtype == torch.float32 for v in model.state_dict().values() if v.is_floating_point())
    assert abs(evaluate(model, valid, 64) - metrics["best_valid_loss"]) < 0.05  # bf16 on the GPU, fp32 here


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_asking_for_cuda_without_it_is_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA"):
        train_lm(TINY, copy_task(4, 1), copy_task(2, 2), (10, 20), _small_settings(device="cuda"))
