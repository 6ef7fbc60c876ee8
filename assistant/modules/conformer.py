"""The SoundStorm conformer (Borsos et al. 2023; lucidrains' soundstorm-pytorch, as AnyGPT vendors it).

Per layer, on ``x [B, T, D]`` (pre-norm, residual; no padding mask: every frame is real)::

    x += 0.5 * FF(LN(x))                 FF = Linear(D, mult * D) -> Swish -> Linear(mult * D, D)
    x += Attn(LN(x))                     bidirectional, rotary (rotate-half) on q and k, scale 1 / sqrt(dh)
    x += Conv(x)                         LN -> 1x1 conv D -> 2 * inner -> GLU -> depthwise k 'same' -> Swish
                                         -> ChanLayerNorm -> 1x1 conv inner -> D
    x += 0.5 * FF(LN(x))
    x  = LN(x)                           (post_norm)

Module and parameter names mirror the reference, so a layer's state dict is the reference's key for key (numbers
are ``nn.Sequential`` slots; parameter-free slots still count)::

    ff1.fn.norm / ff1.fn.fn.net.{0,3}             Scale(0.5, PreNorm(LayerNorm, FF)); FF slots 1 Swish, 2/4 Dropout
    attn.norm / attn.fn.{to_q, to_kv, to_out}     to_kv rows: first inner are k, then v; only to_out has a bias
    conv.net1.{0 LayerNorm, 2 Conv1d D -> 2 * inner}                 slot 1 transpose, 3 GLU
    conv.ds_conv.conv                             depthwise Conv1d(inner, inner, k, groups=inner), padded outside
    conv.net2.{1 ChanLayerNorm .gamma [1, inner, 1], 2 Conv1d inner -> D}   slot 0 Swish, 3 transpose, 4 Dropout
    ff2.* (as ff1), post_norm

Numerics follow the reference op for op (written-out Swish, explicit softmax attention unless ``sdpa``); in lower
precision the rotary step runs in float32 and is cast back (the reference disables autocast there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from assistant.modules.rotary import apply_rotary, rotary_angles


class Swish(nn.Module):
    """``x * sigmoid(x)``, written out (``F.silu`` differs in the last bit on some inputs)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * x.sigmoid()


class ChanLayerNorm(nn.Module):
    """Normalises channels-first ``[B, C, T]`` over C per frame: ``(x - mean) / sqrt(max(var, eps)) * gamma``.

    No bias; biased variance; eps is 1e-6 in float32 and 1e-4 in lower precision, and it floors the variance rather
    than being added to it.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: Tensor) -> Tensor:  # [B, C, T] -> [B, C, T]
        eps = 1e-6 if x.dtype == torch.float32 else 1e-4
        mean = x.mean(dim=1, keepdim=True)  # [B, 1, T]
        var = x.var(dim=1, unbiased=False, keepdim=True)  # [B, 1, T]
        return (x - mean) * var.clamp(min=eps).rsqrt() * self.gamma


class Transpose(nn.Module):
    """Swaps time and channels (``[B, T, C] <-> [B, C, T]``); holds a parameter-free slot of a Sequential."""

    def forward(self, x: Tensor) -> Tensor:
        return x.transpose(1, 2)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int) -> None:
        super().__init__()
        # slots 2 and 4 are the reference's (zero) dropouts; they keep Linear #2 at index 3
        self.net = nn.Sequential(
            nn.Linear(dim, dim * mult), Swish(), nn.Dropout(0.0), nn.Linear(dim * mult, dim), nn.Dropout(0.0)
        )

    def forward(self, x: Tensor) -> Tensor:  # [B, T, D] -> [B, T, D]
        return self.net(x)


class PreNorm(nn.Module):
    """``fn(LayerNorm(x))``; ``fn`` is registered first so the key order matches the reference."""

    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, **kwargs: Tensor) -> Tensor:
        return self.fn(self.norm(x), **kwargs)


class Scale(nn.Module):
    def __init__(self, scale: float, fn: nn.Module) -> None:
        super().__init__()
        self.scale = scale
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x) * self.scale


class Attention(nn.Module):
    """Bidirectional multi-head self-attention with rotary q/k; no q/k/v bias, biased output projection."""

    def __init__(self, dim: int, heads: int, dim_head: int, sdpa: bool = False) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head, self.sdpa = heads, dim_head, sdpa
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:  # [B, T, D], cos/sin [T, dh] -> [B, T, D]
        batch, length, _ = x.shape
        k, v = self.to_kv(x).chunk(2, dim=-1)  # [B, T, H * dh] each
        q, k, v = (t.view(batch, length, self.heads, self.dim_head).transpose(1, 2) for t in (self.to_q(x), k, v))
        q, k = (apply_rotary(t.float(), cos, sin).to(t.dtype) for t in (q, k))  # [B, H, T, dh], rotated in float32
        if self.sdpa:
            out = F.scaled_dot_product_attention(q, k, v)  # [B, H, T, dh]; the same maths, fused
        else:  # the reference's path (attn_flash=False): scale after the product, plain softmax
            sim = torch.einsum("bhid,bhjd->bhij", q, k) * self.dim_head**-0.5  # [B, H, T, T]
            out = torch.einsum("bhij,bhjd->bhid", sim.softmax(dim=-1), v)  # [B, H, T, dh]
        return self.to_out(out.transpose(1, 2).reshape(batch, length, self.heads * self.dim_head))  # [B, T, D]


class DepthwiseConv(nn.Module):
    """Depthwise Conv1d with explicit 'same' padding ``(k // 2, k // 2 - (k + 1) % 2)``."""

    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        self.padding = (kernel // 2, kernel // 2 - (kernel + 1) % 2)
        self.conv = nn.Conv1d(channels, channels, kernel, groups=channels)

    def forward(self, x: Tensor) -> Tensor:  # [B, C, T] -> [B, C, T]
        # The reference zeroes padded frames before and after this conv; every frame here is real.
        return self.conv(F.pad(x, self.padding))


class ConvModule(nn.Module):
    """LN -> 1x1 conv (D -> 2 * inner) -> GLU -> depthwise -> Swish -> ChanLayerNorm -> 1x1 conv (inner -> D)."""

    def __init__(self, dim: int, expansion: int, kernel: int) -> None:
        super().__init__()
        inner = dim * expansion
        self.net1 = nn.Sequential(nn.LayerNorm(dim), Transpose(), nn.Conv1d(dim, 2 * inner, 1), nn.GLU(dim=1))
        self.ds_conv = DepthwiseConv(inner, kernel)
        self.net2 = nn.Sequential(Swish(), ChanLayerNorm(inner), nn.Conv1d(inner, dim, 1), Transpose(), nn.Dropout(0.0))

    def forward(self, x: Tensor) -> Tensor:  # [B, T, D] -> [B, T, D]
        h = self.net1(x)  # [B, inner, T] (GLU: first half * sigmoid(second half))
        h = self.ds_conv(h)  # [B, inner, T]
        return self.net2(h)  # [B, T, D]


class ConformerBlock(nn.Module):
    def __init__(
        self, dim: int, heads: int, dim_head: int, ff_mult: int, conv_expansion: int, conv_kernel: int, sdpa: bool
    ) -> None:
        super().__init__()
        self.ff1 = Scale(0.5, PreNorm(dim, FeedForward(dim, ff_mult)))
        self.attn = PreNorm(dim, Attention(dim, heads, dim_head, sdpa))
        self.conv = ConvModule(dim, conv_expansion, conv_kernel)
        self.ff2 = Scale(0.5, PreNorm(dim, FeedForward(dim, ff_mult)))
        self.post_norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:  # [B, T, D] -> [B, T, D]
        x = self.ff1(x) + x
        x = self.attn(x, cos=cos, sin=sin) + x
        x = self.conv(x) + x
        x = self.ff2(x) + x
        return self.post_norm(x)


class Conformer(nn.Module):
    """``depth`` conformer blocks sharing one rotary table (``layers.{i}`` in the state dict)."""

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        dim_head: int,
        ff_mult: int = 4,
        conv_expansion: int = 2,
        conv_kernel: int = 31,
        rotary_theta: float = 10000.0,
        sdpa: bool = False,
    ) -> None:
        super().__init__()
        self.dim_head, self.theta = dim_head, rotary_theta
        self.layers = nn.ModuleList(
            ConformerBlock(dim, heads, dim_head, ff_mult, conv_expansion, conv_kernel, sdpa) for _ in range(depth)
        )

    def forward(self, x: Tensor) -> Tensor:  # [B, T, D] -> [B, T, D]
        angles = rotary_angles(x.shape[1], self.dim_head, self.theta, x.device)  # [T, dh]
        cos, sin = angles.cos(), angles.sin()
        for layer in self.layers:
            x = layer(x, cos, sin)
        return x
