"""The assistant's audio on its way to the sink, cut off where the server says a reply was interrupted.

The server owns barge-in: its VAD hears the user start speaking over a reply, stops the reply and sends
``interrupted``. Audio of that reply is still on its way then (the jitter buffer, frames already sent), and the
audio track carries no turn ids, so the cut follows the events:

- ``interrupted(turn N)``: what the sink still has queued is dropped (``flush``), and every frame that arrives from
  then on is stale and played as silence, until the server starts a newer turn (or ``max_stale_s`` of audio has
  gone by: a bound, should no turn ever follow);
- ``turn_started(turn M)`` while an older turn had not ended (a server that replaced a reply without saying
  ``interrupted``): the older reply's queued audio is dropped.

Stale frames are written as silence rather than dropped, so a recording (``answer.wav``) keeps the call's timeline.

In the edge client the sink behind it plays through a jitter buffer (:mod:`edge_client.jitter`: the speaker's, or a
:class:`~edge_client.audio_io.PacedSink`'s), so ``flush`` drops what that buffer holds; ``write(pcm, seq)`` passes the
frame's slot on to a sink whose ``write`` takes ``seq`` (any other sink gets the frame alone). ``on_frame``
listeners see each frame as it goes to the sink (stale ones as the silence they became): the per-turn recording.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from edge_client.audio_io import CAPTURE_RATE, AudioSink, takes_seq

log = logging.getLogger(__name__)


class Playback:
    """An :class:`~edge_client.audio_io.AudioSink` in front of the real one; the conversation tells it about turns."""

    def __init__(self, sink: AudioSink, sample_rate: int = CAPTURE_RATE, max_stale_s: float = 2.0):
        self.sink = sink
        self.max_stale_samples = int(max_stale_s * sample_rate)
        self.stale_frames = 0  # frames played as silence because their reply had been interrupted
        self.flushes = 0
        self._latest_turn: int | None = None  # the newest turn the server started
        self._open_turns: set[int] = set()  # started, not ended
        self._stale_turn: int | None = None  # audio is stale until a turn newer than this starts
        self._stale_samples = 0
        self._sink_takes_seq = takes_seq(sink)
        self.on_frame: list[Callable[[np.ndarray], None]] = []

    @property
    def muted(self) -> bool:
        return self._stale_turn is not None

    # ----- the sink side

    def write(self, pcm: np.ndarray, seq: int | None = None) -> None:
        if self._stale_turn is not None:
            self.stale_frames += 1
            self._stale_samples += np.asarray(pcm).size
            pcm = np.zeros_like(pcm)
            if self._stale_samples >= self.max_stale_samples:
                self._stale_turn = None
        if self._sink_takes_seq:
            self.sink.write(pcm, seq=seq)  # type: ignore[call-arg]  # checked once in __init__
        else:
            self.sink.write(pcm)
        for listener in self.on_frame:
            try:
                listener(pcm)
            except Exception:
                log.exception("an on_frame listener failed")

    def flush(self) -> None:
        self.flushes += 1
        self.sink.flush()

    def close(self) -> None:
        self.sink.close()

    # ----- the server's turns

    def reset(self) -> None:
        """A new connection: the old connection's turns are over (none of them will end now) and whatever still
        plays of it is dropped. (Turn ids keep growing across connections: the conversation numbers them.)"""
        self._open_turns.clear()
        self._stale_turn = None
        self._stale_samples = 0
        self.flush()

    def turn_started(self, turn_id: int) -> None:
        newer = self._latest_turn is None or turn_id > self._latest_turn
        if newer and self._latest_turn is not None and self._latest_turn in self._open_turns:
            self.flush()  # the reply that was playing has been replaced: what is queued of it is stale
        if self._stale_turn is not None and turn_id > self._stale_turn:
            self._stale_turn = None
        if newer:
            self._latest_turn = turn_id
        self._open_turns.add(turn_id)

    def turn_ended(self, turn_id: int) -> None:
        self._open_turns.discard(turn_id)

    def interrupted(self, turn_id: int) -> None:
        self._open_turns.discard(turn_id)
        if self._latest_turn is not None and turn_id < self._latest_turn:
            return  # an older reply: turn_started of the newer one already dropped its audio
        self.flush()
        if self._stale_turn is None or turn_id > self._stale_turn:
            self._stale_turn = turn_id
        self._stale_samples = 0
