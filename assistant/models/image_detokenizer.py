"""Small image codec: 32 discrete codes <-> a 64x64 RGB image (the embedded stand-in for SEED's 32 tokens).

decode: codes [N] -> embedding [N, code_dim] -> Linear -> [C, 4, 4] -> k x (ConvTranspose stride 2) -> [3, H, W]
        -> sigmoid.
encode: image [H, W, 3] uint8 -> k x (Conv stride 2) -> [C, 4, 4] -> Linear -> [N, code_dim] -> nearest code.

Token count policy (``fit_token_count``): an empty list always raises ``ValueError``. With ``strict=True`` (the
default) any other wrong count raises ``ValueError``; with ``strict=False`` a short list is padded by repeating its
last code and a long list is truncated, a warning is logged and the returned ``adjusted`` flag is True.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from assistant.models.checkpoint_io import Checkpointed

logger = logging.getLogger(__name__)

BASE_GRID = 4  # the linear layer maps the token sequence to a [channels, 4, 4] seed grid


@dataclass(frozen=True)
class ImageCodecConfig:
    """Configuration of ``ImageDetokenizer``.

    tokens_per_image: codes per image (AnyGPT/SEED: 32). codebook_size: code vocabulary.
    image_size: output side in pixels (4 * 2**k). code_dim: code embedding width.
    channels: conv width at the 4x4 seed grid (halved per upsampling stage, at least 16).
    seed: random-init seed. format_version: checkpoint format version.
    """

    FORMAT_VERSION: ClassVar[int] = 1

    tokens_per_image: int = 32
    codebook_size: int = 1024
    image_size: int = 64
    code_dim: int = 64
    channels: int = 128
    seed: int = 0
    format_version: int = 1

    def __post_init__(self) -> None:
        if self.tokens_per_image < 1 or self.codebook_size < 2 or self.code_dim < 1 or self.channels < 1:
            raise ValueError("tokens_per_image, code_dim, channels must be >= 1 and codebook_size >= 2")
        side = self.image_size
        if side < 2 * BASE_GRID or side % BASE_GRID or (side // BASE_GRID) & (side // BASE_GRID - 1):
            raise ValueError(f"image_size must be 4 * 2**k with k >= 1, got {side}")
        if self.format_version != self.FORMAT_VERSION:
            raise ValueError(f"format_version {self.format_version} != supported {self.FORMAT_VERSION}")

    @property
    def n_upsample(self) -> int:
        return (self.image_size // BASE_GRID).bit_length() - 1

    def stage_channels(self) -> list[int]:
        """Channel width at each resolution from 4x4 up to image_size (length n_upsample + 1)."""
        return [max(16, self.channels >> i) for i in range(self.n_upsample + 1)]


def fit_token_count(codes: list[int], expected: int, *, strict: bool = True) -> tuple[list[int], bool]:
    """Apply the token-count policy (see module docstring). Returns (codes, adjusted)."""
    if len(codes) == 0:
        raise ValueError(f"image has no tokens; expected {expected}")
    if len(codes) == expected:
        return list(codes), False
    if strict:
        raise ValueError(f"image has {len(codes)} tokens, expected exactly {expected}")
    if len(codes) < expected:
        fixed = list(codes) + [codes[-1]] * (expected - len(codes))
        logger.warning("image has %d tokens, expected %d: padded with the last code", len(codes), expected)
    else:
        fixed = list(codes[:expected])
        logger.warning("image has %d tokens, expected %d: truncated", len(codes), expected)
    return fixed, True


class ImageDetokenizer(Checkpointed, nn.Module):
    KIND: ClassVar[str] = "image_codec"
    CONFIG_CLASS: ClassVar[type] = ImageCodecConfig

    def __init__(self, config: ImageCodecConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or ImageCodecConfig()
        widths = cfg.stage_channels()
        seed_size = widths[0] * BASE_GRID * BASE_GRID
        # decoder
        self.code_embed = nn.Embedding(cfg.codebook_size, cfg.code_dim)
        self.to_grid = nn.Linear(cfg.tokens_per_image * cfg.code_dim, seed_size)
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[i], widths[i + 1], kernel_size=4, stride=2, padding=1)
            for i in range(cfg.n_upsample)
        )
        self.to_rgb = nn.Conv2d(widths[-1], 3, kernel_size=3, padding=1)
        # encoder
        self.from_rgb = nn.Conv2d(3, widths[-1], kernel_size=3, padding=1)
        self.down = nn.ModuleList(
            nn.Conv2d(widths[i + 1], widths[i], kernel_size=4, stride=2, padding=1)
            for i in reversed(range(cfg.n_upsample))
        )
        self.to_codes = nn.Linear(seed_size, cfg.tokens_per_image * cfg.code_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        gen = torch.Generator().manual_seed(self.config.seed)
        with torch.no_grad():
            for name, param in self.named_parameters():
                if name.endswith("bias"):
                    param.zero_()
                elif name == "code_embed.weight":
                    param.normal_(0.0, 1.0, generator=gen)
                else:
                    fan_in = param[0].numel() if not name.startswith("up.") else param.shape[0] * 4
                    param.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=gen)

    def _validate(self, codes: Tensor) -> None:
        cfg = self.config
        if codes.shape != (cfg.tokens_per_image,):
            raise ValueError(f"expected {cfg.tokens_per_image} codes, got shape {tuple(codes.shape)}")
        if int(codes.min()) < 0 or int(codes.max()) >= cfg.codebook_size:
            raise ValueError(f"image codes must lie in [0, {cfg.codebook_size})")

    def forward(self, codes: Tensor) -> Tensor:
        """codes ``[B, N]`` -> RGB in [0, 1] ``[B, 3, H, W]``."""
        cfg = self.config
        batch = codes.shape[0]
        x = self.code_embed(codes).reshape(batch, cfg.tokens_per_image * cfg.code_dim)  # [B, N * E]
        x = self.to_grid(x).view(batch, -1, BASE_GRID, BASE_GRID)  # [B, C0, 4, 4]
        for layer in self.up:
            x = torch.relu(layer(x))  # [B, C_{i+1}, 2h, 2w]
        return torch.sigmoid(self.to_rgb(x))  # [B, 3, H, W]

    @torch.no_grad()
    def decode_image(self, codes: list[int], *, strict: bool = True) -> Tensor:
        """codes (list of ints) -> float RGB ``[3, H, W]`` in [0, 1]."""
        fixed, _ = fit_token_count(list(codes), self.config.tokens_per_image, strict=strict)
        tensor = torch.tensor(fixed, dtype=torch.long)  # [N]
        self._validate(tensor)
        return self(tensor[None])[0]

    @torch.no_grad()
    def decode_png(self, codes: list[int], *, strict: bool = True) -> bytes:
        """codes -> PNG bytes of an ``image_size`` x ``image_size`` RGB image."""
        from PIL import Image

        rgb = self.decode_image(codes, strict=strict)  # [3, H, W]
        pixels = (rgb.permute(1, 2, 0).clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()  # [H, W, 3]
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        return buffer.getvalue()

    @torch.no_grad()
    def encode(self, image: np.ndarray | Tensor) -> list[int]:
        """uint8 image ``[H, W, 3]`` (resized to image_size if needed) -> ``tokens_per_image`` codes."""
        cfg = self.config
        pixels = torch.as_tensor(np.asarray(image))
        if pixels.dim() != 3 or pixels.shape[-1] != 3:
            raise ValueError(f"expected an RGB image [H, W, 3], got shape {tuple(pixels.shape)}")
        x = pixels.permute(2, 0, 1).float()[None] / 255.0  # [1, 3, H, W]
        if x.shape[-2:] != (cfg.image_size, cfg.image_size):
            x = nn.functional.interpolate(x, size=(cfg.image_size, cfg.image_size), mode="bilinear", align_corners=False)
        x = torch.relu(self.from_rgb(x))  # [1, C_last, H, W]
        for layer in self.down:
            x = torch.relu(layer(x))  # [1, C_{i}, h/2, w/2]
        latents = self.to_codes(x.flatten(1)).view(cfg.tokens_per_image, cfg.code_dim)  # [N, E]
        book = self.code_embed.weight  # [K, E]
        distances = latents.pow(2).sum(-1, keepdim=True) - 2.0 * latents @ book.T + book.pow(2).sum(-1)[None]
        return distances.argmin(dim=-1).tolist()  # [N]

