"""The embedded speech codec: log-mel residual VQ with Griffin-Lim decoding, and a content level 1.

``MelRVQCodec`` (see shared/reference/embedded-default-feasibility.md)::

    wave -> STFT magnitude -> HTK mel (area-normalised) -> log -> residual VQ (n_q codebooks)
    (optionally level 1 quantises the frame minus the utterance's mean log-mel, see ``level1_mean_norm``)
    codes -> sum of codewords -> mel -> linear magnitude (pseudo-inverse + multiplicative NNLS steps)
          -> fast Griffin-Lim (momentum) -> wave

With ``content_classes`` > 0, level 1 is not a nearest codeword but what is said: ``ContentEncoder``, a small
convolutional network trained on phoneme-aligned speech (``training/fit_speech_codec.py``), names the phoneme class of
every frame, so one sentence gives nearly the same level-1 sequence in any voice (AnyGPT's SpeechTokenizer gets the
same from distilling HuBERT into its level 1). The level-1 codeword of a class is the mean log-mel of its frames;
levels 2..n_q quantise what is left (the voice, the loudness, the exact sound).

The spectral part is frame-local, so a chunk decoded together with a few left-context frames (then trimmed) sounds
like the same region of a whole-utterance decode; Griffin-Lim phases are the only non-local part. The codebooks are
seeded random until fitted (``training/fit_speech_codec.py: fit_speech_codebooks``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from assistant.models.config_io import check_format_version
from assistant.models.interfaces import SpeechCodecFromConfig
from assistant.modules.quantization import residual_quantize
from assistant.modules.spectral import STFT, htk_mel_filterbank

LOG_FLOOR = 1e-5


@dataclass(frozen=True)
class MelCodecConfig:
    """Configuration of ``MelRVQCodec``.

    sample_rate: wave sample rate in Hz.
    hop: STFT hop in samples (one code frame per hop; 320 at 16 kHz = 50 Hz).
    n_fft: STFT size (Hann window of the same length).
    n_mels: number of HTK mel bands (the code vector dimension).
    f_min / f_max: mel filterbank range in Hz (f_max None = Nyquist).
    n_q: number of residual VQ levels.
    codebook_size: codes per level.
    griffin_lim_iters: Griffin-Lim iterations in ``decode``.
    griffin_lim_momentum: momentum of fast Griffin-Lim (0 = classic Griffin-Lim).
    nnls_iters: multiplicative non-negative refinement steps after the mel pseudo-inverse.
    level1_mean_norm: level 1 quantises each log-mel frame minus the utterance's per-band mean log-mel (mean over
        its non-silent frames), so it carries content with less voice and loudness; levels 2..n_q quantise what is
        left, mean and voice included. Reconstruction is still the sum of the codewords. False = plain residual VQ.
    silence_margin: a frame is silent when its loudness (mean log-mel over bands) is more than this many nats below
        the utterance's 95th-percentile frame loudness; silent frames are left out of the mean.
    level1_range: before the mean is subtracted, level-1 input bins are floored at that 95th-percentile loudness
        minus this many nats, so digital silence and quiet bins look the same at any input gain.
    content_classes: 0 = level 1 is a nearest codeword like the other levels; > 0 = level 1 is the class (silence and
        phonemes, < ``codebook_size``) that ``ContentEncoder`` gives the frame (needs ``level1_mean_norm``: the encoder
        reads the normalised frames).
    content_channels / content_layers / content_kernel: the encoder's width, residual convolution blocks and kernel
        size in frames (it sees 1 + layers * (kernel - 1) frames around each frame).
    seed: seed of the random (untrained) codebooks and encoder.
    format_version: checkpoint format version (must equal ``FORMAT_VERSION``).
    """

    FORMAT_VERSION: ClassVar[int] = 1

    sample_rate: int = 16000
    hop: int = 320
    n_fft: int = 1024
    n_mels: int = 80
    f_min: float = 0.0
    f_max: float | None = None
    n_q: int = 8
    codebook_size: int = 1024
    griffin_lim_iters: int = 32
    griffin_lim_momentum: float = 0.99
    nnls_iters: int = 15
    level1_mean_norm: bool = False
    silence_margin: float = 4.0
    level1_range: float = 5.5
    content_classes: int = 0
    content_channels: int = 128
    content_layers: int = 6
    content_kernel: int = 5
    seed: int = 0
    format_version: int = 1

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.hop <= 0:
            raise ValueError("sample_rate and hop must be positive")
        if self.sample_rate % self.hop != 0:
            raise ValueError(f"hop {self.hop} must divide sample_rate {self.sample_rate} (integer frame rate)")
        if self.n_fft < self.hop:
            raise ValueError(f"n_fft {self.n_fft} must be >= hop {self.hop}")
        if self.n_mels <= 0 or self.n_mels > self.n_freq:
            raise ValueError(f"n_mels must be in [1, {self.n_freq}], got {self.n_mels}")
        if not 0.0 <= self.f_min < self.nyquist_hz:
            raise ValueError(f"f_min {self.f_min} must be in [0, Nyquist)")
        if self.f_max is not None and not self.f_min < self.f_max <= self.nyquist_hz:
            raise ValueError(f"f_max {self.f_max} must be in (f_min, Nyquist]")
        if self.n_q < 1 or self.codebook_size < 2:
            raise ValueError("n_q must be >= 1 and codebook_size >= 2")
        if self.griffin_lim_iters < 0 or self.nnls_iters < 0:
            raise ValueError("iteration counts must be >= 0")
        if self.silence_margin <= 0.0 or self.level1_range <= 0.0:
            raise ValueError("silence_margin and level1_range must be positive")
        if not 0.0 <= self.griffin_lim_momentum < 1.0:
            raise ValueError("griffin_lim_momentum must be in [0, 1)")
        if not 0 <= self.content_classes <= self.codebook_size:
            raise ValueError(f"content_classes must be in [0, codebook_size={self.codebook_size}]")
        if self.content_classes and not self.level1_mean_norm:
            raise ValueError(
                "a content level 1 (content_classes > 0) needs level1_mean_norm: it reads normalised frames"
            )
        if (
            self.content_channels < 1
            or self.content_layers < 0
            or self.content_kernel < 1
            or self.content_kernel % 2 == 0
        ):
            raise ValueError("content_channels >= 1, content_layers >= 0 and an odd content_kernel are required")
        check_format_version(self)

    @property
    def frame_rate(self) -> int:
        return self.sample_rate // self.hop

    @property
    def n_freq(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def nyquist_hz(self) -> float:
        return self.sample_rate / 2.0


class ContentEncoder(nn.Module):
    """Normalised log-mel frames -> a phoneme-class score per frame: residual 1-D convolutions, no recurrence, so a
    frame depends on a fixed window of ``1 + layers * (kernel - 1)`` frames around it.

    Padded frames (past an utterance's ``length``) are zeroed before every convolution, so an utterance scores the
    same alone and padded in a batch. ``dropout`` is set by the trainer (0 in use).
    """

    def __init__(self, n_mels: int, channels: int, layers: int, kernel: int, classes: int) -> None:
        super().__init__()
        self.dropout = 0.0
        self.input = nn.Linear(n_mels, channels)
        self.norms = nn.ModuleList(nn.LayerNorm(channels) for _ in range(layers))
        self.convs = nn.ModuleList(nn.Conv1d(channels, channels, kernel, padding=kernel // 2) for _ in range(layers))
        self.output = nn.Sequential(nn.LayerNorm(channels), nn.Linear(channels, classes))

    def forward(self, frames: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``frames [B, F, M]`` (``lengths [B]``: valid frames of each row, default all) -> logits ``[B, F, C]``."""
        h = self.input(frames)  # [B, F, D]
        valid = None
        if lengths is not None:
            valid = (torch.arange(frames.shape[1], device=frames.device)[None, :] < lengths[:, None])[..., None]
        for norm, conv in zip(self.norms, self.convs, strict=True):
            x = norm(h)  # [B, F, D]
            if valid is not None:
                x = x * valid  # padded frames read as zeros, as the convolution's own padding does
            x = torch.nn.functional.gelu(conv(x.transpose(1, 2))).transpose(1, 2)  # [B, F, D]
            h = h + torch.nn.functional.dropout(x, self.dropout, self.training)
        return self.output(h)  # [B, F, C]


class MelRVQCodec(nn.Module, SpeechCodecFromConfig):
    """Log-mel residual-VQ codec with Griffin-Lim decoding (no neural network, seeded random codebooks until fit)."""

    config: MelCodecConfig
    mel_filterbank: Tensor  # [M, n_freq] (derived buffer)
    mel_pinv: Tensor  # [n_freq, M] (derived buffer)
    codebooks: Tensor  # [n_q, K, M] (buffer: the codec's only state)

    def __init__(self, config: MelCodecConfig | None = None) -> None:
        super().__init__()
        self.config = config or MelCodecConfig()
        cfg = self.config
        f_max = cfg.f_max if cfg.f_max is not None else cfg.nyquist_hz
        filterbank = htk_mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.f_min, f_max)  # [M, n_freq]
        # Derived, deterministic tensors: not saved (recomputed from the config).
        self.register_buffer("mel_filterbank", filterbank.float(), persistent=False)  # [M, n_freq]
        self.register_buffer("mel_pinv", torch.linalg.pinv(filterbank).float(), persistent=False)  # [n_freq, M]
        self.stft = STFT(cfg.n_fft, cfg.hop)
        # The state: the residual codebooks, and the content encoder when level 1 is content.
        self.register_buffer("codebooks", self._random_codebooks())  # [n_q, K, M]
        self.content_encoder: ContentEncoder | None = None
        if cfg.content_classes:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                self.content_encoder = ContentEncoder(
                    cfg.n_mels, cfg.content_channels, cfg.content_layers, cfg.content_kernel, cfg.content_classes
                )

    # ----- interface attributes (the sizes are the config's) ----------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.codebooks.device

    # ----- untrained initialisation -----------------------------------------------------------------------------
    def _random_codebooks(self) -> Tensor:
        """Level 1 around a speech-like log-mel profile (decodes to audible sound); deeper levels small offsets."""
        cfg = self.config
        gen = torch.Generator(device="cpu").manual_seed(cfg.seed)  # drawn on the CPU: same values on any device
        profile = torch.linspace(0.0, -5.0, cfg.n_mels, device="cpu")  # louder low bands, quieter high bands  # [M]
        books = []
        for level in range(cfg.n_q):
            noise = torch.randn(cfg.codebook_size, cfg.n_mels, generator=gen, device="cpu")  # [K, M]
            if level == 0:
                loudness = torch.rand(cfg.codebook_size, 1, generator=gen, device="cpu") * 4.0 - 2.0  # [K, 1]
                books.append(profile[None, :] + loudness + 1.0 * noise)
            else:
                books.append(noise * (0.5 / level))
        return torch.stack(books).to(torch.get_default_device())  # [n_q, K, M]

    # ----- analysis ---------------------------------------------------------------------------------------------
    def log_mel(self, wave: Tensor) -> Tensor:
        """float wave ``[T]`` -> log-mel ``[F, n_mels]`` with ``F = ceil(T / hop)`` (frame f centred at f*hop)."""
        if wave.dim() != 1:
            raise ValueError(f"expected a mono wave [T], got shape {tuple(wave.shape)}")
        cfg = self.config
        frames = self.num_frames(wave.shape[0])
        padded = torch.nn.functional.pad(wave.float(), (0, frames * cfg.hop - wave.shape[0]))  # [F * hop]
        magnitude = self.stft(padded).abs()[:, :frames]  # [n_freq, F]
        mel = self.mel_filterbank @ magnitude  # [M, F]
        return torch.log(torch.clamp(mel, min=LOG_FLOOR)).T  # [F, M]

    # ----- quantisation -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def level1_input(self, log_mel: Tensor) -> Tensor:
        """What level 1 quantises for one whole utterance: log-mel ``[F, M]`` -> ``[F, M]``.

        Without ``level1_mean_norm`` that is the log-mel itself. With it: bins floored at (95th-percentile frame
        loudness - ``level1_range``), minus the per-band mean over the non-silent frames. A gain change shifts every
        log-mel bin by the same amount, so it leaves this unchanged (up to bins at the absolute ``LOG_FLOOR``).
        """
        log_mel = log_mel.float()
        cfg = self.config
        if not cfg.level1_mean_norm or log_mel.shape[0] == 0:
            return log_mel
        loudness = log_mel.mean(dim=1)  # [F]
        reference = torch.quantile(loudness, 0.95)  # scalar: "speech level" of the utterance
        voiced = loudness >= reference - cfg.silence_margin  # [F] (never empty: the 95th percentile frame is in)
        floored = torch.clamp(log_mel, min=float(reference) - cfg.level1_range)  # [F, M]
        mean = floored[voiced].mean(dim=0)  # [M]
        return floored - mean[None, :]  # [F, M]

    @torch.no_grad()
    def content_classes(self, level1_input: Tensor) -> Tensor:
        """``level1_input`` of one utterance ``[F, M]`` -> the content encoder's class of every frame ``[F]``."""
        if self.content_encoder is None:
            raise ValueError("this codec has no content level 1 (content_classes is 0)")
        if level1_input.shape[0] == 0:
            return torch.zeros(0, dtype=torch.long, device=level1_input.device)
        return self.content_encoder(level1_input[None].float())[0].argmax(dim=-1)  # [F]

    @torch.no_grad()
    def quantise(self, log_mel: Tensor, n_q: int | None = None) -> Tensor:
        """log-mel ``[F, M]`` of one whole utterance -> codes ``[n_q, F]`` (``n_q``: the first levels only).

        With ``level1_mean_norm`` the codes of a frame depend on the utterance's mean, so a chunk encoded alone can
        differ from the same frames encoded as part of the whole utterance.
        """
        log_mel = log_mel.float()
        n_q = self.config.n_q if n_q is None else n_q
        level1 = self.level1_input(log_mel) if self.config.level1_mean_norm else None
        if self.content_encoder is None:
            return residual_quantize(self.codebooks[:n_q], log_mel, level1)[0]
        assert level1 is not None  # the config requires level1_mean_norm with a content level 1
        content = self.content_classes(level1)  # [F]
        rest = residual_quantize(self.codebooks[1:n_q], log_mel - self.codebooks[0][content])[0]  # [n_q - 1, F]
        return torch.cat([content[None], rest])  # [n_q, F]

    @torch.no_grad()
    def dequantise(self, codes: Tensor) -> Tensor:
        """codes ``[n_q, F]`` -> log-mel ``[F, M]`` (sum of the chosen codewords)."""
        self._check_codes(codes)
        levels = torch.arange(codes.shape[0], device=codes.device)[:, None]  # [n_q, 1]
        return self.codebooks[levels, codes].sum(dim=0)  # [F, M]

    def _check_codes(self, codes: Tensor) -> None:
        if codes.dim() != 2 or codes.shape[0] != self.n_q:
            raise ValueError(f"expected codes [n_q={self.n_q}, F], got shape {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size})")

    # ----- SpeechCodec interface --------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, wave: Tensor) -> Tensor:
        """float32 wave ``[T]`` -> LongTensor ``[n_q, ceil(T / hop)]``."""
        return self.quantise(self.log_mel(wave))

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """LongTensor ``[n_q, F]`` -> float32 wave ``[F * hop]``."""
        return self.mel_to_wave(self.dequantise(codes))

    # ----- batches (several utterances in one call) -------------------------------------------------------------
    @torch.no_grad()
    def encode_batch(self, waves: Sequence[Tensor], n_q: int | None = None) -> list[Tensor]:
        """Several utterances -> their codes ``[n_q, ceil(T_i / hop)]`` each, equal to ``encode(wave)[:n_q]``.

        The waves are zero-padded on the right to the longest and analysed by one batched STFT + mel. Padding leaves
        every utterance's frames unchanged: frames are analysed independently, and the zeros a frame near the end
        sees are the zeros ``log_mel`` pads (to whole hops) and the STFT's constant centre padding adds anyway. The
        frames past an utterance's end are dropped before quantisation, which (level-1 mean normalisation and the
        content encoder included) runs per utterance on its own frames. ``n_q`` (default all) keeps the first levels
        only: residual VQ picks level q from levels < q, so those codes are the same, and the deeper levels are not
        computed.
        """
        cfg = self.config
        n_q = cfg.n_q if n_q is None else n_q
        if not 1 <= n_q <= cfg.n_q:
            raise ValueError(f"n_q must be in [1, {cfg.n_q}], got {n_q}")
        for wave in waves:
            if wave.dim() != 1:
                raise ValueError(f"expected mono waves [T], got shape {tuple(wave.shape)}")
        if not waves:
            return []
        frames = [self.num_frames(wave.shape[0]) for wave in waves]
        width = max(frames) * cfg.hop
        batch = torch.stack([torch.nn.functional.pad(w.float(), (0, width - w.shape[0])) for w in waves])  # [B, W]
        magnitude = self.stft(batch).abs()  # [B, n_freq, W // hop + 1]
        log_mel = torch.log(torch.clamp(self.mel_filterbank @ magnitude, min=LOG_FLOOR)).transpose(1, 2)  # [B, F, M]
        return [self.quantise(row[:count], n_q) for row, count in zip(log_mel, frames, strict=True)]  # [n_q, F_i]

    @torch.no_grad()
    def decode_batch(self, codes: Tensor) -> Tensor:
        """LongTensor ``[B, n_q, F]`` -> float32 waves ``[B, F * hop]``: ``decode`` of every row, with one batched
        Griffin-Lim (equal to row-by-row decoding up to float rounding)."""
        if codes.dim() != 3:
            raise ValueError(f"expected codes [B, n_q, F], got shape {tuple(codes.shape)}")
        if codes.shape[0] == 0:
            return torch.zeros(0, codes.shape[2] * self.config.hop)
        return self.mel_to_wave(torch.stack([self.dequantise(row) for row in codes]))  # [B, F, M] -> [B, F * hop]

    # ----- synthesis --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def mel_to_magnitude(self, log_mel: Tensor) -> Tensor:
        """log-mel ``[..., F, M]`` -> non-negative linear magnitude ``[..., n_freq, F]`` (frame-local)."""
        mel = torch.exp(log_mel.float()).transpose(-1, -2)  # [..., M, F]
        magnitude = torch.clamp(self.mel_pinv @ mel, min=0.0) + 1e-6  # [n_freq, F]
        fb = self.mel_filterbank  # [M, n_freq]
        numerator = fb.T @ mel  # [n_freq, F]
        for _ in range(self.config.nnls_iters):
            # Multiplicative update of min ||fb @ S - mel||^2 over S >= 0 (Lee-Seung style).
            magnitude = magnitude * numerator / (fb.T @ (fb @ magnitude) + 1e-10)
        return magnitude

    @torch.no_grad()
    def mel_to_wave(self, log_mel: Tensor) -> Tensor:
        """log-mel ``[..., F, M]`` -> wave ``[..., F * hop]`` by fast Griffin-Lim from zero phase (deterministic)."""
        if log_mel.shape[-2] == 0:
            return torch.zeros(*log_mel.shape[:-2], 0)
        cfg = self.config
        return self.stft.griffin_lim(self.mel_to_magnitude(log_mel), cfg.griffin_lim_iters, cfg.griffin_lim_momentum)

    def extra_repr(self) -> str:
        return ", ".join(f"{f.name}={getattr(self.config, f.name)}" for f in dataclasses.fields(self.config))
