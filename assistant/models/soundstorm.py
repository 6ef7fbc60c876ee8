"""SoundStorm: the acoustic model of both families (levels 2..n_q from level 1 and a voice prompt, MaskGIT-filled).

The network is the conformer AnyGPT uses to turn SpeechTokenizer level-1 ("semantic") codes into levels 2..8
(``fnlp/AnyGPT-speech-modules: soundstorm/speechtokenizer_soundstorm_mls.pt``, built by AnyGPT's
``voice_clone.py: load_soundstorm``). Our own implementation; the module tree only mirrors the reference's names so
that at AnyGPT's sizes ``state_dict()`` equals ``tests/reference/soundstorm_anygpt.json`` key for key (356 tensors,
351,378,432 parameters, no buffers); ``assistant/models/anygpt/acoustic.py`` loads that checkpoint. The embedded
family builds the same class at a small size from ``assistant/assets/embedded/acoustic.json`` (seeded init, our
checkpoint format, trained by ``training/train_acoustic.py``).

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
(``assistant/models/anygpt/acoustic.py`` reads AnyGPT's and USLM's checkpoint files into it.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn

from assistant.models.config_io import check_format_version
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
    seed: seed of the random initialisation (the embedded family's untrained default and the start of its training;
        the AnyGPT family loads weights over it).
    format_version: version of our checkpoint format (``<name>.json`` + ``<name>.safetensors``, the embedded
        family's ``acoustic.json``); AnyGPT's checkpoint has no config file and loads with ``anygpt()``.

    The embedded family's acoustic decoder is this class at a small size: ``assistant/assets/embedded/acoustic.json``
    (D=64, 2 layers, 4 heads x 16, ff x2, conv x1 k15, ``sdpa``; about 1.15 M parameters).
    """

    FORMAT_VERSION: ClassVar[int] = 1

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
    format_version: int = 1

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
        check_format_version(self)

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
