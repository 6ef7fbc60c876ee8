"""Training of the image VQ autoencoder (``assistant.models.embedded.image.ImageDetokenizer``).

The training set is rendered here: every ``ImageSpec`` (shape x colour x background x size) at jitter 0 (the
canonical pictures that "draw ..." replies use) and at jitters 1..``jitters`` (the pictures users show). Each batch
holds a fixed share of canonical pictures so that their codes reconstruct best.

Schedule, counted in optimiser steps only (``ImageFitSettings.steps``), so a seed gives the same model on any machine
of a device type (wall-clock time is reported, never used to decide anything):
1. ``warmup_steps`` as a plain autoencoder (no quantiser), so the latents mean something before codes are placed;
2. k-means++ then Lloyd iterations place each level's codebook on a sample of latents (level 2 on what level 1 leaves);
3. VQ training: straight-through gradients, commitment loss, EMA codebook updates (Laplace-smoothed counts) and
   dead-code restarts onto the batch's worst-quantised vectors; the learning rate warms up over 50 steps, then
   decays on a cosine to 0 at ``steps``.

No early stopping: the pictures the codec must reconstruct best (the canonical ones the LM draws) are a closed set
and are in the training set by design, so a held-out error would not measure overfitting, only the jittered
variants the codec sees anyway; more steps were measured to be what improves the decoded outlines (see
``ImageFitSettings``); and a stop before ``steps`` would cut the cosine decay short, leaving the weights and the EMA
codebooks at a high learning rate. ``steps`` alone is the budget.

``device``: the CPU (default) or a CUDA device, where the encoder and decoder run under bfloat16 autocast
(``training.device``); quantisation, the codebook updates and the loss stay in float32, the data order and the
k-means draws come from CPU generators, and the returned model is on the CPU in float32.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from assistant.models.embedded.image import ImageCodecConfig, ImageDetokenizer
from assistant.modules.quantization import nearest_codes
from training.device import mixed_precision, training_device
from training.fitting import kmeans
from training.images import all_specs, render
from training.judges.image import judge_image
from training.specs import ImageSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageFitSettings:
    """Hyper-parameters of ``fit_image_codec``.

    steps: optimiser steps in all (warm-up included). warmup_steps: steps without the quantiser.
    batch_size / canonical_share: pictures per batch and the share of them drawn from the canonical ones.
    jitters: jittered renderings per spec (jitter values 1..jitters). lr: peak Adam learning rate (cosine decay).
    commitment: weight of ||z - sg(q)||^2. ema_decay: codebook EMA decay.
    restart_every / dead_count: every ``restart_every`` steps, codes whose EMA count is below ``dead_count`` move to
    the batch's worst-quantised vectors. kmeans_sample / kmeans_iters: the k-means initialisation.
    shape_weight / edge_weight: extra loss weight on shape / edge pixels (see ``_pixel_weights``); the loss is the
    weighted sum of |error| and error^2. log_every: steps between log lines.

    The defaults were tuned on 2 CPU threads, where the whole stage (8000 steps, rendering and metrics included)
    took 4.8 minutes in run 3. Measured: the decoded shape
    is mostly lost at the outline (circles turning squarish, star points rounding off), and more optimiser steps are
    what fixes it, so batches are small (16: about twice the steps per minute of 32), half of each batch is
    canonical (the pictures the LM draws) and the loss weights edge pixels 16x (shape interior 4x).
    """

    steps: int = 8000
    warmup_steps: int = 300
    batch_size: int = 16
    canonical_share: float = 0.5
    jitters: int = 24
    lr: float = 3e-3
    shape_weight: float = 4.0
    edge_weight: float = 16.0
    commitment: float = 0.25
    ema_decay: float = 0.95
    restart_every: int = 50
    dead_count: float = 0.05
    kmeans_sample: int = 8192
    kmeans_iters: int = 12
    log_every: int = 100

    def __post_init__(self) -> None:
        if self.steps < 1 or not 0 <= self.warmup_steps < self.steps or self.batch_size < 1 or self.jitters < 0:
            raise ValueError("need steps >= 1, 0 <= warmup_steps < steps, batch_size >= 1, jitters >= 0")
        if not 0.0 <= self.canonical_share <= 1.0 or not 0.0 < self.ema_decay < 1.0:
            raise ValueError("canonical_share must lie in [0, 1] and ema_decay in (0, 1)")


def render_set(specs: Sequence[ImageSpec], image_size: int) -> np.ndarray:
    """Pictures of ``specs`` as ``uint8 [M, S, S, 3]``."""
    return np.stack([render(spec, image_size) for spec in specs])


class _EmaCodebook:
    """EMA statistics of one level's block of ``model.codebook`` (training only: not part of the checkpoint)."""

    def __init__(self, model: ImageDetokenizer, level: int, decay: float) -> None:
        cfg = model.config
        self.model, self.decay = model, decay
        self.first, self.size = level * cfg.codes_per_level, cfg.codes_per_level
        book = model.codebook[self.first : self.first + self.size]
        self.counts = torch.ones(self.size, device=book.device)  # [K_l]
        self.sums = book.clone()  # [K_l, D]

    @property
    def book(self) -> Tensor:
        return self.model.codebook[self.first : self.first + self.size]

    def update(self, inputs: Tensor, codes: Tensor) -> None:
        """inputs ``[P, D]`` quantised to global ``codes`` ``[P]``."""
        index = codes - self.first
        counts = torch.bincount(index, minlength=self.size).float()
        sums = torch.zeros_like(self.sums).index_add_(0, index, inputs)
        self.counts.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
        self.sums.mul_(self.decay).add_(sums, alpha=1.0 - self.decay)
        total = self.counts.sum()
        smoothed = (self.counts + 1e-5) / (total + self.size * 1e-5) * total  # Laplace smoothing
        self.book.copy_(self.sums / smoothed[:, None])

    def restart_dead(self, inputs: Tensor, errors: Tensor, threshold: float, gen: torch.Generator) -> int:
        """Move codes with EMA count < threshold onto inputs drawn in proportion to their quantisation error (drawn
        on the CPU with ``gen``: the same draws on any device)."""
        dead = torch.nonzero(self.counts < threshold).flatten()
        if len(dead) == 0 or float(errors.sum()) <= 0.0:
            return 0
        weights = errors.float().cpu()
        picks = torch.multinomial(weights, len(dead), replacement=len(dead) > len(weights), generator=gen)
        picks = picks.to(inputs.device)
        self.book[dead] = inputs[picks]
        self.sums[dead] = inputs[picks]
        self.counts[dead] = 1.0
        return len(dead)


def _batch(train: np.ndarray, n_canonical: int, settings: ImageFitSettings, gen: torch.Generator) -> Tensor:
    """A batch of pictures as float ``[B, 3, S, S]``: canonical ones first (rows < n_canonical), then any."""
    n_canon = round(settings.batch_size * settings.canonical_share)
    rows = torch.cat(
        [
            torch.randint(n_canonical, (n_canon,), generator=gen),
            torch.randint(len(train), (settings.batch_size - n_canon,), generator=gen),
        ]
    )
    return torch.from_numpy(train[rows.numpy()]).permute(0, 3, 1, 2).float() / 255.0


def _pixel_weights(images: Tensor, shape_weight: float, edge_weight: float) -> Tensor:
    """Per-pixel loss weights ``[B, 1, S, S]``: 1 on the background, up to 1 + shape_weight on the shape (pixels far
    from the median border colour), so the small shape is not drowned by the background, plus up to edge_weight
    next to an edge (the outline is what tells the shapes apart)."""
    border = torch.cat([images[..., 0, :], images[..., -1, :], images[..., :, 0], images[..., :, -1]], dim=-1)
    background = border.median(dim=-1).values  # [B, 3]
    distance = (images - background[..., None, None]).pow(2).sum(1, keepdim=True).sqrt()  # [B, 1, S, S]
    fg = (distance / 0.3).clamp(max=1.0)
    edge = nn.functional.max_pool2d(fg, kernel_size=3, stride=1, padding=1) + nn.functional.max_pool2d(
        -fg, kernel_size=3, stride=1, padding=1
    )  # [B, 1, S, S]: local max - local min, 1 on both sides of an edge
    return 1.0 + shape_weight * fg + edge_weight * edge


def _cells(latents: Tensor) -> Tensor:
    return latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])  # [B*g*g, D]


def fit_image_codec(
    config: ImageCodecConfig,
    *,
    seed: int,
    settings: ImageFitSettings | None = None,
    specs: Sequence[ImageSpec] | None = None,
    device: str = "cpu",
) -> tuple[ImageDetokenizer, dict]:
    """Render the training set, train the VQ autoencoder for ``settings.steps`` steps on ``device`` (``"cpu"``,
    ``"cuda"`` or ``"cuda:N"``), return (model in eval mode, on the CPU, float32; metrics).

    ``specs`` (default: all 144 canonical specs) are rendered at jitter 0 and at jitters 1..settings.jitters.
    Metrics: canonical_mse, jittered_mse, live_codes, live_codes_per_level (``codec_metrics``), steps, seconds,
    device, restarts, first_mse and last_mse (mean of the last 20 steps' batch MSE).
    """
    settings = settings or ImageFitSettings()
    where = training_device(device)
    start = time.monotonic()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)  # data order, k-means and restarts: CPU draws, the same on any device
    canonical = list(specs or all_specs(0))
    jittered = [
        ImageSpec(s.shape, s.colour, s.background, s.size, j) for j in range(1, settings.jitters + 1) for s in canonical
    ]
    train = render_set(canonical + jittered, config.image_size)  # [M, S, S, 3], canonical first
    log.info("image codec: %d training pictures rendered in %.1fs", len(train), time.monotonic() - start)

    model = ImageDetokenizer(dataclasses.replace(config, seed=config.seed + seed)).to(where)
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr, betas=(0.9, 0.99))
    books: list[_EmaCodebook] = []
    restarts = 0
    first_mse = float("nan")
    recent: deque[Tensor] = deque(maxlen=20)  # the last steps' batch MSE, left on the device (no sync per step)
    for step in range(settings.steps):
        progress = step / settings.steps
        for group in optimiser.param_groups:  # linear warm-up over 50 steps, then cosine decay to 0
            group["lr"] = settings.lr * min(1.0, (step + 1) / 50) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if not books and step >= settings.warmup_steps:
            books = _init_codebooks(model, train, settings, gen)
        images = _batch(train, len(canonical), settings, gen).to(where)  # [B, 3, S, S]
        with mixed_precision(where):
            latents = model.encode_latents(images).float()  # [B, D, g, g]; quantised in float32
        if books:
            with torch.no_grad():
                quantized, codes, inputs = model.quantize(latents.detach())
            commit = (latents - quantized).pow(2).mean()
            latents = latents + (quantized - latents).detach()  # straight-through
        else:
            commit = torch.zeros((), device=where)
        with mixed_precision(where):
            recon = model.decode_latents(latents)  # [B, 3, S, S]
        error = recon.float() - images  # [B, 3, S, S]
        mse = error.pow(2).mean().detach()
        weights = _pixel_weights(images, settings.shape_weight, settings.edge_weight)  # [B, 1, S, S]
        loss = (weights * (error.abs() + error.pow(2))).mean() + settings.commitment * commit
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if books:
            with torch.no_grad():
                per_level = codes.view(-1, config.levels)  # [B*g*g, L]
                for level, book in enumerate(books):
                    book.update(inputs[level], per_level[:, level])
                if (step + 1) % settings.restart_every == 0 and step + 1 < settings.steps - settings.restart_every:
                    for level, book in enumerate(books):
                        after = (
                            inputs[level + 1]
                            if level + 1 < len(inputs)
                            else inputs[level] - book.book[per_level[:, level] - book.first]
                        )
                        restarts += book.restart_dead(inputs[level], after.pow(2).sum(-1), settings.dead_count, gen)
        recent.append(mse)
        if step == 0:
            first_mse = float(mse)
        if step % settings.log_every == 0:
            log.info("image codec step %d: mse %.5f commit %.5f", step, float(mse), float(commit.detach()))
    model.to(device="cpu", dtype=torch.float32)
    model.eval()
    metrics = codec_metrics(model, train[: len(canonical)], train[len(canonical) :])
    metrics.update(
        steps=settings.steps,
        seconds=round(time.monotonic() - start, 1),
        device=str(where),
        restarts=restarts,
        first_mse=first_mse,
        last_mse=float(torch.stack(list(recent)).mean()),
    )
    log.info("image codec: %s", metrics)
    return model, metrics


def _init_codebooks(
    model: ImageDetokenizer, train: np.ndarray, settings: ImageFitSettings, gen: torch.Generator
) -> list[_EmaCodebook]:
    """k-means initialisation of every level on a sample of training latents (encoded in float32 on the model's
    device; k-means runs on the CPU, where ``gen`` draws)."""
    cfg = model.config
    device = model.codebook.device
    pictures = max(1, settings.kmeans_sample // (cfg.grid * cfg.grid))
    rows = torch.randint(len(train), (pictures,), generator=gen).numpy()
    with torch.no_grad():
        x = torch.from_numpy(train[rows]).permute(0, 3, 1, 2).float() / 255.0
        residual = _cells(model.encode_latents(x.to(device))).cpu()  # [P, D]
        books = []
        for level in range(cfg.levels):
            first = level * cfg.codes_per_level
            model.codebook[first : first + cfg.codes_per_level] = kmeans(
                residual, cfg.codes_per_level, settings.kmeans_iters, gen, init="kmeans++"
            )[0].to(device)
            books.append(_EmaCodebook(model, level, settings.ema_decay))
            book = books[-1].book.cpu()
            chosen = nearest_codes(residual, book)[0]
            residual = residual - book[chosen]
    return books


@torch.no_grad()
def codec_metrics(model: ImageDetokenizer, canonical: np.ndarray, jittered: np.ndarray) -> dict:
    """Reconstruction MSE (pixels in [0, 1]) of canonical and jittered pictures, and live codes per level."""
    cfg = model.config
    out: dict = {}
    used: set[int] = set()
    for name, pictures in (("canonical", canonical), ("jittered", jittered)):
        if len(pictures) == 0:
            continue
        errors = []
        for chunk in np.array_split(pictures, max(1, len(pictures) // 256)):
            codes = model.encode_batch(chunk)  # [b, N]
            used |= set(codes.flatten().tolist())
            recon = model(codes)
            errors.append(float((recon - model.to_unit_tensor(chunk, cfg.image_size)).pow(2).mean()) * len(chunk))
        out[f"{name}_mse"] = sum(errors) / len(pictures)
    out["live_codes"] = len(used)
    out["live_codes_per_level"] = [
        sum(1 for c in used if level * cfg.codes_per_level <= c < (level + 1) * cfg.codes_per_level)
        for level in range(cfg.levels)
    ]
    return out


@torch.no_grad()
def judge_round_trip(model: ImageDetokenizer, specs: Sequence[ImageSpec]) -> dict:
    """Judge accuracy (colour, shape, both) of each spec's rendering and of its encode -> decode reconstruction."""
    size = model.config.image_size
    pictures = render_set(specs, size)
    codes = model.encode_batch(pictures)  # [M, N]
    decoded = (model(codes).permute(0, 2, 3, 1).clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()
    result: dict = {"n": len(specs)}
    for name, images in (("original", pictures), ("decoded", decoded)):
        verdicts = [judge_image(image) for image in images]
        colour = np.mean([v[0] == s.colour for v, s in zip(verdicts, specs, strict=True)])
        shape = np.mean([v[1] == s.shape for v, s in zip(verdicts, specs, strict=True)])
        both = np.mean([v == (s.colour, s.shape) for v, s in zip(verdicts, specs, strict=True)])
        result[name] = {"colour": float(colour), "shape": float(shape), "both": float(both)}
    return result
