"""A lean KV-cached forward pass for one generation with a transformers ``LlamaForCausalLM``.

For a small model, one decoding step of ``LlamaForCausalLM.forward`` is mostly framework overhead (mask building,
cache bookkeeping, output dataclasses): about 8 ms per token for the embedded 4-layer model on 2 CPU cores, which
alone made the reply slower than real time. This runs the same modules (projections, RMSNorms, MLPs, rotary
embedding, head) in a plain loop over a preallocated cache, and gives the same logits.

One object serves one sequence: ``prefill(prompt)`` then ``step(token)`` per generated token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def supports_lean_decoding(model: nn.Module) -> bool:
    """True for a LLaMA whose attention layers have the attributes this loop reads (else use ``model.forward``)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None or not hasattr(model, "lm_head") or not hasattr(inner, "rotary_emb"):
        return False
    attention = getattr(layers[0], "self_attn", None) if len(layers) else None
    return all(hasattr(attention, name) for name in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling"))


class LeanLlamaDecoder:
    """Prefill + single-token steps with a static KV cache of ``capacity`` positions (grown by doubling)."""

    def __init__(self, model: nn.Module, capacity: int = 1024) -> None:
        if not supports_lean_decoding(model):
            raise TypeError(f"{type(model).__name__} is not a LLaMA this decoder can run")
        self.model = model
        self.layers = list(model.model.layers)
        config = model.config
        self.max_positions = int(config.max_position_embeddings)
        self.n_kv = int(config.num_key_value_heads)
        self.n_heads = int(config.num_attention_heads)
        self.head_dim = int(self.layers[0].self_attn.head_dim)
        weight = model.lm_head.weight
        self._dtype, self._device = weight.dtype, weight.device
        self.length = 0
        self._capacity = 0
        self._keys: list[Tensor] = []
        self._values: list[Tensor] = []
        self._reserve(min(capacity, self.max_positions))

    def _reserve(self, capacity: int) -> None:
        if capacity <= self._capacity:
            return
        shape = (1, self.n_kv, capacity, self.head_dim)
        keys = [torch.zeros(shape, dtype=self._dtype, device=self._device) for _ in self.layers]
        values = [torch.zeros(shape, dtype=self._dtype, device=self._device) for _ in self.layers]
        for old, new in zip(self._keys + self._values, keys + values, strict=False):  # nothing old at first
            new[:, :, : self.length] = old[:, :, : self.length]
        self._keys, self._values, self._capacity = keys, values, capacity

    def prefill(self, ids: Tensor) -> Tensor:
        """ids ``[T]`` (the whole prompt; the cache must be empty) -> logits of the last position ``[V]``."""
        if self.length:
            raise RuntimeError("prefill on a decoder that already holds a sequence")
        return self._forward(ids)

    def step(self, token: int) -> Tensor:
        """The next token -> logits ``[V]`` of its position."""
        return self._forward(torch.tensor([token], dtype=torch.long, device=self._device))

    @torch.inference_mode()
    def _forward(self, ids: Tensor) -> Tensor:
        n_new = int(ids.shape[0])
        start, end = self.length, self.length + n_new
        if end > self.max_positions:
            raise ValueError(f"sequence of {end} tokens exceeds the model's {self.max_positions} positions")
        if end > self._capacity:
            self._reserve(min(self.max_positions, max(end, 2 * self._capacity)))
        inner = self.model.model
        x = inner.embed_tokens(ids[None])  # [1, T, D]
        positions = torch.arange(start, end, device=self._device)[None]  # [1, T]
        cos, sin = inner.rotary_emb(x, positions)  # [1, T, hd] each
        cos, sin = cos[:, None], sin[:, None]  # [1, 1, T, hd]
        for layer, keys, values in zip(self.layers, self._keys, self._values, strict=True):
            attention = layer.self_attn
            h = layer.input_layernorm(x)
            q = attention.q_proj(h).view(1, n_new, self.n_heads, self.head_dim).transpose(1, 2)  # [1, H, T, hd]
            k = attention.k_proj(h).view(1, n_new, self.n_kv, self.head_dim).transpose(1, 2)  # [1, Hkv, T, hd]
            v = attention.v_proj(h).view(1, n_new, self.n_kv, self.head_dim).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            keys[:, :, start:end] = k
            values[:, :, start:end] = v
            k_all, v_all = keys[:, :, :end], values[:, :, :end]  # [1, Hkv, end, hd]
            if self.n_kv != self.n_heads:
                k_all = k_all.repeat_interleave(self.n_heads // self.n_kv, dim=1)
                v_all = v_all.repeat_interleave(self.n_heads // self.n_kv, dim=1)
            # A new block attends to the whole cache before it and causally within itself.
            mask = None
            if n_new > 1:
                mask = torch.ones(n_new, end, dtype=torch.bool, device=self._device).tril(diagonal=start)
            out = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask, scale=attention.scaling)
            x = x + attention.o_proj(out.transpose(1, 2).reshape(1, n_new, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        self.length = end
        last = inner.norm(x[:, -1])  # [1, D]
        return self.model.lm_head(last)[0].float()  # [V]


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
