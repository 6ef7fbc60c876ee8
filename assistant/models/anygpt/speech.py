"""The AnyGPT family's speech codec: SpeechTokenizer (Zhang et al. 2023), written to load AnyGPT's checkpoint strictly.

AnyGPT's speech tokens come from ``fnlp/AnyGPT-speech-modules/speechtokenizer/{config.json,ckpt.dev}``, a
SpeechTokenizer with Snake activations; the original ``speechtokenizer_hubert_avg`` release uses ELU. This file is
our own implementation of the same maths (SEANet encoder -> residual VQ -> SEANet decoder, as in
ZhangXInFD/SpeechTokenizer 0.1.2, itself built on EnCodec's modules). Its state-dict keys, shapes and dtypes equal
the reference manifests ``tests/reference/speechtokenizer_{anygpt,hubert_avg}.json`` exactly, so a real
``ckpt.dev`` loads with every key checked. Numerically it is meant to differ from upstream in nothing but
float rounding: with the same random weights, upstream 0.1.2 and this file gave identical codes and waves within
3e-6 (AnyGPT's config, 1 s of audio; tiny configs, 1 to 16500 samples; checked once, outside this repository).

Shapes for AnyGPT's config (n_filters 64, strides 8,5,4,2, dimension 1024, 16 kHz; C = channels, T = samples):

    wave [B, 1, T]
    encoder.model:
      0      conv k7                      1 -> 64                     [B, 64, T]
      then per stride s in (2, 4, 5, 8), with C = 64, 128, 256, 512:
        residual unit (act, conv k3 C -> C/2, act, conv k1 C/2 -> C; plus a k1 conv shortcut)
        act, conv k=2s stride s      C -> 2C                          time / s
      13     2-layer BiLSTM on 1024 channels; output 2048 = LSTM + [x, x]   [B, 2048, F]
      14-15  act, conv k7                 2048 -> 1024                [B, 1024, F],  F = ceil(T / 320)
    quantizer: 8 residual levels of 1024 codewords of size 1024 (nearest codeword in squared L2, subtract, repeat)
      codes [8, B, F]
    decoder.model (mirror; the LSTM is unidirectional, upsampling by transposed convs k=2s stride s):
      0      conv k7 1024 -> 1024; 1 LSTM (+ skip); then per stride s in (8, 5, 4, 2): act, conv^T, residual unit
      14-15  act, conv k7 64 -> 1                                     [B, 1, F * 320]
    transform: Linear(1024, 768), used only in training (distilling HuBERT into level 1); kept for key parity.

Level 1 of the RVQ was distilled towards the average of HuBERT's layers, so it carries content ("semantic" tokens,
what AnyGPT's LM reads and writes, 50 per second); levels 2..8 carry speaker timbre, prosody and recording detail,
which AnyGPT regenerates with SoundStorm.

Every conv is non-causal with reflect padding and weight norm (stored the old ``weight_g``/``weight_v`` way). Frame
count: every stride-s conv maps L steps to ceil(L / s) (the input is padded on the right so the last window is
full), so T samples give ceil(T / 320) frames and no sample is dropped; decode returns frames * 320 samples, up to
319 more than were encoded, as upstream (trim to the input length yourself).

Only inference is implemented: no k-means initialisation, EMA codebook updates or commitment loss. The codebook
buffers ``inited``, ``cluster_size`` and ``embed_avg`` are kept only so the checkpoint's keys match; ``embed`` is
the codebook.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from assistant.models.checkpoint import check_floating, check_state_dict, read_torch_state_dict
from assistant.models.config_io import ConfigError, config_from_dict, read_json_object
from assistant.models.interfaces import SpeechCodecFromConfig

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "ckpt.dev"
ACTIVATIONS = ("ELU", "Snake")
SNAKE_EPS = 1e-9  # upstream adds this to alpha before taking its reciprocal

# Fields of the hub config.json that only the training script reads. They are ignored; any other unknown field is
# an error, because a model field we do not know would change the network silently. The set is upstream's
# config/spt_base_cfg.json; the prefixes and suffixes cover renamed or added loss, schedule and data settings.
TRAINING_ONLY_KEYS = frozenset(
    {
        "num_mels", "num_freq", "n_fft", "hop_size", "win_size", "fmin", "fmax", "fmax_for_loss",
        "mel_loss_lambdas", "recon_loss_lambda", "commitment_loss_lambda", "distill_loss_lambda", "distill_type",
        "semantic_model_path", "semantic_model_layer", "train_files", "valid_files", "results_folder",
        "batch_size", "epochs", "learning_rate", "intial_learning_rate", "initial_learning_rate",
        "num_warmup_steps", "betas", "adam_b1", "adam_b2", "lr_decay", "seed", "segment_size", "wd",
        "num_workers", "log_steps", "stdout_steps", "save_model_steps", "num_ckpt_keep", "showpiece_num",
    }
)  # fmt: skip
TRAINING_ONLY_PREFIXES = ("distill_", "semantic_model_", "mel_", "train_", "valid_")
TRAINING_ONLY_SUFFIXES = ("_lambda", "_lambdas", "_steps", "_files", "_folder", "learning_rate")


def is_training_only_key(key: str) -> bool:
    return key in TRAINING_ONLY_KEYS or key.startswith(TRAINING_ONLY_PREFIXES) or key.endswith(TRAINING_ONLY_SUFFIXES)


@dataclass(frozen=True)
class SpeechTokenizerConfig:
    """The model fields of SpeechTokenizer's ``config.json``; the defaults are AnyGPT's checkpoint.

    n_filters: channels after the first conv; each downsampling stage doubles them.
    strides: decoder upsampling factors, in decoder order; the encoder downsamples by them reversed. Their product
        is the hop (samples per frame).
    dimension: width of the latent frames and of each codeword.
    semantic_dimension: output width of ``transform`` (HuBERT's width; training only). No ``transform`` weights
        exist when it equals ``dimension``.
    bidirectional: whether the encoder LSTM is bidirectional (the decoder LSTM never is).
    dilation_base: dilation of residual unit j is dilation_base ** j.
    residual_kernel_size: kernel of the first conv of each residual unit.
    n_residual_layers: residual units per stage.
    lstm_layers: LSTM layers in the encoder and in the decoder (0 = no LSTM).
    activation: "ELU" (alpha 1) or "Snake" (learned per-channel frequency).
    codebook_size: codewords per RVQ level.
    n_q: RVQ levels.
    sample_rate: audio sample rate in Hz; must be a multiple of the hop.
    """

    n_filters: int = 64
    strides: tuple[int, ...] = (8, 5, 4, 2)
    dimension: int = 1024
    semantic_dimension: int = 768
    bidirectional: bool = True
    dilation_base: int = 2
    residual_kernel_size: int = 3
    n_residual_layers: int = 1
    lstm_layers: int = 2
    activation: str = "Snake"
    codebook_size: int = 1024
    n_q: int = 8
    sample_rate: int = 16000

    def __post_init__(self) -> None:
        object.__setattr__(self, "strides", tuple(self.strides))  # JSON gives a list; keep the config hashable
        if not self.strides or any(s < 1 for s in self.strides):
            raise ValueError(f"strides must be a non-empty list of positive ints, got {list(self.strides)}")
        # n_filters 1 would give residual units 0 hidden channels
        minimum = {"n_filters": 2, "dimension": 1, "semantic_dimension": 1, "dilation_base": 1,
                   "residual_kernel_size": 1, "n_residual_layers": 0, "lstm_layers": 0, "codebook_size": 2,
                   "n_q": 1, "sample_rate": 1}  # fmt: skip
        for name, low in minimum.items():
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.bidirectional and self.lstm_layers == 0:
            # upstream still doubles the channels of the last conv, so its network cannot run
            raise ValueError("bidirectional needs lstm_layers >= 1")
        if self.sample_rate % self.hop:
            raise ValueError(f"sample_rate {self.sample_rate} must be a multiple of the hop {self.hop}")

    @property
    def hop(self) -> int:
        """Samples per frame: the product of the strides (320 for AnyGPT)."""
        return math.prod(self.strides)

    @property
    def frame_rate(self) -> int:
        return self.sample_rate // self.hop

    @property
    def bottleneck_channels(self) -> int:
        """Channels where the LSTMs run: n_filters doubled once per stride."""
        return self.n_filters * 2 ** len(self.strides)

    @classmethod
    def from_dict(cls, data: Any, source: str | Path = "<dict>") -> SpeechTokenizerConfig:
        """Config from the hub's ``config.json`` object. Training-only fields (``is_training_only_key``) are
        ignored; an unknown field, a missing model field or a bad value raises ``ConfigError`` naming
        ``source`` and the key."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
        names = [f.name for f in fields(cls)]
        for key in data:
            if key not in names and not is_training_only_key(key):
                raise ConfigError(
                    f"{source}: unknown config key {key!r} (neither a model field nor a known training-only field)"
                )
        values: dict[str, Any] = {}
        for name in names:
            if name not in data:
                raise ConfigError(f"{source}: missing config key {name!r}")
            values[name] = _checked_field(name, data[name], source)
        return config_from_dict(cls, values, source)

    @classmethod
    def from_json(cls, path: str | Path) -> SpeechTokenizerConfig:
        return cls.from_dict(read_json_object(path), Path(path))


def _checked_field(name: str, value: Any, source: str | Path) -> Any:
    """The JSON value of a model field, type-checked (JSON has no tuples; bool is not an int here)."""

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if name == "strides":
        if not isinstance(value, list | tuple) or not all(is_int(v) for v in value):
            raise ConfigError(f"{source}: config key 'strides' must be a list of ints, got {value!r}")
        return tuple(value)
    if name == "bidirectional":
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: config key 'bidirectional' must be true or false, got {value!r}")
        return value
    if name == "activation":
        if value not in ACTIVATIONS:
            raise ConfigError(f"{source}: config key 'activation' must be one of {ACTIVATIONS}, got {value!r}")
        return value
    if not is_int(value):
        raise ConfigError(f"{source}: config key {name!r} must be an int, got {value!r}")
    return value


# ----- small helpers ---------------------------------------------------------------------------------------------


class KeyScope(nn.Module):
    """Holds named submodules and nothing else. Each one adds a level to the state-dict keys, so our flat blocks
    keep upstream's key paths (``conv.conv.weight_g``, ``vq.layers.0._codebook.embed``) without its wrapper
    classes (padding wrapper -> norm wrapper -> conv; quantizer -> RVQ -> VQ -> codebook)."""

    def __init__(self, **children: nn.Module) -> None:
        super().__init__()
        for name, child in children.items():
            self.add_module(name, child)

    def __getattr__(self, name: str) -> nn.Module:  # it holds modules only: typed so for its callers
        return super().__getattr__(name)  # type: ignore[return-value]


def reflect_pad(x: Tensor, left: int, right: int) -> Tensor:
    """Reflect-pad the last axis of ``x [B, C, L]``, also when L is too short to reflect that far.

    Reflection needs pad < L; a shorter signal first gets zeros appended up to max(left, right) + 1 samples, and as
    many samples are cut from the right end afterwards (upstream does the same, so 1-frame inputs agree too).
    """
    length = x.shape[-1]
    tail = max(left, right) + 1 - length if length <= max(left, right) else 0
    if tail:
        x = F.pad(x, (0, tail))
    padded = F.pad(x, (left, right), mode="reflect")
    return padded[..., : padded.shape[-1] - tail]


def weight_norm_weight(weight_g: Tensor, weight_v: Tensor) -> Tensor:
    """w = g * v / ||v||, the norm over every axis but the first (torch's old ``weight_norm`` with dim=0).

    ``weight_g [C0, 1, 1]``, ``weight_v [C0, C1, K]`` -> ``[C0, C1, K]``. C0 is the output channels of a conv and
    the input channels of a transposed conv (its weight is stored [in, out, K]).
    """
    return weight_v * (weight_g / torch.linalg.vector_norm(weight_v, dim=(1, 2), keepdim=True))


def _init_weight_norm(weight_g: Tensor, weight_v: Tensor, bias: Tensor) -> None:
    """torch's default conv initialisation, then g = ||v|| so that w = v. Any checkpoint overwrites it."""
    nn.init.kaiming_uniform_(weight_v, a=math.sqrt(5))
    with torch.no_grad():
        weight_g.copy_(torch.linalg.vector_norm(weight_v, dim=(1, 2), keepdim=True))
    bound = 1.0 / math.sqrt(weight_v.shape[1] * weight_v.shape[2])
    nn.init.uniform_(bias, -bound, bound)


def snake(x: Tensor, alpha: Tensor) -> Tensor:
    """Snake: x + sin(alpha x)^2 / (alpha + 1e-9), per channel; ``x [B, C, L]``, ``alpha [1, C, 1]``."""
    return x + torch.reciprocal(alpha + SNAKE_EPS) * torch.sin(alpha * x).pow(2)


class Snake1d(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))  # [1, C, 1]

    def forward(self, x: Tensor) -> Tensor:
        return snake(x, self.alpha)


def make_activation(kind: str, channels: int) -> nn.Module:
    # ELU still takes a slot in the nn.Sequential, so the indices of later layers match either way
    return Snake1d(channels) if kind == "Snake" else nn.ELU(alpha=1.0)


# ----- weight-normed convolutions with upstream's non-causal padding ---------------------------------------------


class WeightNormConv1d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, dilation: int) -> None:
        super().__init__()
        self.stride, self.dilation = stride, dilation
        # bias first: the order torch's old weight_norm leaves in the checkpoint (it re-adds weight as g and v)
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.weight_g = nn.Parameter(torch.empty(out_channels, 1, 1))
        self.weight_v = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size))
        _init_weight_norm(self.weight_g, self.weight_v, self.bias)

    def forward(self, x: Tensor) -> Tensor:
        weight = weight_norm_weight(self.weight_g, self.weight_v)
        return F.conv1d(x, weight, self.bias, stride=self.stride, dilation=self.dilation)


class WeightNormConvTranspose1d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.weight_g = nn.Parameter(torch.empty(in_channels, 1, 1))
        self.weight_v = nn.Parameter(torch.empty(in_channels, out_channels, kernel_size))
        _init_weight_norm(self.weight_g, self.weight_v, self.bias)

    def forward(self, x: Tensor) -> Tensor:
        weight = weight_norm_weight(self.weight_g, self.weight_v)
        return F.conv_transpose1d(x, weight, self.bias, stride=self.stride)


class NonCausalConv1d(nn.Module):
    """Conv1d that maps L steps to ceil(L / stride): reflect padding (the larger half on the left), plus extra
    right padding so that the last window is full and no input sample is dropped."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.kernel_size, self.stride, self.dilation = kernel_size, stride, dilation
        self.conv = KeyScope(conv=WeightNormConv1d(in_channels, out_channels, kernel_size, stride, dilation))

    def padding(self, length: int) -> tuple[int, int]:
        """(left, right) padding for an input of ``length`` steps."""
        k, s, d = self.kernel_size, self.stride, self.dilation
        total = (k - 1) * d - (s - 1)  # keeps L -> L / s when s divides L
        # Upstream's formula, with the undilated k: exact for stride 1 or dilation 1, the only cases built here.
        frames = -((k - total - length) // s) + 1  # ceil((L - k + total) / s) + 1, for negative numerators too
        extra = (frames - 1) * s + k - total - length  # right padding that completes the last window
        right = total // 2
        return total - right, right + extra

    def forward(self, x: Tensor) -> Tensor:  # [B, C_in, L] -> [B, C_out, ceil(L / stride)]
        left, right = self.padding(x.shape[-1])
        return self.conv.conv(reflect_pad(x, left, right))


class NonCausalConvTranspose1d(nn.Module):
    """Transposed conv (kernel 2s, stride s) that maps L steps to L * s: the s samples by which the transposed conv
    overshoots are cut, the larger half on the left (the same split as ``NonCausalConv1d``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride
        self.convtr = KeyScope(convtr=WeightNormConvTranspose1d(in_channels, out_channels, kernel_size, stride))

    def forward(self, x: Tensor) -> Tensor:  # [B, C_in, L] -> [B, C_out, L * stride] (for kernel = 2 * stride)
        y = self.convtr.convtr(x)  # [B, C_out, (L - 1) * s + k]
        total = self.kernel_size - self.stride
        right = total // 2
        return y[..., total - right : y.shape[-1] - right]


# ----- blocks ----------------------------------------------------------------------------------------------------


class ResidualUnit(nn.Module):
    """x + f(x) where the "x" path is a k1 conv (upstream's ``true_skip=False``) and f = act, conv k (dilated)
    dim -> dim/2, act, conv k1 dim/2 -> dim."""

    def __init__(self, dim: int, kernel_size: int, dilation: int, activation: str) -> None:
        super().__init__()
        hidden = dim // 2
        self.block = nn.Sequential(
            make_activation(activation, dim),
            NonCausalConv1d(dim, hidden, kernel_size, dilation=dilation),
            make_activation(activation, hidden),
            NonCausalConv1d(hidden, dim, 1),
        )
        self.shortcut = NonCausalConv1d(dim, dim, 1)

    def forward(self, x: Tensor) -> Tensor:  # [B, dim, L] -> [B, dim, L]
        return self.shortcut(x) + self.block(x)


class SkipLSTM(nn.Module):
    """LSTM over time on conv-layout input, plus the input (twice, side by side, when bidirectional, to match the
    doubled output width)."""

    def __init__(self, dim: int, num_layers: int, bidirectional: bool) -> None:
        super().__init__()
        self.bidirectional = bidirectional
        self.lstm = nn.LSTM(dim, dim, num_layers, bidirectional=bidirectional)

    def forward(self, x: Tensor) -> Tensor:  # [B, C, L] -> [B, C or 2C, L]
        x = x.permute(2, 0, 1)  # [L, B, C]
        y, _ = self.lstm(x)  # [L, B, C or 2C]
        skip = torch.cat([x, x], dim=-1) if self.bidirectional else x
        return (y + skip).permute(1, 2, 0)


class SEANetEncoder(nn.Module):
    def __init__(self, cfg: SpeechTokenizerConfig) -> None:
        super().__init__()
        act = cfg.activation
        channels = cfg.n_filters
        layers: list[nn.Module] = [NonCausalConv1d(1, channels, 7)]
        for stride in reversed(cfg.strides):
            layers += [
                ResidualUnit(channels, cfg.residual_kernel_size, cfg.dilation_base**j, act)
                for j in range(cfg.n_residual_layers)
            ]
            layers += [make_activation(act, channels), NonCausalConv1d(channels, 2 * channels, 2 * stride, stride)]
            channels *= 2
        if cfg.lstm_layers:
            layers.append(SkipLSTM(channels, cfg.lstm_layers, cfg.bidirectional))
            channels = 2 * channels if cfg.bidirectional else channels
        layers += [make_activation(act, channels), NonCausalConv1d(channels, cfg.dimension, 7)]
        self.model = nn.Sequential(*layers)

    def forward(self, wave: Tensor) -> Tensor:  # [B, 1, T] -> [B, dimension, ceil(T / hop)]
        return self.model(wave)


class SEANetDecoder(nn.Module):
    def __init__(self, cfg: SpeechTokenizerConfig) -> None:
        super().__init__()
        act = cfg.activation
        channels = cfg.bottleneck_channels
        layers: list[nn.Module] = [NonCausalConv1d(cfg.dimension, channels, 7)]
        if cfg.lstm_layers:
            layers.append(SkipLSTM(channels, cfg.lstm_layers, bidirectional=False))
        for stride in cfg.strides:
            layers += [
                make_activation(act, channels),
                NonCausalConvTranspose1d(channels, channels // 2, 2 * stride, stride),
            ]
            channels //= 2
            layers += [
                ResidualUnit(channels, cfg.residual_kernel_size, cfg.dilation_base**j, act)
                for j in range(cfg.n_residual_layers)
            ]
        layers += [make_activation(act, channels), NonCausalConv1d(channels, 1, 7)]  # no final tanh, as upstream
        self.model = nn.Sequential(*layers)

    def forward(self, latent: Tensor) -> Tensor:  # [B, dimension, F] -> [B, 1, F * hop]
        return self.model(latent)


# ----- residual vector quantiser ---------------------------------------------------------------------------------


class Codebook(nn.Module):
    """One RVQ level. Buffers (not parameters) because upstream trains them by EMA, not by gradient."""

    inited: Tensor  # [1]
    cluster_size: Tensor  # [K]
    embed: Tensor  # [K, D]: the codebook
    embed_avg: Tensor  # [K, D]

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        embed = torch.empty(size, dim)  # [K, D]
        nn.init.kaiming_uniform_(embed)  # usable codebooks before a checkpoint is loaded (tests, shapes)
        self.register_buffer("inited", torch.ones(1))
        self.register_buffer("cluster_size", torch.zeros(size))
        self.register_buffer("embed", embed)
        self.register_buffer("embed_avg", embed.clone())

    def nearest(self, x: Tensor) -> Tensor:
        """Index of the nearest codeword (squared L2) of each row of ``x [N, D]`` -> ``[N]``."""
        embed = self.embed  # [K, D]
        # the same three terms as upstream (|x|^2 - 2 x.e + |e|^2), so near-ties break the same way
        dist = x.pow(2).sum(1, keepdim=True) - 2 * x @ embed.t() + embed.pow(2).sum(1)[None, :]  # [N, K]
        return dist.argmin(dim=-1)

    def lookup(self, codes: Tensor) -> Tensor:  # [...] -> [..., D]
        return F.embedding(codes, self.embed)


class ResidualVQ(nn.Module):
    def __init__(self, dim: int, n_q: int, codebook_size: int) -> None:
        super().__init__()
        levels = nn.ModuleList(KeyScope(_codebook=Codebook(dim, codebook_size)) for _ in range(n_q))
        self.vq = KeyScope(layers=levels)

    @property
    def codebooks(self) -> list[Codebook]:
        return [cast(Codebook, level._codebook) for level in cast(nn.ModuleList, self.vq.layers)]

    def encode(self, latent: Tensor, n_q: int) -> Tensor:
        """``latent [B, D, F]`` -> codes ``[n_q, B, F]``: each level codes what the levels before it left."""
        batch, _, frames = latent.shape
        residual = latent.transpose(1, 2).reshape(batch * frames, -1)  # [B*F, D]
        codes = []
        for book in self.codebooks[:n_q]:
            index = book.nearest(residual)  # [B*F]
            residual = residual - book.lookup(index)
            codes.append(index.view(batch, frames))
        return torch.stack(codes)

    def decode(self, codes: Tensor) -> Tensor:
        """codes ``[k, B, F]`` (the first k levels) -> ``[B, D, F]``, the sum of the chosen codewords."""
        parts = [book.lookup(level_codes) for book, level_codes in zip(self.codebooks, codes, strict=False)]
        total = sum(parts, torch.zeros(()))  # [B, F, D]
        return total.transpose(1, 2)  # [B, F, D] -> [B, D, F]


# ----- the model -------------------------------------------------------------------------------------------------


class SpeechTokenizer(nn.Module, SpeechCodecFromConfig):
    """SpeechTokenizer codec: 16 kHz wave <-> ``[n_q, F]`` codes at 50 Hz."""

    config: SpeechTokenizerConfig

    def __init__(self, config: SpeechTokenizerConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or SpeechTokenizerConfig()
        # registration order = upstream's, so state_dict() lists keys in the checkpoint's order
        self.encoder = SEANetEncoder(cfg)
        if cfg.dimension != cfg.semantic_dimension:
            self.transform: nn.Module = nn.Linear(cfg.dimension, cfg.semantic_dimension)
        else:
            self.transform = nn.Identity()  # upstream has no transform weights in this case either
        self.quantizer = ResidualVQ(cfg.dimension, cfg.n_q, cfg.codebook_size)
        self.decoder = SEANetDecoder(cfg)

    # ----- interface attributes (the sizes are the config's) ----------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.quantizer.codebooks[0].embed.device

    # ----- codec ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, wave: Tensor, n_q: int | None = None) -> Tensor:
        """Float wave ``[T]`` -> LongTensor ``[n_q, ceil(T / hop)]``; ``[B, 1, T]`` -> ``[n_q, B, ceil(T / hop)]``.

        ``n_q`` (1..config.n_q) keeps only the first levels. Codes come back on the wave's device.
        """
        n_q = self.n_q if n_q is None else n_q
        if not 1 <= n_q <= self.n_q:
            raise ValueError(f"n_q must be in [1, {self.n_q}], got {n_q}")
        single = wave.dim() == 1
        if not (single or (wave.dim() == 3 and wave.shape[1] == 1)):
            raise ValueError(f"expected a wave [T] or [B, 1, T], got shape {tuple(wave.shape)}")
        if not wave.is_floating_point():
            raise ValueError(f"expected a float wave in [-1, 1], got dtype {wave.dtype}")
        batch = wave[None, None] if single else wave  # [B, 1, T]
        if batch.shape[-1] == 0:
            codes = torch.zeros(n_q, batch.shape[0], 0, dtype=torch.long, device=wave.device)
        else:
            ref = self.quantizer.codebooks[0].embed
            latent = self.encoder(batch.to(device=ref.device, dtype=ref.dtype))  # [B, D, F]
            codes = self.quantizer.encode(latent, n_q).to(wave.device)  # [n_q, B, F]
        return codes[:, 0] if single else codes

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """LongTensor ``[k, F]`` -> float32 wave ``[F * hop]``; ``[k, B, F]`` -> ``[B, 1, F * hop]``.

        k may be less than n_q: the first k levels are summed, as upstream. The wave comes back on the codes' device.
        """
        single = codes.dim() == 2
        if not (single or codes.dim() == 3):
            raise ValueError(f"expected codes [n_q, F] or [n_q, B, F], got shape {tuple(codes.shape)}")
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise ValueError(f"codes must be an integer tensor, got dtype {codes.dtype}")
        if not 1 <= codes.shape[0] <= self.n_q:
            raise ValueError(f"codes have {codes.shape[0]} levels, expected 1..{self.n_q}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(
                f"codes must lie in [0, {self.codebook_size}), got values in [{int(codes.min())}, {int(codes.max())}]"
            )
        batch = codes[:, None] if single else codes  # [k, B, F]
        if batch.shape[-1] == 0:
            wave = torch.zeros(batch.shape[1], 1, 0, device=codes.device)
        else:
            ref = self.quantizer.codebooks[0].embed
            latent = self.quantizer.decode(batch.to(device=ref.device, dtype=torch.long))  # [B, D, F]
            wave = self.decoder(latent).float().to(codes.device)  # [B, 1, F * hop]
        return wave[0, 0] if single else wave

    @torch.no_grad()
    def encode_batch(self, waves: Sequence[Tensor], n_q: int | None = None) -> list[Tensor]:
        """Several waves ``[T_i]`` -> their codes ``[n_q, ceil(T_i / hop)]``, one after another: the reflect-padded
        convolutions and the BiLSTM would see a padded batch's padding, so an utterance padded to a longer one would
        not get its own codes."""
        return [self.encode(wave, n_q) for wave in waves]

    @torch.no_grad()
    def decode_batch(self, codes: Tensor) -> Tensor:
        """LongTensor ``[B, k, F]`` (rows of equal length, nothing padded) -> float32 waves ``[B, F * hop]``."""
        if codes.dim() != 3:
            raise ValueError(f"expected codes [B, k, F], got shape {tuple(codes.shape)}")
        return self.decode(codes.transpose(0, 1))[:, 0]  # [k, B, F] -> [B, 1, F * hop] -> [B, F * hop]

    def forward(self, wave: Tensor) -> Tensor:
        """Reconstruction through all levels: ``[B, 1, T]`` -> ``[B, 1, ceil(T / hop) * hop]``."""
        return self.decode(self.encode(wave))


# ----- loading ---------------------------------------------------------------------------------------------------


def _check_activation(
    expected: dict[str, tuple[int, ...]],
    state: dict[str, Any],
    cfg: SpeechTokenizerConfig,
    config_path: Path,
    ckpt_path: Path,
) -> None:
    """Snake checkpoints have ``….alpha`` keys and ELU ones none; say so plainly when the config disagrees, rather
    than list 26 missing or unexpected keys."""
    found = next((k for k in state if k.endswith(".alpha")), None)
    if cfg.activation == "Snake" and found is None:
        wanted = next(k for k in expected if k.endswith(".alpha"))
        raise ConfigError(
            f"{ckpt_path}: no Snake 'alpha' key (e.g. missing {wanted!r}), so this looks like an ELU checkpoint, "
            f"but {config_path} says activation 'Snake'"
        )
    if cfg.activation == "ELU" and found is not None:
        raise ConfigError(
            f"{ckpt_path}: key {found!r} is a Snake 'alpha' parameter, so this looks like a Snake checkpoint, "
            f"but {config_path} says activation 'ELU'"
        )


def load_speechtokenizer(
    config_path: str | Path,
    ckpt_path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> SpeechTokenizer:
    """Build the model from the hub ``config.json`` and load the plain state dict ``ckpt_path`` into it, in eval mode.

    Every key, shape and the activation are checked before anything is copied; a mismatch raises
    ``ConfigError`` naming the file and the key (and shapes), and no model is returned.
    """
    config_path, ckpt_path = Path(config_path), Path(ckpt_path)
    cfg = SpeechTokenizerConfig.from_json(config_path)
    state = read_torch_state_dict(ckpt_path)  # memory-mapped: nothing is copied until the checks pass
    with torch.device("meta"):  # shapes only: no time spent on a random initialisation that is overwritten
        model = SpeechTokenizer(cfg)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    _check_activation(expected, state, cfg, config_path, ckpt_path)
    check_state_dict(expected, state, ckpt_path)
    check_floating(state, ckpt_path)
    if torch.device(device).type == "meta":  # a check only (``anystream check-weights``): nothing to copy
        return model.eval()
    model = model.to_empty(device=device)
    with torch.no_grad():
        model.load_state_dict(state, strict=True)  # copies, casting to float32 where the file differs
    return model.to(dtype=dtype).eval()


def load_speechtokenizer_dir(
    folder: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> SpeechTokenizer:
    """``load_speechtokenizer`` on ``folder/config.json`` and ``folder/ckpt.dev`` (the hub layout
    ``AnyGPT-speech-modules/speechtokenizer/``). The ``AnyGPT-speech-modules`` folder itself also works."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: checkpoint folder not found")
    if not (folder / CONFIG_FILE).is_file() and (folder / "speechtokenizer" / CONFIG_FILE).is_file():
        folder = folder / "speechtokenizer"
    return load_speechtokenizer(folder / CONFIG_FILE, folder / CHECKPOINT_FILE, device=device, dtype=dtype)
