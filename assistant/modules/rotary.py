"""Rotary position embeddings, rotate-half convention (GPT-NeoX / LLaMA / SoundStorm).

Channel j of a head is paired with channel j + dim_head / 2 and the pair is rotated by ``position * freq_j``, with
``freq_j = base ** (-2j / dim_head)``. One implementation for the acoustic conformers (tables from
``rotary_angles``) and the LM runner (tables from transformers' ``rotary_emb``, whose layout is the same)::

    angles = rotary_angles(T, dh, base, device)        # [T, dh] float32
    q = apply_rotary(q, angles.cos(), angles.sin())    # q [B, H, T, dh]
"""

from __future__ import annotations

import torch
from torch import Tensor


def rotary_angles(length: int, dim_head: int, base: float, device: torch.device) -> Tensor:
    """Rotation angles ``[T, dim_head]`` in float32; both halves of the last axis hold the same ``position * freq``."""
    inv_freq = 1.0 / (base ** (torch.arange(0, dim_head, 2, device=device, dtype=torch.float32) / dim_head))
    angles = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inv_freq[None, :]  # [T, dh/2]
    return torch.cat([angles, angles], dim=-1)  # [T, dh]


def rotate_half(x: Tensor) -> Tensor:
    """``[..., dh]`` -> ``[-x2, x1]`` where x1, x2 are the two halves of the last axis."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """``x [..., T, dh]`` rotated by position (``cos`` / ``sin`` broadcast to it), in the dtype of the inputs."""
    return x * cos + rotate_half(x) * sin
