"""Named acoustic prompts: the voices the acoustic decoder can speak in (torch-free, numpy only).

The LM speaks level 1 of the codec in one fixed voice; the acoustic decoder fills levels 2..n_q in the voice of an
acoustic prompt (SoundStorm-style: ``[n_q, Tp]`` codes of another utterance of that voice, prepended as fixed
frames). A ``VoiceBank`` maps voice names to such prompts and names the default one.

``voices.json``::

    {"format_version": 1, "n_q": 8, "codebook_size": 1024, "default": "f2",
     "voices": {"f2": [[level-1 codes ...], [level-2 codes ...], ...], ...}}

Every prompt has ``n_q`` rows of equal length >= 1 with codes in ``[0, codebook_size)``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np

from assistant.models.config_io import ConfigError, read_json_object


class UnknownVoiceError(KeyError):
    """A voice name the bank does not hold (a KeyError with a readable message)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown voice"


class VoiceBank:
    """Voice name -> acoustic prompt codes ``np.int64 [n_q, Tp]``, plus the default voice."""

    FORMAT_VERSION: ClassVar[int] = 1

    def __init__(self, prompts: Mapping[str, np.ndarray], default: str, codebook_size: int) -> None:
        if codebook_size < 2:
            raise ValueError(f"codebook_size must be >= 2, got {codebook_size}")
        if not prompts:
            raise ValueError("a voice bank needs at least one voice")
        checked: dict[str, np.ndarray] = {}
        n_q: int | None = None
        for name, codes in prompts.items():
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"voice names must be non-empty strings, got {name!r}")
            array = _as_codes(codes, name)
            if n_q is None:
                n_q = array.shape[0]
            if array.shape[0] != n_q:
                raise ValueError(f"voice {name!r} has {array.shape[0]} levels, expected {n_q} like the others")
            if array.shape[1] == 0:
                raise ValueError(f"voice {name!r} has an empty prompt")
            if int(array.min()) < 0 or int(array.max()) >= codebook_size:
                raise ValueError(f"voice {name!r} has codes outside [0, {codebook_size})")
            array.setflags(write=False)
            checked[name] = array
        if default not in checked:
            raise ValueError(f"default voice {default!r} is not in the bank; known: {', '.join(checked)}")
        self._prompts = checked
        self._default = default
        self.codebook_size = codebook_size
        self.n_q: int = n_q  # type: ignore[assignment]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._prompts)

    @property
    def default(self) -> str:
        return self._default

    def __contains__(self, name: object) -> bool:
        return name in self._prompts

    def __len__(self) -> int:
        return len(self._prompts)

    def prompt(self, name: str | None = None) -> np.ndarray:
        """Prompt codes ``np.int64 [n_q, Tp]`` of ``name`` (None = the default voice); a fresh, writable copy."""
        key = self._default if name is None else name
        if key not in self._prompts:
            raise UnknownVoiceError(f"unknown voice {key!r}; known voices: {', '.join(self._prompts)}")
        return self._prompts[key].copy()

    # ----- persistence ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format_version": self.FORMAT_VERSION,
            "n_q": self.n_q,
            "codebook_size": self.codebook_size,
            "default": self._default,
            "voices": {name: codes.tolist() for name, codes in self._prompts.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> VoiceBank:
        if not isinstance(data, Mapping):
            raise ValueError("a voice bank must be a JSON object")
        missing = sorted({"format_version", "n_q", "codebook_size", "default", "voices"} - set(data))
        if missing:
            raise ValueError(f"voice bank is missing fields {missing}")
        if data["format_version"] != cls.FORMAT_VERSION:
            raise ValueError(f"voice bank format_version {data['format_version']} != supported {cls.FORMAT_VERSION}")
        voices = data["voices"]
        if not isinstance(voices, Mapping):
            raise ValueError("'voices' must map voice names to code lists")
        bank = cls(voices, data["default"], int(data["codebook_size"]))
        if bank.n_q != data["n_q"]:
            raise ValueError(f"prompts have {bank.n_q} levels but n_q is {data['n_q']}")
        return bank

    def to_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), separators=(",", ":")) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> VoiceBank:
        """The bank in ``path``; ``ConfigError`` naming the file and the problem otherwise."""
        data = read_json_object(path)
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc

    def __repr__(self) -> str:
        return f"VoiceBank(voices={list(self._prompts)}, default={self._default!r}, n_q={self.n_q})"


def _as_codes(codes: object, name: str) -> np.ndarray:
    """Nested lists or an integer array -> a fresh ``np.int64 [n_q, Tp]`` (ValueError otherwise)."""
    try:
        array = np.array(codes)
    except ValueError as exc:  # ragged nested lists
        raise ValueError(f"voice {name!r}: levels of unequal length ({exc})") from exc
    if array.ndim != 2:
        raise ValueError(f"voice {name!r}: expected codes [n_q, frames], got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"voice {name!r}: codes must be integers, got {array.dtype}")
    return array.astype(np.int64)
