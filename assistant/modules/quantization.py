"""Nearest-codeword search and residual vector quantisation over plain codebook tensors.

Used by the embedded codecs (speech: log-mel frames, music: log-magnitude frames) and by the k-means that fits their
codebooks (``training/fitting.py``). Distances are squared L2 in the form ``|c|^2 - 2 v.c`` (``|v|^2`` is the same
for every codeword, so it is added only where the distance itself is wanted). The AnyGPT family's quantisers keep
their reference's three-term form instead (``anygpt/speech.py``, ``anygpt/image.py``), so that near-ties break as
upstream breaks them.
"""

from __future__ import annotations

import torch
from torch import Tensor


def nearest_codes(vectors: Tensor, book: Tensor, chunk: int = 8192) -> tuple[Tensor, Tensor]:
    """For each of ``vectors [N, D]``, the index of the nearest codeword of ``book [K, D]`` and its squared distance:
    (``[N]`` long, ``[N]`` float). ``chunk`` rows at a time, so an [N, K] distance matrix never has to fit at once;
    ties go to the lowest index."""
    book_norm = book.pow(2).sum(-1)[None, :]  # [1, K]
    indices, distances = [], []
    for block in vectors.split(chunk):  # [n, D]
        best, index = (book_norm - 2.0 * block @ book.T).min(dim=-1)  # [n], [n]
        indices.append(index)
        distances.append(best + block.pow(2).sum(-1))
    if not indices:
        return torch.zeros(0, dtype=torch.long, device=vectors.device), vectors.new_zeros(0)
    return torch.cat(indices), torch.cat(distances)


def residual_quantize(
    codebooks: Tensor, vectors: Tensor, level1_vectors: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Residual VQ: at each level pick the nearest codeword of what the earlier levels left, and add it up.

    codebooks ``[L, K, D]``; vectors ``[N, D]``. ``level1_vectors [N, D]``, when given, is what level 1 matches
    instead of ``vectors`` (the speech codec's normalised frames); what later levels match is still ``vectors`` minus
    the codewords chosen so far. Returns (codes ``[L, N]`` long, quantised ``[N, D]`` = sum of the chosen codewords).
    """
    quantised = torch.zeros_like(vectors)  # [N, D]
    codes = []
    for level in range(codebooks.shape[0]):
        book = codebooks[level]  # [K, D]
        target = level1_vectors if level == 0 and level1_vectors is not None else vectors - quantised  # [N, D]
        index = nearest_codes(target, book)[0]  # [N]
        quantised = quantised + book[index]
        codes.append(index)
    if not codes:
        return torch.zeros(0, vectors.shape[0], dtype=torch.long, device=vectors.device), quantised
    return torch.stack(codes), quantised
