"""Weights on disk: our one checkpoint format, and strict reading of every state dict (ours and the hub's).

Our models (the embedded family, and anything trained here) are saved one way. A checkpoint folder holds, per model
``<name>`` ("lm", "codec", "acoustic", ...)::

    <name>.json          the model's config dataclass, flat (``config_io.config_to_dict``; read by ``read_config``)
    <name>.safetensors   every entry of ``module.state_dict()`` (parameters and persistent buffers)

``assistant/assets/embedded/`` is such a folder. Loading is strict: a missing or unexpected key, a wrong shape or a
non-tensor raises ``ConfigError`` naming the file and the key, checked before anything is copied, so a bad file never
half-loads.

The AnyGPT family reads the hub's own files (torch ``.bin`` / ``.pt`` pickles, safetensors, with key renames where
the hub's naming differs from ours); those loaders read through ``read_weights`` / ``read_torch_state_dict`` and go
through the same ``check_state_dict`` before they copy anything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from assistant.models.config_io import ConfigError, config_to_dict, read_config, write_json_object

CONFIG_SUFFIX = ".json"
WEIGHTS_SUFFIX = ".safetensors"

C = TypeVar("C")
M = TypeVar("M", bound=nn.Module)


# ----- our format ---------------------------------------------------------------------------------------------------
def weights_path(directory: str | Path, name: str) -> Path:
    return Path(directory) / f"{name}{WEIGHTS_SUFFIX}"


def config_path(directory: str | Path, name: str) -> Path:
    return Path(directory) / f"{name}{CONFIG_SUFFIX}"


def save_weights(directory: str | Path, name: str, state: nn.Module | dict[str, Tensor]) -> Path:
    """``<name>.safetensors`` in ``directory`` (created if needed) from a module or a state dict."""
    tensors = state.state_dict() if isinstance(state, nn.Module) else state
    path = weights_path(directory, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata={"model": name})
    return path


def save_checkpoint(directory: str | Path, name: str, config: Any, module: nn.Module) -> Path:
    """``<name>.json`` and ``<name>.safetensors`` in ``directory``; returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_json_object(config_path(directory, name), config_to_dict(config))
    save_weights(directory, name, module)
    return directory


def load_weights(path: str | Path, module: nn.Module) -> None:
    """Copy the safetensors file ``path`` into ``module``; every key and shape must match exactly."""
    load_state_dict_strict(module, read_safetensors(path), path)


def load_checkpoint(directory: str | Path, name: str, config_cls: type[C], build: Callable[[C], M]) -> M:
    """``build(config)`` from ``<name>.json``, with ``<name>.safetensors`` loaded strictly, in eval mode."""
    module = build(read_config(config_path(directory, name), config_cls))
    load_weights(weights_path(directory, name), module)
    return module.eval()


# ----- reading any state dict ---------------------------------------------------------------------------------------
def read_safetensors(path: str | Path) -> dict[str, Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: weights file not found")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for truncated or foreign files
        raise ConfigError(f"{path}: not a readable safetensors file ({exc})") from exc


def read_torch_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A plain ``torch.save``d state dict (``.pt``, ``.bin``, ``ckpt.dev``), read without running pickled code
    (``weights_only``) and memory-mapped, so a 1.4 GB file is not copied before it is checked."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: weights file not found")
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # files in the pre-zip (legacy) format cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and weights_only errors all mean "not a state dict we can read"
        raise ConfigError(f"{path}: not a readable torch state dict ({exc})") from exc
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise ConfigError(f"{path}: expected a mapping of parameter names to tensors, got {type(state).__name__}")
    return state


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """A safetensors file (by suffix) or a plain ``torch.save``d state dict -> its tensors, as stored."""
    return read_safetensors(path) if Path(path).suffix == WEIGHTS_SUFFIX else read_torch_state_dict(path)


def check_shapes(
    expected: Mapping[str, tuple[int, ...]],
    found: Mapping[str, tuple[int, ...]],
    source: str | Path,
    owner: Mapping[str, str | Path] | None = None,
) -> None:
    """Every expected key present with its shape and no other key; else ``ConfigError`` naming the file (``owner``
    of the key when a checkpoint is spread over shards, else ``source``), the key, and the expected and found shapes.
    Runs before anything is copied, so a bad file never half-loads."""
    for key, shape in expected.items():
        if key not in found:
            raise ConfigError(f"{source}: missing key {key!r} (expected shape {tuple(shape)})")
    for key, shape in found.items():
        where = owner.get(key, source) if owner is not None else source
        if key not in expected:
            raise ConfigError(f"{where}: unexpected key {key!r} (shape {tuple(shape)})")
        if tuple(shape) != tuple(expected[key]):
            raise ConfigError(f"{where}: key {key!r} has shape {tuple(shape)}, expected {tuple(expected[key])}")


def check_state_dict(expected: Mapping[str, tuple[int, ...]], tensors: Mapping[str, Any], source: str | Path) -> None:
    """``check_shapes`` of a state dict, whose every value must be a tensor."""
    for key, value in tensors.items():
        if not isinstance(value, Tensor):
            raise ConfigError(f"{source}: key {key!r} holds a {type(value).__name__}, not a tensor")
    check_shapes(expected, {key: tuple(value.shape) for key, value in tensors.items()}, source)


def check_floating(tensors: dict[str, Tensor], source: str | Path) -> None:
    """Every tensor floating point (the hub's checkpoints hold nothing else); ``ConfigError`` naming the key."""
    for key, value in tensors.items():
        if not value.is_floating_point():
            raise ConfigError(f"{source}: key {key!r} has dtype {value.dtype}, expected a floating-point tensor")


def load_state_dict_strict(module: nn.Module, tensors: dict[str, Tensor], source: str | Path) -> None:
    """Check ``tensors`` against ``module.state_dict()`` (``check_state_dict``), then copy them in (values are cast
    to each parameter's dtype and device by ``load_state_dict``)."""
    expected = {key: tuple(value.shape) for key, value in module.state_dict().items()}
    check_state_dict(expected, tensors, source)
    with torch.no_grad():
        module.load_state_dict(tensors, strict=True)
