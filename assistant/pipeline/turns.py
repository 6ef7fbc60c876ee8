"""One conversation's turns: when a turn starts, stops and ends, and what it sends on the wire.

A :class:`TurnController` sits between an engine session (:class:`EngineSession`: ``engine.Session``) and a reply
sink (:class:`ReplySink`: the WebRTC session's data channel and audio track, or ``assistant chat``'s files). It is
the only place that knows about turns:

- a new turn interrupts the one in progress. While the old turn winds down (its engine stream ends, or it is
  cancelled after ``grace_s``) one start waits; a newer start replaces it and the replaced one reports -1, so a
  burst of questions costs one turn, the latest;
- :meth:`TurnController.interrupt` tells the engine to stop and flushes the sink's queued audio. That is the one
  place audio is flushed: no frame of an interrupted turn reaches the sink after it;
- a turn sends ``turn_started``, its outputs as wire messages (:func:`to_wire`), and exactly one ``turn_end``, once
  its last frame has played. An interrupted turn sends ``interrupted`` just before its ``turn_end``;
- a failure becomes an ``error`` event and ``turn_end`` with reason ``error``: the engine's own words for a
  ``TurnError``, a generic text naming a logged id for an exception. The conversation goes on;
- optional metrics hear of the time to first audio (from the moment the turn was asked for to the moment its first
  frame left the sink) and of every finished turn;
- a turn may start before it is certain (:meth:`TurnController.speculate`: the user paused, and may go on). It runs
  in the engine at once, but nothing of it reaches the sink: no ``turn_started``, no text, no frame. :meth:`commit`
  (the pause was the end of the user's turn) gives it its turn id and releases what it has made so far, so its
  first audio can leave the moment the turn is certain; :meth:`discard` (the user went on) throws it away without a
  word on the wire, and the engine forgets it. At most one turn is speculative; anything that would interrupt it
  discards it instead.

Imports neither torch nor aiortc (the WebRTC session and `assistant chat` both drive it).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from assistant import protocol
from assistant.background import BackgroundTasks
from assistant.pipeline.outputs import (
    AudioFrame,
    EngineOutput,
    ImageOutput,
    MusicOutput,
    ReplyTextDelta,
    TranscriptDelta,
    TurnError,
    TurnFinished,
)
from assistant.protocol import ErrorCode, FinishReason, ServerMessage

if TYPE_CHECKING:
    from assistant.pipeline.engine import UserTurn

logger = logging.getLogger(__name__)

# A new turn waits this long for the interrupted one to end before cancelling it.
INTERRUPT_GRACE_S = 2.0


class EngineSession(Protocol):
    """One conversation with the engine (``assistant.pipeline.engine.Session``)."""

    def respond(self, turn: UserTurn) -> AsyncGenerator[EngineOutput, None]:
        """Runs one turn: its outputs as they become ready, exactly one ``TurnFinished`` last. Called with
        ``tentative=True`` (a keyword) for a speculative turn, which enters the history only on :meth:`commit`."""
        ...

    def commit(self) -> None:
        """The tentative turn is a real one (it enters the history)."""
        ...

    async def prepare(self, turn: UserTurn) -> None:
        """Gets ready for a turn the user is still speaking (best effort, never raises; nothing is delivered)."""
        ...

    def discard(self) -> None:
        """Stops the tentative turn; it never enters the history."""
        ...

    def interrupt(self) -> None:
        """Stops the turn in flight: ``respond`` soon ends with ``TurnFinished(INTERRUPTED)``."""
        ...

    async def close(self) -> None:
        """Ends the conversation (after an interrupt of the turn in flight)."""
        ...


class ReplySink(Protocol):
    """Where one conversation's replies go: wire messages and a bounded queue of audio frames being played."""

    def send(self, message: ServerMessage) -> None:
        """Sends one message (never raises)."""
        ...

    async def play(self, frame: AudioFrame) -> None:
        """Queues one frame for playback, waiting while the queue is full (backpressure). A frame still waiting for
        room when :meth:`flush_audio` is called is dropped, not queued."""
        ...

    def flush_audio(self) -> None:
        """Drops every queued frame at once (and any frame waiting in :meth:`play`)."""
        ...

    def begin_reply(self, on_first_played: Callable[[], None] | None) -> None:
        """A reply's audio starts. ``on_first_played`` is called once its first frame has left (never when that
        frame is flushed first)."""
        ...

    def end_reply(self) -> None:
        """The reply has queued its last frame (the queue running dry is its end, not an underrun)."""
        ...

    async def wait_played(self) -> None:
        """Returns once every frame queued so far has left or was flushed; the sink bounds the wait."""
        ...


class TurnMetrics(Protocol):
    """What the controller reports (:class:`assistant.metrics.ServingMetrics` is one)."""

    def observe_ttfa(self, seconds: float) -> None: ...

    def turn_finished(self, reason: str) -> None: ...

    def speculation_decided(self, committed: bool) -> None: ...


# The engine outputs that become a wire message of their own (audio and TurnFinished do not).
MessageOutput = TranscriptDelta | ReplyTextDelta | ImageOutput | MusicOutput | TurnError


def to_wire(output: MessageOutput, turn_id: int) -> ServerMessage:
    """The wire message for one engine output of turn ``turn_id``.

    Audio frames and ``TurnFinished`` are not messages: frames go to the sink's audio queue, and the turn's end
    becomes ``turn_end`` only once its audio has played (:class:`TurnController`)."""
    match output:
        case TranscriptDelta(text=text):
            return protocol.Transcript(turn_id=turn_id, delta=text)
        case ReplyTextDelta(text=text):
            return protocol.TextDelta(turn_id=turn_id, delta=text)
        case ImageOutput():
            return protocol.ImageReady(
                turn_id=turn_id,
                index=output.index,
                width=output.width,
                height=output.height,
                png_base64=base64.b64encode(output.png).decode("ascii"),
            )
        case MusicOutput():
            return protocol.MusicReady(turn_id=turn_id, index=output.index, duration_s=float(output.duration_s))
        case TurnError():
            # the engine made message and code fit for the caller; its details are logged under error_id
            return protocol.ErrorEvent(message=output.message, turn_id=turn_id, code=output.code)
    raise TypeError(f"not an engine output with a wire message: {type(output).__name__}")


def new_error_id() -> str:
    """A short id that names one log line; the caller gets the id, the log keeps the details."""
    return uuid.uuid4().hex[:12]


@dataclass
class TurnStats:
    started: int = 0  # turns that ran (committed speculative ones included)
    replaced: int = 0  # starts that waited behind a turn and were replaced by a newer one
    speculated: int = 0  # speculative turns begun
    committed: int = 0  # of which the user's turn really ended there
    discarded: int = 0  # of which the user went on (or something else came first)


@dataclass
class _Turn:
    turn_id: int  # 0 while speculative: an id is given on commit, so a discarded turn uses none
    asked_at: float  # clock() when the turn was asked for (the end of the user's turn): TTFA counts from here
    task: asyncio.Task[None] | None = None
    interrupted: bool = False
    done: bool = False
    decision: asyncio.Future[bool] | None = None  # speculative turns: True on commit, False on discard
    question: UserTurn | None = None  # what the user asked

    @property
    def undecided(self) -> bool:
        return self.decision is not None and not self.decision.done()


@dataclass
class _Start:
    """A turn asked for but not started yet; ``result`` gets its turn id, or -1 when it never runs."""

    turn: UserTurn
    asked_at: float
    result: asyncio.Future[int]
    tentative: bool = False


class TurnController:
    """Runs one conversation's turns on ``engine`` and delivers them to ``sink`` (see the module docstring).

    metrics: None, or what hears of the time to first audio and of finished turns.
    on_turn_change: called when a turn starts and when it ends (e.g. a session's idle clock); must not raise.
    grace_s: how long a new turn (or :meth:`close`) waits for an interrupted turn to end before cancelling it.
    clock: monotonic seconds, for the time to first audio; tests inject their own.
    label: names the conversation in log lines (a session id).
    """

    def __init__(
        self,
        engine: EngineSession,
        sink: ReplySink,
        *,
        metrics: TurnMetrics | None = None,
        on_turn_change: Callable[[], None] | None = None,
        grace_s: float = INTERRUPT_GRACE_S,
        clock: Callable[[], float] = time.monotonic,
        label: str = "-",
    ):
        if grace_s < 0:
            raise ValueError("grace_s must be >= 0")
        self._engine = engine
        self._sink = sink
        self._metrics = metrics
        self._on_turn_change = on_turn_change
        self.grace_s = grace_s
        self._clock = clock
        self.label = label
        self.stats = TurnStats()
        self._turn: _Turn | None = None  # the turn in progress, or the last one
        self._waiting: _Start | None = None  # at most one start waits behind the turn in progress
        self._starter: asyncio.Task[None] | None = None
        self._next_turn_id = 0
        self._last_delivered: _Turn | None = None  # the last turn that reached the caller (a continued one may follow)
        self._tasks = BackgroundTasks(label, logger)  # the turns, the starter and the preparer
        self._preparer: asyncio.Task[None] | None = None
        self._next_prepared: UserTurn | None = None  # the newest turn to prepare once the running preparation ends
        self._closed = False
        self._shutdown: asyncio.Future[None] | None = None

    @property
    def reply_in_progress(self) -> bool:
        return self._turn is not None and not self._turn.done

    @property
    def idle(self) -> bool:
        """No turn in progress and none waiting to start."""
        return not self.reply_in_progress and self._waiting is None

    @property
    def turn_id(self) -> int | None:
        """The id of the turn in progress, or of the last one; None before the first."""
        return self._turn.turn_id if self._turn is not None else None

    @property
    def closed(self) -> bool:
        return self._closed

    # ----- starting turns -----

    def request(self, turn: UserTurn) -> asyncio.Future[int]:
        """Asks for a turn without waiting; the future gets its id once it runs, or -1 when it never does (a newer
        start replaced it while it waited, or the controller closed)."""
        return self._ask(turn, tentative=False)

    def prepare(self, turn: UserTurn) -> None:
        """Lets the engine get ready for a turn the user is still speaking (``EngineSession.prepare``: on the server,
        its audio so far encoded and prefilled). One at a time: while one runs, the newest one asked waits and older
        waiting ones are dropped. Nothing reaches the sink; the turn itself is asked later as any other."""
        if self._closed:
            return
        if self._preparer is not None and not self._preparer.done():
            self._next_prepared = turn
            return
        self._preparer = self._tasks.spawn(self._prepare(turn))

    async def _prepare(self, turn: UserTurn | None) -> None:
        while turn is not None:
            await self._engine.prepare(turn)
            turn, self._next_prepared = self._next_prepared, None

    def speculate(self, turn: UserTurn) -> None:
        """Starts ``turn`` before it is certain (see the module docstring); a speculative turn still undecided is
        discarded first. :meth:`commit` or :meth:`discard` decides it."""
        self.discard()
        self.stats.speculated += 1
        self._ask(turn, tentative=True)

    def commit(self) -> bool:
        """The speculative turn is the user's turn: it gets its id, sends ``turn_started`` and everything it has made
        so far, and goes on as any turn. False when there is no speculative turn to commit (it was discarded,
        replaced, or never asked for): the caller then asks for the turn the usual way."""
        waiting = self._waiting
        if waiting is not None and waiting.tentative:
            # It is still waiting for the previous turn to wind down, so it has not run: it starts as a plain turn.
            waiting.tentative = False
            waiting.asked_at = self._clock()
            self.stats.committed += 1
            return True
        turn = self._turn
        if turn is None or not turn.undecided:
            return False
        assert turn.decision is not None
        self._next_turn_id += 1
        turn.turn_id = self._next_turn_id
        turn.asked_at = self._clock()  # TTFA counts from the end of the user's turn, as for any turn
        self.stats.committed += 1
        turn.decision.set_result(True)  # the turn's task tells the engine (its stream has started by then)
        return True

    def discard(self) -> bool:
        """Throws the speculative turn away without a word on the wire; the engine forgets it. False when there was
        none."""
        waiting = self._waiting
        if waiting is not None and waiting.tentative:
            self._waiting = None
            if not waiting.result.done():
                waiting.result.set_result(-1)
            self.stats.discarded += 1
            return True
        return self._discard_running()

    def _discard_running(self) -> bool:
        """Discards the turn in progress if it is speculative and undecided (not one waiting to start)."""
        turn = self._turn
        if turn is None or not turn.undecided:
            return False
        assert turn.decision is not None
        turn.interrupted = True
        turn.decision.set_result(False)  # the turn's task tells the engine and closes the stream, silently
        self.stats.discarded += 1
        return True

    def _ask(self, turn: UserTurn, *, tentative: bool) -> asyncio.Future[int]:
        result: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if self._closed:
            result.set_result(-1)
            return result
        replaced, self._waiting = self._waiting, _Start(turn, self._clock(), result, tentative)
        if replaced is not None:
            self.stats.replaced += 1
            if not replaced.result.done():
                replaced.result.set_result(-1)
        if self._starter is None or self._starter.done():
            self._starter = self._tasks.spawn(self._start_waiting())
        return result

    async def start(self, turn: UserTurn) -> int:
        """Starts a turn (interrupting the one in progress) and returns its id; the turn runs in the background.
        -1 when it never ran (see :meth:`request`)."""
        return await self.request(turn)

    async def _start_waiting(self) -> None:
        while self._waiting is not None and not self._closed:
            previous = self._turn
            if previous is not None and previous.task is not None and not previous.task.done():
                # (its task, not its flag: a turn that has ended may still be closing its engine stream)
                self.interrupt()
                await self._wind_down(previous)  # a newer start may replace the waiting one meanwhile
            start, self._waiting = self._waiting, None
            if start is None or self._closed:
                return  # close() answered the waiting start
            turn_id = -1
            try:
                turn_id = self._begin(start)
            finally:
                if not start.result.done():
                    start.result.set_result(turn_id)

    async def _wind_down(self, turn: _Turn) -> None:
        """Waits up to ``grace_s`` for an interrupted turn's task to end, then cancels it."""
        assert turn.task is not None
        done, _ = await asyncio.wait({turn.task}, timeout=self.grace_s)
        if not done:
            logger.warning(
                "%s: turn %d ignored its interrupt for %.1f s; cancelled", self.label, turn.turn_id, self.grace_s
            )
            turn.task.cancel()
            await asyncio.wait({turn.task})

    def _begin(self, start: _Start) -> int:
        if start.tentative:
            decision = asyncio.get_running_loop().create_future()
            turn = _Turn(turn_id=0, asked_at=start.asked_at, decision=decision, question=start.turn)
        else:
            self._next_turn_id += 1
            turn = _Turn(turn_id=self._next_turn_id, asked_at=start.asked_at, question=start.turn)
        self._turn = turn
        self.stats.started += 1
        self._changed()
        turn.task = self._tasks.spawn(self._run(turn, start.turn))
        return turn.turn_id

    def _continued_turn_id(self, turn: _Turn) -> int | None:
        """The id of the turn whose question ``turn`` continues (``UserTurn.continues``), when the caller heard it."""
        earlier = self._last_delivered
        asked = turn.question.continues if turn.question is not None else None
        if asked is None or earlier is None or earlier.question is not asked:
            return None
        return earlier.turn_id

    # ----- stopping them -----

    def interrupt(self) -> bool:
        """Stops the turn in progress: the engine is told, the queued audio is dropped at once, and the turn ends
        with ``interrupted`` and ``turn_end`` (interrupted) when its engine stream ends. False when no turn was in
        progress (or it was already interrupted). A speculative turn in progress is discarded instead: nothing of it
        was heard. (A speculative start still waiting is left alone: it is what comes next.)"""
        if self._discard_running():
            return False
        turn = self._turn
        if turn is None or turn.done or turn.interrupted:
            return False
        turn.interrupted = True  # from now on no output of this turn reaches the sink
        try:
            self._engine.interrupt()
        except Exception:
            logger.exception("%s: the engine's interrupt failed", self.label)
        self._sink.flush_audio()
        return True

    async def wait(self, timeout: float | None = None) -> None:
        """Waits for the turn in progress (if any) to end."""
        turn = self._turn
        if turn is not None and turn.task is not None:
            await asyncio.wait({turn.task}, timeout=timeout)

    async def close(self) -> None:
        """Ends the conversation: a waiting start and every later one report -1, the turn in progress is interrupted
        and cancelled (it still sends ``interrupted`` and ``turn_end``), then the engine session is closed.
        Idempotent; a second call waits for the first to finish."""
        self._closed = True
        if self._shutdown is None:
            self._shutdown = asyncio.ensure_future(self._shut_down())
        await asyncio.shield(self._shutdown)

    async def _shut_down(self) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None and not waiting.result.done():
            waiting.result.set_result(-1)
        self.interrupt()
        await self._tasks.cancel_all(self.grace_s)
        try:
            await self._engine.close()
        except Exception:
            logger.exception("%s: closing the engine session failed", self.label)

    # ----- one turn -----

    async def _run(self, turn: _Turn, user_turn: UserTurn) -> None:
        if turn.decision is None:
            await self._deliver(turn, lambda: self._engine.respond(user_turn), first=None)
            return
        # Speculative: the engine starts now (pulling its first output starts it) and runs ahead into its own bounded
        # output queue while the decision is awaited; nothing reaches the sink before the commit.
        first: asyncio.Future[EngineOutput] | None = None
        try:
            outputs = self._engine.respond(user_turn, tentative=True)  # type: ignore[call-arg]
            first = asyncio.ensure_future(anext(outputs))
            await asyncio.sleep(0)  # the stream's body starts: from now on commit/discard concern this turn
        except Exception as exc:  # reported as any turn's failure, if the turn is committed
            outputs = _failing(exc)
        try:
            committed = await turn.decision
        except asyncio.CancelledError:
            committed = False
        try:
            self._engine.commit() if committed else self._engine.discard()
        except Exception:
            logger.exception("%s: telling the engine of the speculative turn's fate failed", self.label)
        if self._metrics is not None:
            self._metrics.speculation_decided(committed)
        if committed:
            await self._deliver(turn, lambda: outputs, first=first)
            return
        if first is not None:
            first.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, Exception):
                await first
        try:
            await outputs.aclose()
        except Exception:
            logger.exception("%s: closing a discarded turn's engine stream failed", self.label)
        turn.done = True
        self._changed()

    async def _deliver(
        self,
        turn: _Turn,
        respond: Callable[[], AsyncGenerator[EngineOutput, None]],
        first: asyncio.Future[EngineOutput] | None,
    ) -> None:
        """Sends one turn's outputs to the sink (``first``: the output already pulled from a committed speculative
        turn, then the rest of ``respond()``), then ``interrupted`` if it was, and ``turn_end``."""
        tid = turn.turn_id
        sink = self._sink
        reason = FinishReason.ERROR
        sink.send(protocol.TurnStarted(turn_id=tid, continues=self._continued_turn_id(turn)))
        self._last_delivered = turn
        replying = False
        outputs: AsyncGenerator[EngineOutput, None] | None = None
        try:
            outputs = respond()
            async for output in _prepend(first, outputs):
                match output:
                    case TurnFinished():
                        reason = output.reason
                    case _ if turn.interrupted:
                        continue  # what the engine had in flight when it was interrupted
                    case AudioFrame():
                        if not replying:
                            replying = True
                            sink.begin_reply(self._on_first_played(turn))
                        await sink.play(output)
                    case _:
                        sink.send(to_wire(output, tid))
            sink.end_reply()
            if not turn.interrupted:
                await sink.wait_played()  # turn_end means "playback is done"
        except asyncio.CancelledError:
            turn.interrupted = True
            raise
        except Exception:
            # The exception's text may name hosts, paths or pids: it stays in the log, the caller gets its id.
            error_id = new_error_id()
            logger.exception("%s: turn %d failed (error id %s)", self.label, tid, error_id)
            sink.send(
                protocol.ErrorEvent(
                    message=f"the reply failed because of a server error (error id {error_id})",
                    turn_id=tid,
                    code=ErrorCode.INTERNAL.value,
                )
            )
            reason = FinishReason.ERROR
        finally:
            turn.done = True
            sink.end_reply()
            if first is not None and not first.done():
                first.cancel()
            if outputs is not None:
                try:
                    await outputs.aclose()
                except Exception:
                    logger.exception("%s: closing the engine stream failed", self.label)
            if turn.interrupted:
                reason = FinishReason.INTERRUPTED
                sink.send(protocol.Interrupted(turn_id=tid))
            sink.send(protocol.TurnEnd(turn_id=tid, reason=FinishReason(reason).value))
            if self._metrics is not None:
                self._metrics.turn_finished(FinishReason(reason).value)
            self._changed()

    def _on_first_played(self, turn: _Turn) -> Callable[[], None] | None:
        metrics = self._metrics
        if metrics is None:
            return None
        return lambda: metrics.observe_ttfa(self._clock() - turn.asked_at)

    def _changed(self) -> None:
        if self._on_turn_change is not None:
            self._on_turn_change()


async def _failing(exc: Exception) -> AsyncGenerator[EngineOutput, None]:
    """A stream that fails with ``exc`` (a speculative turn whose engine call raised at once)."""
    raise exc
    yield  # (makes this an async generator)


async def _prepend(
    first: asyncio.Future[EngineOutput] | None, rest: AsyncGenerator[EngineOutput, None]
) -> AsyncGenerator[EngineOutput, None]:
    """``first``'s result (when given and the stream had one), then the rest of the stream."""
    if first is not None:
        try:
            yield await first
        except StopAsyncIteration:
            return
    async for output in rest:
        yield output
