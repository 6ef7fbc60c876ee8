"""Short-time Fourier analysis, its inverse, fast Griffin-Lim, and the HTK mel scale.

The embedded speech and music codecs describe a wave by magnitudes on the STFT grid and resynthesise it with
Griffin-Lim; both use :class:`STFT` (Hann window of ``n_fft`` samples, hop ``hop``, centred frames, zero padding)::

    wave [..., S] --stft--> spec [..., n_freq, S // hop + 1]    (n_freq = n_fft // 2 + 1, complex64)
    spec --inverse(length)--> wave [..., length]

``griffin_lim`` turns magnitudes of F frames into a wave of F * hop samples (frame f centred at sample f * hop):
fast Griffin-Lim (Perraudin et al. 2013: momentum on the projected spectrogram) from zero phase, so it is
deterministic. On the CPU in float32 its iterations run in NumPy (:func:`griffin_lim_numpy`): a chunk of streamed
speech is 10-30 frames, where each of torch's ``stft`` / ``istft`` calls costs more in overhead than in arithmetic
(20 ms of Griffin-Lim for a 10-frame chunk on the 2-core EPYC these figures come from, 10 ms in NumPy). The two
agree to float rounding, which the 32 momentum iterations carry to 0.05-1% of the wave's RMS.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn


class STFT(nn.Module):
    """Hann-windowed STFT with centred frames, its inverse and Griffin-Lim. The window is a derived buffer: it is not
    saved with the model."""

    window: Tensor  # [n_fft] (derived buffer)

    def __init__(self, n_fft: int, hop: int, numpy_griffin_lim: bool = True) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.numpy_griffin_lim = numpy_griffin_lim  # False: torch's loop on the CPU too
        self.register_buffer("window", torch.hann_window(n_fft, dtype=torch.float32), persistent=False)

    def forward(self, wave: Tensor) -> Tensor:  # [..., S] -> complex [..., n_freq, S // hop + 1]
        return torch.stft(
            wave, self.n_fft, self.hop, window=self.window, center=True, pad_mode="constant", return_complex=True
        )

    def inverse(self, spec: Tensor, length: int) -> Tensor:  # complex [..., n_freq, F + 1] -> [..., length]
        return torch.istft(spec, self.n_fft, self.hop, window=self.window, center=True, length=length)

    def griffin_lim(self, magnitude: Tensor, iters: int, momentum: float) -> Tensor:
        """Linear magnitudes ``[..., n_freq, F]`` -> wave ``[..., F * hop]`` (``momentum`` 0: classic Griffin-Lim);
        in NumPy for float32 on the CPU unless ``numpy_griffin_lim`` is off."""
        frames = magnitude.shape[-1]
        length = frames * self.hop
        if frames == 0:
            return torch.zeros(*magnitude.shape[:-2], 0)
        if self.numpy_griffin_lim and magnitude.device.type == "cpu" and magnitude.dtype == torch.float32:
            wave = griffin_lim_numpy(magnitude.numpy(), self.window.numpy(), self.hop, iters, momentum)
            return torch.from_numpy(wave)
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


def griffin_lim_numpy(magnitude: np.ndarray, window: np.ndarray, hop: int, iters: int, momentum: float) -> np.ndarray:
    """``STFT.griffin_lim`` in NumPy: float32 magnitudes ``[..., n_freq, F]`` -> wave ``[..., F * hop]``, for the same
    centred, zero-padded Hann STFT (``n_fft = len(window)``) and the same inverse (overlap-add divided by the summed
    squared window). The spectrogram is kept time-major (``[..., F + 1, n_freq]``) so that every frame's FFT runs over
    the last axis."""
    n_fft = window.shape[0]
    frames = magnitude.shape[-1]
    length = frames * hop
    lead = magnitude.shape[:-2]
    # The STFT of a length F*hop wave has F + 1 centred frames; the last repeats the final magnitude.
    target = np.concatenate([magnitude, magnitude[..., -1:]], axis=-1).reshape(-1, magnitude.shape[-2], frames + 1)
    target = np.ascontiguousarray(target.transpose(0, 2, 1))  # [B, F + 1, n_freq]
    starts = np.arange(frames + 1) * hop  # frame f covers padded samples f*hop .. f*hop + n_fft
    taps = starts[:, None] + np.arange(n_fft)[None, :]  # [F + 1, n_fft]
    envelope = np.zeros(length + n_fft, dtype=np.float32)  # squared-window overlap, over the padded wave
    for start in starts:
        envelope[start : start + n_fft] += window * window
    pad = n_fft // 2
    trimmed = envelope[pad : pad + length]

    # Overlap-add in hop-sized blocks: frame f adds its block j to output block f + j, so the whole sum is one
    # vectorised add per block of a frame (ceil(n_fft / hop) of them) rather than one per frame.
    blocks = -(-n_fft // hop)

    def inverse(spec: np.ndarray) -> np.ndarray:  # [B, F + 1, n_freq] -> [B, length]
        batch = spec.shape[0]
        pieces = np.zeros((batch, frames + 1, blocks * hop), dtype=np.float32)
        pieces[..., :n_fft] = np.fft.irfft(spec, n=n_fft, axis=-1) * window  # [B, F + 1, n_fft] (zero tail)
        pieces = pieces.reshape(batch, frames + 1, blocks, hop)
        summed = np.zeros((batch, frames + blocks, hop), dtype=np.float32)
        for block in range(blocks):
            summed[:, block : block + frames + 1] += pieces[:, :, block]
        return summed.reshape(batch, -1)[:, pad : pad + length] / trimmed

    def forward(wave: np.ndarray) -> np.ndarray:  # [B, length] -> [B, F + 1, n_freq]
        padded = np.zeros((wave.shape[0], length + n_fft), dtype=np.float32)
        padded[:, pad : pad + length] = wave
        return np.fft.rfft(padded[:, taps] * window, axis=-1)

    phase = np.ones(target.shape, dtype=np.complex64)
    previous = np.zeros(target.shape, dtype=np.complex64)
    gain = np.float32(momentum)
    for _ in range(iters):
        projected = forward(inverse(target * phase)).astype(np.complex64, copy=False)
        accelerated = projected + gain * (projected - previous)
        previous = projected
        phase = (accelerated / np.maximum(np.abs(accelerated), np.float32(1e-12))).astype(np.complex64, copy=False)
    return inverse(target * phase).reshape(*lead, length)


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
