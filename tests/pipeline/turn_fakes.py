"""Fakes for the TurnController tests: a scripted engine session and a reply sink whose playback the test drives.

Frames carry their id in every sample (frame i of turn k, both counted from 1, is ``100 * k + i``), so the sink's
log tells which frame of which turn was queued, played or flushed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np

from assistant.audio import OUTPUT_FRAME_SAMPLES
from assistant.pipeline.outputs import AudioFrame, EngineOutput, ReplyTextDelta, TranscriptDelta, TurnFinished
from assistant.protocol import FinishReason, ServerMessage


@dataclass
class Turn:
    text: str
    continues: Turn | None = None  # the question this one goes on from (UserTurn.continues)


def frame(frame_id: int) -> AudioFrame:
    return AudioFrame(np.full(OUTPUT_FRAME_SAMPLES, frame_id, dtype=np.int16))


def frame_id(pcm: np.ndarray) -> int:
    return int(pcm[0])


@dataclass
class Script:
    """What the engine does for one turn."""

    frames: int = 3
    text: bool = True
    stubborn: bool = False  # ignores interrupt(): waits until cancelled
    leak_after_interrupt: int = 0  # frames (and a text delta) it still yields after interrupt(), as a sloppy engine
    outputs: list[EngineOutput] | None = None  # yields exactly these instead
    fail_after: int | None = None  # raises after this many outputs
    slow_close: float = 0.0  # seconds its stream takes to close (as the engine awaiting its producer task)


@dataclass
class FakeEngine:
    """An :class:`~assistant.pipeline.turns.EngineSession`; ``scripts[i]`` is what turn i does (default Script())."""

    scripts: list[Script] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    interrupts: int = 0
    close_calls: int = 0
    cancelled: int = 0  # turns whose stream was cancelled (rather than ending or being closed)
    streams: int = 0  # streams not closed yet: a second one at once is refused, as engine.Session does
    history: list[str] = field(default_factory=list)  # the turns remembered (a tentative one only once committed)
    tentative: list[bool] = field(default_factory=list)  # per turn: was it speculative?
    commits: int = 0
    discards: int = 0
    pulled: int = 0  # outputs the controller has taken from the streams
    prepared: list[Turn] = field(default_factory=list)  # turns whose preparation began, in order
    prepare_gate: asyncio.Event | None = None  # when set: each preparation waits for it
    _interrupted: asyncio.Event | None = None
    _undecided: Turn | None = None

    async def respond(self, turn: Turn, *, tentative: bool = False):
        if self.streams:
            raise RuntimeError("a turn is already in progress in this session")
        self.streams += 1
        index = len(self.turns)
        self.turns.append(turn)
        self.tentative.append(tentative)
        if tentative:
            self._undecided = turn
        else:
            self.history.append(turn.text)
        outputs = self._outputs(index)
        try:
            async for output in outputs:
                self.pulled += 1
                yield output
        finally:
            await outputs.aclose()

    async def prepare(self, turn: Turn) -> None:
        self.prepared.append(turn)
        if self.prepare_gate is not None:
            await self.prepare_gate.wait()

    def commit(self) -> None:
        self.commits += 1
        if self._undecided is not None:
            self.history.append(self._undecided.text)
            self._undecided = None

    def discard(self) -> None:
        self.discards += 1
        self._undecided = None
        self.interrupt()

    async def _outputs(self, index: int):
        script = self.scripts[index] if index < len(self.scripts) else Script()
        interrupted = self._interrupted = asyncio.Event()
        try:
            if script.outputs is not None:
                for count, output in enumerate(script.outputs):
                    if script.fail_after is not None and count == script.fail_after:
                        raise RuntimeError("engine exploded at /srv/models (pid 4242)")
                    yield output
                return
            if script.text:
                yield TranscriptDelta("you said")
                yield ReplyTextDelta("hello")
            for i in range(script.frames):
                if interrupted.is_set():
                    break
                yield frame(100 * (index + 1) + i + 1)
            if script.stubborn:
                await asyncio.Event().wait()  # never set: only cancellation ends this turn
            if interrupted.is_set():
                for i in range(script.leak_after_interrupt):
                    yield frame(100 * (index + 1) + 90 + i)
                    yield ReplyTextDelta("leaked")
                yield TurnFinished(FinishReason.INTERRUPTED)
            else:
                yield TurnFinished(FinishReason.COMPLETE)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            if script.slow_close:
                await asyncio.sleep(script.slow_close)
            self.streams -= 1

    def interrupt(self) -> None:
        self.interrupts += 1
        if self._interrupted is not None:
            self._interrupted.set()

    async def close(self) -> None:
        self.close_calls += 1


class FakeSink:
    """A :class:`~assistant.pipeline.turns.ReplySink` with a queue of ``capacity`` frames that plays only when the
    test calls :meth:`play_one` / :meth:`play_all`. Everything it is asked to do lands in ``log``, in order."""

    def __init__(self, capacity: int = 10):
        self.capacity = capacity
        self.queue: list[int] = []
        self.log: list[tuple] = []
        self.flushes = 0
        self.waiting_played = asyncio.Event()  # the controller waits in wait_played()
        self._room = asyncio.Event()
        self._drained = asyncio.Event()
        self._on_first_played = None

    # ----- ReplySink -----

    def send(self, message: ServerMessage) -> None:
        self.log.append(("send", message))

    async def play(self, frame: AudioFrame) -> None:
        flushes = self.flushes
        if len(self.queue) >= self.capacity:
            self.log.append(("waiting", frame_id(frame.pcm)))
        while len(self.queue) >= self.capacity:
            self._room.clear()
            await self._room.wait()
            if self.flushes != flushes:
                self.log.append(("dropped", frame_id(frame.pcm)))
                return
        self.queue.append(frame_id(frame.pcm))
        self.log.append(("queued", frame_id(frame.pcm)))

    def flush_audio(self) -> None:
        self.flushes += 1
        self.log.append(("flush", list(self.queue)))
        self.queue.clear()
        self._on_first_played = None
        self._room.set()
        self._drained.set()

    def begin_reply(self, on_first_played) -> None:
        self.log.append(("begin",))
        self._on_first_played = on_first_played

    def end_reply(self) -> None:
        self.log.append(("end",))

    async def wait_played(self) -> None:
        self.log.append(("wait_played",))
        self.waiting_played.set()
        while self.queue:
            self._drained.clear()
            await self._drained.wait()

    # ----- the test's side -----

    def play_one(self) -> int:
        played = self.queue.pop(0)
        self.log.append(("played", played))
        if self._on_first_played is not None:
            callback, self._on_first_played = self._on_first_played, None
            callback()
        self._room.set()
        if not self.queue:
            self._drained.set()
        return played

    def play_all(self) -> list[int]:
        return [self.play_one() for _ in range(len(self.queue))]

    @property
    def messages(self) -> list[ServerMessage]:
        return [entry[1] for entry in self.log if entry[0] == "send"]

    def types(self) -> list[str]:
        return [message.type for message in self.messages]

    def frames(self, kind: str) -> list[int]:
        """Ids of the frames ``queued``, ``played``, ``dropped`` or ``waiting`` (for room)."""
        return [entry[1] for entry in self.log if entry[0] == kind]


@dataclass
class FakeMetrics:
    ttfa: list[float] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    speculations: list[bool] = field(default_factory=list)

    def observe_ttfa(self, seconds: float) -> None:
        self.ttfa.append(seconds)

    def turn_finished(self, reason: str) -> None:
        self.finished.append(reason)

    def speculation_decided(self, committed: bool) -> None:
        self.speculations.append(committed)
