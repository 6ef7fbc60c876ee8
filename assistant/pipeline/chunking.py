"""Groups the LM's level-1 speech codes into chunks for the acoustic decoder.

The first chunk of a speech segment is small so the first audio comes out quickly; later chunks are
larger, which costs fewer decoder calls and gives each call more context. At ``<eosp>`` the caller
flushes the remainder.
"""

from __future__ import annotations

import numpy as np


class SpeechChunker:
    def __init__(self, first_chunk_frames: int = 10, chunk_frames: int = 25):
        if first_chunk_frames <= 0 or chunk_frames <= 0:
            raise ValueError("chunk sizes must be positive")
        self.first_chunk_frames = first_chunk_frames
        self.chunk_frames = chunk_frames
        self._pending: list[int] = []
        self._emitted = 0  # chunks emitted since the segment began (flush/clear start a new segment)

    @property
    def _target(self) -> int:
        return self.first_chunk_frames if self._emitted == 0 else self.chunk_frames

    @property
    def pending_frames(self) -> int:
        return len(self._pending)

    def push(self, code: int) -> np.ndarray | None:
        """Adds one level-1 code; returns a full chunk (int64 [t]) when one is complete."""
        self._pending.append(int(code))
        if len(self._pending) >= self._target:
            return self._take()
        return None

    def flush(self) -> np.ndarray | None:
        """Returns what is left (or None) and starts a new segment (its first chunk is small again)."""
        chunk = self._take() if self._pending else None
        self._emitted = 0
        return chunk

    def clear(self) -> None:
        self._pending = []
        self._emitted = 0

    def _take(self) -> np.ndarray:
        chunk = np.asarray(self._pending, dtype=np.int64)
        self._pending = []
        self._emitted += 1
        return chunk
