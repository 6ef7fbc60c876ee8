"""The runner's decode step on the CPU, in NumPy: the same arithmetic as the eager step, a fraction of the overhead.

Why: at batch 1 a CPU decode step of a small LLaMA is dispatch-bound, as a GPU step is launch-bound. The embedded LM
(4 layers, width 256) spends 5-8 ms in an eager PyTorch step, most of it in ~180 operator dispatches of a few
microseconds each and in MKL's GEMV, which is slow on AMD processors (a 256 x 4024 GEMV: ~150 us in torch, ~45 us
in NumPy's OpenBLAS on the 2-core EPYC these figures come from). The same step in NumPy takes 2.6-3.7 ms there, and a
batch of 8 about a third less than in torch (``benchmarks/lm_decode.py``, ``docs/benchmarks.md``): on the CPU this is
what the CUDA graphs are on the GPU.

What it reads: the modules of a transformers ``LlamaForCausalLM`` (RMSNorm weights and epsilons, the projections,
the head) as NumPy *views* of their parameters (never copies: a model changed in place stays in step), the rotary
table of ``rotary_emb`` (so any RoPE scaling transformers applies is the table's), and the runner's KV cache, also
as views: prefill (torch) and decode (NumPy) write the same memory.

    x [B, D] -> for each layer:
        h = rms(x) * w_in;  q, k, v = h Wq, h Wk, h Wv; q, k rotated at each row's position
        K, V [B, Hkv, C, hd] <- k, v at each row's position; attention over positions 0..span-1, masked per row
        x += (softmax(q K^T * scale) V) Wo;  x += down(silu(gate(rms(x) * w_post)) * up(...))
    -> logits = rms(x) * w_norm  W_head  [B, V]

Only float32 models on the CPU qualify (``supports_numpy_decode``); everything else keeps the torch step.

NumPy holds the GIL through each small operation, where torch releases it inside each, so in a process shared with
other model threads (``assistant chat``, ``make eval-mini``: the acoustic decoder's thread beside the LM's) the step
could slow them. Measured in-process over a six-turn spoken conversation, first audio took 0.34-0.49 s with this step
and 0.34-0.71 s with torch's, two runs each (the machine's noise was larger than any difference), so it stays on
everywhere; ``LMEngineConfig.numpy_decode = False`` (``lm_batching: {numpy_decode: false}``) turns it off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class _Layer:
    norm_in: np.ndarray  # [D]
    eps_in: float
    wq: np.ndarray  # [D, H * hd] (a transposed view of q_proj.weight)
    wk: np.ndarray  # [D, Hkv * hd]
    wv: np.ndarray  # [D, Hkv * hd]
    wo: np.ndarray  # [H * hd, D]
    biases: tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, np.ndarray | None]  # q, k, v, o
    norm_post: np.ndarray  # [D]
    eps_post: float
    w_gate: np.ndarray  # [D, I]
    w_up: np.ndarray  # [D, I]
    w_down: np.ndarray  # [I, D]
    scale: float
    keys: np.ndarray  # [S, Hkv, C, hd] view of the runner's cache
    values: np.ndarray


def _norm_parts(norm: Any) -> tuple[np.ndarray, float]:
    return _view(norm.weight), float(norm.variance_epsilon)


def _view(parameter: Tensor) -> np.ndarray:
    return parameter.detach().numpy()


def _t(linear: Any) -> np.ndarray:
    """``x @ _t(linear)`` is ``linear(x)`` without its bias: the weight ``[out, in]`` transposed, as a view (BLAS reads
    the transposed layout directly)."""
    return _view(linear.weight).T


def _bias(linear: Any) -> np.ndarray | None:
    return None if getattr(linear, "bias", None) is None else _view(linear.bias)


def supports_numpy_decode(model: Any) -> bool:
    """A float32 LLaMA on the CPU with SiLU MLPs and RMSNorms: the model this step computes exactly."""
    try:
        layer = model.model.layers[0]
        weight = model.lm_head.weight
        ok = (
            weight.device.type == "cpu"
            and weight.dtype == torch.float32
            and getattr(model.config, "hidden_act", None) == "silu"
            and getattr(model.lm_head, "bias", None) is None
            and all(hasattr(layer.mlp, name) for name in ("gate_proj", "up_proj", "down_proj"))
            and all(
                hasattr(norm, "weight") and hasattr(norm, "variance_epsilon")
                for norm in (layer.input_layernorm, layer.post_attention_layernorm, model.model.norm)
            )
        )
    except (AttributeError, IndexError, TypeError):
        return False
    return bool(ok)


class NumpyDecodeStep:
    """``step(tokens, positions, span)`` -> logits ``[B, V]``: :class:`SlotModelRunner`'s decode step on the CPU.

    ``keys`` / ``values``: the runner's per-layer caches ``[S, Hkv, C, hd]`` (float32, CPU, contiguous)."""

    def __init__(
        self, model: Any, keys: list[Tensor], values: list[Tensor], n_heads: int, n_kv: int, head_dim: int
    ) -> None:
        if not supports_numpy_decode(model):
            raise TypeError(f"{type(model).__name__} is not a float32 CPU LLaMA the NumPy step can run")
        inner = model.model
        self.n_heads, self.n_kv, self.head_dim = n_heads, n_kv, head_dim
        self.group = n_heads // n_kv
        self.embed = _view(inner.embed_tokens.weight)  # [V, D]
        self.norm, self.eps = _norm_parts(inner.norm)
        self.head = _t(model.lm_head)  # [D, V]
        capacity = int(keys[0].shape[2])
        with torch.inference_mode():
            probe = torch.zeros(1, 1, self.embed.shape[1])
            cos, sin = inner.rotary_emb(probe, torch.arange(capacity)[None])  # [1, C, hd] each
        self.cos = cos[0].float().numpy().copy()  # [C, hd]
        self.sin = sin[0].float().numpy().copy()
        self.layers = []
        for layer, k, v in zip(inner.layers, keys, values, strict=True):
            attention, mlp = layer.self_attn, layer.mlp
            projections = (attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj)
            biases = (_bias(projections[0]), _bias(projections[1]), _bias(projections[2]), _bias(projections[3]))
            self.layers.append(
                _Layer(
                    *_norm_parts(layer.input_layernorm),
                    wq=_t(attention.q_proj),
                    wk=_t(attention.k_proj),
                    wv=_t(attention.v_proj),
                    wo=_t(attention.o_proj),
                    biases=biases,
                    norm_post=_view(layer.post_attention_layernorm.weight),
                    eps_post=float(layer.post_attention_layernorm.variance_epsilon),
                    w_gate=_t(mlp.gate_proj),
                    w_up=_t(mlp.up_proj),
                    w_down=_t(mlp.down_proj),
                    scale=float(attention.scaling),
                    keys=k.numpy(),
                    values=v.numpy(),
                )
            )

    def step(self, tokens: Tensor, positions: Tensor, span: int) -> Tensor:
        """tokens, positions ``[B]`` (row i = slot i) -> logits ``[B, V]`` float32; writes each row's K and V at its
        position, attends over positions ``0..span-1`` (a row sees those at or before its own)."""
        token_ids, pos = tokens.numpy(), positions.numpy()
        batch = token_ids.shape[0]
        rows = np.arange(batch)
        H, Hkv, G, hd = self.n_heads, self.n_kv, self.group, self.head_dim
        x = self.embed[token_ids]  # [B, D] (a copy: fancy indexing)
        cos, sin = self.cos[pos][:, None, :], self.sin[pos][:, None, :]  # [B, 1, hd]
        hidden = np.arange(span)[None, :] > pos[:, None]  # [B, span] positions a row must not see
        hidden = np.broadcast_to(hidden[:, None, None, :], (batch, Hkv, G, span))
        for layer in self.layers:
            h = _rms(x, layer.norm_in, layer.eps_in)
            bq, bk, bv, bo = layer.biases
            q = _rotate(_linear(h, layer.wq, bq).reshape(batch, H, hd), cos, sin)  # [B, H, hd]
            k = _rotate(_linear(h, layer.wk, bk).reshape(batch, Hkv, hd), cos, sin)  # [B, Hkv, hd]
            v = _linear(h, layer.wv, bv).reshape(batch, Hkv, hd)
            layer.keys[rows, :, pos] = k  # each row's K and V at its own position
            layer.values[rows, :, pos] = v
            keys, values = layer.keys[:batch, :, :span], layer.values[:batch, :, :span]  # [B, Hkv, span, hd]
            grouped = q.reshape(batch, Hkv, G, hd)  # query heads grouped by their kv head
            scores = np.matmul(grouped, keys.transpose(0, 1, 3, 2)) * layer.scale  # [B, Hkv, G, span]
            scores[hidden] = -np.inf
            scores -= scores.max(axis=-1, keepdims=True)
            weights = np.exp(scores, out=scores)
            weights /= weights.sum(axis=-1, keepdims=True)
            out = np.matmul(weights, values).reshape(batch, H * hd)  # [B, Hkv, G, hd] -> [B, H * hd]
            x = x + _linear(out, layer.wo, bo)
            h = _rms(x, layer.norm_post, layer.eps_post)
            gate = h @ layer.w_gate  # [B, I]
            x = x + ((gate / (1.0 + np.exp(-gate))) * (h @ layer.w_up)) @ layer.w_down
        return torch.from_numpy(_rms(x, self.norm, self.eps) @ self.head)  # [B, V]


def _rms(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return weight * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))


def _linear(x: np.ndarray, weight_t: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    y = x @ weight_t
    if bias is not None:
        y += bias
    return y


def _rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate-half RoPE (``assistant.modules.rotary``) on the last axis."""
    half = x.shape[-1] // 2
    rotated = np.concatenate((-x[..., half:], x[..., :half]), axis=-1)
    return x * cos + rotated * sin
