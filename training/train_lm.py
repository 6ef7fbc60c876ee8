"""Train the unified LM on the synthesized dialogues.

A tiny LLaMA memorises a few hundred sentences quickly and generalises badly (see the feasibility notes), so
training here is built around regularisation and model selection:
- loss only on reply tokens (the ``loss_mask`` of each sequence);
- embedding and attention dropout; weight decay;
- input-code noise: a fraction of the *user's* speech codes are replaced by random speech codes, so the model
  cannot rely on the exact codes of the training voices;
- early stopping (``training.optim.EarlyStopping``) on the reply loss of a validation set whose questions are spoken
  by voices the model never trains on; the best state is kept.

The budget is counted in optimiser steps (``max_steps``) and, optionally, epochs (``max_epochs``), whichever comes
first, so a seed means the same run on any machine; wall-clock time is measured and reported, never used to decide
anything. ``device`` picks the CPU (default) or a CUDA device, where forward passes run under bfloat16 autocast
(``training.device``); the returned model is on the CPU in float32 either way.
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
from training.device import mixed_precision, training_device
from training.optim import EarlyStopping, adamw, clipped_step, warmup_cosine_lr

log = logging.getLogger(__name__)

IGNORE = -100


@dataclass(frozen=True)
class LMTrainingConfig:
    """Optimisation and regularisation of ``train_lm``.

    max_steps: optimiser steps at most. Default 6000: run 3 (``docs/model-card.md``) stopped on its old 55-minute
    budget after 2,096 steps (in its second epoch) with the validation loss still falling, so the cap is about three
    times that and early stopping, not the cap, is meant to end a run (about 2.5 h at 1.5 s a step on 2 CPU cores).
    max_epochs: passes over the training sequences at most (None: no limit), counted from the batches consumed
    (fractions allowed); training stops at whichever of the two limits comes first.
    lr / min_lr / warmup_steps: AdamW learning rate, linear warm-up then cosine decay to ``min_lr`` over the planned
    step count (the smaller of ``max_steps`` and ``max_epochs`` in steps).
    weight_decay, grad_clip: the usual.
    batch_tokens: padded tokens per batch (batch size x longest sequence in it).
    embed_dropout / attention_dropout: dropout on the input embeddings and on attention weights (training only).
    code_noise: probability of replacing each user speech code by a random speech code (training only).
    eval_every: optimiser steps between validation passes (one more at the last step). patience: validation passes
    in a row without an improvement of more than ``min_delta`` before stopping (0 = never stop early).
    seed: data order, noise, dropout and initialisation (same seed and device: same weights).
    device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (``training.device.training_device``); bfloat16 autocast on CUDA.
    """

    max_steps: int = 6000
    max_epochs: float | None = None
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
    min_delta: float = 1e-4
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.max_steps <= 0 or self.lr <= 0 or self.batch_tokens <= 0 or self.eval_every <= 0:
            raise ValueError("max_steps, lr, batch_tokens and eval_every must be positive")
        if self.max_epochs is not None and self.max_epochs <= 0:
            raise ValueError("max_epochs must be positive (or None)")
        if self.warmup_steps < 0 or self.patience < 0 or self.min_delta < 0:
            raise ValueError("warmup_steps, patience and min_delta must be >= 0")
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
    predicted (about half the positions): with a 3k-token vocabulary that is a tenth of the step's compute.
    ``attention`` is only checked (right padding), never used, so it may stay on the CPU when the rest is not."""
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
    """Token-weighted reply loss (nats) over ``sequences``, on the model's device (under ``mixed_precision``)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for batch in make_batches(sequences, batch_tokens, random.Random(0)):
        ids, attention, labels = collate(sequences, batch)
        with mixed_precision(device):
            loss, count = reply_loss(model, ids.to(device), attention, labels.to(device))
        total += float(loss) * count
        tokens += count
    model.train(was_training)
    return total / max(tokens, 1)


def _set_attention_dropout(model: nn.Module, probability: float) -> None:
    for module in model.modules():
        if hasattr(module, "attention_dropout") and isinstance(module.attention_dropout, float):
            module.attention_dropout = probability


def planned_steps(config: LMTrainingConfig, batches_per_epoch: int) -> int:
    """The step count the run is planned for (and the cosine schedule spans): ``max_steps``, or fewer when
    ``max_epochs`` of ``batches_per_epoch`` batches come first."""
    if config.max_epochs is None:
        return config.max_steps
    epoch_steps = max(1, math.ceil(config.max_epochs * batches_per_epoch - 1e-9))
    return min(config.max_steps, epoch_steps)


def train_lm(
    lm_config: LMConfig,
    train: Sequence[MaskedSequence],
    valid: Sequence[MaskedSequence],
    speech_code_range: tuple[int, int],
    config: LMTrainingConfig = LMTrainingConfig(),
) -> tuple[nn.Module, dict]:
    """Train from scratch on ``config.device``; returns the model with the best validation loss (eval mode, on the
    CPU, float32) and a metrics dict:

    steps, planned_steps, epochs (float: batches consumed / batches per epoch), batches_per_epoch, best_step,
    best_valid_loss, stopped_early, seconds, tokens_per_s (padded tokens), device, train_sequences,
    valid_sequences, history (per validation pass: step, epoch, train_loss (moving average of the batch losses),
    valid_loss, seconds since the start) and config.
    """
    if not train or not valid:
        raise ValueError("train and valid sets must not be empty")
    device = training_device(config.device)
    # The number of batches an epoch has depends only on the sequence lengths (make_batches groups length-sorted
    # sequences greedily; only the order is random), so it is known up front; this also checks every length.
    batches_per_epoch = len(make_batches(train, config.batch_tokens, random.Random(0), lm_config.max_positions))
    total_steps = planned_steps(config, batches_per_epoch)
    log.info(
        "lm: %d steps planned (%.2f epochs of %d batches) on %s",
        total_steps,
        total_steps / batches_per_epoch,
        batches_per_epoch,
        device,
    )
    # Dropout draws from torch's global generators: seed them for the run and give the caller's state back after.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        model, metrics = _train(
            lm_config, train, valid, speech_code_range, config, device, total_steps, batches_per_epoch
        )
    return model, metrics


def _train(
    lm_config: LMConfig,
    train: Sequence[MaskedSequence],
    valid: Sequence[MaskedSequence],
    speech_code_range: tuple[int, int],
    config: LMTrainingConfig,
    device: torch.device,
    total_steps: int,
    batches_per_epoch: int,
) -> tuple[nn.Module, dict]:
    rng = random.Random(config.seed)
    generator = torch.Generator().manual_seed(config.seed)  # code noise, drawn on the CPU: same on any device
    model: nn.Module = build_lm(lm_config, seed=config.seed)
    model.to(device)
    _set_attention_dropout(model, config.attention_dropout)
    model.train()
    optimizer = adamw(model, lambda name, p: p.dim() >= 2, config.lr, config.weight_decay, (0.9, 0.95))
    stopper = EarlyStopping(config.patience, config.min_delta)
    best_state: dict[str, Tensor] | None = None
    history: list[dict] = []
    start = time.monotonic()
    step, tokens_seen = 0, 0
    running: Tensor | None = None  # moving average of the training loss, on the device (no sync per step)
    stopped_early = False

    while step < total_steps and not stopped_early:
        for batch in make_batches(train, config.batch_tokens, rng, lm_config.max_positions):
            ids, attention, labels = collate(train, batch)
            ids = corrupt_user_codes(ids, labels, speech_code_range, config.code_noise, generator)
            tokens_seen += int(attention.sum())
            # attention stays on the CPU: reply_loss only checks the padding with it, which costs no device sync
            with mixed_precision(device):
                loss, _ = reply_loss(model, ids.to(device), attention, labels.to(device), config.embed_dropout)
            lr = warmup_cosine_lr(step, config.lr, config.min_lr, config.warmup_steps, total_steps)
            clipped_step(optimizer, model, loss, lr, config.grad_clip)
            step += 1
            value = loss.detach().float()
            running = value if running is None else 0.98 * running + 0.02 * value
            if step % config.eval_every == 0 or step == total_steps:
                valid_loss = evaluate(model, valid, config.batch_tokens)
                record = {
                    "step": step,
                    "epoch": round(step / batches_per_epoch, 3),
                    "train_loss": round(float(running), 4),
                    "valid_loss": round(valid_loss, 4),
                    "seconds": round(time.monotonic() - start, 1),
                }
                history.append(record)
                log.info("lm: %s", record)
                if stopper.update(step, valid_loss):
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                if stopper.should_stop:
                    stopped_early = True
                    break
            if step >= total_steps:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.to(device="cpu", dtype=torch.float32)
    _set_attention_dropout(model, 0.0)
    model.eval()
    seconds = time.monotonic() - start
    metrics = {
        "steps": step,
        "planned_steps": total_steps,
        "epochs": round(step / batches_per_epoch, 3),
        "batches_per_epoch": batches_per_epoch,
        "best_step": stopper.best_step,
        "best_valid_loss": round(stopper.best, 4),
        "stopped_early": stopped_early,
        "seconds": round(seconds, 1),
        "tokens_per_s": round(tokens_seen / max(seconds, 1e-9), 1),
        "device": str(device),
        "train_sequences": len(train),
        "valid_sequences": len(valid),
        "history": history,
        "config": asdict(config),
    }
    return model, metrics
