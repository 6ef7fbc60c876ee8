"""Groups the LM's level-1 speech codes into chunks for the acoustic decoder.

The first chunk of a speech segment is small so the first audio comes out quickly; each later chunk is twice
the one before, up to ``chunk_frames``, which costs fewer decoder calls and gives each call more context. Doubling
(rather than jumping straight to the large size) keeps the player fed: while one chunk plays, the LM only has to make
as many frames as that chunk holds, at several times real time, before the next is due. At ``<eosp>`` the caller
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
        return min(self.chunk_frames, self.first_chunk_frames << min(self._emitted, 16))

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
