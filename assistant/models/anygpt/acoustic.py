"""The AnyGPT family's acoustic model: SoundStorm (SpeechTokenizer variant), loading the published checkpoint strictly.

The network is the conformer AnyGPT uses to turn SpeechTokenizer level-1 ("semantic") codes into levels 2..8
(``fnlp/AnyGPT-speech-modules: soundstorm/speechtokenizer_soundstorm_mls.pt``, built by AnyGPT's
``voice_clone.py: load_soundstorm``). Our own implementation; the module tree only mirrors the reference's names so
that ``state_dict()`` equals ``tests/reference/soundstorm_anygpt.json`` key for key (356 tensors, 351,378,432
parameters, no buffers).

Architecture (AnyGPT sizes: D=1024, 12 layers, 8 heads x 128, Q = n_q - 1 = 7 acoustic levels, K = 1024 codes):
    x[t] = sum_{q<Q} code_embeds[q * (K + 1) + acoustic[q, t]]       (id K of each level is its mask token)
         + semantic_token_emb[semantic[t]]                           (the condition, added after the sum)
    x = Conformer(x)                         ``assistant.modules.conformer``: 12 layers of FF/2, rotary attention
                                             (theta 1e4), conv module (k31, ChanLayerNorm), FF/2, post-norm
    logits[t, q] = LN(heads(x)[t, q]) @ W[q] + b[q]    heads = Linear(D, Q * D) split level-major; W [Q, D, K]

Acoustic prompt (AnyGPT ``generate``): the prompt's level 1 is prepended to the semantic condition and its levels
2..8 to the acoustic input, unmasked; only the new frames are decoded. ``assistant/decoding/maskgit.py`` does this
through ``forward`` / ``level_logits`` (the ``AcousticModel`` interface);
``assistant/decoding/soundstorm_decoding.py: anygpt_generate`` is a line-by-line account of AnyGPT's own decoding
loop, which the AnyGPT family uses.

Numerics: in float32 on CPU, ``forward`` and ``anygpt_generate`` (same weights, same global RNG seed) were checked
bit-identical to AnyGPT's code at tiny sizes; the ops are chosen for that (written-out Swish, AnyGPT's explicit
attention unless ``sdpa``, the embedding sum over a ``[B, T, Q, D]`` tensor). In lower precision the rotary step runs
in float32 and is cast back (AnyGPT disables autocast there).

State-dict layout: ``net.conformer.layers.{i}.`` + a conformer layer's keys (``assistant.modules.conformer``), and
    net.code_embeds [Q*(K+1), D], net.heads.0 Linear(D, Q*D), net.to_logits.0 LayerNorm,
    net.to_logits.2.{weight [Q, D, K], bias [1, 1, Q, K]} (an einops EinMix in the reference), semantic_token_emb.
The upstream USLM checkpoint names the conv module ``conv.net.{0,2,4,6,7}`` instead; ``load_soundstorm`` renames
(see ``USLM_TO_ANYGPT``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from assistant.models.checkpoint import check_floating, check_state_dict, read_torch_state_dict
from assistant.models.config_io import ConfigError
from assistant.models.interfaces import AcousticLevels, AcousticModelFromConfig
from assistant.modules.acoustic_inputs import check_inputs, level_indices
from assistant.modules.conformer import ChanLayerNorm, Conformer


@dataclass(frozen=True)
class SoundStormConfig(AcousticLevels):
    """Configuration of ``SoundStorm``; the defaults are AnyGPT's (``SoundStormConfig.anygpt()``).

    n_q: total RVQ levels of the codec; level 1 is the condition, ``n_q - 1`` levels are predicted.
    codebook_size: codes per acoustic level; id ``codebook_size`` of every level is its mask token.
    semantic_vocab: size of the semantic (level-1) embedding table.
    dim: model width. depth: conformer layers. heads / dim_head: attention heads and their width (even, rotary).
    ff_mult: feed-forward expansion. conv_expansion: channel expansion of the conv module (GLU halves 2x that).
    conv_kernel: depthwise kernel; padded ``(k // 2, k // 2 - (k + 1) % 2)`` like the reference.
    rotary_theta: rotary frequency base.
    sdpa: attention through ``F.scaled_dot_product_attention`` (fused kernels, faster on GPU) instead of AnyGPT's
        explicit softmax(q k^T) v; equal up to float rounding (about 1e-7 relative), not bit for bit.
    seed: seed of the random initialisation (real use loads weights).
    """

    n_q: int = 8
    codebook_size: int = 1024
    semantic_vocab: int = 1024
    dim: int = 1024
    depth: int = 12
    heads: int = 8
    dim_head: int = 128
    ff_mult: int = 4
    conv_expansion: int = 2
    conv_kernel: int = 31
    rotary_theta: float = 10000.0
    sdpa: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        self.check_levels()
        for name in ("codebook_size", "semantic_vocab"):
            if getattr(self, name) < 2:
                raise ValueError(f"{name} must be >= 2, got {getattr(self, name)}")
        for name in ("dim", "depth", "heads", "dim_head", "ff_mult", "conv_expansion", "conv_kernel"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dim_head % 2:
            raise ValueError(f"dim_head must be even for rotary embeddings, got {self.dim_head}")
        if self.rotary_theta <= 0:
            raise ValueError("rotary_theta must be > 0")

    @classmethod
    def anygpt(cls) -> SoundStormConfig:
        """The sizes of ``speechtokenizer_soundstorm_mls.pt`` (AnyGPT ``voice_clone.py: load_soundstorm``)."""
        return cls()

    @classmethod
    def tiny(cls, **overrides: Any) -> SoundStormConfig:
        """A few-thousand-parameter model with the same structure, for tests."""
        fields: dict[str, Any] = dict(
            codebook_size=32, semantic_vocab=32, dim=32, depth=2, heads=2, dim_head=16, conv_kernel=5
        )
        return cls(**(fields | overrides))


# ---------------------------------------------------------------------------------------------------------------------
# The heads (the rest of the network is ``assistant.modules.conformer``)


class _SplitLevels(nn.Module):
    """``[B, T, Q * D] -> [B, T, Q, D]``, level-major (the reference's ``'b n (h d) -> b (n h) d'``)."""

    def __init__(self, levels: int) -> None:
        super().__init__()
        self.levels = levels

    def forward(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.levels, -1))


class LevelLinear(nn.Module):
    """One ``D -> K`` projection per level: ``[B, T, Q, D] -> [B, T, Q, K]`` (the reference's einops ``EinMix``;
    its bias is stored broadcast as ``[1, 1, Q, K]``)."""

    def __init__(self, levels: int, dim: int, out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(levels, dim, out))  # [Q, D, K]
        self.bias = nn.Parameter(torch.empty(1, 1, levels, out))  # [1, 1, Q, K]

    def forward(self, h: Tensor) -> Tensor:  # [B, T, Q, D] -> [B, T, Q, K]
        return torch.einsum("btqd,qdk->btqk", h, self.weight) + self.bias


class SoundStormNet(nn.Module):
    """The reference's ``ConformerWrapper``: summed code embeddings (+ condition) -> conformer -> per-level logits."""

    def __init__(self, cfg: SoundStormConfig) -> None:
        super().__init__()
        self.conformer = Conformer(
            cfg.dim,
            cfg.depth,
            cfg.heads,
            cfg.dim_head,
            ff_mult=cfg.ff_mult,
            conv_expansion=cfg.conv_expansion,
            conv_kernel=cfg.conv_kernel,
            rotary_theta=cfg.rotary_theta,
            sdpa=cfg.sdpa,
        )
        self.code_embeds = nn.Embedding(cfg.n_acoustic * (cfg.codebook_size + 1), cfg.dim)  # level q: rows q*(K+1)..
        self.heads = nn.Sequential(nn.Linear(cfg.dim, cfg.dim * cfg.n_acoustic), _SplitLevels(cfg.n_acoustic))
        # slot 1 is the reference's reshape to [B, T, Q, D]; our tensors already have that shape
        self.to_logits = nn.Sequential(
            nn.LayerNorm(cfg.dim), nn.Identity(), LevelLinear(cfg.n_acoustic, cfg.dim, cfg.codebook_size)
        )


# ---------------------------------------------------------------------------------------------------------------------
# The model


class SoundStorm(nn.Module, AcousticModelFromConfig):
    """AnyGPT's SoundStorm behind the ``AcousticModel`` interface."""

    config: SoundStormConfig

    def __init__(self, config: SoundStormConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or SoundStormConfig.anygpt()
        self.net = SoundStormNet(cfg)
        self.semantic_token_emb = nn.Embedding(cfg.semantic_vocab, cfg.dim)
        if not any(p.is_meta for p in self.parameters()):
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Seeded random init with PyTorch's / einops' default distributions (real use loads weights).

        Every value is drawn on the CPU from a CPU generator, then copied to the parameter's device: the weights are
        the same whatever the parameters' device or torch's default device (a model built under
        ``with torch.device("cuda")`` would otherwise make CUDA tensors from a CPU generator, which torch refuses)."""
        gen = torch.Generator(device="cpu").manual_seed(self.config.seed)

        def uniform_(param: Tensor, fan_in: int) -> None:
            bound = fan_in**-0.5
            param.copy_(torch.rand(param.shape, generator=gen, device="cpu") * (2 * bound) - bound)

        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Conv1d):
                fan_in = module.weight[0].numel()
                uniform_(module.weight, fan_in)
                if module.bias is not None:
                    uniform_(module.bias, fan_in)
            elif isinstance(module, nn.Embedding):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen, device="cpu"))
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
            elif isinstance(module, ChanLayerNorm):
                module.gamma.fill_(1.0)
            elif isinstance(module, LevelLinear):
                uniform_(module.weight, module.weight.shape[1])
                uniform_(module.bias, module.weight.shape[1])

    # ----- AcousticModel (the sizes are the config's) -----------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.semantic_token_emb.weight.device

    def trunk(self, semantic: Tensor, acoustic: Tensor) -> Tensor:
        """semantic ``[B, T]`` in [0, semantic_vocab); acoustic ``[B, n_q - 1, T]`` in [0, K] (K = mask id) ->
        conformer output ``[B, T, D]``."""
        cfg = self.config
        check_inputs(semantic, acoustic, cfg.n_acoustic)
        offsets = torch.arange(cfg.n_acoustic, device=acoustic.device) * (cfg.codebook_size + 1)  # [Q]
        ids = acoustic.long().transpose(1, 2) + offsets  # [B, T, Q]
        x = self.net.code_embeds(ids).sum(dim=2)  # [B, T, Q, D] -> [B, T, D] (this layout sums like the reference)
        x = x + self.semantic_token_emb(semantic.long())  # [B, T, D]
        return self.net.conformer(x)  # [B, T, D]

    def forward(self, semantic: Tensor, acoustic: Tensor) -> Tensor:
        """semantic ``[B, T]``; acoustic ``[B, n_q - 1, T]`` (K = mask id) -> logits ``[B, T, n_q - 1, K]``."""
        x = self.trunk(semantic, acoustic)  # [B, T, D]
        return self.net.to_logits(self.net.heads(x))  # [B, T, Q, D] -> [B, T, Q, K]

    def level_logits(self, semantic: Tensor, acoustic: Tensor, level: Tensor | int, start: int = 0) -> Tensor:
        """The logits of one predicted level per sequence (0 = codec level 2), for frames ``start..T``:
        ``[B, T - start, K]``, equal to ``forward(semantic, acoustic)[:, start:, level]`` but computing one head."""
        cfg = self.config
        levels = level_indices(level, semantic.shape[0], cfg.n_acoustic, semantic.device)  # [B]
        x = self.trunk(semantic, acoustic)[:, start:]  # [B, T', D]
        proj = cast(nn.Linear, self.net.heads[0])
        norm, mix = cast(nn.LayerNorm, self.net.to_logits[0]), cast(LevelLinear, self.net.to_logits[2])
        weight = proj.weight.view(cfg.n_acoustic, cfg.dim, cfg.dim)[levels]  # [B, D_out, D_in]
        bias = proj.bias.view(cfg.n_acoustic, cfg.dim)[levels]  # [B, D]
        h = norm(torch.einsum("btd,bed->bte", x, weight) + bias[:, None, :])  # [B, T', D]
        return torch.einsum("btd,bdk->btk", h, mix.weight[levels]) + mix.bias[0, 0, levels][:, None, :]  # [B, T', K]


# ---------------------------------------------------------------------------------------------------------------------
# Loading

USLM_TO_ANYGPT: dict[str, str] = {
    "conv.net.0.weight": "conv.net1.0.weight",
    "conv.net.0.bias": "conv.net1.0.bias",
    "conv.net.2.weight": "conv.net1.2.weight",
    "conv.net.2.bias": "conv.net1.2.bias",
    "conv.net.4.conv.weight": "conv.ds_conv.conv.weight",
    "conv.net.4.conv.bias": "conv.ds_conv.conv.bias",
    "conv.net.6.gamma": "conv.net2.1.gamma",
    "conv.net.7.weight": "conv.net2.2.weight",
    "conv.net.7.bias": "conv.net2.2.bias",
}
"""Per-layer renames from the upstream checkpoint naming to AnyGPT's (and ours), applied after the
``net.conformer.layers.{i}.`` prefix.

Upstream ``ZhangXInFD/soundstorm-speechtokenizer`` (the ``fnlp/USLM`` SoundStorm checkpoint) keeps the conformer
conv module in one ``nn.Sequential`` ``net``: 0 LayerNorm, 1 transpose, 2 pointwise Conv1d, 3 GLU, 4 depthwise conv
(``.conv``), 5 Swish, 6 ChanLayerNorm, 7 pointwise Conv1d, 8 transpose, 9 Dropout. AnyGPT's vendored copy splits it
into ``net1`` (slots 0-3), ``ds_conv`` (slot 4, so that it can take a padding mask) and ``net2`` (slots 5-9, renumbered
from 0). Shapes are unchanged; every other key is identical. These nine keys per layer are exactly the missing /
unexpected keys reported in ZhangXInFD/soundstorm-speechtokenizer issue #9 when a USLM file meets AnyGPT's code.
"""

_LAYER_KEY = re.compile(r"^(net\.conformer\.layers\.\d+\.)(.*)$")
_ANYGPT_CONV = re.compile(r"\.conv\.(net1|net2|ds_conv)\.")
_USLM_CONV = re.compile(r"\.conv\.net\.\d+\.")
LAYOUTS = ("auto", "anygpt", "uslm")


def detect_layout(keys: list[str] | tuple[str, ...], source: str | Path = "<state dict>") -> str | None:
    """``"anygpt"`` or ``"uslm"`` from the conv-module key names, ``None`` when neither appears; a file that uses both
    raises ``ConfigError`` naming one key of each."""
    anygpt = next((k for k in keys if _ANYGPT_CONV.search(k)), None)
    uslm = next((k for k in keys if _USLM_CONV.search(k)), None)
    if anygpt is not None and uslm is not None:
        raise ConfigError(f"{source}: mixes AnyGPT conv-module keys (e.g. {anygpt!r}) with USLM ones (e.g. {uslm!r})")
    return "anygpt" if anygpt is not None else "uslm" if uslm is not None else None


def rename_uslm_keys(tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Apply ``USLM_TO_ANYGPT`` -> (renamed tensors, {new key: key in the file}); other keys pass through."""
    out: dict[str, Tensor] = {}
    renamed: dict[str, str] = {}
    for key, value in tensors.items():
        match = _LAYER_KEY.match(key)
        new = key
        if match is not None and match.group(2) in USLM_TO_ANYGPT:
            new = match.group(1) + USLM_TO_ANYGPT[match.group(2)]
            renamed[new] = key
        out[new] = value
    return out, renamed


def load_soundstorm(
    path: str | Path,
    *,
    config: SoundStormConfig | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    layout: str = "auto",
) -> SoundStorm:
    """Read a plain ``torch.save``d SoundStorm state dict (``speechtokenizer_soundstorm_mls.pt`` or the USLM one) into
    a new ``SoundStorm(config or SoundStormConfig.anygpt())`` in eval mode.

    ``layout``: ``"anygpt"`` (``conv.net1 / ds_conv / net2`` keys), ``"uslm"`` (``conv.net.{0,2,4,6,7}``, renamed by
    ``USLM_TO_ANYGPT``) or ``"auto"`` (decided from the keys). Every key, shape and (floating) dtype is checked before
    anything is copied; any problem raises ``ConfigError`` naming the file and the key, so nothing half-loads.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    path = Path(path)
    tensors = read_torch_state_dict(path)
    for key, value in tensors.items():
        if not isinstance(value, Tensor):
            raise ConfigError(f"{path}: key {key!r} holds a {type(value).__name__}, not a tensor")
    check_floating(tensors, path)
    found = detect_layout(list(tensors), path)
    if layout != "auto" and found is not None and found != layout:
        raise ConfigError(f"{path}: layout {layout!r} was asked for but the keys are {found!r} ones")
    renamed: dict[str, str] = {}
    if found == "uslm":
        tensors, renamed = rename_uslm_keys(tensors)

    with torch.device("meta"):  # no 1.4 GB random init: every parameter is replaced below
        model = SoundStorm(config or SoundStormConfig.anygpt())
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    try:
        check_state_dict(expected, tensors, path)
    except ConfigError as exc:
        message = str(exc)
        for new, old in renamed.items():
            if f"{new!r}" in message:
                raise ConfigError(f"{message} [USLM key in the file: {old!r}]") from exc
        raise
    state = {key: value.to(device=device, dtype=dtype, copy=True) for key, value in tensors.items()}  # off the mmap
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()
