"""The embedded image codec: 32 discrete codes <-> a 64x64 RGB image (the embedded stand-in for SEED's 32 tokens).

A VQ autoencoder with a residual quantiser on a coarse grid. With the defaults the grid is 4x4 cells of 16x16
pixels and each cell gets ``levels`` = 2 codes: 16 cells x 2 levels = 32 tokens.

encode: image [H, W, 3] uint8 -> PixelUnshuffle(p) -> Conv1x1 -> k x (Conv 2x2 stride 2) -> Conv1x1 -> Conv1x1
        -> latents [D, g, g]. The 2x2 stride-2 convolutions do not overlap, so each cell's code describes its own
        block of pixels only (background cells get the same code whatever the shape: easy for the LM to learn).
        -> residual VQ: level l picks the nearest row of its own block of the codebook for what the earlier levels
        left over -> codes, cell-major (raster order of the cells), level-minor.
decode: codes [N] -> codebook rows summed per cell -> [D, g, g] -> Conv1x1 -> ResBlock -> k x (ConvTranspose
        stride 2 -> ResBlock) -> Conv3x3 -> PixelShuffle(p) -> sigmoid -> [3, H, W]; the decoder sees neighbouring
        cells, so edges join up across cells.
The p x p pixel (un)shuffle keeps every convolution at H/p resolution or coarser, which is what makes CPU training
fast enough.

The codebook has ``codebook_size`` rows; level l owns rows ``[l * K / L, (l + 1) * K / L)``, so a token's value tells
its level (code ``c`` at any position decodes to row ``c``: a misplaced code still decodes). Encoding is deterministic
(no sampling; ties go to the lowest index). Training (EMA codebooks, k-means initialisation, dead-code restarts,
straight-through gradients) lives in ``training/fit_image_codec.py``; this module only runs the model.

A code list of the wrong length follows the ``ImageCodec`` token-count policy (``interfaces.fit_token_count``).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from assistant.models.config_io import check_format_version
from assistant.models.interfaces import ImageCodecFromConfig, fit_token_count


@dataclass(frozen=True)
class ImageCodecConfig:
    """Configuration of ``ImageDetokenizer``.

    tokens_per_image: codes per image (AnyGPT/SEED: 32) = grid * grid * levels.
    codebook_size: code vocabulary, split evenly between the levels.
    image_size: image side in pixels; image_size / grid / pixel_shuffle must be a power of two >= 1.
    pixel_shuffle: side of the pixel blocks folded into channels at the input and unfolded at the output.
    levels: residual quantisation levels per grid cell.
    code_dim: latent / codebook width.
    channels: conv width at the grid resolution (halved per doubling of resolution, at least 32).
    seed: random-init seed. format_version: checkpoint format version.
    """

    FORMAT_VERSION: ClassVar[int] = 2

    tokens_per_image: int = 32
    codebook_size: int = 1024
    image_size: int = 64
    pixel_shuffle: int = 4
    levels: int = 2
    code_dim: int = 32
    channels: int = 96
    seed: int = 0
    format_version: int = 2

    def __post_init__(self) -> None:
        if min(self.tokens_per_image, self.levels, self.code_dim, self.channels, self.pixel_shuffle) < 1:
            raise ValueError("tokens_per_image, levels, code_dim, channels, pixel_shuffle must be >= 1")
        cells = self.tokens_per_image // self.levels
        if self.tokens_per_image % self.levels or math.isqrt(cells) ** 2 != cells:
            raise ValueError(f"tokens_per_image / levels must be a square number, got {self.tokens_per_image}")
        if self.codebook_size % self.levels or self.codebook_size // self.levels < 2:
            raise ValueError(f"codebook_size must split into >= 2 codes per level, got {self.codebook_size}")
        stride = self.image_size // (self.grid * self.pixel_shuffle)
        if self.image_size % (self.grid * self.pixel_shuffle) or stride & (stride - 1):
            raise ValueError(
                f"image_size / grid / pixel_shuffle must be a power of two, got {self.image_size} / {self.grid} "
                f"/ {self.pixel_shuffle}"
            )
        check_format_version(self)

    @property
    def input_size(self) -> int:
        return self.image_size  # pictures are read at the size they are drawn

    @property
    def grid(self) -> int:
        """Cells per side of the latent grid."""
        return math.isqrt(self.tokens_per_image // self.levels)

    @property
    def codes_per_level(self) -> int:
        return self.codebook_size // self.levels

    @property
    def n_upsample(self) -> int:
        """Stride-2 stages between the grid and the pixel-shuffled image."""
        return (self.image_size // (self.grid * self.pixel_shuffle)).bit_length() - 1

    def stage_channels(self) -> list[int]:
        """Channel width at each resolution from the grid up to image_size / pixel_shuffle (n_upsample + 1)."""
        return [max(32, self.channels >> i) for i in range(self.n_upsample + 1)]


class ResBlock(nn.Module):
    """x + Conv3x3(ReLU(Conv3x3(ReLU(x)))): context from the neighbouring cells."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(torch.relu(self.conv1(torch.relu(x))))


class ImageDetokenizer(nn.Module, ImageCodecFromConfig):
    """VQ autoencoder: ``encode`` pictures to codes, ``decode_png`` codes to pictures (see the module docstring)."""

    config: ImageCodecConfig
    codebook: Tensor  # [K, D] (buffer: trained by EMA, not by gradient)

    def __init__(self, config: ImageCodecConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or ImageCodecConfig()
        widths = cfg.stage_channels()  # grid resolution first
        # encoder: image -> latents
        folded = 3 * cfg.pixel_shuffle**2
        self.from_rgb = nn.Conv2d(folded, widths[-1], kernel_size=1)
        self.down = nn.ModuleList(
            nn.Conv2d(widths[i + 1], widths[i], kernel_size=2, stride=2) for i in reversed(range(cfg.n_upsample))
        )
        self.enc_mix = nn.Conv2d(widths[0], widths[0], kernel_size=1)
        self.to_latent = nn.Conv2d(widths[0], cfg.code_dim, kernel_size=1)
        # quantiser: level l owns rows [l * K / L, (l + 1) * K / L)
        self.register_buffer("codebook", torch.zeros(cfg.codebook_size, cfg.code_dim))  # [K, D]
        # decoder: latents -> image
        self.from_latent = nn.Conv2d(cfg.code_dim, widths[0], kernel_size=1)
        self.dec_block = ResBlock(widths[0])
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[i], widths[i + 1], kernel_size=4, stride=2, padding=1)
            for i in range(cfg.n_upsample)
        )
        self.up_blocks = nn.ModuleList(ResBlock(widths[i + 1]) for i in range(cfg.n_upsample))
        self.to_rgb = nn.Conv2d(widths[-1], folded, kernel_size=3, padding=1)
        self._init_weights()

    def _init_weights(self) -> None:
        gen = torch.Generator(device="cpu").manual_seed(self.config.seed)

        def normal_(param: Tensor, std: float) -> None:  # drawn on the CPU: same values on any device
            param.copy_(torch.empty(param.shape, device="cpu").normal_(0.0, std, generator=gen))

        with torch.no_grad():
            for name, param in self.named_parameters():
                if name.endswith("bias"):
                    param.zero_()
                else:
                    fan_in = param[0].numel() if not name.startswith("up.") else param.shape[0] * 4
                    normal_(param, (2.0 / fan_in) ** 0.5)
            normal_(self.codebook, 1.0)

    # ----- continuous parts (used by training too) -----------------------------------------------------------------
    def encode_latents(self, images: Tensor) -> Tensor:
        """RGB in [0, 1] ``[B, 3, H, W]`` -> latents ``[B, D, g, g]``."""
        x = nn.functional.pixel_unshuffle(images, self.config.pixel_shuffle)  # [B, 3 p^2, H/p, W/p]
        x = torch.relu(self.from_rgb(x))  # [B, C_last, H/p, W/p]
        for layer in self.down:
            x = torch.relu(layer(x))  # [B, C_i, h/2, w/2]
        return self.to_latent(torch.relu(self.enc_mix(x)))  # [B, D, g, g]

    def decode_latents(self, latents: Tensor) -> Tensor:
        """latents ``[B, D, g, g]`` -> RGB in [0, 1] ``[B, 3, H, W]``."""
        x = self.dec_block(self.from_latent(latents))  # [B, C0, g, g]
        for layer, block in zip(self.up, self.up_blocks, strict=True):
            x = block(torch.relu(layer(torch.relu(x))))  # [B, C_{i+1}, 2h, 2w]
        x = nn.functional.pixel_shuffle(self.to_rgb(torch.relu(x)), self.config.pixel_shuffle)  # [B, 3, H, W]
        return torch.sigmoid(x)

    def quantize(self, latents: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Residual VQ of ``[B, D, g, g]`` -> (quantized ``[B, D, g, g]``, codes ``[B, N]``, per-level residual inputs
        ``[B * g * g, D]`` that each level quantised). No gradient flows through the codes."""
        cfg = self.config
        batch = latents.shape[0]
        residual = latents.permute(0, 2, 3, 1).reshape(-1, cfg.code_dim)  # [B*g*g, D], cells in raster order
        quantized = torch.zeros_like(residual)
        codes, inputs = [], []
        for level in range(cfg.levels):
            first = level * cfg.codes_per_level
            book = self.codebook[first : first + cfg.codes_per_level]  # [K_l, D]
            inputs.append(residual)
            distances = (
                residual.pow(2).sum(-1, keepdim=True) - 2.0 * residual @ book.T + book.pow(2).sum(-1)[None]
            )  # [B*g*g, K_l]
            index = distances.argmin(dim=-1)  # [B*g*g]
            chosen = book[index]  # [B*g*g, D]
            quantized = quantized + chosen
            residual = residual - chosen
            codes.append(index + first)
        grid = cfg.grid
        codes_t = torch.stack(codes, dim=-1).reshape(batch, cfg.tokens_per_image)  # [B, g*g*L] cell-major
        quantized = quantized.view(batch, grid, grid, cfg.code_dim).permute(0, 3, 1, 2)  # [B, D, g, g]
        return quantized, codes_t, inputs

    def codes_to_latents(self, codes: Tensor) -> Tensor:
        """codes ``[B, N]`` -> summed codebook rows per cell ``[B, D, g, g]``."""
        cfg = self.config
        batch = codes.shape[0]
        rows = self.codebook[codes].view(batch, cfg.grid, cfg.grid, cfg.levels, cfg.code_dim)  # [B, g, g, L, D]
        return rows.sum(dim=3).permute(0, 3, 1, 2)  # [B, D, g, g]

    def forward(self, codes: Tensor) -> Tensor:
        """codes ``[B, N]`` -> RGB in [0, 1] ``[B, 3, H, W]``."""
        return self.decode_latents(self.codes_to_latents(codes))

    # ----- public API ----------------------------------------------------------------------------------------------
    def _validate(self, codes: Tensor) -> None:
        cfg = self.config
        if codes.shape != (cfg.tokens_per_image,):
            raise ValueError(f"expected {cfg.tokens_per_image} codes, got shape {tuple(codes.shape)}")
        if int(codes.min()) < 0 or int(codes.max()) >= cfg.codebook_size:
            raise ValueError(f"image codes must lie in [0, {cfg.codebook_size})")

    @torch.no_grad()
    def decode_image(self, codes: list[int], *, strict: bool = True) -> Tensor:
        """codes (list of ints) -> float RGB ``[3, H, W]`` in [0, 1]."""
        fixed, _ = fit_token_count(list(codes), self.config.tokens_per_image, strict=strict)
        tensor = torch.tensor(fixed, dtype=torch.long)  # [N]
        self._validate(tensor)
        return self(tensor[None])[0]

    @torch.no_grad()
    def decode_pixels(self, codes: list[int], *, strict: bool = True) -> np.ndarray:
        """codes -> ``uint8 [H, W, 3]``."""
        rgb = self.decode_image(codes, strict=strict)  # [3, H, W]
        return (rgb.permute(1, 2, 0).clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()

    @torch.no_grad()
    def decode_png(self, codes: list[int], *, strict: bool = True) -> bytes:
        """codes -> PNG bytes of an ``image_size`` x ``image_size`` RGB image."""
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(self.decode_pixels(codes, strict=strict)).save(buffer, format="PNG")
        return buffer.getvalue()

    @staticmethod
    def to_unit_tensor(images: np.ndarray | Tensor, image_size: int) -> Tensor:
        """uint8 ``[H, W, 3]`` or ``[B, H, W, 3]`` -> float ``[B, 3, S, S]`` in [0, 1] (bilinear resize if needed)."""
        pixels = torch.as_tensor(np.asarray(images))
        if pixels.dim() == 3:
            pixels = pixels[None]
        if pixels.dim() != 4 or pixels.shape[-1] != 3:
            raise ValueError(f"expected an RGB image [H, W, 3], got shape {tuple(pixels.shape)}")
        x = pixels.permute(0, 3, 1, 2).float() / 255.0  # [B, 3, H, W]
        if x.shape[-2:] != (image_size, image_size):
            x = nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
        return x

    @torch.no_grad()
    def encode_batch(self, images: np.ndarray | Tensor) -> Tensor:
        """uint8 ``[B, H, W, 3]`` -> codes ``[B, N]``."""
        x = self.to_unit_tensor(images, self.config.image_size)
        return self.quantize(self.encode_latents(x))[1]

    @torch.no_grad()
    def encode(self, image: np.ndarray | Tensor) -> list[int]:
        """uint8 image ``[H, W, 3]`` (resized to image_size if needed) -> ``tokens_per_image`` codes."""
        if np.asarray(image).ndim != 3:
            raise ValueError(f"expected an RGB image [H, W, 3], got shape {tuple(np.asarray(image).shape)}")
        return self.encode_batch(image)[0].tolist()
