"""The optimisation the embedded LM (``train_lm``) and acoustic decoder (``train_acoustic``) train with: AdamW with
weight decay on the chosen parameters only, a learning rate that warms up linearly and then decays on a cosine to a
floor, and steps with a clipped gradient norm. (``fit_image_codec`` has its own: Adam, without clipping, decayed by
the elapsed share of its time budget.)
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
    ``floor`` at ``total_steps`` (and ``floor`` after it: a budget-bound loop may outrun its estimate)."""
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
