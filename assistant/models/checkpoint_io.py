"""Shared save/load for the small models: safetensors weights + versioned JSON config.

Layout of a checkpoint directory:
    config.json        {"format": <kind>, "format_version": <int>, "config": {...dataclass fields...}}
    model.safetensors  every entry of ``module.state_dict()`` (parameters and persistent buffers)

Loading is strict: a wrong kind, a wrong version, an unknown or missing config field, a missing or unexpected
tensor, or a shape mismatch raises ``CheckpointError`` naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

C = TypeVar("C")


class CheckpointError(ValueError):
    """A checkpoint directory does not match the model that tries to load it."""


def save_checkpoint(directory: str | Path, kind: str, config: Any, module: nn.Module) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": kind,
        "format_version": config.format_version,
        "config": dataclasses.asdict(config),
    }
    (directory / CONFIG_FILE).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    tensors = {key: value.detach().cpu().contiguous() for key, value in module.state_dict().items()}
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": kind})
    return directory


def load_config(directory: str | Path, kind: str, config_cls: type[C]) -> C:
    """Read and validate ``config.json``; raises ``CheckpointError`` naming the file and the field."""
    path = Path(directory) / CONFIG_FILE
    payload = read_json_object(path)
    if payload.get("format") != kind:
        raise CheckpointError(f"{path}: key 'format' is {payload.get('format')!r}, expected {kind!r}")
    fields = payload.get("config")
    if not isinstance(fields, dict):
        raise CheckpointError(f"{path}: key 'config' missing or not an object")
    known = {f.name for f in dataclasses.fields(config_cls)}  # type: ignore[arg-type]
    unknown = sorted(set(fields) - known)
    if unknown:
        raise CheckpointError(f"{path}: unknown config key {unknown[0]!r}")
    expected_version = config_cls.FORMAT_VERSION
    version = payload.get("format_version")
    if version != expected_version or fields.get("format_version", expected_version) != expected_version:
        raise CheckpointError(f"{path}: key 'format_version' is {version!r}, this code reads {expected_version}")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    try:
        return config_cls(**fields)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid config: {exc}") from exc


def load_weights_strict(directory: str | Path, module: nn.Module) -> None:
    """Copy ``model.safetensors`` into ``module``; every key and shape must match exactly."""
    load_safetensors_strict(Path(directory) / WEIGHTS_FILE, module)


def load_safetensors_strict(path: str | Path, module: nn.Module) -> None:
    """Copy the safetensors file ``path`` into ``module``; every key and shape must match exactly."""
    load_state_dict_strict(module, read_safetensors(path), path)


def read_json_object(path: str | Path) -> dict[str, Any]:
    """A JSON file holding one object (a model's ``config.json``); ``CheckpointError`` naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: config file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: invalid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_safetensors(path: str | Path) -> dict[str, Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """A safetensors file (by suffix) or a plain ``torch.save``d state dict -> its tensors, as stored."""
    return read_safetensors(path) if Path(path).suffix == ".safetensors" else read_torch_state_dict(path)


def check_state_dict(expected: dict[str, tuple[int, ...]], tensors: dict[str, Tensor], source: str | Path) -> None:
    """Every expected key present with its shape and no other key; else ``CheckpointError`` naming ``source``, the
    key, and the expected and found shapes. Runs before anything is copied, so a bad file never half-loads."""
    for key, shape in expected.items():
        if key not in tensors:
            raise CheckpointError(f"{source}: missing key {key!r} (expected shape {tuple(shape)})")
    for key, value in tensors.items():
        if key not in expected:
            raise CheckpointError(f"{source}: unexpected key {key!r} (shape {tuple(value.shape)})")
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{source}: key {key!r} holds a {type(value).__name__}, not a tensor")
        if tuple(value.shape) != tuple(expected[key]):
            raise CheckpointError(
                f"{source}: key {key!r} has shape {tuple(value.shape)}, expected {tuple(expected[key])}"
            )


def load_state_dict_strict(module: nn.Module, tensors: dict[str, Tensor], source: str | Path) -> None:
    """Check ``tensors`` against ``module.state_dict()`` (``check_state_dict``), then copy them in (values are cast
    to each parameter's dtype and device by ``load_state_dict``)."""
    expected = {key: tuple(value.shape) for key, value in module.state_dict().items()}
    check_state_dict(expected, tensors, source)
    with torch.no_grad():
        module.load_state_dict(tensors, strict=True)


def read_torch_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A plain ``torch.save``d state dict (``.pt``, ``.bin``, ``ckpt.dev``), read without running pickled code
    (``weights_only``) and memory-mapped, so a 1.4 GB file is not copied before it is checked."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # files in the pre-zip (legacy) format cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and weights_only errors all mean "not a state dict we can read"
        raise CheckpointError(f"{path}: not a readable torch state dict ({exc})") from exc
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(f"{path}: expected a mapping of parameter names to tensors, got {type(state).__name__}")
    return state


class Checkpointed:
    """``save``/``load`` for a module built from one config dataclass; a subclass sets ``KIND`` and ``CONFIG_CLASS``."""

    KIND: ClassVar[str]
    CONFIG_CLASS: ClassVar[type]

    def save(self, directory: str | Path) -> Path:
        return save_checkpoint(directory, self.KIND, self.config, self)

    @classmethod
    def load(cls, directory: str | Path) -> Any:
        model = cls(load_config(directory, cls.KIND, cls.CONFIG_CLASS))
        load_weights_strict(directory, model)
        return model
