"""The embedded acoustic decoder: a small SoundStorm-style conformer, non-autoregressive (network only).

Given the level-1 ("semantic") codes of every frame and a partially masked copy of levels 2..n_q, the conformer
predicts logits for levels 2..n_q of every frame. The unmasking schedule that calls it lives in
``assistant/decoding/maskgit.py``.

Per frame t:
    x[t] = sum_{q=2..n_q} code_embed[q][acoustic[q, t]]   (each level has codebook_size codes + 1 mask id)
         + semantic_embed[semantic[t]]
Then ``depth`` conformer blocks (macaron FF/2 -> bidirectional rotary self-attention -> conv module -> FF/2 ->
LayerNorm), then per-level heads -> logits ``[B, T, n_q - 1, codebook_size]``. No padding mask: a batch holds
sequences of equal length (the streaming decoder runs one sequence at a time).

Its conformer block is this model's own, not ``assistant.modules.conformer`` (SoundStorm's): the committed weights
were trained with it, and it computes a different function. Its conv module normalises with GroupNorm(1) over
channels and time together, before the activation (SoundStorm: a per-frame ChanLayerNorm after it); q, k and v come
from one fused projection; SiLU is torch's (SoundStorm's Swish is written out) and the pointwise convolutions run as
linear layers. The two could become one class by retraining this model with SoundStorm's block (same recipe,
``training/train_acoustic.py``); until then its outputs stay what the committed weights give.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from assistant.models.config_io import check_format_version
from assistant.models.interfaces import AcousticLevels, AcousticModelFromConfig
from assistant.modules.acoustic_inputs import check_inputs, level_indices
from assistant.modules.rotary import apply_rotary, rotary_angles


@dataclass(frozen=True)
class AcousticDecoderConfig(AcousticLevels):
    """Configuration of ``AcousticDecoder``.

    n_q: total RVQ levels of the codec (level 1 is the condition; n_q - 1 levels are predicted).
    codebook_size: codes per level; id ``codebook_size`` is the mask id of every acoustic level.
    dim: model width. depth: conformer blocks. heads / dim_head: attention heads and their width (rotary needs an
    even dim_head). ff_mult: feed-forward expansion. conv_kernel: depthwise conv kernel (odd).
    conv_expansion: channel expansion inside the conv module. rotary_base: rotary frequency base.
    seed: seed of the random initialisation. format_version: checkpoint format version.
    """

    FORMAT_VERSION: ClassVar[int] = 1

    n_q: int = 8
    codebook_size: int = 1024
    dim: int = 256
    depth: int = 4
    heads: int = 4
    dim_head: int = 64
    ff_mult: int = 4
    conv_kernel: int = 31
    conv_expansion: int = 2
    rotary_base: float = 10000.0
    seed: int = 0
    format_version: int = 1

    def __post_init__(self) -> None:
        self.check_levels()
        if self.codebook_size < 2:
            raise ValueError("codebook_size must be >= 2")
        for name in ("dim", "depth", "heads", "dim_head", "ff_mult", "conv_expansion"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.dim_head % 2:
            raise ValueError(f"dim_head must be even for rotary embeddings, got {self.dim_head}")
        if self.conv_kernel < 1 or self.conv_kernel % 2 == 0:
            raise ValueError(f"conv_kernel must be odd, got {self.conv_kernel}")
        check_format_version(self)

    @property
    def semantic_vocab(self) -> int:
        return self.codebook_size  # level 1 comes from the same codec


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, dim * mult)
        self.down = nn.Linear(dim * mult, dim)

    def forward(self, x: Tensor) -> Tensor:  # [B, T, D] -> [B, T, D]
        return self.down(F.silu(self.up(self.norm(x))))


class RotarySelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, rotary_base: float) -> None:
        super().__init__()
        self.heads, self.dim_head, self.rotary_base = heads, dim_head, rotary_base
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim)

    def forward(self, x: Tensor) -> Tensor:  # [B, T, D] -> [B, T, D]
        batch, length, _ = x.shape
        qkv = self.to_qkv(self.norm(x)).view(batch, length, 3, self.heads, self.dim_head)  # [B, T, 3, H, Dh]
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, H, T, Dh]
        angles = rotary_angles(length, self.dim_head, self.rotary_base, x.device)  # [T, Dh]
        cos, sin = angles.cos(), angles.sin()
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=False)  # [B, H, T, Dh] (bidirectional)
        out = out.transpose(1, 2).reshape(batch, length, self.heads * self.dim_head)  # [B, T, H * Dh]
        return self.to_out(out)


class ConvModule(nn.Module):
    """LayerNorm -> pointwise (2x expansion) -> GLU -> depthwise -> norm -> swish -> pointwise."""

    def __init__(self, dim: int, expansion: int, kernel: int) -> None:
        super().__init__()
        inner = dim * expansion
        self.norm = nn.LayerNorm(dim)
        self.pointwise_in = nn.Conv1d(dim, 2 * inner, kernel_size=1)
        self.depthwise = nn.Conv1d(inner, inner, kernel_size=kernel, padding=kernel // 2, groups=inner)
        self.depthwise_norm = nn.GroupNorm(1, inner)  # per-frame-independent of batch; normalises channels+time
        self.pointwise_out = nn.Conv1d(inner, dim, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:  # [B, T, D] -> [B, T, D]
        # The pointwise convolutions run as linear layers on [B, T, C] (same weights; faster on CPU than conv1d).
        h = F.linear(self.norm(x), self.pointwise_in.weight.squeeze(-1), self.pointwise_in.bias)  # [B, T, 2 * inner]
        h = F.glu(h, dim=-1).transpose(1, 2)  # [B, inner, T]
        h = F.silu(self.depthwise_norm(self.depthwise(h))).transpose(1, 2)  # [B, T, inner]
        return F.linear(h, self.pointwise_out.weight.squeeze(-1), self.pointwise_out.bias)  # [B, T, D]


class ConformerBlock(nn.Module):
    def __init__(self, cfg: AcousticDecoderConfig) -> None:
        super().__init__()
        self.ff1 = FeedForward(cfg.dim, cfg.ff_mult)
        self.attn = RotarySelfAttention(cfg.dim, cfg.heads, cfg.dim_head, cfg.rotary_base)
        self.conv = ConvModule(cfg.dim, cfg.conv_expansion, cfg.conv_kernel)
        self.ff2 = FeedForward(cfg.dim, cfg.ff_mult)
        self.post_norm = nn.LayerNorm(cfg.dim)

    def forward(self, x: Tensor) -> Tensor:  # [B, T, D] -> [B, T, D]
        x = x + 0.5 * self.ff1(x)  # macaron half-step
        x = x + self.attn(x)
        x = x + self.conv(x)
        x = x + 0.5 * self.ff2(x)
        return self.post_norm(x)


class AcousticDecoder(nn.Module, AcousticModelFromConfig):
    """Conformer predicting levels 2..n_q from level 1 and partially masked levels 2..n_q."""

    config: AcousticDecoderConfig
    level_offsets: Tensor  # [Q]: the first code_embed row of each level (buffer)

    def __init__(self, config: AcousticDecoderConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or AcousticDecoderConfig()
        vocab = cfg.codebook_size + 1  # codes + mask id, per acoustic level
        self.code_embed = nn.Embedding(cfg.n_acoustic * vocab, cfg.dim)  # level q uses rows [q*vocab, (q+1)*vocab)
        self.semantic_embed = nn.Embedding(cfg.codebook_size, cfg.dim)
        self.blocks = nn.ModuleList(ConformerBlock(cfg) for _ in range(cfg.depth))
        self.head_proj = nn.Linear(cfg.dim, cfg.dim * cfg.n_acoustic)
        self.head_norm = nn.LayerNorm(cfg.dim)
        self.head_weight = nn.Parameter(torch.empty(cfg.n_acoustic, cfg.dim, cfg.codebook_size))  # [Q, D, K]
        self.head_bias = nn.Parameter(torch.zeros(cfg.n_acoustic, cfg.codebook_size))  # [Q, K]
        self.register_buffer("level_offsets", torch.arange(cfg.n_acoustic) * vocab, persistent=False)  # [Q]
        self._init_weights()

    def _init_weights(self) -> None:
        gen = torch.Generator(device="cpu").manual_seed(self.config.seed)

        def normal_(param: torch.Tensor, std: float) -> None:  # drawn on the CPU: same values on any device
            param.copy_(torch.empty(param.shape, device="cpu").normal_(0.0, std, generator=gen))

        with torch.no_grad():
            for name, param in self.named_parameters():
                if name.endswith("bias"):
                    param.zero_()
                elif "norm" in name:
                    param.fill_(1.0)
                elif name == "head_weight":
                    normal_(param, self.config.dim**-0.5)
                elif param.dim() == 1:
                    param.fill_(1.0)
                else:
                    fan_in = param[0].numel() if param.dim() > 1 else 1
                    std = 0.02 if "embed" in name else fan_in**-0.5
                    normal_(param, std)

    # ----- AcousticModel (the sizes are the config's) -----------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.head_weight.device

    def trunk(self, semantic: Tensor, acoustic: Tensor) -> Tensor:
        """semantic ``[B, T]`` in [0, K); acoustic ``[B, n_q - 1, T]`` in [0, K] (K = mask id) -> ``[B, T, D]``."""
        check_inputs(semantic, acoustic, self.config.n_acoustic)
        ids = acoustic + self.level_offsets[None, :, None]  # [B, Q, T]
        x = self.code_embed(ids).sum(dim=1)  # [B, T, D]
        x = x + self.semantic_embed(semantic)  # [B, T, D]
        for block in self.blocks:
            x = block(x)  # [B, T, D]
        return x

    def forward(self, semantic: Tensor, acoustic: Tensor) -> Tensor:
        """semantic ``[B, T]`` in [0, K); acoustic ``[B, n_q - 1, T]`` in [0, K] (K = mask id).

        Returns logits ``[B, T, n_q - 1, K]``.
        """
        cfg = self.config
        x = self.trunk(semantic, acoustic)  # [B, T, D]
        batch, length, _ = x.shape
        h = self.head_proj(x).view(batch, length, cfg.n_acoustic, cfg.dim)  # [B, T, Q, D]
        h = self.head_norm(h)
        logits = torch.einsum("btqd,qdk->btqk", h, self.head_weight) + self.head_bias  # [B, T, Q, K]
        return logits

    def level_logits(self, semantic: Tensor, acoustic: Tensor, level: Tensor | int, start: int = 0) -> Tensor:
        """The logits of one acoustic level per sequence, for frames ``start..T`` only: ``[B, T - start, K]``.

        ``level`` (int or LongTensor ``[B]``) indexes the predicted levels (0 = codec level 2). Equal to
        ``forward(semantic, acoustic)[:, start:, level]`` but skips the heads nobody reads, which is most of the cost
        of a small decoder with a 1024-code vocabulary (the unmasking schedule reads one level per pass, training
        one level per sequence).
        """
        cfg = self.config
        levels = level_indices(level, semantic.shape[0], cfg.n_acoustic, semantic.device)  # [B]
        x = self.trunk(semantic, acoustic)[:, start:]  # [B, T', D]
        weight = self.head_proj.weight.view(cfg.n_acoustic, cfg.dim, cfg.dim)[levels]  # [B, D_out, D_in]
        bias = self.head_proj.bias.view(cfg.n_acoustic, cfg.dim)[levels]  # [B, D]
        h = self.head_norm(torch.einsum("btd,bed->bte", x, weight) + bias[:, None, :])  # [B, T', D]
        return torch.einsum("btd,bdk->btk", h, self.head_weight[levels]) + self.head_bias[levels][:, None, :]
