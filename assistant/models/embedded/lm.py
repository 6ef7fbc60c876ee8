"""The embedded language model: a tiny LLaMA decoder (transformers ``LlamaForCausalLM``) over the unified vocabulary.

AnyGPT uses LLaMA-2-7B with the vocabulary extended by the multimodal tokens; the embedded family runs the same
architecture at the size of ``assistant/assets/embedded/lm.json`` (seeded random weights until trained). On disk it is
a checkpoint like any of ours (``assistant.models.checkpoint``): ``lm.json`` (``LMConfig``) + ``lm.safetensors``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from assistant.models.config_io import check_format_version


@dataclass(frozen=True)
class LMConfig:
    """LLaMA decoder hyper-parameters.

    vocab_size: unified vocabulary size (``UnifiedVocab.size``).
    hidden_size: model width D.
    intermediate_size: SwiGLU MLP width.
    num_layers: decoder layers.
    num_heads: attention query heads (hidden_size must be divisible by it).
    num_kv_heads: key/value heads (grouped-query attention; divides num_heads).
    max_positions: maximum sequence length (RoPE positions).
    rope_theta: RoPE base.
    rms_eps: RMSNorm epsilon.
    format_version: checkpoint format version (must equal ``FORMAT_VERSION``).
    """

    FORMAT_VERSION: ClassVar[int] = 1

    vocab_size: int
    hidden_size: int = 128
    intermediate_size: int = 344
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 4
    max_positions: int = 4096
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    format_version: int = 1

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "max_positions",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"LMConfig.{name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} not divisible by num_kv_heads {self.num_kv_heads}")
        if self.rope_theta <= 0 or self.rms_eps <= 0:
            raise ValueError("rope_theta and rms_eps must be positive")
        check_format_version(self)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def to_llama_config(self) -> LlamaConfig:
        return LlamaConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            max_position_embeddings=self.max_positions,
            rope_parameters={"rope_type": "default", "rope_theta": float(self.rope_theta)},
            rms_norm_eps=self.rms_eps,
            tie_word_embeddings=False,
            # No token ids in the network config: stopping is decided from the vocabulary files.
            bos_token_id=None,
            eos_token_id=None,
            pad_token_id=None,
        )


def build_lm(config: LMConfig, seed: int = 0) -> LlamaForCausalLM:
    """A freshly initialised model (deterministic for a given seed), in eval mode."""
    with torch.random.fork_rng(devices=[]):  # the model is built on CPU; the caller's CPU RNG is left untouched
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config.to_llama_config())
    return model.eval()
