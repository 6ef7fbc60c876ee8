"""AnyGPT's music tokens: L-level codes flattened frame-major, and their re-alignment when the LM skips a level.

Flattening (AnyGPT, frame-major): for frame t and level l the token is ``code[l, t] + codebook_size * l``; so the
level of a token is ``token // codebook_size``. Tokens are music-local ids in [0, L * K), not LM vocabulary ids.
Both music codecs (embedded and Encodec) read and write this layout.

Re-alignment in ``realign_tokens`` (the LM may skip or repeat a level):
- a token whose level is *higher* than the next expected level of the current frame fills the skipped levels of
  that frame from the previous frame, then takes its place;
- a token whose level is *not higher* (a repeat, or a level 0 arriving early) closes the current frame (missing
  levels filled from the previous frame) and starts a new frame; if that token is not level 0, the new frame's
  lower levels are filled from the previous frame;
- a trailing incomplete frame is completed the same way;
- with no previous frame, missing levels are filled with code 0.
Each filled level counts as one repair. Tokens outside [0, L * K) raise ``ValueError``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def flatten_codes(codes: Tensor, codebook_size: int) -> list[int]:
    """codes ``[L, T]`` -> frame-major tokens ``[T * L]`` with token = code + codebook_size * level."""
    if codes.dim() != 2:
        raise ValueError(f"codes must be [L, T], got {tuple(codes.shape)}")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= codebook_size):
        raise ValueError(f"codes must lie in [0, {codebook_size})")
    offsets = torch.arange(codes.shape[0])[:, None] * codebook_size  # [L, 1]
    return (codes.long() + offsets).T.reshape(-1).tolist()


def realign_tokens(tokens: list[int], n_codebooks: int, codebook_size: int) -> tuple[Tensor, int]:
    """Tokens -> (codes ``[L, T]``, number of repaired slots). See the module docstring for the rules."""
    frames: list[list[int]] = []
    current: list[int] = []
    repairs = 0

    def filler(level: int) -> int:
        return frames[-1][level] if frames else 0

    def complete(frame: list[int]) -> list[int]:
        nonlocal repairs
        repairs += n_codebooks - len(frame)
        return frame + [filler(level) for level in range(len(frame), n_codebooks)]

    for token in tokens:
        token = int(token)
        if not 0 <= token < n_codebooks * codebook_size:
            raise ValueError(f"music token {token} outside [0, {n_codebooks * codebook_size})")
        level, code = divmod(token, codebook_size)
        if level < len(current):  # repeat / early restart: close the frame
            frames.append(complete(current))
            current = []
        while len(current) < level:  # skipped levels
            current.append(filler(len(current)))
            repairs += 1
        current.append(code)
        if len(current) == n_codebooks:
            frames.append(current)
            current = []
    if current:
        frames.append(complete(current))
    if not frames:
        return torch.zeros(n_codebooks, 0, dtype=torch.long), repairs
    return torch.tensor(frames, dtype=torch.long).T.contiguous(), repairs  # [L, T]


def unflatten_tokens(tokens: list[int], n_codebooks: int, codebook_size: int) -> Tensor:
    """Tokens -> codes ``[L, T]`` (with re-alignment; see ``realign_tokens``)."""
    return realign_tokens(tokens, n_codebooks, codebook_size)[0]
