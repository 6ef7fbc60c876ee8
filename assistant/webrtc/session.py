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
  turns, underruns and the number of sessions;
- a caller costs what :class:`~assistant.webrtc.limits.SessionLimits` allows: data-channel messages and turn starts
  are rate limited (excess is dropped with one ``rate_limited`` error per run of drops), a turn start that waits
  behind a running one is replaced by a newer one, a message still being reassembled may not grow past twice the
  advertised size, and the manager's watchdog closes sessions that never connect, go silent or stay idle.
  Nothing a caller sends ends its session by accident: every failure becomes an ``error`` event with a code.

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
import weakref
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
from assistant.protocol import ErrorCode, FinishReason, OfferAnswer, OfferRequest, ProtocolError
from assistant.webrtc.limits import SessionLimits, TokenBucket, new_error_id
from assistant.webrtc.sctp_guard import (
    AiortcInternalsChanged,
    advertise_max_message_size,
    contain_message_errors,
    guard_sctp_reassembly,
)

logger = logging.getLogger(__name__)

# A fresh turn waits this long for the previous one to honour its interrupt before cancelling it.
_INTERRUPT_GRACE_S = 2.0
# A session that ends with an error event waits at most this long for it to leave before closing the connection.
_FINAL_MESSAGE_GRACE_S = 1.0
# Messages the session wants to send before the data channel opens wait in a list; a peer that never opens the
# channel must not make it grow without end (speech events keep coming from the audio track).
_MAX_PENDING_MESSAGES = 100
# Conversion failures of inbound audio are logged with a traceback once, then once every this many.
_CONVERSION_FAILURE_LOG_EVERY = 100


class SessionLimitError(RuntimeError):
    """The manager already holds its maximum number of sessions."""


class ClientLimitError(SessionLimitError):
    """The client already holds its maximum number of sessions (``max_sessions_per_client``)."""


class VoiceUnavailableError(ProtocolError):
    """The offer asked for a voice the engine does not have (the text says which ones it has)."""


# ---------------------------------------------------------------------------------------------------------
# outbound audio


class ReplyAudioTrack(MediaStreamTrack):
    """The assistant's voice: 20 ms s16 mono frames at 16 kHz, paced by their pts.

    Idle (no reply open and nothing queued), the track sends one silent frame every ``idle_frame_interval_s``
    instead of fifty a second, as Opus DTX would: an idle session then costs the server (and its caller) almost no
    encoding, encryption and packets, which is what lets one machine hold many open calls. A frame put while idle
    leaves at once, stamped with the time it leaves (the RTP clock jumps over the gap, as after DTX silence).
    ``idle_frame_interval_s=None`` sends silence continuously.

    Producers ``await put(pcm)`` into a bounded queue (backpressure). ``clear()`` drops everything queued
    (interrupt). ``wait_played()`` resolves once every frame put so far has left the track or was cleared.

    Metrics hooks: ``call_when_next_sent(callback)`` calls ``callback(time.monotonic())`` when the next frame put
    after it leaves the track (not when it is cleared first). Between ``begin_reply()`` and ``end_reply()`` (or
    ``clear()``), once the reply's first frame has left, every silent frame sent because the queue was empty is an
    underrun: counted in ``underruns`` (runs) and ``underrun_frames``, and reported to
    ``on_underrun(started, seconds)``.
    """

    kind = "audio"

    def __init__(
        self,
        max_queued_frames: int = 25,
        sample_rate: int = SAMPLE_RATE,
        frame_samples: int = OUTPUT_FRAME_SAMPLES,
        idle_frame_interval_s: float | None = 0.4,
    ):
        super().__init__()
        if max_queued_frames < 1:
            raise ValueError("max_queued_frames must be >= 1")
        if idle_frame_interval_s is not None and idle_frame_interval_s <= 0:
            raise ValueError("idle_frame_interval_s must be > 0 or None")
        self.idle_frame_interval_s = idle_frame_interval_s
        self._frame_queued = asyncio.Event()  # wakes an idle recv() when a frame is put
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
        self._frame_queued.set()

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
        except TimeoutError:
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
        if self._queue.empty() and not self._reply_open and self.idle_frame_interval_s is not None:
            await self._wait_while_idle()
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

    async def _wait_while_idle(self) -> None:
        """Waits for a frame or the idle interval, then moves the clock to now (the frames not sent are skipped)."""
        self._frame_queued.clear()
        if self._queue.empty():
            try:
                await asyncio.wait_for(self._frame_queued.wait(), self.idle_frame_interval_s)
            except TimeoutError:
                pass
        skipped = int((time.monotonic() - self._start) * self.sample_rate) - self._pts
        if skipped > 0:
            self._pts += skipped - skipped % self.frame_samples

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
    """WebRTC frames (any rate/layout/sample format) -> 16 kHz mono s16 frames of ``frame_samples`` for the VAD.

    The caller's codec may change mid-call (renegotiation, a browser switching devices): when a frame's rate, layout
    or sample format differs from the previous frame's, the resampler is rebuilt for it (libswresample refuses
    frames unlike its first one)."""

    def __init__(self, sample_rate: int = SAMPLE_RATE, frame_samples: int = OUTPUT_FRAME_SAMPLES):
        self.sample_rate = sample_rate
        self._splitter = FrameSplitter(frame_samples, dtype=np.int16)
        self._resampler: av.AudioResampler | None = None
        self._input_format: tuple[int, str, str] | None = None  # (rate, layout, sample format) of the last frame
        self.format_changes = 0  # times the input format changed after the first frame

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
        elif data.dtype == np.uint8:  # u8 PCM is offset binary: 128 is silence
            data = (data.astype(np.float32) - 128.0) / 128.0
        return np.asarray(data, dtype=np.float32).mean(axis=0)  # [T]

    def push(self, frame: av.AudioFrame) -> list[np.ndarray]:
        """Returns whole int16 frames at ``sample_rate``. Raises on a frame that cannot be converted (the caller
        decides what a bad frame costs); the next good frame converts normally."""
        input_format = (frame.sample_rate, frame.layout.name, frame.format.name)
        if input_format != self._input_format:
            if self._input_format is not None:
                self.format_changes += 1
            # libswresample keeps filter state across calls, so 20 ms pieces resample without edge clicks; a new
            # input format needs a new resampler (the old one's state belongs to the old rate).
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=self.sample_rate)
            self._input_format = input_format
        mono = float_to_pcm16(self.to_mono_float(frame))
        src = av.AudioFrame.from_ndarray(mono.reshape(1, -1), format="s16", layout="mono")
        src.sample_rate = frame.sample_rate
        out: list[np.ndarray] = []
        try:
            resampled_frames = self._resampler.resample(src)
        except Exception:
            self._input_format = None  # start over with a fresh resampler on the next frame
            raise
        for resampled in resampled_frames:
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
class _TurnRequest:
    """A turn asked for but not started yet; ``result`` gets its turn id, or -1 when it never runs."""

    audio: np.ndarray | None
    text: str | None
    image: bytes | None
    asked_at: float  # time.monotonic(): time to first audio counts from here
    result: asyncio.Future


@dataclass
class RtcSessionStats:
    inbound_frames: int = 0
    turns: int = 0
    images_received: int = 0
    messages_sent: int = 0
    client_errors: int = 0
    messages_dropped: int = 0  # client messages refused by a rate limit
    rate_limit_errors: int = 0  # rate_limited errors sent (one per run of dropped messages)
    turn_starts_replaced: int = 0  # turn starts that waited behind a turn and were replaced by a newer one
    audio_conversion_failures: int = 0  # inbound frames that could not be converted for the VAD
    send_failures: int = 0  # outgoing messages that could not be encoded or sent
    close_reason: str | None = None
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
        limits: SessionLimits | None = None,
        now: Callable[[], float] = time.monotonic,
        client_id: str | None = None,
    ):
        """
        turn_factory: builds the engine's turn from keyword arguments ``audio``, ``text`` and ``image``
            (default: ``assistant.pipeline.engine.UserTurn``).
        voice / voices: the voice the engine session speaks with and the voices the server offers; only told to
            the caller in ``ready`` (the engine session already speaks with ``voice``).
        metrics: None, or an :class:`assistant.metrics.ServingMetrics` (``observe_ttfa``, ``turn_finished``,
            ``underrun``).
        limits: rates, sizes and timeouts (default: :class:`SessionLimits` ()); the timeouts are enforced by whoever
            calls :meth:`check_deadlines` (the manager's watchdog).
        now: the clock of the rate limits and timeouts (seconds, monotonic); injectable for tests.
        client_id: who the caller is, for the manager's per-client limit.
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
        self.limits = limits or SessionLimits()
        self.client_id = client_id
        self._now = now
        self._message_bucket = TokenBucket(self.limits.messages_per_s, self.limits.message_burst, now)
        self._turn_bucket = TokenBucket(self.limits.turns_per_s, self.limits.turn_burst, now)
        self._rate_limit_reported = False  # one rate_limited error per run of dropped messages
        self.created_at = now()
        self.connected_at: float | None = None
        self.last_inbound_at = self.created_at  # the last audio frame or data-channel message
        self.last_activity_at = self.created_at  # the last speech start, turn or client message
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
        self._waiting_start: _TurnRequest | None = None  # at most one start waits behind the running turn
        self._turn_starter: asyncio.Task | None = None
        self._next_turn_id = 0
        self._closed = False  # set once the session is ending: input is ignored from then on
        self._close_task: asyncio.Task | None = None  # a close decided inside a callback (bye, timeout, ...)
        self._shutdown: asyncio.Task | None = None  # the one run of _shut_down(), shared by every close()

    # ----- lifecycle -----

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def peer_connection(self) -> RTCPeerConnection | None:
        return self._pc

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
            raise ProtocolError(f"cannot parse the offer's SDP: {protocol.printable_excerpt(str(exc), 120)}") from None
        audio = [m for m in parsed.media if m.kind == "audio"]
        if len(audio) != 1:
            raise ProtocolError(f"offer must have exactly one audio section, got {len(audio)}")
        if audio[0].direction not in (None, "sendrecv"):
            raise ProtocolError(f"offer's audio must be sendrecv (to hear the assistant), got {audio[0].direction}")
        others = sorted({m.kind for m in parsed.media if m.kind not in ("audio", "application")})
        if others:
            raise ProtocolError(f"offer may only carry audio and one data channel section, not {', '.join(others)}")
        applications = [m for m in parsed.media if m.kind == "application"]
        if len(applications) != 1:
            raise ProtocolError(f"offer must have exactly one data channel section, got {len(applications)}")

        pc = RTCPeerConnection(self._rtc_configuration)
        self._pc = pc
        pc.on("track", self._on_track)
        pc.on("datachannel", self._on_datachannel)
        pc.on("connectionstatechange", self._on_connection_state)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
            self._guard_reassembly(pc)
            pc.addTrack(self.track)
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            await self.close()
            raise ProtocolError(f"cannot use the offer: {protocol.printable_excerpt(str(exc), 120)}") from None
        answer = advertise_max_message_size(pc.localDescription.sdp, protocol.MAX_MESSAGE_BYTES)
        return OfferAnswer(sdp=answer, session_id=self.session_id)

    def _guard_reassembly(self, pc: RTCPeerConnection) -> None:
        if pc.sctp is None:
            return
        try:
            guard_sctp_reassembly(
                pc.sctp,
                max_stream_bytes=self.limits.max_reassembly_bytes,
                max_stream_chunks=self.limits.max_reassembly_chunks,
                max_total_bytes=self.limits.max_reassembly_total_bytes,
                on_exceeded=self._on_reassembly_exceeded,
            )
        except AiortcInternalsChanged:
            # Refusing every caller over a missing guard would be worse than running without it for a while;
            # tests/webrtc/test_rtc_hostile.py fails on the same condition, so an upgrade does not ship this way.
            logger.exception("session %s: data-channel messages are not bounded during reassembly", self.session_id)
        try:
            contain_message_errors(pc.sctp, self._on_unreadable_message)
        except AiortcInternalsChanged:
            logger.exception("session %s: an unreadable data-channel message would end the call", self.session_id)

    def _on_unreadable_message(self, why: str) -> None:
        self.stats.client_errors += 1
        self.send(protocol.ErrorEvent(message=why, code=ErrorCode.BAD_MESSAGE.value))

    def _on_reassembly_exceeded(self, why: str) -> None:
        logger.warning("session %s: the caller ignored the advertised message size (%s); closing", self.session_id, why)
        self.stats.client_errors += 1
        self._schedule_close(
            "a data-channel message went past the advertised size",
            protocol.ErrorEvent(
                message=f"a message went over the limit of {protocol.MAX_MESSAGE_BYTES} bytes; the session has ended",
                code=ErrorCode.TOO_LARGE.value,
            ),
        )

    def _on_connection_state(self) -> None:
        if self._pc is None or self._closed:
            return
        state = self._pc.connectionState
        if state == "connected" and self.connected_at is None:
            now = self._now()
            self.connected_at = now
            # the caller's silence and idleness count from when it could first be heard
            self.last_inbound_at = max(self.last_inbound_at, now)
            self.last_activity_at = max(self.last_activity_at, now)
        elif state in ("failed", "closed"):
            self._schedule_close(f"connection {state}")

    def check_deadlines(self, now: float) -> str | None:
        """Closes the session when one of its timeouts has passed at ``now``; returns why, or None.

        Called by :class:`RtcSessionManager`'s watchdog (one task for every session, not a timer each)."""
        if self._closed:
            return None
        limits = self.limits
        if self.connected_at is None:
            if limits.connect_timeout_s is not None and now - self.created_at > limits.connect_timeout_s:
                reason = f"not connected within {limits.connect_timeout_s:g} s"
                self._schedule_close(reason)  # nobody can hear an error event yet
                return reason
            return None
        if limits.media_timeout_s is not None and now - self.last_inbound_at > limits.media_timeout_s:
            reason = f"no audio or message from the caller for {limits.media_timeout_s:g} s"
            self._schedule_close(
                reason, protocol.ErrorEvent(message=f"{reason}; the session has ended", code=ErrorCode.TIMEOUT.value)
            )
            return reason
        if (
            limits.idle_timeout_s is not None
            and not self.reply_in_progress
            and now - self.last_activity_at > limits.idle_timeout_s
        ):
            reason = f"no activity for {limits.idle_timeout_s:g} s"
            self._schedule_close(
                reason, protocol.ErrorEvent(message=f"{reason}; the session has ended", code=ErrorCode.TIMEOUT.value)
            )
            return reason
        return None

    def _schedule_close(self, reason: str, final_message: Any = None) -> None:
        """Ends the session from a callback that cannot await: sends ``final_message`` (if any), gives it a moment
        to leave, then closes. Input is ignored from now on."""
        if self._closed:
            return
        logger.info("session %s: closing: %s", self.session_id, reason)
        self.stats.close_reason = reason
        if final_message is not None:
            self.send(final_message)
        self._closed = True
        self._close_task = asyncio.ensure_future(self._close_after_sending(final_message is not None))

    async def _close_after_sending(self, wait_for_channel: bool) -> None:
        if wait_for_channel:
            await self._wait_channel_drained(_FINAL_MESSAGE_GRACE_S)
        await self.close()

    async def _wait_channel_drained(self, timeout: float) -> None:
        channel = self._channel
        if channel is None or channel.readyState != "open" or channel.bufferedAmount <= 0:
            return
        drained = asyncio.Event()
        channel.on("bufferedamountlow", drained.set)  # fires when the buffered amount falls to 0 (the threshold)
        try:
            await asyncio.wait_for(drained.wait(), timeout)
        except TimeoutError:
            logger.info("session %s: the last message did not leave within %.1f s", self.session_id, timeout)
        finally:
            channel.remove_listener("bufferedamountlow", drained.set)

    async def close(self) -> None:
        """Cancels every task, closes the peer connection and frees the engine session (idempotent; a second call
        waits for the first to finish)."""
        self._closed = True
        if self._shutdown is None:
            self._shutdown = asyncio.ensure_future(self._shut_down())
        await asyncio.shield(self._shutdown)

    async def _shut_down(self) -> None:
        turn = self._turn
        if turn is not None and not turn.done:
            turn.interrupted = True
            await self._call_engine_interrupt()
        self.track.clear()
        waiting, self._waiting_start = self._waiting_start, None
        if waiting is not None and not waiting.result.done():
            waiting.result.set_result(-1)
        close_task = self._close_task
        if close_task is not None and not close_task.done() and close_task is not asyncio.current_task():
            close_task.cancel()  # it only waits for its message to leave, then for this very shutdown
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=_INTERRUPT_GRACE_S)
            for task in pending:
                logger.error("session %s: a task ignored its cancellation: %r", self.session_id, task)
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
            try:
                result = self._on_closed(self)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("session %s: the on_closed callback failed", self.session_id)

    def _spawn(self, coro) -> asyncio.Task | None:
        """Runs ``coro`` as one of the session's tasks (cancelled by close); None once the session is closing."""
        if self._closed:
            coro.close()
            return None
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
        """Sends one protocol message on the data channel (queued until the channel is open). Never raises: a
        message that cannot be encoded or sent is logged and counted in ``stats.send_failures``."""
        try:
            text = protocol.to_json(message)  # replaces lone surrogates, so the text always encodes as UTF-8
        except Exception:
            self.stats.send_failures += 1
            logger.exception("session %s: cannot encode %s", self.session_id, type(message).__name__)
            return
        channel = self._channel
        if channel is None or channel.readyState == "connecting":
            if len(self._pending_messages) >= _MAX_PENDING_MESSAGES:
                self.stats.send_failures += 1
                return
            self._pending_messages.append(text)
            return
        if channel.readyState != "open":
            return
        self._send_text(text)

    def _send_text(self, text: str) -> None:
        try:
            self._channel.send(text)
        except Exception as exc:  # closed under us, or bigger than the peer's max-message-size
            self.stats.send_failures += 1
            logger.warning("session %s: a message of %d characters was not sent: %r", self.session_id, len(text), exc)
            return
        self.stats.messages_sent += 1

    def _flush_pending(self) -> None:
        pending, self._pending_messages = self._pending_messages, []
        for text in pending:
            self._send_text(text)

    def _on_datachannel(self, channel) -> None:
        if self._closed:
            return
        if channel.label != protocol.DATA_CHANNEL_LABEL:
            logger.info("session %s: ignoring data channel %r", self.session_id, channel.label[:64])
            return
        self._channel = channel
        channel.on("message", self._on_message)

        def opened() -> None:
            self.send(
                protocol.Ready(
                    session_id=self.session_id, sample_rate=self.track.sample_rate, voice=self.voice, voices=self.voices
                )
            )
            self._flush_pending()

        if channel.readyState == "open":
            opened()
        else:
            channel.once("open", opened)

    # ----- messages in -----

    def _on_message(self, raw: str | bytes) -> None:
        """aiortc's message callback. Nothing may escape it: an exception here ends aiortc's SCTP receive loop,
        and with it the caller's connection, without a word to the caller."""
        try:
            self._handle_message(raw)
        except Exception:
            error_id = new_error_id()
            logger.exception(
                "session %s: a client message could not be handled (error id %s)", self.session_id, error_id
            )
            self.send(
                protocol.ErrorEvent(
                    message=f"the server could not handle that message (error id {error_id})",
                    code=ErrorCode.INTERNAL.value,
                )
            )

    def _handle_message(self, raw: str | bytes) -> None:
        if self._closed:
            return
        now = self._now()
        self.last_inbound_at = now
        self.last_activity_at = now
        if not self._message_bucket.take():
            self._drop_rate_limited("messages")
            return
        try:
            message = protocol.parse_client_message(raw)
        except ProtocolError as exc:
            self.stats.client_errors += 1
            self._admitted()
            self.send(protocol.ErrorEvent(message=str(exc), code=self._code_of(exc)))
            return
        if isinstance(message, protocol.TextMessage):
            if not self._turn_bucket.take():
                self._drop_rate_limited("questions")
                return
            self._admitted()
            self._request_turn(text=message.text, image=self._take_pending_image())
            return
        if isinstance(message, protocol.ImageMessage):
            if message.text is not None and not self._turn_bucket.take():
                self._drop_rate_limited("questions")
                return
            self._admitted()
            self.stats.images_received += 1
            image = message.image_bytes()  # validated by the parser
            if message.text is not None:
                self.pending_image = None  # this picture supersedes one still waiting
                self._request_turn(text=message.text, image=image)
            else:
                self.pending_image = image
            return
        self._admitted()
        if isinstance(message, protocol.InterruptMessage):
            self.pending_image = None
            self._spawn(self.interrupt())
        elif isinstance(message, protocol.ByeMessage):
            self._schedule_close("the caller said bye")
        # Hello needs no answer: ``ready`` was sent when the channel opened.

    @staticmethod
    def _code_of(exc: ProtocolError) -> str:
        """The error code for a refused message: the parser's own when it names one, else ``bad_message``."""
        code = getattr(exc, "code", None)
        code = getattr(code, "value", code)
        return code if code in {c.value for c in ErrorCode} else ErrorCode.BAD_MESSAGE.value

    def _drop_rate_limited(self, what: str) -> None:
        self.stats.messages_dropped += 1
        if self._rate_limit_reported:
            return  # one error per run of drops: a flood must not turn into a flood of errors back
        self._rate_limit_reported = True
        self.stats.rate_limit_errors += 1
        limits = self.limits
        rate = limits.messages_per_s if what == "messages" else limits.turns_per_s
        self.send(
            protocol.ErrorEvent(
                message=f"too many {what} (at most {rate:g} a second); dropped until the rate falls",
                code=ErrorCode.RATE_LIMITED.value,
            )
        )

    def _admitted(self) -> None:
        self._rate_limit_reported = False

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
        except Exception:  # MediaStreamError at the end; anything else also ends a track we do not use
            return

    async def _consume_audio(self, track: MediaStreamTrack) -> None:
        """Feeds the caller's audio to the VAD for the whole call. A frame that cannot be converted (a codec switch
        to something odd, a broken frame) is counted and skipped: losing this loop would silently end VAD and
        barge-in for the rest of the call."""
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            except Exception:
                logger.exception("session %s: the caller's audio track failed; no more audio from it", self.session_id)
                return
            self.stats.inbound_frames += 1
            self.last_inbound_at = self._now()
            try:
                pieces = self._inbound.push(frame)
                for pcm in pieces:
                    for event in self.endpointer.push(pcm.tobytes()):
                        await self._on_vad_event(event)
            except Exception:
                self._count_conversion_failure(frame)

    def _count_conversion_failure(self, frame: Any) -> None:
        self.stats.audio_conversion_failures += 1
        failures = self.stats.audio_conversion_failures
        if failures == 1 or failures % _CONVERSION_FAILURE_LOG_EVERY == 0:
            logger.warning(
                "session %s: cannot use an inbound audio frame (%s Hz, %s, %s); %d so far",
                self.session_id,
                getattr(frame, "sample_rate", "?"),
                getattr(getattr(frame, "layout", None), "name", "?"),
                getattr(getattr(frame, "format", None), "name", "?"),
                failures,
                exc_info=True,
            )

    async def _on_vad_event(self, event) -> None:
        if isinstance(event, SpeechStart):
            self.last_activity_at = self._now()
            self.send(protocol.SpeechStarted())
            if self.reply_in_progress:
                await self.interrupt()
        elif isinstance(event, SpeechEnd):
            self.send(protocol.SpeechStopped(duration_s=round(event.duration_s, 3)))
            self._request_turn(audio=event.audio, image=self._take_pending_image())

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

    async def start_turn(
        self, *, audio: np.ndarray | None = None, text: str | None = None, image: bytes | None = None
    ) -> int:
        """Starts a turn (interrupting the previous one) and returns its id; the turn runs in the background.
        Returns -1 when the turn never ran: a newer start replaced it while it waited, or the session closed.
        ``image`` is PNG/JPEG bytes; the pending picture is the caller's to pass (see :meth:`_take_pending_image`)."""
        return await self._request_turn(audio=audio, text=text, image=image)

    def _request_turn(
        self, *, audio: np.ndarray | None = None, text: str | None = None, image: bytes | None = None
    ) -> asyncio.Future:
        """Asks for a turn without waiting. Only one start waits while the previous turn winds down: a newer
        request replaces it (its future gets -1), so a burst of questions costs one turn, the latest."""
        result = asyncio.get_running_loop().create_future()
        if self._closed:
            result.set_result(-1)
            return result
        request = _TurnRequest(audio=audio, text=text, image=image, asked_at=time.monotonic(), result=result)
        replaced, self._waiting_start = self._waiting_start, request
        if replaced is not None:
            self.stats.turn_starts_replaced += 1
            if not replaced.result.done():
                replaced.result.set_result(-1)
        if self._turn_starter is None or self._turn_starter.done():
            self._turn_starter = self._spawn(self._start_waiting_turns())
        return result

    async def _start_waiting_turns(self) -> None:
        while self._waiting_start is not None and not self._closed:
            request, self._waiting_start = self._waiting_start, None
            turn_id = -1
            try:
                turn_id = await self._start_turn_now(request)
            finally:  # -1 as well when close() cancelled this start
                if not request.result.done():
                    request.result.set_result(turn_id)

    async def _start_turn_now(self, request: _TurnRequest) -> int:
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
            if self._closed:
                return -1
            self._next_turn_id += 1
            turn = _Turn(turn_id=self._next_turn_id, started_at=request.asked_at)
            self._turn = turn
            self.stats.turns += 1
            self.last_activity_at = self._now()
            user_turn = self._make_turn(request.audio, request.text, request.image)
            turn.task = self._spawn(self._run_turn(turn, user_turn))
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
        outputs = None
        first_audio = True
        try:
            outputs = self.engine_session.respond(user_turn)
            async for out in outputs:
                if isinstance(out, AudioFrame):
                    if not turn.interrupted:
                        if first_audio:
                            first_audio = False
                            self.track.begin_reply()
                            if self.metrics is not None:
                                self.track.call_when_next_sent(
                                    lambda sent_at, start=turn.started_at: self.metrics.observe_ttfa(sent_at - start)
                                )
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
                    self.send(
                        protocol.ImageReady(
                            turn_id=tid,
                            index=out.index,
                            width=out.width,
                            height=out.height,
                            png_base64=base64.b64encode(out.png).decode("ascii"),
                        )
                    )
                elif isinstance(out, MusicOutput):
                    self.send(protocol.MusicReady(turn_id=tid, index=out.index, duration_s=float(out.duration_s)))
                elif isinstance(out, TurnError):
                    # the engine made message and code fit for the caller; its details are logged under error_id
                    self.send(protocol.ErrorEvent(message=out.message, turn_id=tid, code=out.code))
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
        except Exception:
            # The exception's text may name hosts, paths or pids: it stays in the log, the caller gets its id.
            error_id = new_error_id()
            logger.exception("session %s: turn %d failed (error id %s)", self.session_id, tid, error_id)
            self.send(
                protocol.ErrorEvent(
                    message=f"the reply failed because of a server error (error id {error_id})",
                    turn_id=tid,
                    code=ErrorCode.INTERNAL.value,
                )
            )
            reason = FinishReason.ERROR
        finally:
            turn.done = True
            self.last_activity_at = self._now()
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
    max_sessions_per_client: how many sessions one ``client_id`` (see :meth:`create`) may hold at once (default 4;
        None = no limit); more is a :class:`ClientLimitError`.
    limits: every session's rates, sizes and timeouts (default :class:`SessionLimits` (): connect within 15 s,
        silent for at most 10 s, idle for at most 600 s, 20 messages/s (burst 40), 2 turns/s (burst 4)).
    now: the clock of the limits (monotonic seconds); tests inject their own.
    watchdog_interval_s: how often the one watchdog task checks every session's timeouts.
    session_options: passed on to every :class:`RtcSession` (``turn_factory``, ``max_queued_frames``, ...).
    """

    def __init__(
        self,
        new_engine_session: Callable[..., Any],
        max_sessions: int = 8,
        endpointer_config: EndpointerConfig | None = None,
        voices: Any = None,
        metrics: Any = None,
        *,
        max_sessions_per_client: int | None = 4,
        limits: SessionLimits | None = None,
        now: Callable[[], float] = time.monotonic,
        watchdog_interval_s: float = 0.5,
        **session_options: Any,
    ):
        if max_sessions < 1:
            raise ValueError("max_sessions must be >= 1")
        if max_sessions_per_client is not None and max_sessions_per_client < 1:
            raise ValueError("max_sessions_per_client must be >= 1 or None")
        if watchdog_interval_s <= 0:
            raise ValueError("watchdog_interval_s must be > 0")
        self.metrics = metrics
        self._new_engine_session = new_engine_session
        self.max_sessions = max_sessions
        self.max_sessions_per_client = max_sessions_per_client
        self.endpointer_config = endpointer_config
        self.voices = voices
        self.limits = limits or SessionLimits()
        self._now = now
        self.watchdog_interval_s = watchdog_interval_s
        self._session_options = session_options
        self._sessions: dict[str, RtcSession] = {}
        # every peer connection made here, held weakly: one that outlives its session is a leak to report
        self._peer_connections: weakref.WeakSet[RTCPeerConnection] = weakref.WeakSet()
        self._watchdog: asyncio.Task | None = None

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, session_id: str) -> RtcSession | None:
        return self._sessions.get(session_id)

    @property
    def session_ids(self) -> list[str]:
        return list(self._sessions)

    @property
    def watchdog(self) -> asyncio.Task | None:
        """The task that enforces every session's timeouts; None before the first session."""
        return self._watchdog

    def sessions_of(self, client_id: str) -> int:
        return sum(1 for session in self._sessions.values() if session.client_id == client_id)

    def reply_queue_depths(self) -> list[int]:
        """Frames queued on each session's reply track now."""
        return [session.track.queued_frames for session in self._sessions.values()]

    def _count_sessions(self) -> None:
        if self.metrics is not None:
            self.metrics.set_active_sessions(len(self._sessions))

    def open_peer_connections(self) -> int:
        """Peer connections this manager made that are still alive and not closed: after every caller has gone this
        is 0, whatever happened to the sessions (the soak tests watch it through ``/metrics``)."""
        return sum(1 for pc in self._peer_connections if pc.connectionState != "closed")

    async def create(self, offer: OfferRequest, client_id: str | None = None) -> tuple[RtcSession, OfferAnswer]:
        """Answers ``offer`` with a new session. ``client_id`` names the caller (an address, an account) for the
        per-client limit; None = not counted. Raises ClientLimitError, SessionLimitError or ProtocolError."""
        if (
            client_id is not None
            and self.max_sessions_per_client is not None
            and self.sessions_of(client_id) >= self.max_sessions_per_client
        ):
            raise ClientLimitError(f"this client already holds {self.max_sessions_per_client} sessions")
        if len(self._sessions) >= self.max_sessions:
            raise SessionLimitError(f"server is at its limit of {self.max_sessions} sessions")
        engine_session, voice = self._engine_session_for(offer.voice)
        names = list(self.voices.names) if self.voices is not None else None
        session = RtcSession(
            engine_session,
            endpointer_config=self.endpointer_config,
            on_closed=self._forget,
            voice=voice,
            voices=names,
            metrics=self.metrics,
            limits=self.limits,
            now=self._now,
            client_id=client_id,
            **self._session_options,
        )
        self._sessions[session.session_id] = session
        try:
            answer = await session.accept(offer)
        except BaseException:
            await session.close()
            self._sessions.pop(session.session_id, None)
            self._count_sessions()
            raise
        self._peer_connections.add(session.peer_connection)
        self._start_watchdog()
        if self.metrics is not None:
            self.metrics.session_created()
        self._count_sessions()
        return session, answer

    def _start_watchdog(self) -> None:
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.ensure_future(self._watch_sessions())

    async def _watch_sessions(self) -> None:
        """One task for all sessions: a timer per session would cost a task each for the life of every call."""
        while True:
            await asyncio.sleep(self.watchdog_interval_s)
            now = self._now()
            for session in list(self._sessions.values()):
                try:
                    session.check_deadlines(now)
                except Exception:  # one broken session must not stop the timeouts of the others
                    logger.exception("session %s: checking its timeouts failed", session.session_id)

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
        """Closes every session and stops the watchdog (a later :meth:`create` starts it again)."""
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.cancel()
            await asyncio.wait({watchdog})
        sessions, self._sessions = list(self._sessions.values()), {}
        self._count_sessions()
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
