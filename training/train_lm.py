"""Train the unified LM on the synthesized dialogues.

A tiny LLaMA memorises a few hundred sentences quickly and generalises badly (see the feasibility notes), so
training here is built around regularisation and model selection:
- loss only on reply tokens (the ``loss_mask`` of each sequence);
- embedding and attention dropout; weight decay;
- input-code noise: a fraction of the *user's* speech codes are replaced by random speech codes, so the model
  cannot rely on the exact codes of the training voices;
- early stopping on the reply loss of a validation set whose questions are spoken by voices the model never
  trains on; the best state is kept;
- a wall-clock budget, because ``make train-mini`` has one.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from assistant.models.embedded.lm import LMConfig, build_lm
from training.optim import adamw, clipped_step, warmup_cosine_lr

log = logging.getLogger(__name__)

IGNORE = -100


@dataclass(frozen=True)
class LMTrainingConfig:
    """Optimisation and regularisation of ``train_lm``.

    max_minutes: wall-clock budget of the loop (evaluation included).
    lr / min_lr / warmup_steps: AdamW learning rate, linear warm-up then cosine decay to ``min_lr`` over the
    steps the budget is expected to allow (re-estimated as training runs).
    weight_decay, grad_clip: the usual.
    batch_tokens: padded tokens per batch (batch size x longest sequence in it).
    embed_dropout / attention_dropout: dropout on the input embeddings and on attention weights (training only).
    code_noise: probability of replacing each user speech code by a random speech code (training only).
    eval_every: optimiser steps between validation passes. patience: validation passes without improvement
    before stopping (0 = never stop early).
    seed: data order, noise and initialisation.
    """

    max_minutes: float = 55.0
    lr: float = 2e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    batch_tokens: int = 4096
    embed_dropout: float = 0.1
    attention_dropout: float = 0.1
    code_noise: float = 0.05
    eval_every: int = 200
    patience: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_minutes <= 0 or self.lr <= 0 or self.batch_tokens <= 0 or self.eval_every <= 0:
            raise ValueError("max_minutes, lr, batch_tokens and eval_every must be positive")
        for name in ("embed_dropout", "attention_dropout", "code_noise"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1)")


class MaskedSequence(Protocol):
    """One training sequence (``training.corpus.TrainingSequence``): token ids and which of them are predicted."""

    ids: list[int]
    loss_mask: list[bool]


def make_batches(
    sequences: Sequence[MaskedSequence], batch_tokens: int, rng: random.Random, max_len: int | None = None
) -> list[list[int]]:
    """Indices grouped into length-sorted batches of at most ``batch_tokens`` padded tokens, in random order."""
    order = sorted(range(len(sequences)), key=lambda i: (len(sequences[i].ids), rng.random()))
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        length = len(sequences[index].ids)
        if max_len is not None and length > max_len:
            raise ValueError(f"sequence {index} has {length} tokens, more than max_positions {max_len}")
        if current and (len(current) + 1) * length > batch_tokens:
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches


def collate(sequences: Sequence[MaskedSequence], indices: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
    """-> input ids ``[B, L]`` (right-padded with 0), attention mask ``[B, L]``, labels ``[B, L]`` (next token at each
    position that predicts a reply token, else IGNORE)."""
    length = max(len(sequences[i].ids) for i in indices)
    ids = torch.zeros(len(indices), length, dtype=torch.long)
    attention = torch.zeros(len(indices), length, dtype=torch.long)
    labels = torch.full((len(indices), length), IGNORE, dtype=torch.long)
    for row, index in enumerate(indices):
        seq = sequences[index]
        n = len(seq.ids)
        ids[row, :n] = torch.tensor(seq.ids)
        attention[row, :n] = 1
        target = torch.tensor(seq.ids[1:])  # position t predicts token t + 1
        predicted = torch.tensor(seq.loss_mask[1:], dtype=torch.bool)
        labels[row, : n - 1] = torch.where(predicted, target, torch.full_like(target, IGNORE))
    return ids, attention, labels


def corrupt_user_codes(
    ids: Tensor, labels: Tensor, code_range: tuple[int, int], probability: float, generator: torch.Generator
) -> Tensor:
    """Replace speech codes that are inputs only (not predicted) with random speech codes."""
    if probability <= 0:
        return ids
    first, count = code_range
    is_code = (ids >= first) & (ids < first + count)
    predicted = torch.zeros_like(is_code)
    predicted[:, 1:] = labels[:, :-1] != IGNORE  # token t is a target if position t - 1 predicts it
    hit = is_code & ~predicted & (torch.rand(ids.shape, generator=generator) < probability)
    noise = torch.randint(first, first + count, ids.shape, generator=generator)
    return torch.where(hit, noise, ids)


def reply_loss(
    model: nn.Module, ids: Tensor, attention: Tensor, labels: Tensor, embed_dropout: float = 0.0
) -> tuple[Tensor, int]:
    """Mean cross-entropy over reply tokens, and their count. The output layer runs only where a reply token is
    predicted (about half the positions): with a 3k-token vocabulary that is a tenth of the step's compute."""
    if bool((attention[:, 1:] > attention[:, :-1]).any()):
        raise ValueError("reply_loss needs right-padded batches (a real token after padding)")
    embeds = model.get_input_embeddings()(ids)  # [B, L, D]
    if embed_dropout > 0 and model.training:
        embeds = F.dropout(embeds, embed_dropout)
    # Right padding: under the causal mask no real token sees a pad, and pads are never scored, so the padding mask
    # is redundant; leaving it out lets attention take its causal fast path (about 20% faster steps at 512 tokens).
    hidden = model.model(inputs_embeds=embeds).last_hidden_state  # [B, L, D]
    predicted = labels != IGNORE  # [B, L]
    logits = model.lm_head(hidden[predicted])  # [N, V]
    return F.cross_entropy(logits.float(), labels[predicted]), int(predicted.sum())


@torch.no_grad()
def evaluate(model: nn.Module, sequences: Sequence[MaskedSequence], batch_tokens: int) -> float:
    """Token-weighted reply loss (nats) over ``sequences``."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for batch in make_batches(sequences, batch_tokens, random.Random(0)):
        loss, count = reply_loss(model, *collate(sequences, batch))
        total += float(loss) * count
        tokens += count
    model.train(was_training)
    return total / max(tokens, 1)


def _set_attention_dropout(model: nn.Module, probability: float) -> None:
    for module in model.modules():
        if hasattr(module, "attention_dropout") and isinstance(module.attention_dropout, float):
            module.attention_dropout = probability


def train_lm(
    lm_config: LMConfig,
    train: Sequence[MaskedSequence],
    valid: Sequence[MaskedSequence],
    speech_code_range: tuple[int, int],
    config: LMTrainingConfig = LMTrainingConfig(),
) -> tuple[nn.Module, dict]:
    """Train from scratch; returns the model with the best validation loss (eval mode) and a metrics dict."""
    if not train or not valid:
        raise ValueError("train and valid sets must not be empty")
    rng = random.Random(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = build_lm(lm_config, seed=config.seed)
    _set_attention_dropout(model, config.attention_dropout)
    model.train()
    optimizer = adamw(model, lambda name, p: p.dim() >= 2, config.lr, config.weight_decay, (0.9, 0.95))
    budget_s = config.max_minutes * 60.0
    start = time.monotonic()
    step, tokens_seen, epoch = 0, 0, 0
    expected_steps = 10_000  # re-estimated from the measured step time
    best_loss, best_state, best_step, bad_evals = math.inf, None, 0, 0
    history: list[dict] = []
    stop_reason = "budget"

    running = 0.0
    done = False
    while not done:
        epoch += 1
        for batch in make_batches(train, config.batch_tokens, rng, lm_config.max_positions):
            ids, attention, labels = collate(train, batch)
            ids = corrupt_user_codes(ids, labels, speech_code_range, config.code_noise, generator)
            loss, _ = reply_loss(model, ids, attention, labels, config.embed_dropout)
            lr = warmup_cosine_lr(step, config.lr, config.min_lr, config.warmup_steps, expected_steps)
            clipped_step(optimizer, model, loss, lr, config.grad_clip)
            step += 1
            tokens_seen += int(attention.sum())
            running = 0.98 * running + 0.02 * loss.item() if step > 1 else loss.item()
            elapsed = time.monotonic() - start
            if step == 50:
                expected_steps = max(config.warmup_steps + 1, int(budget_s / (elapsed / step) * 0.95))
                log.info("lm: %.2f s/step, planning the schedule for about %d steps", elapsed / step, expected_steps)
            if step % config.eval_every == 0 or elapsed >= budget_s:
                valid_loss = evaluate(model, valid, config.batch_tokens)
                record = {
                    "step": step,
                    "epoch": epoch,
                    "minutes": round(elapsed / 60, 2),
                    "train_loss": round(running, 4),
                    "valid_loss": round(valid_loss, 4),
                    "tokens_per_s": round(tokens_seen / elapsed, 1),
                }
                history.append(record)
                log.info("lm: %s", record)
                if valid_loss < best_loss - 1e-4:
                    best_loss, best_step, bad_evals = valid_loss, step, 0
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    bad_evals += 1
                    if config.patience and bad_evals >= config.patience:
                        stop_reason, done = "early_stop", True
                        break
            if elapsed >= budget_s:
                done = True
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    _set_attention_dropout(model, 0.0)
    model.eval()
    metrics = {
        "steps": step,
        "epochs": epoch,
        "best_step": best_step,
        "best_valid_loss": round(best_loss, 4),
        "stop_reason": stop_reason,
        "minutes": round((time.monotonic() - start) / 60, 2),
        "train_sequences": len(train),
        "valid_sequences": len(valid),
        "history": history,
        "config": asdict(config),
    }
    return model, metrics
