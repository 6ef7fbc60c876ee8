"""What an ``AcousticModel`` (``assistant.models.interfaces``) is handed, checked the same way by both families'
models: the inputs' shapes, and the ``level`` argument of ``level_logits``."""

from __future__ import annotations

import torch
from torch import Tensor


def check_inputs(semantic: Tensor, acoustic: Tensor, n_acoustic: int) -> None:
    """``ValueError`` unless semantic is ``[B, T]`` and acoustic ``[B, n_acoustic, T]``."""
    if semantic.dim() != 2:
        raise ValueError(f"semantic must be [B, T], got {tuple(semantic.shape)}")
    batch, length = semantic.shape
    if acoustic.shape != (batch, n_acoustic, length):
        raise ValueError(f"acoustic must be [B={batch}, {n_acoustic}, T={length}], got {tuple(acoustic.shape)}")


def level_indices(level: Tensor | int, batch: int, n_acoustic: int, device: torch.device) -> Tensor:
    """``level_logits``' ``level`` (one predicted level for every sequence, or one each) as LongTensor ``[batch]``;
    ``ValueError`` for a level outside ``[0, n_acoustic)``."""
    levels = torch.as_tensor(level, dtype=torch.long, device=device).expand(batch)  # [B]
    if int(levels.min()) < 0 or int(levels.max()) >= n_acoustic:
        raise ValueError(f"level must lie in [0, {n_acoustic}), got {levels.tolist()}")
    return levels
