"""The AnyGPT family's music codec: ``facebook/encodec_32khz`` run by transformers' ``EncodecModel``.

This is the full-size alternative to the embedded ``MusicDetokenizer`` (``assistant/models/embedded/music.py``);
both are ``MusicCodec``s (``assistant.models.interfaces``), so ``LocalMediaBackend`` takes either.

Codec (EnCodec 32 kHz, mono; numbers from the hub ``config.json``):
    hop = prod(upsampling_ratios) = 8 * 5 * 4 * 4 = 640 samples -> 32000 / 640 = 50 frames per second
    target_bandwidths [2.2] kbps = 4 codebooks * 11 bits (2048 codes) * 50 Hz -> 4 codes per frame
    -> 200 music tokens per second (AnyGPT's rate: 20 s of input music is 4000 tokens).

Tokens: AnyGPT's frame-major flattening, token = code + 2048 * level (``assistant.modules.music_tokens``); decoding
re-aligns by level (``realign_tokens``; AnyGPT itself takes ``token % 2048`` and drops the tail, which is the same
for a well-formed stream but shifts every later frame when the LM skips one token). Tokens are music-local ids in
[0, 8192), not LM ids; the vocabulary maps them.

Sample rates: the codec runs at 32 kHz, the pipeline at ``assistant.audio.SAMPLE_RATE`` (16 kHz: the engine divides
a music wave's length by it, and ``MediaBackend.music_wave`` promises 16 kHz). So ``EncodecMusicConfig.sample_rate``
means what ``MusicCodecConfig.sample_rate`` means, the rate of the waves ``decode`` returns and ``encode`` reads by
default (16 kHz), and ``codec_sample_rate`` is the codec's own 32 kHz. Both directions resample with
``assistant.audio.resample`` (polyphase, scipy ``resample_poly``); 32 -> 16 kHz drops everything above 8 kHz.
``decode_codes`` returns the native 32 kHz wave for callers that want full bandwidth.

Loading (``load_encodec_music``) is strict and does not use ``from_pretrained`` (which would quietly initialise any
weight the file lacks):
1. ``config.json`` is read and checked against ``EncodecMusicConfig``. ``use_conv_shortcut`` must be false: the
   first hub upload (revision 4a85b2d) says true, which adds a 1x1 shortcut conv to every residual block (keys the
   corrected checkpoint does not have); transformers also defaults a missing key to true.
2. The weights (``model.safetensors``, else ``pytorch_model.bin``) are read and renamed to *checkpoint naming*:
   the hub file uses ``torch.nn.utils.weight_norm``'s ``<conv>.weight_g`` / ``<conv>.weight_v`` (transformers
   4.31-4.34 built the module that way), while current transformers builds
   ``<conv>.parametrizations.weight.original0`` / ``original1``. A file in either naming is accepted.
3. Every key and shape is compared with the module's state dict (in checkpoint naming, so errors name the keys as
   they appear in the hub file) before anything is copied: a missing, unknown or wrongly shaped key raises
   ``ConfigError`` naming the file and the key, and no model is returned.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from assistant.audio import SAMPLE_RATE, resample
from assistant.models.checkpoint import check_state_dict, read_weights
from assistant.models.config_io import ConfigError, read_json_object
from assistant.models.interfaces import MusicCodecFromConfig
from assistant.modules.music_tokens import flatten_codes, realign_tokens

if TYPE_CHECKING:  # transformers is imported when a model is built (it takes seconds to import)
    from transformers import EncodecConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")  # tried in this order, as transformers does

# weight_norm parameter names: module naming (torch.nn.utils.parametrizations) -> checkpoint naming (hub file)
MODULE_TO_CHECKPOINT = {
    ".parametrizations.weight.original0": ".weight_g",  # magnitude g: [out, 1, 1] (Conv1d), [in, 1, 1] (ConvT)
    ".parametrizations.weight.original1": ".weight_v",  # direction v: the conv weight's shape
}
CHECKPOINT_TO_MODULE = {v: k for k, v in MODULE_TO_CHECKPOINT.items()}


# ----- config -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncodecMusicConfig:
    """What the pipeline needs from the music codec; the checkpoint's ``config.json`` must agree with it.

    n_codebooks: codes per frame (EnCodec 32 kHz at 2.2 kbps: 4).
    codebook_size: codes per codebook (2048 = 11 bits).
    codec_sample_rate: the rate the codec runs at (32 kHz).
    frame_rate: code frames per second (32000 / hop 640 = 50).
    sample_rate: rate of the waves ``decode`` returns and ``encode`` reads by default; the pipeline's rate
        (``assistant.audio.SAMPLE_RATE``, 16 kHz), as ``MusicCodecConfig.sample_rate``.
    """

    n_codebooks: int = 4
    codebook_size: int = 2048
    codec_sample_rate: int = 32_000
    frame_rate: int = 50
    sample_rate: int = SAMPLE_RATE

    def __post_init__(self) -> None:
        if self.n_codebooks < 1 or self.codebook_size < 2:
            raise ValueError("n_codebooks must be >= 1 and codebook_size >= 2")
        if self.frame_rate <= 0 or self.codec_sample_rate % self.frame_rate:
            raise ValueError(f"frame_rate {self.frame_rate} must divide codec_sample_rate {self.codec_sample_rate}")
        if self.sample_rate <= 0:
            raise ValueError("sample_rate must be positive")

    @property
    def hop(self) -> int:
        """Codec samples per frame (640)."""
        return self.codec_sample_rate // self.frame_rate

    @property
    def vocab_size(self) -> int:
        """Number of music-local token ids (4 * 2048 = 8192); ``ModelBundle.validate`` compares it to the vocab."""
        return self.n_codebooks * self.codebook_size

    @property
    def tokens_per_second(self) -> int:
        return self.frame_rate * self.n_codebooks


# ----- key naming ---------------------------------------------------------------------------------------------------
def checkpoint_key(key: str) -> str:
    """A module state-dict key -> the hub checkpoint's name for it (``...original0`` -> ``...weight_g``)."""
    for module_suffix, checkpoint_suffix in MODULE_TO_CHECKPOINT.items():
        if key.endswith(module_suffix):
            return key[: -len(module_suffix)] + checkpoint_suffix
    return key


def module_key(key: str) -> str:
    """A hub checkpoint key -> the module's name for it
    (``...weight_g`` -> ``...parametrizations.weight.original0``)."""
    for checkpoint_suffix, module_suffix in CHECKPOINT_TO_MODULE.items():
        if key.endswith(checkpoint_suffix):
            return key[: -len(checkpoint_suffix)] + module_suffix
    return key


def _renamed(tensors: dict[str, Tensor], rename: Callable[[str], str], source: str | Path) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in tensors.items():
        new = rename(key)
        if new in out:  # the file holds one tensor under both namings
            raise ConfigError(f"{source}: key {key!r} duplicates another key once renamed to {new!r}")
        out[new] = value
    return out


def to_checkpoint_naming(tensors: dict[str, Tensor], source: str | Path = "state dict") -> dict[str, Tensor]:
    """State dict in either naming -> checkpoint naming (``weight_g`` / ``weight_v``); order kept."""
    return _renamed(tensors, checkpoint_key, source)


def to_module_naming(tensors: dict[str, Tensor], source: str | Path = "state dict") -> dict[str, Tensor]:
    """State dict in either naming -> this transformers' module naming (``parametrizations.weight.original*``)."""
    return _renamed(tensors, module_key, source)


# ----- config.json and weights --------------------------------------------------------------------------------------
def check_encodec_config(hub: EncodecConfig, settings: EncodecMusicConfig, source: str | Path) -> None:
    """An ``EncodecConfig`` must describe the codec ``settings`` asks for; else ``ConfigError`` naming the field."""

    def fail(field: str, got: object, want: str) -> None:
        raise ConfigError(f"{source}: key {field!r} is {got!r}, expected {want}")

    if hub.use_conv_shortcut:
        fail(
            "use_conv_shortcut",
            True,
            "false (the corrected 32 kHz checkpoint has identity shortcuts; a missing "
            "key defaults to true in transformers; hub revision 4a85b2d is the outdated upload)",
        )
    if hub.sampling_rate != settings.codec_sample_rate:
        fail("sampling_rate", hub.sampling_rate, str(settings.codec_sample_rate))
    if hub.audio_channels != 1:
        fail("audio_channels", hub.audio_channels, "1 (mono)")
    if hub.codebook_size != settings.codebook_size:
        fail("codebook_size", hub.codebook_size, str(settings.codebook_size))
    if hub.hop_length != settings.hop:
        fail("upsampling_ratios", list(hub.upsampling_ratios), f"ratios whose product (the hop) is {settings.hop}")
    if hub.num_quantizers != settings.n_codebooks:
        fail("target_bandwidths", list(hub.target_bandwidths), f"{settings.n_codebooks} codebooks at the top one")
    # encode() uses target_bandwidths[0]; the count as EncodecResidualVectorQuantizer works it out
    first = max(1, math.floor(hub.target_bandwidths[0] * 1000 / (hub.codebook_nbits * hub.frame_rate)))
    if first != settings.n_codebooks:
        fail("target_bandwidths", list(hub.target_bandwidths), f"{settings.n_codebooks} codebooks at the first one")
    if hub.normalize:
        fail("normalize", True, "false (decode passes no audio scales, as AnyGPT does)")
    if hub.chunk_length_s is not None:
        fail("chunk_length_s", hub.chunk_length_s, "null (the whole clip is one chunk)")


def read_encodec_config(path: str | Path, settings: EncodecMusicConfig) -> EncodecConfig:
    """``config.json`` of a ``facebook/encodec_32khz``-style folder -> a checked ``EncodecConfig``."""
    from transformers import EncodecConfig

    path = Path(path)
    data = read_json_object(path)
    if data.get("model_type") != "encodec":
        raise ConfigError(f"{path}: key 'model_type' is {data.get('model_type')!r}, expected 'encodec'")
    try:
        hub = EncodecConfig(**data)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: invalid Encodec config ({exc})") from exc
    check_encodec_config(hub, settings, path)
    return hub


def find_weights_file(folder: str | Path) -> Path:
    """The first of ``WEIGHTS_FILES`` present in ``folder``; else ``ConfigError`` naming both."""
    folder = Path(folder)
    for name in WEIGHTS_FILES:
        if (folder / name).is_file():
            return folder / name
    raise ConfigError(f"{folder / WEIGHTS_FILES[0]}: weights file not found (nor {WEIGHTS_FILES[1]})")


def check_encodec_state_dict(model: nn.Module, tensors: dict[str, Tensor], source: str | Path) -> dict[str, Tensor]:
    """File tensors (either naming) checked against ``model`` (an ``EncodecModel``): same keys, shapes, and floating
    point where the module is; returns them in module naming, ready for ``load_state_dict``. Raises
    ``ConfigError`` naming ``source`` and the key in checkpoint naming. Copies nothing."""
    module_state = model.state_dict()
    expected = {checkpoint_key(k): tuple(v.shape) for k, v in module_state.items()}
    found = to_checkpoint_naming(tensors, source)
    check_state_dict(expected, found, source)
    for key, value in module_state.items():
        stored = found[checkpoint_key(key)]
        if value.is_floating_point() and not stored.is_floating_point():
            raise ConfigError(f"{source}: key {checkpoint_key(key)!r} has dtype {stored.dtype}, expected float")
    return to_module_naming(found, source)


def load_encodec_music(
    folder: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    config: EncodecMusicConfig | None = None,
) -> EncodecMusic:
    """A folder laid out like the hub repo ``facebook/encodec_32khz`` (``config.json`` plus ``model.safetensors`` or
    ``pytorch_model.bin``) -> ``EncodecMusic`` in eval mode on ``device`` in ``dtype``.

    Raises:
        ConfigError: missing or invalid ``config.json`` (naming the field), no weights file, or a weights file
            whose keys or shapes do not match the module exactly (naming the file and the key). Nothing is loaded
            into a module before every key has been checked.
    """
    from transformers import EncodecModel

    settings = config or EncodecMusicConfig()
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: checkpoint folder not found")
    hub = read_encodec_config(folder / CONFIG_FILE, settings)
    path = find_weights_file(folder)
    tensors = read_weights(path)
    model: Any = EncodecModel(hub)  # fp32 on CPU, random init; every tensor is overwritten below
    state = check_encodec_state_dict(model, tensors, path)
    with torch.no_grad():
        model.load_state_dict(state, strict=True)
    return EncodecMusic(model.to(device=device, dtype=dtype).eval(), settings)


# ----- the codec ----------------------------------------------------------------------------------------------------
class EncodecMusic(nn.Module, MusicCodecFromConfig):
    """``EncodecModel`` behind the ``MusicCodec`` interface (tokens <-> waves at ``config.sample_rate``).

    Build it with ``load_encodec_music``; the constructor takes an already loaded ``EncodecModel`` (tests, or a
    caller that verified its weights otherwise) and checks its config against ``config``.
    """

    config: EncodecMusicConfig
    model: Any  # transformers' EncodecModel; its annotations type the forward outputs too loosely to read them

    def __init__(self, model: Any, config: EncodecMusicConfig | None = None) -> None:
        super().__init__()
        self.config = config or EncodecMusicConfig()
        check_encodec_config(model.config, self.config, type(model).__name__)
        self.model = model

    # ----- MusicCodec (the sizes are the config's) --------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # ----- codes ------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode_codes(self, wave: np.ndarray | Tensor, sample_rate: int | None = None) -> Tensor:
        """Mono float wave ``[S]`` at ``sample_rate`` (default ``config.sample_rate``) -> codes ``[L, T]`` (int64, CPU),
        T = ceil(S * 32000 / sample_rate / 640)."""
        cfg = self.config
        rate = cfg.sample_rate if sample_rate is None else int(sample_rate)
        x = wave.detach().cpu().float().numpy() if isinstance(wave, Tensor) else np.asarray(wave, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"expected a mono wave [S], got shape {tuple(x.shape)}")
        x = resample(x, rate, cfg.codec_sample_rate)  # [S']
        if x.size == 0:
            return torch.zeros(cfg.n_codebooks, 0, dtype=torch.long)
        inputs = torch.from_numpy(np.ascontiguousarray(x)).to(self.device, self.dtype)[None, None]  # [1, 1, S']
        audio_codes = self.model.encode(inputs, return_dict=True).audio_codes  # [chunks 1, B 1, L, T]
        return audio_codes[0, 0].long().cpu()  # [L, T]

    @torch.inference_mode()
    def decode_codes(self, codes: Tensor) -> np.ndarray:
        """Codes ``[L, T]`` -> float32 wave ``[T * 640]`` at the codec's 32 kHz (not clipped)."""
        cfg = self.config
        if codes.dim() != 2 or codes.shape[0] != cfg.n_codebooks:
            raise ValueError(f"codes must be [{cfg.n_codebooks}, T], got {tuple(codes.shape)}")
        if codes.shape[1] == 0:
            return np.zeros(0, dtype=np.float32)
        if int(codes.min()) < 0 or int(codes.max()) >= cfg.codebook_size:
            raise ValueError(f"codes must lie in [0, {cfg.codebook_size})")
        audio_codes = codes.long().to(self.device)[None, None]  # [chunks 1, B 1, L, T]
        audio = self.model.decode(audio_codes, [None], return_dict=True).audio_values  # [B 1, C 1, T * hop]
        return audio[0, 0].float().cpu().numpy()

    # ----- MusicCodec ---------------------------------------------------------------------------------------------
    def encode(self, wave: np.ndarray | Tensor, sample_rate: int | None = None) -> list[int]:
        """Mono float wave ``[S]`` at ``sample_rate`` (default ``config.sample_rate``) -> music-local tokens, 200 per
        second of audio, frame-major with token = code + 2048 * level (AnyGPT's flattening)."""
        return flatten_codes(self.encode_codes(wave, sample_rate), self.config.codebook_size)

    def decode(self, tokens: list[int]) -> np.ndarray:
        """Music-local tokens -> float32 wave in [-1, 1] at ``config.sample_rate`` (re-aligned by level, see
        ``realign_tokens``: a skipped or repeated token is repaired from the previous frame)."""
        cfg = self.config
        codes, _repairs = realign_tokens(list(tokens), cfg.n_codebooks, cfg.codebook_size)  # [L, T]
        wave = resample(self.decode_codes(codes), cfg.codec_sample_rate, cfg.sample_rate)
        return np.clip(wave, -1.0, 1.0).astype(np.float32)

    def extra_repr(self) -> str:
        cfg = self.config
        return (
            f"n_codebooks={cfg.n_codebooks}, codebook_size={cfg.codebook_size}, "
            f"codec_sample_rate={cfg.codec_sample_rate}, sample_rate={cfg.sample_rate}"
        )
