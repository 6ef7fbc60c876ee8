"""The embedded music codec: residual codes [L, T] at 25 Hz <-> 16 kHz waveform (no neural network).

Codec (fitted by k-means on CPU in seconds, see ``training/fit_music_codec.py``):
    encode: wave -> STFT (Hann, n_fft 2048 = 7.8 Hz bins, enough to resolve semitones down to ~110 Hz)
            -> log magnitude [T, n_freq] -> residual nearest-codeword search over L levels -> codes [L, T]
    decode: codes -> sum of the chosen codewords (log magnitude) -> exp -> fast Griffin-Lim (momentum, from zero
            phase, deterministic) -> wave, clipped to [-1, 1]
Frame rate: 25 Hz x 4 levels = 100 tokens/s, half AnyGPT's 50 Hz Encodec (200 tokens/s), so that a ~3 s tune is
about 300 tokens that a tiny CPU LM can generate. Tokens are AnyGPT's frame-major flattening of the codes
(``assistant.modules.music_tokens``), re-aligned by level when the LM skips or repeats one.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from assistant.models.config_io import check_format_version
from assistant.models.interfaces import MusicCodecFromConfig
from assistant.modules.music_tokens import flatten_codes, unflatten_tokens
from assistant.modules.quantization import residual_quantize
from assistant.modules.spectral import STFT


@dataclass(frozen=True)
class MusicCodecConfig:
    """Configuration of ``MusicDetokenizer``.

    n_codebooks: residual levels per frame (AnyGPT/Encodec: 4). codebook_size: codes per level.
    frame_rate / sample_rate: code frame rate and wave rate (hop = sample_rate / frame_rate).
    n_fft: STFT size (Hann window of the same length); the code vectors have n_fft // 2 + 1 log magnitudes.
    log_floor: magnitude floor before the log (a sine of peak 0.5 reaches ~256 at n_fft 2048, so 0.1 keeps
        ~68 dB: k-means spends no codes on window sidelobes far below the notes).
    griffin_lim_iters / griffin_lim_momentum: fast Griffin-Lim in ``decode`` (momentum 0 = classic).
    seed: seed of the random (unfitted) codebooks. format_version: checkpoint format version.
    """

    FORMAT_VERSION: ClassVar[int] = 2

    n_codebooks: int = 4
    codebook_size: int = 256
    frame_rate: int = 25
    sample_rate: int = 16000
    n_fft: int = 2048
    log_floor: float = 0.1
    griffin_lim_iters: int = 16
    griffin_lim_momentum: float = 0.99
    seed: int = 0
    format_version: int = 2

    def __post_init__(self) -> None:
        if self.n_codebooks < 1 or self.codebook_size < 2:
            raise ValueError("n_codebooks must be >= 1 and codebook_size >= 2")
        if self.frame_rate <= 0 or self.sample_rate % self.frame_rate:
            raise ValueError(f"frame_rate {self.frame_rate} must divide sample_rate {self.sample_rate}")
        if self.n_fft < self.hop or self.n_fft % 2:
            raise ValueError(f"n_fft {self.n_fft} must be even and >= hop {self.hop}")
        if self.log_floor <= 0.0:
            raise ValueError("log_floor must be positive")
        if self.griffin_lim_iters < 0 or not 0.0 <= self.griffin_lim_momentum < 1.0:
            raise ValueError("griffin_lim_iters must be >= 0 and griffin_lim_momentum in [0, 1)")
        check_format_version(self)

    @property
    def hop(self) -> int:
        return self.sample_rate // self.frame_rate

    @property
    def n_freq(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def vocab_size(self) -> int:
        """Number of music-local token ids (n_codebooks * codebook_size)."""
        return self.n_codebooks * self.codebook_size


class MusicDetokenizer(nn.Module, MusicCodecFromConfig):
    """Log-magnitude residual VQ with Griffin-Lim decoding; the only state is ``codebooks [L, K, n_freq]``."""

    config: MusicCodecConfig
    codebooks: Tensor  # [L, K, n_freq] (buffer)

    def __init__(self, config: MusicCodecConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or MusicCodecConfig()
        self.stft = STFT(cfg.n_fft, cfg.hop)
        self.register_buffer("codebooks", self._random_codebooks())  # [L, K, n_freq]

    def _random_codebooks(self) -> Tensor:
        """Level 0: decaying harmonic spectra at random pitches (so an unfitted codec still plays tones);
        deeper levels: small random offsets."""
        cfg = self.config
        gen = torch.Generator(device="cpu").manual_seed(cfg.seed)  # drawn on the CPU: same values on any device
        freqs = torch.arange(cfg.n_freq, dtype=torch.float32, device="cpu") * cfg.sample_rate / cfg.n_fft  # [n_freq]
        f0 = 440.0 * 2.0 ** (
            (torch.randint(36, 90, (cfg.codebook_size, 1), generator=gen, device="cpu").float() - 69) / 12
        )
        harmonic = freqs[None, :] / f0  # [K, n_freq] in units of f0
        distance = (harmonic - harmonic.round()).abs() * f0  # Hz to the nearest harmonic  [K, n_freq]
        peaks = torch.exp(-((distance / 8.0) ** 2)) / torch.clamp(harmonic.round(), min=1.0)  # [K, n_freq]
        peaks = torch.where(harmonic > 0.5, peaks, torch.zeros_like(peaks))
        level0 = torch.log(torch.clamp(30.0 * peaks, min=cfg.log_floor))  # [K, n_freq]
        books = [level0]
        for level in range(1, cfg.n_codebooks):
            books.append(torch.randn(cfg.codebook_size, cfg.n_freq, generator=gen, device="cpu") * (0.3 / level))
        return torch.stack(books).to(torch.get_default_device())  # [L, K, n_freq]

    # ----- analysis ---------------------------------------------------------------------------------------------
    def num_frames(self, num_samples: int) -> int:
        return math.ceil(num_samples / self.config.hop)

    @torch.no_grad()
    def log_magnitude(self, wave: np.ndarray | Tensor) -> Tensor:
        """float wave ``[S]`` -> log magnitude ``[ceil(S / hop), n_freq]`` (frame t centred at t * hop)."""
        cfg = self.config
        x = torch.as_tensor(np.asarray(wave, dtype=np.float32))
        if x.dim() != 1:
            raise ValueError(f"expected a mono wave [S], got shape {tuple(x.shape)}")
        frames = self.num_frames(x.shape[0])
        x = nn.functional.pad(x, (0, frames * cfg.hop - x.shape[0]))  # [T * hop]
        magnitude = self.stft(x).abs()[:, :frames]  # [n_freq, T]
        return torch.log(torch.clamp(magnitude, min=cfg.log_floor)).T.contiguous()  # [T, n_freq]

    # ----- quantisation -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def quantise(self, features: Tensor) -> Tensor:
        """log magnitude ``[T, n_freq]`` -> codes ``[L, T]`` (greedy residual nearest codeword)."""
        return residual_quantize(self.codebooks, features.float())[0]

    @torch.no_grad()
    def dequantise(self, codes: Tensor) -> Tensor:
        """codes ``[L, T]`` -> log magnitude ``[T, n_freq]`` (sum of the chosen codewords)."""
        levels = torch.arange(codes.shape[0])[:, None]  # [L, 1]
        return self.codebooks[levels, codes.long()].sum(dim=0)  # [T, n_freq]

    # ----- synthesis --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def features_to_wave(self, features: Tensor) -> np.ndarray:
        """log magnitude ``[T, n_freq]`` -> float32 wave ``[T * hop]`` by fast Griffin-Lim from zero phase."""
        cfg = self.config
        magnitude = torch.exp(features.float()).T  # [n_freq, T]
        wave = self.stft.griffin_lim(magnitude, cfg.griffin_lim_iters, cfg.griffin_lim_momentum)  # [T * hop]
        return torch.clamp(wave, -1.0, 1.0).numpy().astype(np.float32)

    # ----- public API -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def decode_codes(self, codes: Tensor) -> np.ndarray:
        """codes ``[L, T]`` -> float32 wave ``[T * hop]`` in [-1, 1]."""
        cfg = self.config
        if codes.dim() != 2 or codes.shape[0] != cfg.n_codebooks:
            raise ValueError(f"codes must be [{cfg.n_codebooks}, T], got {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= cfg.codebook_size):
            raise ValueError(f"codes must lie in [0, {cfg.codebook_size})")
        return self.features_to_wave(self.dequantise(codes))

    @torch.no_grad()
    def decode(self, tokens: list[int]) -> np.ndarray:
        """music-local tokens -> float32 wave at ``sample_rate`` (re-aligned; see ``realign_tokens``)."""
        cfg = self.config
        return self.decode_codes(unflatten_tokens(tokens, cfg.n_codebooks, cfg.codebook_size))

    @torch.no_grad()
    def encode_codes(self, wave: np.ndarray | Tensor) -> Tensor:
        """float wave ``[S]`` -> codes ``[L, ceil(S / hop)]`` (deterministic)."""
        return self.quantise(self.log_magnitude(wave))

    @torch.no_grad()
    def encode(self, wave: np.ndarray | Tensor) -> list[int]:
        """float wave ``[S]`` at ``sample_rate`` -> flattened music-local tokens."""
        return flatten_codes(self.encode_codes(wave), self.config.codebook_size)

    def extra_repr(self) -> str:
        return ", ".join(f"{f.name}={getattr(self.config, f.name)}" for f in dataclasses.fields(self.config))
