"""The four model services the engine talks to, as async ABCs with numpy in and out.

Numpy (not torch) crosses these boundaries so the same engine runs over in-process backends
(:mod:`assistant.pipeline.local`) or remote ones (Ray deployments) unchanged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np


class SpeechEncoderBackend(ABC):
    @abstractmethod
    async def encode(self, wave: np.ndarray) -> np.ndarray:
        """float32 [T] @ 16 kHz -> int64 [n_q, F] codec codes (level 1 = row 0 is the semantic stream)."""


class LMBackend(ABC):
    @abstractmethod
    def stream(self, prompt_ids: list[int], force_modality: str | None) -> AsyncIterator[list[int]]:
        """Generated ids in chunks (the first as soon as it exists).

        Closing the returned async iterator (``aclose``) aborts generation and frees its state.
        """


class AcousticBackend(ABC):
    @abstractmethod
    async def decode_chunk(
        self, semantic: np.ndarray, context: np.ndarray | None, prompt: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """semantic int64 [t], context int64 [n_q, Tc] | None, prompt int64 [n_q, Tp] | None
        -> (codes int64 [n_q, t], wave float32 [t * 320])."""


class MediaBackend(ABC):
    @abstractmethod
    async def image_png(self, codes: list[int]) -> tuple[bytes, int, int]:
        """Image codes -> (png bytes, width, height)."""

    @abstractmethod
    async def music_wave(self, tokens: list[int]) -> np.ndarray:
        """Flattened music tokens -> float32 [T] @ 16 kHz."""

    @abstractmethod
    async def image_codes(self, png: bytes) -> list[int]:
        """An image file (PNG or JPEG bytes) sent by a user -> its image codes. Raises ``ValueError`` for bytes that
        are not a readable image."""


@dataclass(frozen=True)
class Backends:
    speech: SpeechEncoderBackend
    lm: LMBackend
    acoustic: AcousticBackend
    media: MediaBackend
