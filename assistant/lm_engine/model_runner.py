"""The model runner: a LLaMA forward pass over static KV slots, one slot per generation.

The runner owns the KV cache of ``max_slots`` sequences, each of ``capacity`` positions, laid out per layer as
``[max_slots, n_kv_heads, capacity, head_dim]``. It knows nothing of requests or sampling (that is the scheduler's and
the sampler's job); it offers two calls:

- ``prefill(slot, ids, start)``: a block of one sequence's prompt at positions ``start..start+n``, written into that
  slot; a long prompt is prefilled in several blocks, between decode steps.
- ``decode(tokens, positions)``: one new token for each of the slots ``0..B-1`` at once (row i is slot i). Rows of
  free slots are computed and ignored, which keeps the batch a prefix of the slots: their KV is a view of the cache,
  never a copy, and the step's shapes depend only on B.

On CUDA the decode step of every batch-size bucket is captured once as a CUDA graph and replayed (a 7B step is ~700
kernel launches; eager PyTorch is launch-bound at batch 1). Captured steps attend over the whole capacity with a
mask, so their shapes are static; the eager CPU path attends over the longest live prefix only. On the CPU a float32
model's decode step runs in NumPy (``numpy_decode``: the same arithmetic without PyTorch's per-operator overhead,
about twice as fast for the embedded LM); prefill stays in PyTorch, and both write the same KV memory.

It runs the modules of a transformers ``LlamaForCausalLM`` (projections, RMSNorms, MLPs, rotary table, head) in a
plain loop and gives the same logits as its ``forward``: what it reads of the model is the ``CausalLM`` interface
(``assistant.models.interfaces``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from assistant.lm_engine.numpy_decode import NumpyDecodeStep, supports_numpy_decode
from assistant.models.interfaces import CausalLM
from assistant.modules.rotary import apply_rotary

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128)


def supports_slot_decoding(model: CausalLM) -> bool:
    """True for a LLaMA whose attention layers have the attributes this runner reads."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None or not hasattr(model, "lm_head") or not hasattr(inner, "rotary_emb") or not len(layers):
        return False
    attention = getattr(layers[0], "self_attn", None)
    return all(hasattr(attention, name) for name in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling"))


def model_device(model: CausalLM) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


class SlotModelRunner:
    """Prefill and batched decode over ``max_slots`` static KV slots of ``capacity`` positions each.

    ``cuda_graphs``: capture decode steps as CUDA graphs (only on a CUDA device; ignored on CPU). ``static_shapes``
    makes the eager path attend over the whole capacity as the captured one does (for tests of that path on CPU).
    ``numpy_decode``: run decode steps of a float32 CPU model in NumPy (``numpy_decode.NumpyDecodeStep``); False, or a
    model it does not support, keeps the eager torch step.
    """

    def __init__(
        self,
        model: CausalLM,
        max_slots: int,
        capacity: int | None = None,
        *,
        cuda_graphs: bool = True,
        buckets: tuple[int, ...] = DEFAULT_BUCKETS,
        static_shapes: bool = False,
        numpy_decode: bool = True,
    ) -> None:
        if not supports_slot_decoding(model):
            raise TypeError(f"{type(model).__name__} is not a LLaMA this runner can run")
        if max_slots < 1:
            raise ValueError(f"max_slots must be >= 1, got {max_slots}")
        self.model = model
        self.inner = model.model
        self.layers = list(model.model.layers)
        config = model.config
        self.max_positions = int(config.max_position_embeddings)
        self.capacity = min(int(capacity), self.max_positions) if capacity else self.max_positions
        if self.capacity < 2:
            raise ValueError(f"capacity must be >= 2 positions, got {self.capacity}")
        self.n_heads = int(config.num_attention_heads)
        self.n_kv = int(config.num_key_value_heads)
        self.head_dim = int(self.layers[0].self_attn.head_dim)
        self.vocab_size = int(model.lm_head.weight.shape[0])
        self.dtype = model.lm_head.weight.dtype
        self.device = model_device(model)
        self.max_slots = int(max_slots)
        shape = (self.max_slots, self.n_kv, self.capacity, self.head_dim)
        self.keys = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        self.values = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        # Bucket sizes a batch is rounded up to (graphs exist for these); always ending at max_slots.
        self.buckets = tuple(sorted({b for b in buckets if b < self.max_slots} | {self.max_slots}))
        self.use_graphs = bool(cuda_graphs) and self.device.type == "cuda"
        self.static_shapes = static_shapes or self.use_graphs
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._graph_pool: Any = None  # one CUDA memory pool for every captured bucket, made at the first capture
        # Static inputs/outputs of the captured steps (row i = slot i).
        self._tokens = torch.zeros(self.max_slots, dtype=torch.long, device=self.device)
        self._positions = torch.zeros(self.max_slots, dtype=torch.long, device=self.device)
        self._logits: dict[int, Tensor] = {}
        self._numpy_step: NumpyDecodeStep | None = None
        if numpy_decode and not self.use_graphs and supports_numpy_decode(model):
            self._numpy_step = NumpyDecodeStep(
                model,
                self.keys,
                self.values,
                self.n_heads,
                self.n_kv,
                self.head_dim,
            )

    # ------------------------------------------------------------------ sizes
    def bucket_for(self, rows: int) -> int:
        """The batch a step over slots ``0..rows-1`` runs at (rows itself when shapes are dynamic)."""
        if rows < 1 or rows > self.max_slots:
            raise ValueError(f"a step covers 1..{self.max_slots} slots, got {rows}")
        if not self.static_shapes:
            return rows
        return next(b for b in self.buckets if b >= rows)

    def kv_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    # ------------------------------------------------------------------ prefill
    @torch.inference_mode()
    def prefill(self, slot: int, ids: Tensor, start: int) -> Tensor:
        """ids ``[n]`` at positions ``start..start+n`` of ``slot`` -> logits of the last one ``[V]`` (float32).

        Positions before ``start`` must already hold this sequence (earlier blocks of the same prompt)."""
        n_new = int(ids.shape[0])
        end = start + n_new
        if not 0 <= slot < self.max_slots:
            raise IndexError(f"slot {slot} out of range 0..{self.max_slots - 1}")
        if n_new < 1:
            raise ValueError("prefill needs at least one token")
        if end > self.capacity:
            raise ValueError(f"sequence of {end} tokens exceeds the slot capacity of {self.capacity}")
        ids = ids.to(self.device)
        x = self.inner.embed_tokens(ids[None])  # [1, n, D]
        positions = torch.arange(start, end, device=self.device)[None]  # [1, n]
        cos, sin = self.inner.rotary_emb(x, positions)  # [1, n, hd]
        cos, sin = cos[:, None], sin[:, None]  # [1, 1, n, hd]
        # A block attends to everything before it and causally within itself.
        mask = torch.ones(n_new, end, dtype=torch.bool, device=self.device).tril(diagonal=start)  # [n, end]
        for layer, keys, values in zip(self.layers, self.keys, self.values, strict=True):
            attention = layer.self_attn
            h = layer.input_layernorm(x)
            q = attention.q_proj(h).view(1, n_new, self.n_heads, self.head_dim).transpose(1, 2)  # [1, H, n, hd]
            k = attention.k_proj(h).view(1, n_new, self.n_kv, self.head_dim).transpose(1, 2)  # [1, Hkv, n, hd]
            v = attention.v_proj(h).view(1, n_new, self.n_kv, self.head_dim).transpose(1, 2)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
            keys[slot, :, start:end] = k[0]
            values[slot, :, start:end] = v[0]
            k_all, v_all = keys[slot : slot + 1, :, :end], values[slot : slot + 1, :, :end]  # [1, Hkv, end, hd]
            out = self._attend(q, k_all, v_all, mask, attention.scaling)  # [1, H, n, hd]
            x = x + attention.o_proj(out.transpose(1, 2).reshape(1, n_new, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        last = self.inner.norm(x[:, -1])  # [1, D]
        return self.model.lm_head(last)[0].float()  # [V]

    @torch.inference_mode()
    def copy_prefix(self, source: int, target: int, length: int) -> None:
        """Copies positions ``0..length-1`` of slot ``source``'s KV into slot ``target`` (prefix reuse)."""
        if not (0 <= source < self.max_slots and 0 <= target < self.max_slots):
            raise IndexError(f"slots {source}, {target} out of range 0..{self.max_slots - 1}")
        if not 0 <= length <= self.capacity:
            raise ValueError(f"length {length} outside 0..{self.capacity}")
        for cache in (*self.keys, *self.values):
            cache[target, :, :length] = cache[source, :, :length]

    # ------------------------------------------------------------------ decode
    @torch.inference_mode()
    def decode(self, tokens: Tensor, positions: Tensor, span: int | None = None) -> Tensor:
        """tokens, positions ``[rows]`` (row i = slot i) -> logits ``[rows, V]`` (float32).

        Each row's token is written at its position and attends to its slot's positions ``0..position``. A row that
        is not generating (a free slot, or one whose prompt is still being prefilled) must sit at position
        ``idle_position``, which no sequence holds KV at before its very last token; its output is to be ignored.
        ``span``: attend over positions ``0..span-1`` only (eager path; at least every generating row's position + 1).
        """
        rows = int(tokens.shape[0])
        batch = self.bucket_for(rows)
        self._tokens[:rows].copy_(tokens)
        self._positions[:rows].copy_(positions)
        if batch > rows:  # padding rows: free or prefilling slots above the live ones
            self._tokens[rows:batch].zero_()
            self._positions[rows:batch].fill_(self.idle_position)
        if self.use_graphs:
            graph = self._graphs.get(batch) or self._capture(batch)
            graph.replay()
            # a copy: the next replay overwrites the graph's output buffer
            return self._logits[batch][:rows].to(torch.float32, copy=True)
        if self.static_shapes:
            span = self.capacity
        elif span is None:
            span = int(positions.max()) + 1
        span = min(int(span), self.capacity)
        if self._numpy_step is not None:
            return self._numpy_step.step(self._tokens[:batch], self._positions[:batch], span)[:rows]
        return self._decode_step(batch, span)[:rows].float()

    @property
    def uses_numpy_decode(self) -> bool:
        return self._numpy_step is not None

    @property
    def idle_position(self) -> int:
        """Where rows that are not generating write: a prompt is at most capacity - 1 tokens, so no slot holds a
        live prompt position there, and a generating row reaches it only with its last token."""
        return self.capacity - 1

    def _decode_step(self, batch: int, span: int) -> Tensor:
        """One step over slots ``0..batch-1`` from the static input buffers, attending over ``span`` positions."""
        tokens, positions = self._tokens[:batch], self._positions[:batch]
        x = self.inner.embed_tokens(tokens[:, None])  # [B, 1, D]
        cos, sin = self.inner.rotary_emb(x, positions[:, None])  # [B, 1, hd]
        cos, sin = cos[:, None], sin[:, None]  # [B, 1, 1, hd]
        # A row at or beyond the span (an idle row) sees the whole span: its output is ignored anyway.
        visible = torch.arange(span, device=self.device)[None, :] <= positions[:, None]  # [B, span]
        mask = visible[:, None, None, :]  # [B, 1, 1, span]
        where = positions.view(batch, 1, 1, 1).expand(batch, self.n_kv, 1, self.head_dim)  # scatter index
        for layer, keys, values in zip(self.layers, self.keys, self.values, strict=True):
            attention = layer.self_attn
            h = layer.input_layernorm(x)
            q = attention.q_proj(h).view(batch, 1, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, 1, hd]
            k = attention.k_proj(h).view(batch, 1, self.n_kv, self.head_dim).transpose(1, 2)  # [B, Hkv, 1, hd]
            v = attention.v_proj(h).view(batch, 1, self.n_kv, self.head_dim).transpose(1, 2)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
            slot_keys, slot_values = keys[:batch], values[:batch]  # views [B, Hkv, C, hd]
            slot_keys.scatter_(2, where, k)  # each row's new key at its own position
            slot_values.scatter_(2, where, v)
            out = self._attend(q, slot_keys[:, :, :span], slot_values[:, :, :span], mask, attention.scaling)
            x = x + attention.o_proj(out.transpose(1, 2).reshape(batch, 1, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.model.lm_head(self.inner.norm(x[:, 0]))  # [B, V] in the model's dtype

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float) -> Tensor:
        if self.n_kv != self.n_heads:  # grouped-query attention: each kv head serves n_heads / n_kv query heads
            k = k.repeat_interleave(self.n_heads // self.n_kv, dim=1)
            v = v.repeat_interleave(self.n_heads // self.n_kv, dim=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)

    # ------------------------------------------------------------------ CUDA graphs
    def capture_all(self) -> None:
        """Captures every bucket's step up front (start-up time instead of a stall on a session's first step)."""
        if self.use_graphs:
            for batch in self.buckets:
                if batch not in self._graphs:
                    self._capture(batch)

    def _capture(self, batch: int) -> torch.cuda.CUDAGraph:
        # Warm up on a side stream (allocator, cuBLAS handles), then capture; every bucket shares one memory pool.
        stream = torch.cuda.Stream(device=self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(2):
                self._decode_step(batch, self.capacity)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        if self._graph_pool is None:
            self._graph_pool = torch.cuda.graph_pool_handle()
        # thread_local: the acoustic decoder may launch work from its own thread while a bucket is captured
        with torch.cuda.graph(graph, pool=self._graph_pool, capture_error_mode="thread_local"), torch.inference_mode():
            self._logits[batch] = self._decode_step(batch, self.capacity)
        self._graphs[batch] = graph
        return graph
