"""The tiny embedded LM the decoding, lm_engine and model tests share (torch; see ``vocab_fixtures`` for its
vocabulary).

- ``tiny_lm_config(vocab_size, **overrides)``: an ``LMConfig`` of 2 layers, width 32, 4 heads over 2 KV heads, 256
  positions; ``overrides`` replace any of those.
- ``make_tiny_lm(vocab_size, seed=0, **overrides)``: ``build_lm`` of that config, initialised from ``seed``.
- ``make_runner_lm(kv_heads=4, positions=64, seed=3)``: the 3-layer, width-64 LM over 97 ids that the slot runner's
  tests compare with transformers' forward and with each other.
"""

from __future__ import annotations

from typing import Any

from assistant.models.embedded.lm import LMConfig, build_lm

TINY_LM_SIZES: dict[str, Any] = dict(
    hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2, max_positions=256
)


def tiny_lm_config(vocab_size: int, **overrides: Any) -> LMConfig:
    return LMConfig(vocab_size=vocab_size, **{**TINY_LM_SIZES, **overrides})


def make_tiny_lm(vocab_size: int, seed: int = 0, **overrides: Any):
    return build_lm(tiny_lm_config(vocab_size, **overrides), seed=seed)


def make_runner_lm(kv_heads: int = 4, positions: int = 64, seed: int = 3):
    return make_tiny_lm(
        97,
        seed=seed,
        hidden_size=64,
        intermediate_size=96,
        num_layers=3,
        num_heads=4,
        num_kv_heads=kv_heads,
        max_positions=positions,
    )
