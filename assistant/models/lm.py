"""The unified language model: a LLaMA decoder (transformers ``LlamaForCausalLM``) over the unified vocabulary.

AnyGPT uses LLaMA-2-7B with the vocabulary extended by the multimodal tokens. The embedded default is a tiny
config of the same architecture (random seeded weights until trained).
Files: ``lm_config.json`` (``LMConfig`` with ``format_version``) + ``model.safetensors`` (the state dict).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

LM_FORMAT_VERSION = 1
LM_CONFIG_FILE = "lm_config.json"
LM_WEIGHTS_FILE = "model.safetensors"


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
    """

    vocab_size: int
    hidden_size: int = 128
    intermediate_size: int = 344
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 4
    max_positions: int = 4096
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5

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

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def embedded(cls, vocab_size: int) -> LMConfig:
        """Tiny embedded default: hidden 128, 2 layers, 4 heads."""
        return cls(
            vocab_size=vocab_size,
            hidden_size=128,
            intermediate_size=344,
            num_layers=2,
            num_heads=4,
            num_kv_heads=4,
            max_positions=4096,
        )

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

    def to_dict(self) -> dict:
        return {"format_version": LM_FORMAT_VERSION, **asdict(self)}

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> LMConfig:
        version = data.get("format_version")
        if version != LM_FORMAT_VERSION:
            raise ValueError(f"{source}: unsupported format_version {version!r} (expected {LM_FORMAT_VERSION})")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"format_version"})
        if unknown:
            raise ValueError(f"{source}: unknown LMConfig fields {unknown}")
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_json(cls, path: str | Path) -> LMConfig:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")), source=str(path))


def build_lm(config: LMConfig, seed: int = 0) -> LlamaForCausalLM:
    """A freshly initialised model (deterministic for a given seed), in eval mode."""
    with torch.random.fork_rng(devices=[]):  # the model is built on CPU; the caller's CPU RNG is left untouched
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config.to_llama_config())
    return model.eval()


def save_lm(model: LlamaForCausalLM, config: LMConfig, directory: str | Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config.to_json(directory / LM_CONFIG_FILE)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / LM_WEIGHTS_FILE), metadata={"format_version": str(LM_FORMAT_VERSION)})
    return directory


def load_lm(
    directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> tuple[LlamaForCausalLM, LMConfig]:
    """Strict load: every key must be present with the expected shape; errors name the file and the key."""
    directory = Path(directory)
    config = LMConfig.from_json(directory / LM_CONFIG_FILE)
    weights_path = directory / LM_WEIGHTS_FILE
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path} not found")
    model = LlamaForCausalLM(config.to_llama_config())
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    with safe_open(str(weights_path), framework="pt") as f:
        present = set(f.keys())
        missing = sorted(set(expected) - present)
        unexpected = sorted(present - set(expected))
        if missing:
            raise KeyError(f"{weights_path}: missing key {missing[0]!r} ({len(missing)} missing in total)")
        if unexpected:
            raise KeyError(f"{weights_path}: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected in total)")
        state = {}
        for key in expected:
            tensor = f.get_tensor(key)
            if tuple(tensor.shape) != expected[key]:
                raise ValueError(
                    f"{weights_path}: key {key!r} has shape {tuple(tensor.shape)}, expected {expected[key]}"
                )
            state[key] = tensor
    model.load_state_dict(state, strict=True)
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device=device)
    return model.eval(), config
