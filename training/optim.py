"""The optimisation the embedded LM (``train_lm``), acoustic decoder (``train_acoustic``) and the speech codec's
content encoder (``fit_speech_codec``) train with: AdamW with weight decay on the chosen parameters only, a learning
rate that warms up linearly and then decays on a cosine to a floor over the step budget, steps with a clipped
gradient norm, and early stopping on a validation loss. (``fit_image_codec`` has its own: Adam, without clipping,
decayed by the share of its steps done.)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn


def adamw(
    model: nn.Module, decayed: Callable[[str, Tensor], bool], lr: float, weight_decay: float, betas: tuple[float, float]
) -> torch.optim.AdamW:
    """AdamW over ``model``'s parameters; ``decayed(name, parameter)`` picks the ones weight decay applies to."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (decay if decayed(name, param) else no_decay).append(param)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas
    )


def warmup_cosine_lr(step: int, peak: float, floor: float, warmup_steps: int, total_steps: int) -> float:
    """The learning rate of (0-based) ``step``: linear up to ``peak`` over ``warmup_steps``, then a cosine down to
    ``floor`` at ``total_steps`` (and ``floor`` after it)."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


def clipped_step(optimizer: torch.optim.Optimizer, model: nn.Module, loss: Tensor, lr: float, grad_clip: float) -> None:
    """One optimiser step on ``loss`` at learning rate ``lr``, the gradient's norm clipped to ``grad_clip``."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()


class EarlyStopping:
    """Tracks validation losses; ``should_stop`` once ``patience`` evaluations in a row failed to improve on the best
    by more than ``min_delta`` (``patience`` 0: never). Stage budgets are steps or epochs plus this rule, never
    wall-clock minutes, so a run means the same on any machine."""

    def __init__(self, patience: int, min_delta: float = 0.0) -> None:
        if patience < 0 or min_delta < 0:
            raise ValueError("patience and min_delta must be >= 0")
        self.patience = patience
        self.min_delta = min_delta
        self.best = math.inf
        self.best_step = -1
        self.stale = 0

    def update(self, step: int, loss: float) -> bool:
        """Record the validation ``loss`` at ``step``; True when it is a new best (keep these weights)."""
        if loss < self.best - self.min_delta:
            self.best, self.best_step, self.stale = loss, step, 0
            return True
        self.stale += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.stale >= self.patience
