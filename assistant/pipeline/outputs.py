"""What one assistant turn produces, in the order the engine yields it (numpy only, no torch).

These objects are the engine's only output. :class:`assistant.pipeline.turns.TurnController` delivers them: audio
frames to a reply sink's track, everything else as wire messages (:mod:`assistant.protocol`) made by one function,
:func:`assistant.pipeline.turns.to_wire`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from assistant.audio import OUTPUT_FRAME_SAMPLES
from assistant.protocol import FinishReason


@dataclass(frozen=True, eq=False)
class AudioFrame:
    """Exactly 20 ms of 16 kHz mono PCM; ``source`` tells speech from music."""

    pcm: np.ndarray  # int16 [OUTPUT_FRAME_SAMPLES]
    source: Literal["speech", "music"] = "speech"

    def __post_init__(self) -> None:
        if self.pcm.dtype != np.int16 or self.pcm.shape != (OUTPUT_FRAME_SAMPLES,):
            raise ValueError(
                f"AudioFrame.pcm must be int16[{OUTPUT_FRAME_SAMPLES}], got {self.pcm.dtype}{list(self.pcm.shape)}"
            )
        if self.source not in ("speech", "music"):
            raise ValueError(f"AudioFrame.source must be 'speech' or 'music', got {self.source!r}")


@dataclass(frozen=True)
class TranscriptDelta:
    """A piece of what the assistant understood the user to say (AnyGPT's ``<-Ins->`` part)."""

    text: str


@dataclass(frozen=True)
class ReplyTextDelta:
    """A piece of the assistant's text reply."""

    text: str


@dataclass(frozen=True, eq=False)
class ImageOutput:
    index: int  # 0-based within the turn
    png: bytes
    width: int
    height: int


@dataclass(frozen=True, eq=False)
class MusicOutput:
    index: int  # 0-based within the turn
    wave: np.ndarray  # float32 [T] @ 16 kHz
    duration_s: float


@dataclass(frozen=True)
class TurnFinished:
    """Always the last output of a turn, exactly once."""

    reason: FinishReason


@dataclass(frozen=True)
class TurnError:
    """A backend failed; a ``TurnFinished(ERROR)`` follows and the session stays usable.

    ``message`` is fit for the caller (no exception text, host or pid: those go to the log under ``error_id``);
    ``code`` is an :class:`assistant.protocol.ErrorCode` value."""

    message: str
    code: str = "turn_failed"
    error_id: str | None = None  # names the log line that holds the details


EngineOutput = AudioFrame | TranscriptDelta | ReplyTextDelta | ImageOutput | MusicOutput | TurnFinished | TurnError
