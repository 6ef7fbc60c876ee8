"""One caller's WebRTC session: audio in -> endpointing -> engine turns -> audio and events out.

An :class:`RtcSession` owns one aiortc ``RTCPeerConnection`` and one engine session:

- the caller's audio track is always read (an unread track piles up in aiortc), converted to 16 kHz mono,
  cut into 20 ms frames and fed to :class:`~assistant.endpointing.VadEndpointer`; the end of an utterance
  starts a turn and the start of one interrupts a reply in progress (barge-in);
- the caller's data channel ``events`` carries JSON messages both ways (:mod:`assistant.protocol`); a typed
  question starts a turn, and so does a picture with a question. A picture without one waits ("pending picture")
  and goes with the caller's next turn, spoken or typed; a newer picture replaces it, an ``interrupt`` message
  drops it (a barge-in does not: the speech that barges in is usually the question about the picture); ``bye``
  ends the session (so no HTTP request after the offer has to reach the replica that holds it);
- the assistant's voice leaves on :class:`ReplyAudioTrack`, paced at 20 ms frames from a bounded queue, so a
  slow network slows the engine rather than growing memory;
- an optional metrics object (:class:`assistant.metrics.ServingMetrics`) hears of time to first audio, finished
  turns, underruns and the number of sessions.

This module imports neither ray nor torch; the engine session is any object with ``respond(turn)``,
``interrupt()`` and ``close()`` (see ``assistant/pipeline/engine.py``).
"""

from __future__ import annotations

import asyncio
import base64
import fractions
import inspect
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import SessionDescription

from assistant import protocol
from assistant.audio import OUTPUT_FRAME_SAMPLES, SAMPLE_RATE, FrameSplitter, float_to_pcm16, pcm16_to_float
from assistant.endpointing import EndpointerConfig, SpeechEnd, SpeechStart, VadEndpointer
from assistant.pipeline.outputs import (
    AudioFrame,
    ImageOutput,
    MusicOutput,
    ReplyTextDelta,
    TranscriptDelta,
    TurnError,
    TurnFinished,
)
from assistant.protocol import FinishReason, OfferAnswer, OfferRequest, ProtocolError

logger = logging.getLogger(__name__)

# A fresh turn waits this long for the previous one to honour its interrupt before cancelling it.
_INTERRUPT_GRACE_S = 2.0


class SessionLimitError(RuntimeError):
    """The manager already holds its maximum number of sessions."""


class VoiceUnavailableError(ProtocolError):
    """The offer asked for a voice the engine does not have (the text says which ones it has)."""


# ---------------------------------------------------------------------------------------------------------
# outbound audio


class ReplyAudioTrack(MediaStreamTrack):
    """The assistant's voice: 20 ms s16 mono frames at 16 kHz, paced by their pts; silence when idle.

    Producers ``await put(pcm)`` into a bounded queue (backpressure). ``clear()`` drops everything queued
    (interrupt). ``wait_played()`` resolves once every frame put so far has left the track or was cleared.

    Metrics hooks: ``call_when_next_sent(callback)`` calls ``callback(time.monotonic())`` when the next frame put
    after it leaves the track (not when it is cleared first). Between ``begin_reply()`` and ``end_reply()`` (or
    ``clear()``), once the reply's first frame has left, every silent frame sent because the queue was empty is an
    underrun: counted in ``underruns`` (runs) and ``underrun_frames``, and reported to ``on_underrun(started, seconds)``.
    """

    kind = "audio"

    def __init__(self, max_queued_frames: int = 25, sample_rate: int = SAMPLE_RATE,
                 frame_samples: int = OUTPUT_FRAME_SAMPLES):
        super().__init__()
        if max_queued_frames < 1:
            raise ValueError("max_queued_frames must be >= 1")
        self.sample_rate = sample_rate
        self.frame_samples = frame_samples
        self._queue: asyncio.Queue[np.ndarray] = asyncio.Queue(maxsize=max_queued_frames)
        self._time_base = fractions.Fraction(1, sample_rate)
        self._silence = np.zeros(frame_samples, dtype=np.int16)
        self._pts = 0
        self._start: float | None = None
        self._put_count = 0  # frames accepted so far
        self._done_count = 0  # frames that left the track or were dropped by clear()
        self._waiters: list[tuple[int, asyncio.Future]] = []
        self.frames_sent = 0  # non-silent frames handed to the encoder
        self.underruns = 0  # runs of silence sent in the middle of a reply (see begin_reply)
        self.underrun_frames = 0
        self.on_underrun: Callable[[bool, float], None] | None = None
        self._sent_watch: tuple[int, Callable[[float], None]] | None = None
        self._reply_open = False  # between begin_reply() and end_reply()/clear()
        self._reply_playing = False  # a frame of the open reply has left the track
        self._in_underrun = False

    @property
    def queued_frames(self) -> int:
        return self._queue.qsize()

    async def put(self, pcm: np.ndarray) -> None:
        pcm = np.asarray(pcm)
        if pcm.dtype != np.int16 or pcm.shape != (self.frame_samples,):
            raise ValueError(f"reply frames must be int16[{self.frame_samples}], got {pcm.dtype}{list(pcm.shape)}")
        if self.readyState != "live":
            return
        await self._queue.put(pcm)
        self._put_count += 1

    def clear(self) -> int:
        """Drops every queued frame; returns how many were dropped."""
        dropped = 0
        while not self._queue.empty():
            self._queue.get_nowait()
            dropped += 1
        self._done_count = self._put_count
        self._sent_watch = None  # the frame it waited for will never leave
        self._reply_open = False
        self._wake_waiters()
        return dropped

    def call_when_next_sent(self, callback: Callable[[float], None]) -> None:
        """Calls ``callback(time.monotonic())`` once the next frame put from now on leaves the track."""
        self._sent_watch = (self._put_count + 1, callback)

    def begin_reply(self) -> None:
        """A reply's audio starts being put: a dry queue after its first frame left counts as an underrun."""
        self._reply_open = True
        self._reply_playing = False
        self._in_underrun = False

    def end_reply(self) -> None:
        """The reply has put its last frame: the queue running dry from now on is the reply's end, not an underrun."""
        self._reply_open = False

    async def wait_played(self, timeout: float | None = None) -> bool:
        """Waits until the frames put so far have been sent (or cleared). False on timeout."""
        target = self._put_count
        if self._done_count >= target or self.readyState != "live":
            return True
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((target, future))
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            self._waiters = [(t, f) for t, f in self._waiters if f is not future]

    def _wake_waiters(self, everyone: bool = False) -> None:
        for target, future in self._waiters:
            if (everyone or self._done_count >= target) and not future.done():
                future.set_result(None)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop_now = time.monotonic()
        if self._start is None:
            self._start = loop_now
        else:
            wait = self._start + self._pts / self.sample_rate - loop_now
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -0.2:  # we fell far behind (a stall): restart the clock rather than burst
                self._start = loop_now - self._pts / self.sample_rate
        try:
            pcm = self._queue.get_nowait()
            self._done_count += 1
            self.frames_sent += 1
            self._wake_waiters()
            self._frame_left()
        except asyncio.QueueEmpty:
            pcm = self._silence
            if self._reply_open and self._reply_playing:
                self._count_underrun()
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self._pts
        frame.time_base = self._time_base
        self._pts += self.frame_samples
        return frame

    def _frame_left(self) -> None:
        if self._reply_open:
            self._reply_playing = True
            self._in_underrun = False
        watch = self._sent_watch
        if watch is not None and self._done_count >= watch[0]:
            self._sent_watch = None
            try:
                watch[1](time.monotonic())
            except Exception:
                logger.exception("reply track: a frame-sent callback failed")

    def _count_underrun(self) -> None:
        started = not self._in_underrun
        self._in_underrun = True
        self.underruns += started
        self.underrun_frames += 1
        if self.on_underrun is not None:
            try:
                self.on_underrun(started, self.frame_samples / self.sample_rate)
            except Exception:
                logger.exception("reply track: the underrun callback failed")

    def stop(self) -> None:
        super().stop()
        self._wake_waiters(everyone=True)


# ---------------------------------------------------------------------------------------------------------
# inbound audio


class InboundAudio:
    """WebRTC frames (any rate/layout) -> 16 kHz mono s16 frames of ``frame_samples`` for the VAD."""

    def __init__(self, sample_rate: int = SAMPLE_RATE, frame_samples: int = OUTPUT_FRAME_SAMPLES):
        self.sample_rate = sample_rate
        # libswresample keeps filter state across calls, so 20 ms pieces resample without edge clicks.
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
        self._splitter = FrameSplitter(frame_samples, dtype=np.int16)

    @staticmethod
    def to_mono_float(frame: av.AudioFrame) -> np.ndarray:
        data = frame.to_ndarray()
        channels = len(frame.layout.channels)
        if frame.format.is_planar:
            data = data.reshape(channels, -1)
        else:
            data = data.reshape(-1, channels).T
        if data.dtype == np.int16:
            data = pcm16_to_float(data)
        elif data.dtype == np.int32:
            data = data.astype(np.float32) / 2**31
        return np.asarray(data, dtype=np.float32).mean(axis=0)  # [T]

    def push(self, frame: av.AudioFrame) -> list[np.ndarray]:
        """Returns whole int16 frames at ``sample_rate``."""
        mono = float_to_pcm16(self.to_mono_float(frame))
        src = av.AudioFrame.from_ndarray(mono.reshape(1, -1), format="s16", layout="mono")
        src.sample_rate = frame.sample_rate
        out: list[np.ndarray] = []
        for resampled in self._resampler.resample(src):
            out.extend(self._splitter.push(resampled.to_ndarray().reshape(-1)))
        return out


# ---------------------------------------------------------------------------------------------------------
# the session


@dataclass
class _Turn:
    turn_id: int
    started_at: float = 0.0  # time.monotonic() when the turn was asked for (the end of the user's turn)
    task: asyncio.Task | None = None
    interrupted: bool = False
    done: bool = False


@dataclass
class RtcSessionStats:
    inbound_frames: int = 0
    turns: int = 0
    images_received: int = 0
    messages_sent: int = 0
    client_errors: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class RtcSession:
    """Wraps one ``RTCPeerConnection`` and one engine session (see the module docstring)."""

    def __init__(
        self,
        engine_session: Any,
        session_id: str | None = None,
        endpointer_config: EndpointerConfig | None = None,
        *,
        max_queued_frames: int = 25,
        on_closed: Callable[[RtcSession], Awaitable[None] | None] | None = None,
        rtc_configuration: Any = None,
        turn_factory: Callable[..., Any] | None = None,
        voice: str | None = None,
        voices: list[str] | None = None,
        metrics: Any = None,
    ):
        """
        turn_factory: builds the engine's turn from keyword arguments ``audio``, ``text`` and ``image``
            (default: ``assistant.pipeline.engine.UserTurn``).
        voice / voices: the voice the engine session speaks with and the voices the server offers; only told to
            the caller in ``ready`` (the engine session already speaks with ``voice``).
        metrics: None, or an :class:`assistant.metrics.ServingMetrics` (``observe_ttfa``, ``turn_finished``,
            ``underrun``).
        """
        self.engine_session = engine_session
        self.session_id = session_id or uuid.uuid4().hex
        self.endpointer = VadEndpointer(endpointer_config or EndpointerConfig(sample_rate=SAMPLE_RATE))
        if self.endpointer.config.sample_rate != SAMPLE_RATE:
            raise ValueError(f"the endpointer must run at {SAMPLE_RATE} Hz (the engine's input rate)")
        self.track = ReplyAudioTrack(max_queued_frames=max_queued_frames)
        self.metrics = metrics
        if metrics is not None:
            self.track.on_underrun = metrics.underrun
        self.stats = RtcSessionStats()
        self._inbound = InboundAudio(frame_samples=self.endpointer.config.frame_samples)
        self._on_closed = on_closed
        self._rtc_configuration = rtc_configuration
        self._turn_factory = turn_factory
        self.voice = voice
        self.voices = list(voices) if voices is not None else None
        self.pending_image: bytes | None = None  # a picture waiting for the caller's next turn
        self._pc: RTCPeerConnection | None = None
        self._channel = None
        self._pending_messages: list[str] = []
        self._tasks: set[asyncio.Task] = set()
        self._turn: _Turn | None = None
        self._turn_lock = asyncio.Lock()
        self._next_turn_id = 0
        self._closed = False
        self._close_task: asyncio.Task | None = None

    # ----- lifecycle -----

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def connection_state(self) -> str:
        return self._pc.connectionState if self._pc is not None else "new"

    @property
    def reply_in_progress(self) -> bool:
        return self._turn is not None and not self._turn.done

    async def accept(self, offer: OfferRequest) -> OfferAnswer:
        """Answers the caller's offer with one sendrecv audio transceiver carrying :attr:`track`."""
        if self._pc is not None:
            raise RuntimeError("accept() was already called on this session")
        try:
            parsed = SessionDescription.parse(offer.sdp)
        except Exception as exc:
            raise ProtocolError(f"cannot parse the offer's SDP: {exc}") from None
        audio = [m for m in parsed.media if m.kind == "audio"]
        if len(audio) != 1:
            raise ProtocolError(f"offer must have exactly one audio section, got {len(audio)}")
        if audio[0].direction not in (None, "sendrecv"):
            raise ProtocolError(f"offer's audio must be sendrecv (to hear the assistant), got {audio[0].direction}")

        pc = RTCPeerConnection(self._rtc_configuration)
        self._pc = pc
        pc.on("track", self._on_track)
        pc.on("datachannel", self._on_datachannel)
        pc.on("connectionstatechange", self._on_connection_state)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
            pc.addTrack(self.track)
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            await self.close()
            raise ProtocolError(f"cannot use the offer: {exc}") from None
        return OfferAnswer(sdp=pc.localDescription.sdp, session_id=self.session_id)

    def _on_connection_state(self) -> None:
        if self._pc is not None and self._pc.connectionState in ("failed", "closed") and not self._closed:
            logger.info("session %s: connection %s", self.session_id, self._pc.connectionState)
            self._close_task = asyncio.ensure_future(self.close())

    async def close(self) -> None:
        """Cancels every task, closes the peer connection and frees the engine session (idempotent)."""
        if self._closed:
            return
        self._closed = True
        turn = self._turn
        if turn is not None and not turn.done:
            turn.interrupted = True
            await self._call_engine_interrupt()
        self.track.clear()
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=_INTERRUPT_GRACE_S)
        self.track.stop()
        if self._pc is not None:
            try:
                await self._pc.close()
            except Exception:
                logger.exception("session %s: closing the peer connection failed", self.session_id)
        try:
            result = self.engine_session.close()
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("session %s: closing the engine session failed", self.session_id)
        if self._on_closed is not None:
            result = self._on_closed(self)
            if inspect.isawaitable(result):
                await result

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("session %s: task failed", self.session_id, exc_info=task.exception())

    # ----- events out -----

    def send(self, message: Any) -> None:
        """Sends one protocol message on the data channel (queued until the channel is open)."""
        text = protocol.to_json(message)
        channel = self._channel
        if channel is None or channel.readyState == "connecting":
            self._pending_messages.append(text)
            return
        if channel.readyState != "open":
            return
        channel.send(text)
        self.stats.messages_sent += 1

    def _flush_pending(self) -> None:
        pending, self._pending_messages = self._pending_messages, []
        for text in pending:
            self._channel.send(text)
            self.stats.messages_sent += 1

    def _on_datachannel(self, channel) -> None:
        if channel.label != protocol.DATA_CHANNEL_LABEL:
            logger.info("session %s: ignoring data channel %r", self.session_id, channel.label)
            return
        self._channel = channel
        channel.on("message", self._on_message)

        def opened() -> None:
            self.send(protocol.Ready(session_id=self.session_id, sample_rate=self.track.sample_rate,
                                     voice=self.voice, voices=self.voices))
            self._flush_pending()

        if channel.readyState == "open":
            opened()
        else:
            channel.once("open", opened)

    def _on_message(self, raw: str | bytes) -> None:
        if self._closed:
            return
        try:
            message = protocol.parse_client_message(raw)
        except ProtocolError as exc:
            self.stats.client_errors += 1
            self.send(protocol.ErrorEvent(message=str(exc)))
            return
        if isinstance(message, protocol.TextMessage):
            self._spawn(self.start_turn(text=message.text, image=self._take_pending_image()))
        elif isinstance(message, protocol.ImageMessage):
            self.stats.images_received += 1
            image = message.image_bytes()  # validated by the parser
            if message.text is not None:
                self.pending_image = None  # this picture supersedes one still waiting
                self._spawn(self.start_turn(text=message.text, image=image))
            else:
                self.pending_image = image
        elif isinstance(message, protocol.InterruptMessage):
            self.pending_image = None
            self._spawn(self.interrupt())
        elif isinstance(message, protocol.ByeMessage):
            logger.info("session %s: the caller said bye", self.session_id)
            self._close_task = asyncio.ensure_future(self.close())
        # Hello needs no answer: ``ready`` was sent when the channel opened.

    # ----- audio in -----

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._spawn(self._consume_audio(track))
        else:
            self._spawn(self._drain(track))

    async def _drain(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                await track.recv()
        except MediaStreamError:
            return

    async def _consume_audio(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.stats.inbound_frames += 1
            for pcm in self._inbound.push(frame):
                for event in self.endpointer.push(pcm.tobytes()):
                    await self._on_vad_event(event)

    async def _on_vad_event(self, event) -> None:
        if isinstance(event, SpeechStart):
            self.send(protocol.SpeechStarted())
            if self.reply_in_progress:
                await self.interrupt()
        elif isinstance(event, SpeechEnd):
            self.send(protocol.SpeechStopped(duration_s=round(event.duration_s, 3)))
            self._spawn(self.start_turn(audio=event.audio, image=self._take_pending_image()))

    # ----- turns -----

    def _take_pending_image(self) -> bytes | None:
        image, self.pending_image = self.pending_image, None
        return image

    def _make_turn(self, audio: np.ndarray | None, text: str | None, image: bytes | None) -> Any:
        if self._turn_factory is not None:
            return self._turn_factory(audio=audio, text=text, image=image)
        from assistant.pipeline.engine import UserTurn  # the engine is only needed once a turn starts

        return UserTurn(audio=audio, text=text, image=image)

    async def _call_engine_interrupt(self) -> None:
        try:
            result = self.engine_session.interrupt()
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("session %s: engine interrupt failed", self.session_id)

    async def interrupt(self) -> bool:
        """Stops the reply in progress (engine and queued audio). False when there was none."""
        turn = self._turn
        self.track.clear()
        if turn is None or turn.done or turn.interrupted:
            return False
        turn.interrupted = True
        await self._call_engine_interrupt()
        self.track.clear()
        return True

    async def start_turn(self, *, audio: np.ndarray | None = None, text: str | None = None,
                         image: bytes | None = None) -> int:
        """Starts a turn (interrupting the previous one) and returns its id; the turn runs in the background.
        ``image`` is PNG/JPEG bytes; the pending picture is the caller's to pass (see :meth:`_take_pending_image`)."""
        asked_at = time.monotonic()  # the end of the user's turn: time to first audio counts from here
        async with self._turn_lock:
            if self._closed:
                return -1
            previous = self._turn
            if previous is not None and not previous.done:
                await self.interrupt()
                if previous.task is not None:
                    done, _ = await asyncio.wait({previous.task}, timeout=_INTERRUPT_GRACE_S)
                    if not done:
                        previous.task.cancel()
                        await asyncio.wait({previous.task})
            self._next_turn_id += 1
            turn = _Turn(turn_id=self._next_turn_id, started_at=asked_at)
            self._turn = turn
            self.stats.turns += 1
            turn.task = self._spawn(self._run_turn(turn, self._make_turn(audio, text, image)))
            return turn.turn_id

    async def wait_turn(self, timeout: float | None = None) -> None:
        """Waits for the current turn (if any) to end; for tests and orderly shutdown."""
        turn = self._turn
        if turn is not None and turn.task is not None:
            await asyncio.wait({turn.task}, timeout=timeout)

    async def _run_turn(self, turn: _Turn, user_turn: Any) -> None:
        tid = turn.turn_id
        reason = FinishReason.ERROR
        self.send(protocol.TurnStarted(turn_id=tid))
        outputs = self.engine_session.respond(user_turn)
        first_audio = True
        try:
            async for out in outputs:
                if isinstance(out, AudioFrame):
                    if not turn.interrupted:
                        if first_audio:
                            first_audio = False
                            self.track.begin_reply()
                            if self.metrics is not None:
                                self.track.call_when_next_sent(
                                    lambda sent_at, start=turn.started_at: self.metrics.observe_ttfa(sent_at - start))
                        await self.track.put(out.pcm)
                        if turn.interrupted:  # interrupted while we waited for room: drop what slipped in
                            self.track.clear()
                elif turn.interrupted:
                    if isinstance(out, TurnFinished):
                        reason = out.reason
                    continue
                elif isinstance(out, TranscriptDelta):
                    self.send(protocol.Transcript(turn_id=tid, delta=out.text))
                elif isinstance(out, ReplyTextDelta):
                    self.send(protocol.TextDelta(turn_id=tid, delta=out.text))
                elif isinstance(out, ImageOutput):
                    self.send(protocol.ImageReady(turn_id=tid, index=out.index, width=out.width, height=out.height,
                                                  png_base64=base64.b64encode(out.png).decode("ascii")))
                elif isinstance(out, MusicOutput):
                    self.send(protocol.MusicReady(turn_id=tid, index=out.index, duration_s=float(out.duration_s)))
                elif isinstance(out, TurnError):
                    self.send(protocol.ErrorEvent(message=out.message, turn_id=tid))
                elif isinstance(out, TurnFinished):
                    reason = out.reason
                else:
                    logger.warning("session %s: unknown engine output %r", self.session_id, type(out).__name__)
            self.track.end_reply()
            if not turn.interrupted:
                # turn_end means "playback is done": wait for the last frame to leave the track.
                budget = (self.track.queued_frames + 5) * self.track.frame_samples / self.track.sample_rate + 1.0
                await self.track.wait_played(timeout=budget)
        except asyncio.CancelledError:
            turn.interrupted = True
            raise
        except Exception as exc:
            logger.exception("session %s: turn %d failed", self.session_id, tid)
            self.send(protocol.ErrorEvent(message=f"turn failed: {exc}", turn_id=tid))
            reason = FinishReason.ERROR
        finally:
            turn.done = True
            self.track.end_reply()
            aclose = getattr(outputs, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:
                    logger.exception("session %s: closing the engine stream failed", self.session_id)
            if turn.interrupted:
                reason = FinishReason.INTERRUPTED
                self.send(protocol.Interrupted(turn_id=tid))
            self.send(protocol.TurnEnd(turn_id=tid, reason=FinishReason(reason).value))
            if self.metrics is not None:
                self.metrics.turn_finished(FinishReason(reason).value)


# ---------------------------------------------------------------------------------------------------------
# many sessions


class RtcSessionManager:
    """Creates and tracks the sessions of one process (a gateway replica).

    new_engine_session: called as ``new_engine_session()`` for an offer without a voice and
        ``new_engine_session(voice)`` for one with a voice (``AssistantEngine.new_session``); a ``ValueError`` or
        ``KeyError`` from it means the voice is unknown.
    voices: the engine's voice bank (``.names``, ``.default``) or None; it names the voice in ``ready`` and lets
        an unknown voice be refused with the list of known ones before any engine state exists.
    metrics: None, or an :class:`assistant.metrics.ServingMetrics`; it hears of sessions created and the number held,
        and every session reports to it.
    """

    def __init__(
        self,
        new_engine_session: Callable[..., Any],
        max_sessions: int = 8,
        endpointer_config: EndpointerConfig | None = None,
        voices: Any = None,
        metrics: Any = None,
        **session_options: Any,
    ):
        if max_sessions < 1:
            raise ValueError("max_sessions must be >= 1")
        self.metrics = metrics
        self._new_engine_session = new_engine_session
        self.max_sessions = max_sessions
        self.endpointer_config = endpointer_config
        self.voices = voices
        self._session_options = session_options
        self._sessions: dict[str, RtcSession] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, session_id: str) -> RtcSession | None:
        return self._sessions.get(session_id)

    @property
    def session_ids(self) -> list[str]:
        return list(self._sessions)

    def reply_queue_depths(self) -> list[int]:
        """Frames queued on each session's reply track now."""
        return [session.track.queued_frames for session in self._sessions.values()]

    def _count_sessions(self) -> None:
        if self.metrics is not None:
            self.metrics.set_active_sessions(len(self._sessions))

    async def create(self, offer: OfferRequest) -> tuple[RtcSession, OfferAnswer]:
        """Answers ``offer`` with a new session. Raises SessionLimitError or ProtocolError."""
        if len(self._sessions) >= self.max_sessions:
            raise SessionLimitError(f"server is at its limit of {self.max_sessions} sessions")
        engine_session, voice = self._engine_session_for(offer.voice)
        names = list(self.voices.names) if self.voices is not None else None
        session = RtcSession(engine_session, endpointer_config=self.endpointer_config, on_closed=self._forget,
                             voice=voice, voices=names, metrics=self.metrics, **self._session_options)
        self._sessions[session.session_id] = session
        try:
            answer = await session.accept(offer)
        except BaseException:
            await session.close()
            self._sessions.pop(session.session_id, None)
            self._count_sessions()
            raise
        if self.metrics is not None:
            self.metrics.session_created()
        self._count_sessions()
        return session, answer

    def describe_voices(self) -> str:
        if self.voices is None:
            return "this server has no voice bank; leave 'voice' out of the offer"
        names = ", ".join(self.voices.names)
        return f"known voices: {names} (default: {self.voices.default})"

    def _engine_session_for(self, voice: str | None) -> tuple[Any, str | None]:
        """The engine session for ``voice`` (None = the default) and the name of the voice it speaks with."""
        if voice is None:
            return self._new_engine_session(), (self.voices.default if self.voices is not None else None)
        if self.voices is not None and voice not in self.voices.names:
            raise VoiceUnavailableError(f"unknown voice {voice!r}; {self.describe_voices()}")
        try:
            return self._new_engine_session(voice), voice
        except (ValueError, KeyError) as exc:  # the engine is the judge when no bank was given to us
            # (AssistantEngine raises ValueError without a bank; the bank's own UnknownVoiceError is a KeyError)
            message = str(exc) if isinstance(exc, ValueError) or exc.args else f"unknown voice {voice!r}"
            raise VoiceUnavailableError(message) from None

    def _forget(self, session: RtcSession) -> None:
        self._sessions.pop(session.session_id, None)
        self._count_sessions()

    async def close(self, session_id: str) -> bool:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        self._count_sessions()
        await session.close()
        return True

    async def close_all(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        self._count_sessions()
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
