"""SoundStorm's CPU forward in NumPy: the same arithmetic as ``SoundStorm.level_logits``, a fraction of the overhead.

Why: the embedded acoustic decoder is tiny (width 64, 2 conformer layers), and one chunk of speech is 10 forward
passes over the voice prompt, the context and the chunk (about 100 frames). In eager PyTorch a pass costs about 5.3
ms on the 2-core EPYC these figures come from, most of it in several hundred operator dispatches of a few
microseconds each (its arithmetic is about 30 MFLOP): the first chunk of every answer (66 ms of unmasking, 25 ms of
Griffin-Lim) is the largest single part of the time to first audio. The same pass in NumPy takes about 3 ms there,
and over WebRTC the first answer audio came 0.1 s sooner (``docs/benchmarks.md``; ``acoustic_numpy_network: false``
is the torch forward). The unmasking strategy (``assistant.decoding.maskgit``) is unchanged: it receives the logits
as a torch tensor (a view of the NumPy result) and samples them as before.

What it reads: the ``SoundStorm``'s parameters as NumPy *views* (never copies: a model changed in place stays in
step) and the rotary tables of ``assistant.modules.rotary`` (computed by torch once per length, so both paths rotate
by the same angles). Per pass, on ``x [B, T, D]`` (time-major throughout; the conv module's 1x1 convolutions are
matrix products over channels)::

    x = sum_q code_embeds[acoustic[q] + q (K + 1)] + semantic_emb[semantic]
    per layer:  x += 0.5 FF(LN x);  x += Attn(LN x) (rotary q, k; softmax(q k^T / sqrt(dh)) v)
                x += Conv(x): LN -> 1x1 (D -> 2 inner) -> GLU -> depthwise k -> Swish -> ChanLN -> 1x1 (inner -> D)
                x += 0.5 FF(LN x);  x = LN x
    logits[b] = LN(x[b, start:] W_level[b] + bias) @ mix[level[b]] + mix_bias[level[b]]   [B, T', K]

Only float32 models on the CPU qualify (``supports_numpy_network``); anything else keeps the torch forward. Logits
match torch's to float rounding (about 1e-6), so the sampled codes are the same except for a near-tie that rounding
could tip. Like the LM's NumPy step (``assistant.lm_engine.numpy_decode``), it holds the GIL through each small
operation where torch releases it inside each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch import Tensor, nn

from assistant.models.interfaces import AcousticModel, AcousticModelFromConfig
from assistant.models.soundstorm import LevelLinear, SoundStorm
from assistant.modules.acoustic_inputs import check_inputs, level_indices
from assistant.modules.conformer import Attention, ChanLayerNorm, ConformerBlock, ConvModule, FeedForward, PreNorm
from assistant.modules.rotary import rotary_angles

LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, which every LayerNorm of the network uses
CHAN_NORM_EPS = 1e-6  # ChanLayerNorm's floor on the variance in float32


def supports_numpy_network(model: object) -> bool:
    """True for a float32 ``SoundStorm`` on the CPU whose norms use the default epsilon (the embedded family's)."""
    if not isinstance(model, SoundStorm):
        return False
    params = list(model.parameters())
    if not params or any(p.device.type != "cpu" or p.dtype != torch.float32 for p in params):
        return False
    return all(m.eps == LAYER_NORM_EPS for m in model.modules() if isinstance(m, nn.LayerNorm))


def _view(param: Tensor | None) -> np.ndarray:
    if param is None:
        raise ValueError("the SoundStorm network has a bias-free layer where it should have a bias")
    return param.detach().numpy()


@dataclass(frozen=True)
class _Norm:
    weight: np.ndarray  # [D]
    bias: np.ndarray  # [D]

    def __call__(self, x: np.ndarray) -> np.ndarray:  # [..., D] -> [..., D]
        centred, scale = _standardise(x, LAYER_NORM_EPS, floor=False)
        return centred * scale * self.weight + self.bias


def _standardise(x: np.ndarray, eps: float, *, floor: bool) -> tuple[np.ndarray, np.ndarray]:
    """``x [..., C]`` -> (x minus its mean over C, 1 / sqrt(variance + eps)) (``floor``: 1 / sqrt(max(var, eps))).
    The means are matrix products with a ``[C, 1]`` column of 1 / C: one BLAS call instead of NumPy's slower mean."""
    column = _mean_column(x.shape[-1])
    centred = x - x @ column  # [..., C]
    var = (centred * centred) @ column  # [..., 1]
    var = np.maximum(var, np.float32(eps)) if floor else var + np.float32(eps)
    return centred, np.float32(1.0) / np.sqrt(var)


_MEAN_COLUMNS: dict[int, np.ndarray] = {}


def _mean_column(size: int) -> np.ndarray:
    column = _MEAN_COLUMNS.get(size)
    if column is None:
        column = _MEAN_COLUMNS[size] = np.full((size, 1), 1.0 / size, dtype=np.float32)
    return column


def _norm(module: nn.Module) -> _Norm:
    norm = cast(nn.LayerNorm, module)
    return _Norm(_view(norm.weight), _view(norm.bias))


def _swish(x: np.ndarray) -> np.ndarray:
    return x / (np.float32(1.0) + np.exp(-x))


@dataclass(frozen=True)
class _FeedForward:
    norm: _Norm
    w_in: np.ndarray  # [D, mult D] (a transposed view)
    b_in: np.ndarray
    w_out: np.ndarray  # [mult D, D]
    b_out: np.ndarray

    def __call__(self, x: np.ndarray) -> np.ndarray:  # [B, T, D] -> 0.5 FF(LN x) [B, T, D]
        h = _swish(self.norm(x) @ self.w_in + self.b_in)
        return (h @ self.w_out + self.b_out) * np.float32(0.5)


def _feed_forward(scaled: nn.Module) -> _FeedForward:
    pre = cast(PreNorm, scaled.fn)
    net = cast(FeedForward, pre.fn).net
    first, second = cast(nn.Linear, net[0]), cast(nn.Linear, net[3])
    return _FeedForward(
        _norm(pre.norm), _view(first.weight).T, _view(first.bias), _view(second.weight).T, _view(second.bias)
    )


@dataclass(frozen=True)
class _Attention:
    norm: _Norm
    w_q: np.ndarray  # [D, H dh]
    w_kv: np.ndarray  # [D, 2 H dh] (k columns first, then v)
    w_out: np.ndarray  # [H dh, D]
    b_out: np.ndarray
    heads: int
    dim_head: int

    def __call__(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:  # [B, T, D], [T, dh]
        batch, length, _ = x.shape
        h = self.norm(x)
        inner = self.heads * self.dim_head
        kv = h @ self.w_kv  # [B, T, 2 H dh]

        def split(t: np.ndarray) -> np.ndarray:  # [B, T, H dh] -> [B, H, T, dh]
            return t.reshape(batch, length, self.heads, self.dim_head).transpose(0, 2, 1, 3)

        q, k, v = split(h @ self.w_q), split(kv[..., :inner]), split(kv[..., inner:])
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        scores = (q @ k.transpose(0, 1, 3, 2)) * np.float32(self.dim_head**-0.5)  # [B, H, T, T]
        scores -= scores.max(axis=-1, keepdims=True)
        weights = np.exp(scores, out=scores)
        weights /= weights @ _mean_column(length) * np.float32(length)  # the row sums, as one BLAS call
        out = (weights @ v).transpose(0, 2, 1, 3).reshape(batch, length, inner)  # [B, T, H dh]
        return out @ self.w_out + self.b_out


def _rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate-half rotary embedding of ``x [B, H, T, dh]`` (as ``assistant.modules.rotary.apply_rotary``)."""
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def _attention(pre: nn.Module) -> _Attention:
    pre = cast(PreNorm, pre)
    attn = cast(Attention, pre.fn)
    return _Attention(
        _norm(pre.norm),
        _view(attn.to_q.weight).T,
        _view(attn.to_kv.weight).T,
        _view(attn.to_out.weight).T,
        _view(attn.to_out.bias),
        attn.heads,
        attn.dim_head,
    )


@dataclass(frozen=True)
class _Conv:
    norm: _Norm
    w_expand: np.ndarray  # [D, 2 inner] (the 1x1 conv's weight, transposed)
    b_expand: np.ndarray
    w_depth: np.ndarray  # [k, inner] (tap j of every channel)
    b_depth: np.ndarray
    padding: tuple[int, int]
    gamma: np.ndarray  # [inner]
    w_project: np.ndarray  # [inner, D]
    b_project: np.ndarray

    def __call__(self, x: np.ndarray) -> np.ndarray:  # [B, T, D] -> [B, T, D]
        h = self.norm(x) @ self.w_expand + self.b_expand  # [B, T, 2 inner]
        inner = h.shape[-1] // 2
        h = h[..., :inner] / (np.float32(1.0) + np.exp(-h[..., inner:]))  # GLU over channels
        batch, length, _ = h.shape
        before, after = self.padding
        padded = np.zeros((batch, before + length + after, inner), dtype=h.dtype)  # 'same' zero padding in time
        padded[:, before : before + length] = h
        acc = padded[:, :length] * self.w_depth[0]
        for tap in range(1, self.w_depth.shape[0]):  # depthwise cross-correlation, one tap at a time
            acc += padded[:, tap : tap + length] * self.w_depth[tap]
        centred, scale = _standardise(_swish(acc + self.b_depth), CHAN_NORM_EPS, floor=True)  # ChanLayerNorm
        return (centred * scale * self.gamma) @ self.w_project + self.b_project


def _conv(module: nn.Module) -> _Conv:
    conv = cast(ConvModule, module)
    expand = cast(nn.Conv1d, conv.net1[2])
    depth = conv.ds_conv.conv
    project = cast(nn.Conv1d, conv.net2[2])
    chan = cast(ChanLayerNorm, conv.net2[1])
    return _Conv(
        _norm(conv.net1[0]),
        _view(expand.weight)[:, :, 0].T,
        _view(expand.bias),
        _view(depth.weight)[:, 0, :].T,
        _view(depth.bias),
        conv.ds_conv.padding,
        _view(chan.gamma).reshape(-1),
        _view(project.weight)[:, :, 0].T,
        _view(project.bias),
    )


@dataclass(frozen=True)
class _Layer:
    ff1: _FeedForward
    attn: _Attention
    conv: _Conv
    ff2: _FeedForward
    post_norm: _Norm

    def __call__(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        x = self.ff1(x) + x
        x = self.attn(x, cos, sin) + x
        x = self.conv(x) + x
        x = self.ff2(x) + x
        return self.post_norm(x)


def _layer(block: nn.Module) -> _Layer:
    block = cast(ConformerBlock, block)
    return _Layer(
        _feed_forward(block.ff1),
        _attention(block.attn),
        _conv(block.conv),
        _feed_forward(block.ff2),
        _norm(block.post_norm),
    )


class NumpySoundStorm(nn.Module, AcousticModelFromConfig):
    """A ``SoundStorm`` whose ``level_logits`` runs in NumPy (see the module docstring); ``forward`` and everything
    else are the wrapped model's (its sizes are the shared config's). Build it with :func:`numpy_network` (which
    checks ``supports_numpy_network``)."""

    def __init__(self, model: SoundStorm) -> None:
        super().__init__()
        self.model = model
        cfg = model.config
        self.config = cfg
        net = model.net
        self._code_embeds = _view(net.code_embeds.weight)  # [Q (K + 1), D]
        self._semantic_embeds = _view(model.semantic_token_emb.weight)  # [V, D]
        self._layers = [_layer(block) for block in net.conformer.layers]
        proj = cast(nn.Linear, net.heads[0])
        self._head_weight = (
            _view(proj.weight).reshape(cfg.n_acoustic, cfg.dim, cfg.dim).transpose(0, 2, 1)
        )  # [Q, Din, D]
        self._head_bias = _view(proj.bias).reshape(cfg.n_acoustic, cfg.dim)  # [Q, D]
        self._head_norm = _norm(net.to_logits[0])
        mix = cast(LevelLinear, net.to_logits[2])
        self._mix_weight = _view(mix.weight)  # [Q, D, K]
        self._mix_bias = _view(mix.bias)[0, 0]  # [Q, K]
        self._offsets = np.arange(cfg.n_acoustic, dtype=np.int64)[None, :, None] * (cfg.codebook_size + 1)  # [1, Q, 1]
        self._rotary: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def device(self) -> torch.device:
        return self.model.device

    def forward(self, semantic: Tensor, acoustic: Tensor) -> Tensor:
        return self.model(semantic, acoustic)

    def _tables(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        tables = self._rotary.get(length)
        if tables is None:
            angles = rotary_angles(length, self.config.dim_head, self.config.rotary_theta, torch.device("cpu"))
            tables = self._rotary[length] = (angles.cos().numpy(), angles.sin().numpy())  # [T, dh] each
        return tables

    def trunk(self, semantic: Tensor, acoustic: Tensor) -> np.ndarray:
        """As ``SoundStorm.trunk``: semantic ``[B, T]``, acoustic ``[B, Q, T]`` -> conformer output ``[B, T, D]``."""
        check_inputs(semantic, acoustic, self.config.n_acoustic)
        ids = acoustic.long().numpy() + self._offsets  # [B, Q, T]
        x = self._code_embeds[ids.transpose(0, 2, 1)].sum(axis=2)  # [B, T, Q, D] -> [B, T, D]
        x += self._semantic_embeds[semantic.long().numpy()]
        cos, sin = self._tables(x.shape[1])
        with np.errstate(over="ignore"):  # exp(-x) of a very negative x is inf, and x / (1 + inf) the right 0
            for layer in self._layers:
                x = layer(x, cos, sin)
        return x

    @torch.no_grad()
    def level_logits(self, semantic: Tensor, acoustic: Tensor, level: Tensor | int, start: int = 0) -> Tensor:
        """As ``SoundStorm.level_logits``: ``[B, T - start, K]`` (a torch view of the NumPy result)."""
        cfg = self.config
        levels = level_indices(level, semantic.shape[0], cfg.n_acoustic, torch.device("cpu")).numpy()  # [B]
        x = self.trunk(semantic, acoustic)[:, start:]  # [B, T', D]
        h = self._head_norm(x @ self._head_weight[levels] + self._head_bias[levels][:, None, :])  # [B, T', D]
        logits = h @ self._mix_weight[levels] + self._mix_bias[levels][:, None, :]  # [B, T', K]
        return torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))


def numpy_network(model: AcousticModel) -> AcousticModel:
    """``model`` with its forward in NumPy where that is supported (``supports_numpy_network``), else ``model``."""
    if supports_numpy_network(model):
        return NumpySoundStorm(cast(SoundStorm, model))
    return model
