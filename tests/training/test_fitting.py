"""One k-means for every codec (``training/fitting.py``): it fits the speech codebooks exactly as the speech codec's
own k-means did, seeds the image codebooks with the image fitter's former k-means++, and never leaves a code dead."""

import pytest
import torch

from training.fitting import _plus_plus_seeds, fit_residual_codebooks, kmeans


def _speech_codecs_former_kmeans(vectors, k, iters, gen, chunk):
    """``MelRVQCodec._kmeans`` + ``_assign`` as they were, before the one k-means replaced them."""

    def assign(centroids):
        indices, distances = [], []
        c_norm = centroids.pow(2).sum(-1)[None, :]
        for start in range(0, vectors.shape[0], chunk):
            block = vectors[start : start + chunk]
            best, index = (c_norm - 2.0 * block @ centroids.T).min(dim=-1)
            indices.append(index)
            distances.append(best + block.pow(2).sum(-1))
        return torch.cat(indices), torch.cat(distances)

    centroids = vectors[torch.randperm(vectors.shape[0], generator=gen)[:k]].clone()
    reseeded = 0
    for _ in range(iters):
        index, distance = assign(centroids)
        sums = torch.zeros_like(centroids).index_add_(0, index, vectors)
        counts = torch.bincount(index, minlength=k).float()
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
        empty = int((~filled).sum())
        if empty:
            picks = torch.multinomial(distance.clamp(min=0.0) + 1e-12, empty, replacement=False, generator=gen)
            centroids[~filled] = vectors[picks]
            reseeded += empty
    return centroids, reseeded


def _clustered(seed: int, noise: float = 0.1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(6, 4, generator=gen) * 5
    return centres[torch.randint(0, 6, (400,), generator=gen)] + noise * torch.randn(400, 4, generator=gen)


def test_random_init_kmeans_is_the_speech_codecs_former_one():
    points = torch.cat([_clustered(0), _clustered(0, noise=0.0)])  # exact repeats: codes that start equal go empty
    got = kmeans(points, 32, 6, torch.Generator().manual_seed(1), chunk=100)
    want = _speech_codecs_former_kmeans(points, 32, 6, torch.Generator().manual_seed(1), chunk=100)
    assert torch.equal(got[0], want[0]) and got[1] == want[1] and got[1] > 0  # codes were re-seeded


def test_plus_plus_seeding_is_the_image_fitters_former_one():
    points = _clustered(2)
    gen, ref = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    seeds = _plus_plus_seeds(points, 8, gen)
    first = int(torch.randint(len(points), (1,), generator=ref))
    want, nearest = [points[first]], (points - points[first]).pow(2).sum(-1)
    for _ in range(7):
        pick = int(torch.multinomial(nearest, 1, generator=ref))
        want.append(points[pick])
        nearest = torch.minimum(nearest, (points - points[pick]).pow(2).sum(-1))
    assert torch.equal(seeds, torch.stack(want))
    centroids, _ = kmeans(points, 8, 4, torch.Generator().manual_seed(3), init="kmeans++")
    assert centroids.shape == (8, 4) and torch.isfinite(centroids).all()


def test_kmeans_rejects_what_it_cannot_do():
    with pytest.raises(ValueError, match="init"):
        kmeans(_clustered(0), 4, 1, torch.Generator(), init="forgy")
    with pytest.raises(ValueError, match="at least 16 points"):
        kmeans(torch.zeros(8, 2), 16, 1, torch.Generator())


def test_residual_codebooks_shrink_the_error_level_by_level():
    frames = _clustered(4) + 0.5 * torch.randn(400, 4, generator=torch.Generator().manual_seed(5))
    lines = []
    books, errors = fit_residual_codebooks(frames, 16, 3, iters=4, seed=0, progress=lines.append)
    assert books.shape == (3, 16, 4) and errors.shape == (3,)
    assert bool((errors[1:] <= errors[:-1] + 1e-6).all()) and len(lines) == 3 and "level 3/3" in lines[-1]
    again, _ = fit_residual_codebooks(frames, 16, 3, iters=4, seed=0)
    assert torch.equal(books, again)  # seeded
    with pytest.raises(ValueError, match="at least 16 frames"):
        fit_residual_codebooks(frames[:8], 16, 3)
    with pytest.raises(ValueError, match="level1_frames"):
        fit_residual_codebooks(frames, 16, 3, level1_frames=frames[:10])
