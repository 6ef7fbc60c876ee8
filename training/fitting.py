"""k-means, and residual k-means of codebooks: how the embedded codecs' codebooks are fitted.

One k-means serves every codec: the speech and music codebooks (``fit_residual_codebooks``, one level after
another on what the earlier levels leave) and the initial codebook of the image VQ (``training/fit_image_codec.py``,
seeded with k-means++). Lloyd iterations with the codecs' own nearest-codeword search
(``assistant.modules.quantization.nearest_codes``); a code left without vectors is re-seeded with a vector drawn with
probability proportional to its squared distance from its centroid, so no code stays dead. Deterministic for a
generator seed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from assistant.modules.quantization import nearest_codes

INITS = ("random", "kmeans++")


def _plus_plus_seeds(points: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each next seed drawn with probability proportional to its
    squared distance from the nearest seed so far -> ``[k, D]``. With fewer distinct points than seeds, the rest are
    random points."""
    first = int(torch.randint(len(points), (1,), generator=generator))
    seeds = [points[first]]
    nearest = (points - points[first]).pow(2).sum(-1)  # [P]
    for _ in range(1, k):
        if float(nearest.sum()) <= 0.0:
            pick = int(torch.randint(len(points), (1,), generator=generator))
        else:
            pick = int(torch.multinomial(nearest, 1, generator=generator))
        seeds.append(points[pick])
        nearest = torch.minimum(nearest, (points - points[pick]).pow(2).sum(-1))
    return torch.stack(seeds)  # [k, D]


@torch.no_grad()
def kmeans(
    points: Tensor, k: int, iters: int, generator: torch.Generator, *, init: str = "random", chunk: int = 8192
) -> tuple[Tensor, int]:
    """Lloyd iterations on ``points [N, D]`` -> (centroids ``[k, D]``, number of codes re-seeded on the way).

    ``init``: "random" starts from k distinct random points (needs N >= k), "kmeans++" from k-means++ seeds.
    ``chunk`` bounds the distance matrix computed at once (``chunk x k``).
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if init == "random":
        if points.shape[0] < k:
            raise ValueError(f"need at least {k} points for {k} codes, got {points.shape[0]}")
        centroids = points[torch.randperm(points.shape[0], generator=generator)[:k]].clone()  # [k, D]
    else:
        centroids = _plus_plus_seeds(points, k, generator)
    reseeded = 0
    for _ in range(iters):
        assign, distance = nearest_codes(points, centroids, chunk)  # [N], [N]
        sums = torch.zeros_like(centroids).index_add_(0, assign, points)  # [k, D]
        counts = torch.bincount(assign, minlength=k).float()  # [k]
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
        empty = int((~filled).sum())
        if empty:
            weights = distance.clamp(min=0.0) + 1e-12  # [N]
            picks = torch.multinomial(weights, empty, replacement=False, generator=generator)  # [empty]
            centroids[~filled] = points[picks]
            reseeded += empty
    return centroids, reseeded


@torch.no_grad()
def fit_residual_codebooks(
    frames: Tensor,
    codebook_size: int,
    levels: int,
    *,
    iters: int = 12,
    seed: int = 0,
    level1_frames: Tensor | None = None,
    chunk: int = 8192,
    progress: Callable[[str], None] | None = None,
) -> tuple[Tensor, Tensor]:
    """Residual k-means on ``frames [N, D]`` -> (codebooks ``[levels, K, D]``, RMS of what is left after each level
    ``[levels]``).

    Level 1 is fitted on ``level1_frames [N, D]`` when given (the speech codec's normalised frames), else on the
    frames; each later level on the frames minus the codewords the earlier levels chose. ``progress`` receives one
    line per level.
    """
    if frames.dim() != 2:
        raise ValueError(f"expected frames [N, D], got {tuple(frames.shape)}")
    if frames.shape[0] < codebook_size:
        raise ValueError(f"need at least {codebook_size} frames, got {frames.shape[0]}")
    if level1_frames is not None and level1_frames.shape != frames.shape:
        raise ValueError(f"level1_frames {tuple(level1_frames.shape)} must match frames {tuple(frames.shape)}")
    gen = torch.Generator().manual_seed(seed)
    frames = frames.float()
    quantised = torch.zeros_like(frames)  # [N, D]
    books, errors = [], []
    for level in range(levels):
        target = level1_frames.float() if level == 0 and level1_frames is not None else frames - quantised  # [N, D]
        centroids, reseeded = kmeans(target, codebook_size, iters, gen, chunk=chunk)  # [K, D]
        assign = nearest_codes(target, centroids, chunk)[0]  # [N]
        quantised = quantised + centroids[assign]
        books.append(centroids)
        errors.append((frames - quantised).pow(2).mean().sqrt())
        if progress is not None:
            used = int(torch.bincount(assign, minlength=codebook_size).gt(0).sum())
            progress(
                f"level {level + 1}/{levels}: residual RMSE {float(errors[-1]):.3f}, "
                f"{used}/{codebook_size} codes used, {reseeded} re-seeds"
            )
    return torch.stack(books), torch.stack(errors)
