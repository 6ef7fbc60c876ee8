"""Short-time Fourier analysis, its inverse, fast Griffin-Lim, and the HTK mel scale.

The embedded speech and music codecs describe a wave by magnitudes on the STFT grid and resynthesise it with
Griffin-Lim; both use :class:`STFT` (Hann window of ``n_fft`` samples, hop ``hop``, centred frames, zero padding)::

    wave [..., S] --stft--> spec [..., n_freq, S // hop + 1]    (n_freq = n_fft // 2 + 1, complex64)
    spec --inverse(length)--> wave [..., length]

``griffin_lim`` turns magnitudes of F frames into a wave of F * hop samples (frame f centred at sample f * hop):
fast Griffin-Lim (Perraudin et al. 2013: momentum on the projected spectrogram) from zero phase, so it is
deterministic.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class STFT(nn.Module):
    """Hann-windowed STFT with centred frames, its inverse and Griffin-Lim. The window is a derived buffer: it is not
    saved with the model."""

    window: Tensor  # [n_fft] (derived buffer)

    def __init__(self, n_fft: int, hop: int) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.hann_window(n_fft, dtype=torch.float32), persistent=False)

    def forward(self, wave: Tensor) -> Tensor:  # [..., S] -> complex [..., n_freq, S // hop + 1]
        return torch.stft(
            wave, self.n_fft, self.hop, window=self.window, center=True, pad_mode="constant", return_complex=True
        )

    def inverse(self, spec: Tensor, length: int) -> Tensor:  # complex [..., n_freq, F + 1] -> [..., length]
        return torch.istft(spec, self.n_fft, self.hop, window=self.window, center=True, length=length)

    def griffin_lim(self, magnitude: Tensor, iters: int, momentum: float) -> Tensor:
        """Linear magnitudes ``[..., n_freq, F]`` -> wave ``[..., F * hop]`` (``momentum`` 0: classic Griffin-Lim)."""
        frames = magnitude.shape[-1]
        length = frames * self.hop
        if frames == 0:
            return torch.zeros(*magnitude.shape[:-2], 0)
        # The STFT of a length F*hop wave has F + 1 centred frames; the last repeats the final magnitude.
        magnitude = torch.cat([magnitude, magnitude[..., -1:]], dim=-1)  # [..., n_freq, F + 1]
        phase = torch.ones_like(magnitude, dtype=torch.complex64)  # [..., n_freq, F + 1]
        previous = torch.zeros_like(phase)
        for _ in range(iters):
            projected = self(self.inverse(magnitude * phase, length))  # [..., n_freq, F + 1]
            accelerated = projected + momentum * (projected - previous)
            previous = projected
            phase = accelerated / torch.clamp(accelerated.abs(), min=1e-12)
        return self.inverse(magnitude * phase, length)  # [..., F * hop]


def hz_to_mel_htk(hz: Tensor) -> Tensor:
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def mel_to_hz_htk(mel: Tensor) -> Tensor:
    return 700.0 * (torch.pow(10.0, mel / 2595.0) - 1.0)


def htk_mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> Tensor:
    """Triangular HTK-mel filters, area-normalised (each filter scaled by 2 / its bandwidth in Hz).

    Returns ``[n_mels, n_fft // 2 + 1]`` float64.
    """
    bin_hz = torch.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1, dtype=torch.float64)  # [n_freq]
    mel_points = torch.linspace(
        hz_to_mel_htk(torch.tensor(f_min, dtype=torch.float64)).item(),
        hz_to_mel_htk(torch.tensor(f_max, dtype=torch.float64)).item(),
        n_mels + 2,
        dtype=torch.float64,
    )
    edges_hz = mel_to_hz_htk(mel_points)  # [n_mels + 2]
    lower, center, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]  # [n_mels, 1] each
    rising = (bin_hz[None, :] - lower) / (center - lower)  # [n_mels, n_freq]
    falling = (upper - bin_hz[None, :]) / (upper - center)  # [n_mels, n_freq]
    triangles = torch.clamp(torch.minimum(rising, falling), min=0.0)
    return triangles * (2.0 / (upper - lower))
