"""Reading the JSON files models are described by (torch-free): one reader, one error type.

Every JSON file the models read goes through :func:`read_json_object`: our own model configs
(``assistant/assets/embedded/<name>.json``), the generation settings, the voice bank, the vocabulary's
``added_tokens.json`` and the hub configs of the AnyGPT family. A config dataclass is built from such an object by
:func:`config_from_dict`: JSON lists become tuples, a key the dataclass does not have is an error (a field we do not
know would change the model silently), and so is a value its ``__post_init__`` refuses (among them a config of
another format: :func:`check_format_version`).

Whatever goes wrong (a missing or unreadable file, invalid JSON, an unknown key, a bad value, and, in
:mod:`assistant.models.checkpoint`, a weights file whose keys or shapes do not match) raises :class:`ConfigError`,
a ``ValueError`` whose message starts with the file and names the key.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C")


class ConfigError(ValueError):
    """A model's files (its config, its weights, a vocabulary or voice file) do not match what reads them; the
    message names the file and the key."""


def read_json_object(path: str | Path) -> dict[str, Any]:
    """The JSON object a file holds; ``ConfigError`` naming the file when it is missing, not JSON or not an
    object."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def config_from_dict(cls: type[C], data: Mapping[str, Any], source: str | Path = "<dict>", **overrides: Any) -> C:
    """The dataclass ``cls`` from a flat object of its fields (``overrides`` replace some). Lists become tuples (JSON
    has none); a key ``cls`` does not have, or a value it refuses, raises ``ConfigError`` naming ``source``."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected an object of {cls.__name__} fields, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown {cls.__name__} key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    fields = {key: tuple(value) if isinstance(value, list) else value for key, value in data.items()}
    fields.update(overrides)
    try:
        return cls(**fields)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: invalid {cls.__name__}: {exc}") from exc


def check_format_version(config: Any) -> None:
    """For the ``__post_init__`` of a config that is versioned (a ``format_version`` field, and the
    ``FORMAT_VERSION`` its class reads): ``ValueError`` for a config written in another format."""
    if config.format_version != config.FORMAT_VERSION:
        raise ValueError(f"format_version {config.format_version} != supported {config.FORMAT_VERSION}")


def read_config(path: str | Path, cls: type[C], **overrides: Any) -> C:
    """``config_from_dict`` of the object in ``path``."""
    return config_from_dict(cls, read_json_object(path), path, **overrides)


def config_to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as the flat object ``config_from_dict`` reads back (tuples written as lists)."""
    return dataclasses.asdict(config)


def write_json_object(path: str | Path, data: Mapping[str, Any]) -> Path:
    """``data`` as indented JSON (what every config file of this project looks like)."""
    path = Path(path)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
