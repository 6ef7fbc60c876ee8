"""The AnyGPT family's language model from a Hugging Face LLaMA folder (``fnlp/AnyGPT-chat`` or ``-base`` as
downloaded), its vocabulary and its generation settings.

A folder holds::

    config.json                      LlamaConfig (model_type "llama"; vocab_size = text + added tokens)
    model.safetensors                weights, or model.safetensors.index.json + shards,
      | pytorch_model.bin            or pytorch_model.bin.index.json + shards (AnyGPT ships one 27.7 GB fp32 .bin)
    tokenizer.model                  LLaMA SentencePiece (the text part of the vocabulary)
    added_tokens.json                every AnyGPT token string -> id ([Human], <eos>, <🗣️n>, <sosp>, <-Ins->, ...)

No id is hard-coded: ``UnifiedVocab.from_dir`` parses ``added_tokens.json``, and the model's embedding rows must
cover it. Loading is strict and two-phase: every shard's keys and shapes are read from its header (safetensors) or
memory-mapped (torch pickles) and checked against the model built on the meta device, and only then are tensors
cast and assigned, so a bad folder fails naming the file and the key before gigabytes are copied, and nothing
half-loads. ``…rotary_emb.inv_freq`` keys written by transformers before 4.31 are accepted and dropped: the rotary
tables are recomputed from the config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import LlamaConfig, LlamaForCausalLM

from assistant.decoding.lm_sampler import GenerationSettings
from assistant.models.checkpoint import check_shapes, check_state_dict, read_torch_state_dict, read_weights
from assistant.models.config_io import ConfigError, read_json_object
from assistant.vocab import ADDED_TOKENS_FILE, SENTENCEPIECE_FILE, UnifiedVocab

CONFIG_FILE = "config.json"
# Preference order when a folder holds more than one format (a converted copy next to the original, say).
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
GENERATION_FILE = "anystream_generation.json"  # optional GenerationSettings override (GenerationSettings.to_dict)
_LEGACY_ROTARY_KEY = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")


# The code tokens of AnyGPT's vocabulary in its ``added_tokens.json`` order: prefix -> (start, end, number of codes).
ANYGPT_CODE_TOKENS = {
    "\U0001f440": ("<soim>", "<eoim>", 8192),
    "\U0001f5e3\ufe0f": ("<sosp>", "<eosp>", 1024),
    "\U0001f3b6": ("<somu>", "<eomu>", 8192),
}


def anygpt_added_tokens(
    first_id: int, codes: dict[str, tuple[str, str, int]] = ANYGPT_CODE_TOKENS, chat: bool = True
) -> dict[str, int]:
    """Token string -> id in the order AnyGPT adds them (roles, then per modality its codes, start and end; the chat
    model appends <-Res-> and <-Ins->), from ``first_id`` on: what a hub ``added_tokens.json`` holds, for stand-ins
    built without the files (tests, the random-weights benchmark)."""
    order = ["[Human]", "[MMGPT]", "<eoh>", "<eos>"]
    for prefix, (start, end, count) in codes.items():
        order += [f"<{prefix}{n}>" for n in range(count)] + [start, end]
    if chat:
        order += ["<-Res->", "<-Ins->"]
    return {token: first_id + i for i, token in enumerate(order)}


@dataclass(frozen=True)
class HFLMFolder:
    """A checked folder: its config, the weight files that together hold every tensor, and its vocabulary."""

    path: Path
    config: LlamaConfig
    weight_files: tuple[Path, ...]
    vocab: UnifiedVocab


def read_llama_config(folder: str | Path) -> LlamaConfig:
    path = Path(folder) / CONFIG_FILE
    data = read_json_object(path)
    if data.get("model_type") != "llama":
        raise ConfigError(f"{path}: key 'model_type' is {data.get('model_type')!r}, expected 'llama'")
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"):
        if not isinstance(data.get(key), int) or data[key] <= 0:
            raise ConfigError(f"{path}: key {key!r} must be a positive integer, got {data.get(key)!r}")
    try:
        return LlamaConfig(**data)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: invalid LLaMA config ({exc})") from exc


def find_weight_files(folder: str | Path) -> tuple[Path, ...]:
    """The weight files of a folder: the shards an index names, else the single file."""
    folder = Path(folder)
    for name in WEIGHT_INDEXES:
        index = folder / name
        if not index.is_file():
            continue
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ConfigError(f"{index}: not a weight index with a 'weight_map' of key -> shard file")
        shards = tuple(folder / shard for shard in sorted(set(weight_map.values())))
        for shard in shards:
            if not shard.is_file():
                raise ConfigError(f"{index}: names shard {shard.name}, which is missing")
        return shards
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return (folder / name,)
    raise ConfigError(f"{folder}: no weights ({', '.join(WEIGHT_INDEXES + WEIGHT_FILES)})")


def _shard_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
        except Exception as exc:  # safetensors raises its own error types for truncated or foreign files
            raise ConfigError(f"{path}: not a readable safetensors file ({exc})") from exc
    return {key: tuple(value.shape) for key, value in read_torch_state_dict(path).items()}


def expected_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """State-dict shapes of ``LlamaForCausalLM(config)``, from a model built on the meta device (no memory)."""
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def check_hf_lm(folder: str | Path) -> HFLMFolder:
    """Every key and shape of every weight file checked against the config, plus the vocabulary files; reads no
    tensor data. Raises ``ConfigError`` naming the file and the key."""
    folder = Path(folder)
    config = read_llama_config(folder)
    files = find_weight_files(folder)
    found: dict[str, tuple[int, ...]] = {}
    owner: dict[str, Path] = {}
    for path in files:
        for key, shape in _shard_shapes(path).items():
            if _LEGACY_ROTARY_KEY.match(key):
                continue
            if key in found:
                raise ConfigError(f"{path}: key {key!r} is also in {owner[key].name}")
            found[key], owner[key] = shape, path
    source = files[0] if len(files) == 1 else f"{folder} ({len(files)} shards)"
    check_shapes(expected_shapes(config), found, source, owner)
    return HFLMFolder(folder, config, files, check_vocab_files(folder, config))


def read_vocab(folder: str | Path) -> UnifiedVocab:
    """The unified vocabulary of an LLM folder, checked against its config (no weights are read)."""
    return check_vocab_files(Path(folder), read_llama_config(folder))


def check_vocab_files(folder: Path, config: LlamaConfig) -> UnifiedVocab:
    for name in (SENTENCEPIECE_FILE, ADDED_TOKENS_FILE):
        if not (folder / name).is_file():
            raise ConfigError(f"{folder / name}: vocabulary file not found")
    try:
        vocab = UnifiedVocab.from_dir(folder, vocab_size=config.vocab_size)
    except (ValueError, ImportError, OSError) as exc:
        raise ConfigError(f"{folder / ADDED_TOKENS_FILE}: {exc}") from exc
    return vocab


def _materialise_rotary(model: LlamaForCausalLM, device: torch.device) -> None:
    """Non-persistent buffers (the rotary inverse frequencies) are not in any checkpoint: after a meta-device build
    they are recomputed on ``device`` from the config."""
    with torch.device(device):
        model.model.rotary_emb = type(model.model.rotary_emb)(config=model.config)


def load_hf_lm(
    folder: str | Path, *, dtype: torch.dtype = torch.float16, device: str | torch.device = "cpu"
) -> tuple[LlamaForCausalLM, UnifiedVocab]:
    """Strictly load the model (cast to ``dtype`` on ``device``) and its unified vocabulary."""
    checked = check_hf_lm(folder)
    device = torch.device(device)
    with torch.device("meta"):
        model = LlamaForCausalLM(checked.config)
    state: dict[str, torch.Tensor] = {}
    for path in checked.weight_files:
        for key, tensor in read_weights(path).items():
            if not _LEGACY_ROTARY_KEY.match(key):
                state[key] = tensor.to(device=device, dtype=dtype)  # one tensor at a time from the mmap
    check_state_dict(expected_shapes(checked.config), state, checked.path)  # re-checked: files may change under us
    model.load_state_dict(state, strict=True, assign=True)
    _materialise_rotary(model, device)
    leftover = [name for name, buffer in model.named_buffers() if buffer.is_meta]
    if leftover:
        raise ConfigError(f"{checked.path}: no value for buffer {leftover[0]!r} after loading")
    return model.eval(), checked.vocab


def generation_settings(folder: str | Path) -> GenerationSettings:
    """AnyGPT's per-modality settings (its config/*_generate_config.json), unless the folder carries an
    ``anystream_generation.json`` override."""
    path = Path(folder) / GENERATION_FILE
    return GenerationSettings.from_json(path) if path.is_file() else GenerationSettings.anygpt_defaults()
