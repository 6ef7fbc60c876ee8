"""Speech codec interface and the embedded log-mel residual-VQ codec.

``SpeechCodec`` is what the rest of the system relies on: 16 kHz float waves in, ``[n_q, F]`` integer codes out
(level 1 = the LM's "semantic" stream, levels 2..n_q = acoustic detail), and back.

``MelRVQCodec`` is the no-training default (see shared/reference/embedded-default-feasibility.md):
    wave -> STFT magnitude -> HTK mel (area-normalised) -> log -> residual VQ (n_q codebooks)
    (optionally level 1 quantises the frame minus the utterance's mean log-mel, see ``level1_mean_norm``)
    codes -> sum of codewords -> mel -> linear magnitude (pseudo-inverse + multiplicative NNLS steps)
          -> fast Griffin-Lim (momentum) -> wave
The spectral part is frame-local, so a chunk decoded together with a few left-context frames (then trimmed) sounds
like the same region of a whole-utterance decode; Griffin-Lim phases are the only non-local part.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from assistant.models.checkpoint_io import Checkpointed

LOG_FLOOR = 1e-5


@runtime_checkable
class SpeechCodec(Protocol):
    """Any speech codec the pipeline can use (embedded mel-RVQ or a SpeechTokenizer adapter)."""

    sample_rate: int
    frame_rate: int
    n_q: int
    codebook_size: int

    def encode(self, wave: Tensor) -> Tensor:
        """float32 wave ``[T]`` at ``sample_rate`` -> LongTensor ``[n_q, ceil(T / hop)]``."""
        ...

    def decode(self, codes: Tensor) -> Tensor:
        """LongTensor ``[n_q, F]`` -> float32 wave ``[F * hop]``."""
        ...


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
    seed: seed of the random (untrained) codebooks.
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
        if self.format_version != self.FORMAT_VERSION:
            raise ValueError(f"format_version {self.format_version} != supported {self.FORMAT_VERSION}")

    @property
    def frame_rate(self) -> int:
        return self.sample_rate // self.hop

    @property
    def n_freq(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def nyquist_hz(self) -> float:
        return self.sample_rate / 2.0


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


def nearest_code(book: Tensor, vectors: Tensor, chunk: int = 8192) -> Tensor:
    """Index of the nearest codeword (squared L2) of ``book [K, D]`` for each of ``vectors [N, D]`` -> ``[N]``;
    ``chunk`` rows at a time, so an [N, K] distance matrix never has to fit at once."""
    book_norm = book.pow(2).sum(-1)[None, :]  # [1, K] (|v|^2 dropped: same argmin)
    out = [(book_norm - 2.0 * block @ book.T).argmin(dim=-1) for block in vectors.split(chunk)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=vectors.device)


def residual_nearest(codebooks: Tensor, vectors: Tensor, level1_vectors: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Residual VQ: at each level pick the nearest codeword (squared L2) and subtract it.

    codebooks: ``[n_q, K, D]``; vectors: ``[N, D]``. ``level1_vectors [N, D]``, when given, is what level 1 matches
    instead of ``vectors`` (the normalised frames); the residual after level 1 is still ``vectors - codeword``.
    Returns (codes ``[n_q, N]`` long, quantised ``[N, D]``).
    """
    quantised = torch.zeros_like(vectors)  # [N, D]
    codes = []
    for level in range(codebooks.shape[0]):
        book = codebooks[level]  # [K, D]
        target = level1_vectors if level == 0 and level1_vectors is not None else vectors - quantised  # [N, D]
        index = nearest_code(book, target)  # [N]
        quantised = quantised + book[index]
        codes.append(index)
    return torch.stack(codes), quantised


class MelRVQCodec(Checkpointed, nn.Module):
    """Log-mel residual-VQ codec with Griffin-Lim decoding (no neural network, seeded random codebooks until fit)."""

    KIND: ClassVar[str] = "mel_rvq_codec"
    CONFIG_CLASS: ClassVar[type] = MelCodecConfig

    def __init__(self, config: MelCodecConfig | None = None) -> None:
        super().__init__()
        self.config = config or MelCodecConfig()
        cfg = self.config
        f_max = cfg.f_max if cfg.f_max is not None else cfg.nyquist_hz
        filterbank = htk_mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.f_min, f_max)  # [M, n_freq]
        # Derived, deterministic tensors: not saved (recomputed from the config).
        self.register_buffer("mel_filterbank", filterbank.float(), persistent=False)  # [M, n_freq]
        self.register_buffer("mel_pinv", torch.linalg.pinv(filterbank).float(), persistent=False)  # [n_freq, M]
        self.register_buffer("window", torch.hann_window(cfg.n_fft, dtype=torch.float32), persistent=False)
        # The only state: the residual codebooks.
        self.register_buffer("codebooks", self._random_codebooks())  # [n_q, K, M]

    # ----- interface attributes ---------------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def frame_rate(self) -> int:
        return self.config.frame_rate

    @property
    def hop(self) -> int:
        return self.config.hop

    @property
    def n_q(self) -> int:
        return self.config.n_q

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

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
    def num_frames(self, num_samples: int) -> int:
        return math.ceil(num_samples / self.config.hop)

    def log_mel(self, wave: Tensor) -> Tensor:
        """float wave ``[T]`` -> log-mel ``[F, n_mels]`` with ``F = ceil(T / hop)`` (frame f centred at f*hop)."""
        if wave.dim() != 1:
            raise ValueError(f"expected a mono wave [T], got shape {tuple(wave.shape)}")
        cfg = self.config
        frames = self.num_frames(wave.shape[0])
        padded = torch.nn.functional.pad(wave.float(), (0, frames * cfg.hop - wave.shape[0]))  # [F * hop]
        magnitude = self._stft(padded).abs()[:, :frames]  # [n_freq, F]
        mel = self.mel_filterbank @ magnitude  # [M, F]
        return torch.log(torch.clamp(mel, min=LOG_FLOOR)).T  # [F, M]

    def _stft(self, wave: Tensor) -> Tensor:
        cfg = self.config
        return torch.stft(
            wave, cfg.n_fft, cfg.hop, window=self.window, center=True, pad_mode="constant", return_complex=True
        )  # [n_freq, len // hop + 1]

    def _istft(self, spec: Tensor, length: int) -> Tensor:
        cfg = self.config
        return torch.istft(spec, cfg.n_fft, cfg.hop, window=self.window, center=True, length=length)

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
    def quantise(self, log_mel: Tensor) -> Tensor:
        """log-mel ``[F, M]`` of one whole utterance -> codes ``[n_q, F]``.

        With ``level1_mean_norm`` the codes of a frame depend on the utterance's mean, so a chunk encoded alone can
        differ from the same frames encoded as part of the whole utterance.
        """
        log_mel = log_mel.float()
        level1 = self.level1_input(log_mel) if self.config.level1_mean_norm else None
        codes, _ = residual_nearest(self.codebooks, log_mel, level1)
        return codes

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
    def encode_batch(self, waves: list[Tensor], n_q: int | None = None) -> list[Tensor]:
        """Several utterances -> their codes ``[n_q, ceil(T_i / hop)]`` each, equal to ``encode(wave)[:n_q]``.

        The waves are zero-padded on the right to the longest and analysed by one batched STFT + mel. Padding leaves
        every utterance's frames unchanged: frames are analysed independently, and the zeros a frame near the end
        sees are the zeros ``log_mel`` pads (to whole hops) and the STFT's constant centre padding adds anyway. The
        frames past an utterance's end are dropped before quantisation, which (level-1 mean normalisation included)
        runs per utterance on its own frames. ``n_q`` (default all) keeps the first levels only: residual VQ picks
        level q from levels < q, so those codes are the same, and the deeper levels are not computed.
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
        magnitude = self._stft(batch).abs()  # [B, n_freq, W // hop + 1]
        log_mel = torch.log(torch.clamp(self.mel_filterbank @ magnitude, min=LOG_FLOOR)).transpose(1, 2)  # [B, F, M]
        codes = []
        for row, count in zip(log_mel, frames, strict=True):
            utterance = row[:count]  # [F_i, M]
            level1 = self.level1_input(utterance) if cfg.level1_mean_norm else None
            codes.append(residual_nearest(self.codebooks[:n_q], utterance, level1)[0])  # [n_q, F_i]
        return codes

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
        cfg = self.config
        frames = log_mel.shape[-2]
        length = frames * cfg.hop
        if frames == 0:
            return torch.zeros(*log_mel.shape[:-2], 0)
        magnitude = self.mel_to_magnitude(log_mel)  # [..., n_freq, F]
        # The STFT of a length F*hop wave has F + 1 centred frames; the last repeats the final magnitude.
        magnitude = torch.cat([magnitude, magnitude[..., -1:]], dim=-1)  # [..., n_freq, F + 1]
        phase = torch.ones_like(magnitude, dtype=torch.complex64)  # [n_freq, F + 1]
        previous = torch.zeros_like(phase)
        alpha = cfg.griffin_lim_momentum
        for _ in range(cfg.griffin_lim_iters):
            wave = self._istft(magnitude * phase, length)  # [F * hop]
            projected = self._stft(wave)  # [n_freq, F + 1]
            accelerated = projected + alpha * (projected - previous)
            previous = projected
            phase = accelerated / torch.clamp(accelerated.abs(), min=1e-12)
        return self._istft(magnitude * phase, length)  # [F * hop]

    # ----- fitting (optional) -----------------------------------------------------------------------------------
    @torch.no_grad()
    def fit_codebooks(
        self,
        frames: Tensor,
        iters: int = 12,
        seed: int = 0,
        chunk: int = 8192,
        level1_frames: Tensor | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> Tensor:
        """Residual k-means on log-mel frames ``[N, M]``; replaces the codebooks. Returns per-level residual RMSE.

        ``level1_frames [N, M]`` are the level-1 inputs of the same frames (``level1_input`` of each utterance);
        required with ``level1_mean_norm``, where level 1 is fitted on them and levels 2..n_q on
        ``frames - level-1 codeword``. Each level runs ``iters`` Lloyd iterations; a code left empty is re-seeded
        with a vector drawn with probability proportional to its squared distance from its current codeword.
        Needs N >= codebook_size. ``progress`` receives one line per level.
        """
        cfg = self.config
        if frames.dim() != 2 or frames.shape[1] != cfg.n_mels:
            raise ValueError(f"expected frames [N, {cfg.n_mels}], got {tuple(frames.shape)}")
        if frames.shape[0] < cfg.codebook_size:
            raise ValueError(f"need at least {cfg.codebook_size} frames, got {frames.shape[0]}")
        if cfg.level1_mean_norm and level1_frames is None:
            raise ValueError("level1_mean_norm codecs need level1_frames (level1_input of each utterance)")
        if level1_frames is not None and level1_frames.shape != frames.shape:
            raise ValueError(f"level1_frames {tuple(level1_frames.shape)} must match frames {tuple(frames.shape)}")
        gen = torch.Generator().manual_seed(seed)
        frames = frames.float()
        quantised = torch.zeros_like(frames)  # [N, M]
        books, errors = [], []
        for level in range(cfg.n_q):
            if level == 0 and level1_frames is not None:
                target = level1_frames.float()  # [N, M]
            else:
                target = frames - quantised  # [N, M]
            centroids, reseeded = self._kmeans(target, iters, gen, chunk)  # [K, M]
            assign, _ = self._assign(target, centroids, chunk)  # [N]
            quantised = quantised + centroids[assign]
            books.append(centroids)
            errors.append((frames - quantised).pow(2).mean().sqrt())
            if progress is not None:
                used = int(torch.bincount(assign, minlength=cfg.codebook_size).gt(0).sum())
                progress(
                    f"level {level + 1}/{cfg.n_q}: residual RMSE {float(errors[-1]):.3f}, "
                    f"{used}/{cfg.codebook_size} codes used, {reseeded} re-seeds"
                )
        self.codebooks.copy_(torch.stack(books))
        return torch.stack(errors)

    def _kmeans(self, vectors: Tensor, iters: int, gen: torch.Generator, chunk: int) -> tuple[Tensor, int]:
        """Lloyd iterations on ``vectors [N, M]`` -> (centroids ``[K, M]``, number of re-seeded codes)."""
        k = self.config.codebook_size
        centroids = vectors[torch.randperm(vectors.shape[0], generator=gen)[:k]].clone()  # [K, M]
        reseeded = 0
        for _ in range(iters):
            assign, distance = self._assign(vectors, centroids, chunk)  # [N], [N]
            sums = torch.zeros_like(centroids).index_add_(0, assign, vectors)  # [K, M]
            counts = torch.bincount(assign, minlength=k).float()  # [K]
            filled = counts > 0
            centroids[filled] = sums[filled] / counts[filled, None]
            empty = int((~filled).sum())
            if empty:
                weights = distance.clamp(min=0.0) + 1e-12  # [N]
                picks = torch.multinomial(weights, empty, replacement=False, generator=gen)  # [empty]
                centroids[~filled] = vectors[picks]
                reseeded += empty
        return centroids, reseeded

    @staticmethod
    def _assign(vectors: Tensor, centroids: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
        """Nearest centroid of each vector and its squared distance: ``[N]`` long, ``[N]`` float."""
        indices, distances = [], []
        c_norm = centroids.pow(2).sum(-1)[None, :]  # [1, K]
        for start in range(0, vectors.shape[0], chunk):
            block = vectors[start : start + chunk]  # [n, M]
            best, index = (c_norm - 2.0 * block @ centroids.T).min(dim=-1)  # [n], [n]
            indices.append(index)
            distances.append(best + block.pow(2).sum(-1))
        return torch.cat(indices), torch.cat(distances)

    # ----- persistence ------------------------------------------------------------------------------------------

    def extra_repr(self) -> str:
        return ", ".join(f"{f.name}={getattr(self.config, f.name)}" for f in dataclasses.fields(self.config))
