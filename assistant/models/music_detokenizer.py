"""Small music codec: residual codes [L, T] at 50 Hz <-> 16 kHz waveform, plus AnyGPT's token flattening.

Flattening (AnyGPT, frame-major): for frame t and level l the token is ``code[l, t] + codebook_size * l``; so the
level of a token is ``token // codebook_size``. Tokens here are music-local ids in [0, L * K), not LM vocab ids.

Re-alignment in ``realign_tokens`` (the LM may skip or repeat a level):
- a token whose level is *higher* than the next expected level of the current frame fills the skipped levels of
  that frame from the previous frame, then takes its place;
- a token whose level is *not higher* (a repeat, or a level 0 arriving early) closes the current frame (missing
  levels filled from the previous frame) and starts a new frame; if that token is not level 0, the new frame's
  lower levels are filled from the previous frame;
- a trailing incomplete frame is completed the same way;
- with no previous frame, missing levels are filled with code 0.
Each filled level counts as one repair. Tokens outside [0, L * K) raise ``ValueError``.

Network: decode = sum of the per-level code embeddings [T, D] -> ConvTranspose1d stack (product of strides = hop)
-> tanh wave. encode = Conv1d stack -> [T, D] latents -> residual nearest-code against the same embeddings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from assistant.models.checkpoint_io import Checkpointed


@dataclass(frozen=True)
class MusicCodecConfig:
    """Configuration of ``MusicDetokenizer``.

    n_codebooks: residual levels per frame (AnyGPT/Encodec: 4). codebook_size: codes per level.
    frame_rate / sample_rate: code frame rate and wave rate (hop = sample_rate / frame_rate).
    dim: code embedding width. channels: conv width. strides: upsampling strides, product must equal hop.
    seed: random-init seed. format_version: checkpoint format version.
    """

    FORMAT_VERSION: ClassVar[int] = 1

    n_codebooks: int = 4
    codebook_size: int = 256
    frame_rate: int = 50
    sample_rate: int = 16000
    dim: int = 128
    channels: int = 64
    strides: tuple[int, ...] = (4, 4, 4, 5)
    seed: int = 0
    format_version: int = 1

    def __post_init__(self) -> None:
        if self.n_codebooks < 1 or self.codebook_size < 2 or self.dim < 1 or self.channels < 1:
            raise ValueError("n_codebooks, dim, channels must be >= 1 and codebook_size >= 2")
        if self.frame_rate <= 0 or self.sample_rate % self.frame_rate:
            raise ValueError(f"frame_rate {self.frame_rate} must divide sample_rate {self.sample_rate}")
        if not self.strides or any(s < 1 for s in self.strides) or math.prod(self.strides) != self.hop:
            raise ValueError(f"strides {self.strides} must be positive with product hop={self.hop}")
        if self.format_version != self.FORMAT_VERSION:
            raise ValueError(f"format_version {self.format_version} != supported {self.FORMAT_VERSION}")

    @property
    def hop(self) -> int:
        return self.sample_rate // self.frame_rate

    @property
    def vocab_size(self) -> int:
        """Number of music-local token ids (n_codebooks * codebook_size)."""
        return self.n_codebooks * self.codebook_size


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


class MusicDetokenizer(Checkpointed, nn.Module):
    KIND: ClassVar[str] = "music_codec"
    CONFIG_CLASS: ClassVar[type] = MusicCodecConfig

    def __init__(self, config: MusicCodecConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or MusicCodecConfig()
        self.code_embed = nn.Parameter(torch.empty(cfg.n_codebooks, cfg.codebook_size, cfg.dim))  # [L, K, D]
        # decoder
        self.dec_in = nn.Conv1d(cfg.dim, cfg.channels, kernel_size=3, padding=1)
        self.dec_up = nn.ModuleList(
            nn.ConvTranspose1d(cfg.channels, cfg.channels, kernel_size=2 * s, stride=s, padding=s // 2 + s % 2,
                               output_padding=s % 2)
            for s in cfg.strides
        )
        self.dec_out = nn.Conv1d(cfg.channels, 1, kernel_size=7, padding=3)
        # encoder
        self.enc_in = nn.Conv1d(1, cfg.channels, kernel_size=7, padding=3)
        self.enc_down = nn.ModuleList(
            nn.Conv1d(cfg.channels, cfg.channels, kernel_size=2 * s, stride=s, padding=s // 2 + s % 2)
            for s in reversed(cfg.strides)
        )
        self.enc_out = nn.Conv1d(cfg.channels, cfg.dim, kernel_size=3, padding=1)
        self._init_weights()

    def _init_weights(self) -> None:
        gen = torch.Generator().manual_seed(self.config.seed)
        with torch.no_grad():
            for name, param in self.named_parameters():
                if name.endswith("bias"):
                    param.zero_()
                elif name == "code_embed":
                    level_scale = 1.0 / (1.0 + torch.arange(self.config.n_codebooks).float())  # [L]
                    param.normal_(0.0, 1.0, generator=gen).mul_(level_scale[:, None, None])
                else:
                    param.normal_(0.0, (1.0 / param[0].numel()) ** 0.5, generator=gen)

    def forward(self, codes: Tensor) -> Tensor:
        """codes ``[B, L, T]`` -> wave ``[B, T * hop]`` in (-1, 1)."""
        cfg = self.config
        levels = torch.arange(cfg.n_codebooks, device=codes.device)[None, :, None]  # [1, L, 1]
        x = self.code_embed[levels, codes].sum(dim=1)  # [B, T, D]
        length = codes.shape[-1] * cfg.hop
        x = torch.relu(self.dec_in(x.transpose(1, 2)))  # [B, C, T]
        for layer in self.dec_up:
            x = torch.relu(layer(x))  # [B, C, T * s]
        return torch.tanh(self.dec_out(x))[:, 0, :length]  # [B, T * hop]

    @torch.no_grad()
    def decode_codes(self, codes: Tensor) -> np.ndarray:
        """codes ``[L, T]`` -> float32 wave ``[T * hop]``."""
        cfg = self.config
        if codes.dim() != 2 or codes.shape[0] != cfg.n_codebooks:
            raise ValueError(f"codes must be [{cfg.n_codebooks}, T], got {tuple(codes.shape)}")
        if codes.shape[1] == 0:
            return np.zeros(0, dtype=np.float32)
        return self(codes.long()[None])[0].numpy().astype(np.float32)

    @torch.no_grad()
    def decode(self, tokens: list[int]) -> np.ndarray:
        """music-local tokens -> float32 wave at ``sample_rate`` (re-aligned; see ``realign_tokens``)."""
        cfg = self.config
        return self.decode_codes(unflatten_tokens(tokens, cfg.n_codebooks, cfg.codebook_size))

    @torch.no_grad()
    def encode_codes(self, wave: np.ndarray | Tensor) -> Tensor:
        """float wave ``[S]`` -> codes ``[L, ceil(S / hop)]``."""
        cfg = self.config
        x = torch.as_tensor(np.asarray(wave, dtype=np.float32))
        if x.dim() != 1:
            raise ValueError(f"expected a mono wave [S], got shape {tuple(x.shape)}")
        frames = math.ceil(x.shape[0] / cfg.hop)
        x = nn.functional.pad(x, (0, frames * cfg.hop - x.shape[0]))[None, None]  # [1, 1, T * hop]
        x = torch.relu(self.enc_in(x))  # [1, C, S]
        for layer in self.enc_down:
            x = torch.relu(layer(x))  # [1, C, S / s]
        latents = self.enc_out(x)[0, :, :frames].T  # [T, D]
        residual, codes = latents, []
        for level in range(cfg.n_codebooks):
            book = self.code_embed[level]  # [K, D]
            index = (book.pow(2).sum(-1)[None] - 2.0 * residual @ book.T).argmin(-1)  # [T]
            residual = residual - book[index]
            codes.append(index)
        return torch.stack(codes) if codes and frames else torch.zeros(cfg.n_codebooks, 0, dtype=torch.long)

    @torch.no_grad()
    def encode(self, wave: np.ndarray | Tensor) -> list[int]:
        """float wave ``[S]`` at ``sample_rate`` -> flattened music-local tokens."""
        return flatten_codes(self.encode_codes(wave), self.config.codebook_size)

