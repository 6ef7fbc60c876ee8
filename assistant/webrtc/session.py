"""One caller's WebRTC session: the transport between a peer connection and a :class:`TurnController`.

An :class:`RtcSession` owns one aiortc ``RTCPeerConnection`` and the turn controller of one engine session
(:mod:`assistant.pipeline.turns`: starting, interrupting and ending turns, and turning engine outputs into wire
messages, is the controller's; this module only carries them):

- the caller's audio track is always read (an unread track piles up in aiortc), converted to 16 kHz mono, cut into
  20 ms frames (:class:`~assistant.webrtc.tracks.InboundAudio`) and fed to
  :class:`~assistant.endpointing.VadEndpointer`; the end of an utterance starts a turn and the start of one
  interrupts a reply in progress (barge-in: the server's VAD is the one judge of it);
- the caller's data channel ``events`` carries JSON messages both ways (:mod:`assistant.protocol`). A message larger
  than one data-channel message travels as fragments (:mod:`assistant.fragments`): outgoing ones are split within
  the size the caller's offer advertises, incoming ones reassembled (one at a time, at most
  ``protocol.MAX_UPLOAD_MESSAGE_BYTES``) before they are parsed. A typed question starts a turn, and so does a
  picture or a tune with a question. A picture or tune without one waits ("pending picture", "pending tune") and
  goes with the caller's next turn, spoken or typed; a newer one of its kind replaces it. The one rule on stopping
  a reply: an ``interrupt`` message drops what waits, a barge-in keeps it (the speech that barges in is usually the
  question about it). ``bye`` ends the session (so no HTTP request after the offer has to reach the replica that
  holds it);
- the assistant's voice leaves on :class:`~assistant.webrtc.tracks.ReplyAudioTrack`, paced at 20 ms frames from a
  bounded queue, so a slow network slows the engine rather than growing memory. The session is the controller's
  :class:`~assistant.pipeline.turns.ReplySink`: messages go on the data channel, frames on the track;
- an optional metrics object (:class:`assistant.metrics.ServingMetrics`) hears of time to first audio, finished
  turns (both through the controller) and underruns (from the track);
- a caller costs what :class:`~assistant.webrtc.limits.SessionLimits` allows: data-channel messages and turn starts
  are rate limited (excess is dropped with one ``rate_limited`` error per run of drops; a fragmented message counts
  once, when complete, and its fragments count against a budget of bytes a second), an SCTP message still being
  reassembled may not grow past twice the advertised size, and the manager's watchdog closes sessions that never
  connect, go silent or stay idle (:meth:`RtcSession.check_deadlines`). Nothing a caller sends ends its session by
  accident: every failure becomes an ``error`` event with a code.

This module imports neither ray nor torch.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import SessionDescription

from assistant import fragments, protocol
from assistant.audio import SAMPLE_RATE, join_utterances
from assistant.background import BackgroundTasks
from assistant.endpointing import (
    EndpointerConfig,
    SpeechDiscarded,
    SpeechEnd,
    SpeechPaused,
    SpeechProgress,
    SpeechResumed,
    SpeechStart,
    VadEndpointer,
    VadEvent,
)
from assistant.pipeline.outputs import AudioFrame
from assistant.pipeline.turns import EngineSession, TurnController, new_error_id
from assistant.protocol import ErrorCode, OfferAnswer, OfferRequest, ProtocolError, ServerMessage
from assistant.webrtc.jitter import shorten_audio_jitter_buffers
from assistant.webrtc.limits import SessionLimits, TokenBucket
from assistant.webrtc.sctp_guard import (
    AiortcInternalsChanged,
    advertise_max_message_size,
    contain_message_errors,
    guard_sctp_reassembly,
)
from assistant.webrtc.tracks import InboundAudio, ReplyAudioTrack

if TYPE_CHECKING:
    from assistant.metrics import ServingMetrics
    from assistant.pipeline.engine import UserTurn

logger = logging.getLogger(__name__)

# close() waits this long for the session's own tasks (the audio reader) to honour their cancellation.
_TASK_CANCEL_GRACE_S = 2.0
# A session that ends with an error event waits at most this long for it to leave before closing the connection.
_FINAL_MESSAGE_GRACE_S = 1.0
# Messages the session wants to send before the data channel opens wait in a list; a peer that never opens the
# channel must not make it grow without end (speech events keep coming from the audio track).
_MAX_PENDING_MESSAGES = 100
# Conversion failures of inbound audio are logged with a traceback once, then once every this many.
_CONVERSION_FAILURE_LOG_EVERY = 100


# ---------------------------------------------------------------------------------------------------------
# the session


@dataclass
class RtcSessionStats:
    inbound_frames: int = 0
    images_received: int = 0
    tunes_received: int = 0
    fragments_received: int = 0  # fragments of client messages larger than one data-channel message (in budget)
    fragments_sent: int = 0  # fragments of the messages sent that were larger than the caller takes in one
    messages_sent: int = 0
    client_errors: int = 0
    messages_dropped: int = 0  # client messages refused by a rate limit
    rate_limit_errors: int = 0  # rate_limited errors sent (one per run of dropped messages)
    audio_conversion_failures: int = 0  # inbound frames that could not be converted for the VAD
    send_failures: int = 0  # outgoing messages that could not be encoded or sent
    continued_questions: int = 0  # questions asked as the continuation of the one before (continue_within_ms)
    close_reason: str | None = None
    # the session ended because its caller was lost without bye (the connection failed or closed, or went silent):
    # its conversation may be resumed (the manager parks it)
    peer_lost: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Question:
    """A spoken question as it was asked, while speech that follows it soon may still continue it."""

    turn: UserTurn  # its audio, picture and tune
    ended_at: float  # when the caller's turn ended (the session's clock)


class RtcSession:
    """Wraps one ``RTCPeerConnection`` and the turns of one engine session (see the module docstring).

    It is the reply sink of its :attr:`turns` controller (:class:`~assistant.pipeline.turns.ReplySink`): ``send``,
    ``play``, ``flush_audio``, ``begin_reply``, ``end_reply`` and ``wait_played``."""

    def __init__(
        self,
        engine_session: EngineSession,
        session_id: str | None = None,
        endpointer_config: EndpointerConfig | None = None,
        *,
        max_queued_frames: int = 25,
        on_closed: Callable[[RtcSession], None] | None = None,
        rtc_configuration: RTCConfiguration | None = None,
        turn_factory: Callable[..., UserTurn] | None = None,
        voice: str | None = None,
        voices: list[str] | None = None,
        metrics: ServingMetrics | None = None,
        limits: SessionLimits | None = None,
        now: Callable[[], float] = time.monotonic,
        client_id: str | None = None,
        resume_token: str | None = None,
        resumed: bool = False,
    ):
        """
        on_closed: called with the session once it has closed (the manager forgets it).
        turn_factory: builds the engine's turn from keyword arguments ``audio`` (float32 mono 16 kHz), ``text``,
            ``image`` (PNG/JPEG bytes) and ``music`` (the caller's WAV file, bytes, checked by
            ``protocol.MusicMessage``; the media backend decodes it) (default: ``assistant.pipeline.engine.UserTurn``).
        voice / voices: the voice the engine session speaks with and the voices the server offers; only told to
            the caller in ``ready`` (the engine session already speaks with ``voice``).
        metrics: None, or an :class:`assistant.metrics.ServingMetrics`: the turn controller reports time to first
            audio and finished turns to it, the track its underruns.
        limits: rates, sizes and timeouts (default: :class:`SessionLimits` ()); the timeouts are enforced by whoever
            calls :meth:`check_deadlines` (the manager's watchdog).
        now: the clock of the rate limits and timeouts (seconds, monotonic); injectable for tests.
        client_id: who the caller is, for the manager's per-client limit.
        resume_token / resumed: told to the caller in ``ready`` (the manager's: the token resumes this conversation
            should the connection drop; resumed says this session continues a parked conversation).
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
        self.resume_token = resume_token
        self.resumed = resumed
        self._now = now
        self._message_bucket = TokenBucket(self.limits.messages_per_s, self.limits.message_burst, now)
        self._turn_bucket = TokenBucket(self.limits.turns_per_s, self.limits.turn_burst, now)
        self._upload_bucket = TokenBucket(self.limits.upload_bytes_per_s, self.limits.upload_burst_bytes, now)
        self._reassembler = fragments.Reassembler(
            protocol.MAX_UPLOAD_MESSAGE_BYTES,
            max_count=self.limits.max_upload_fragments,
            timeout_s=self.limits.upload_timeout_s,
            now=now,
        )
        # the most one message to the caller may be: what its offer advertises (set by accept)
        self._send_limit = fragments.DEFAULT_MAX_MESSAGE_SIZE
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
        self.pending_music: bytes | None = None  # a tune (WAV bytes) waiting for the caller's next turn
        self._speculated_image: bytes | None = None  # the pending picture a speculative turn was started with
        self._speculated_music: bytes | None = None  # and the pending tune
        self._speculated_turn: UserTurn | None = None  # the turn speculated at the last pause
        self._last_question: _Question | None = None  # the caller's last spoken question, while it may be continued
        self._continuing: _Question | None = None  # the question the utterance being spoken goes on from
        self._pc: RTCPeerConnection | None = None
        self._channel: RTCDataChannel | None = None
        self._pending_messages: list[str] = []
        self._tasks = BackgroundTasks(f"session {self.session_id}", logger)  # the track readers
        self.turns = TurnController(
            engine_session, self, metrics=metrics, on_turn_change=self._turn_changed, label=f"session {self.session_id}"
        )
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
        return self.turns.reply_in_progress

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
            self._send_limit = fragments.max_message_size_of(pc.remoteDescription.sdp)
            self._guard_reassembly(pc)
            pc.addTrack(self.track)
            shorten_audio_jitter_buffers(pc)  # the caller's audio only feeds the VAD: each frame as it arrives
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
            self.stats.peer_lost = True
            self._schedule_close(f"connection {state}")

    def check_deadlines(self, now: float) -> str | None:
        """Closes the session when one of its timeouts has passed at ``now``; returns why, or None.

        Called by :class:`RtcSessionManager`'s watchdog (one task for every session, not a timer each)."""
        if self._closed:
            return None
        self._expire_upload()  # a fragmented message whose sender went quiet is dropped with an error; no close
        limits = self.limits
        if self.connected_at is None:
            if limits.connect_timeout_s is not None and now - self.created_at > limits.connect_timeout_s:
                reason = f"not connected within {limits.connect_timeout_s:g} s"
                self.stats.peer_lost = True
                self._schedule_close(reason)  # nobody can hear an error event yet
                return reason
            return None
        if limits.media_timeout_s is not None and now - self.last_inbound_at > limits.media_timeout_s:
            reason = f"no audio or message from the caller for {limits.media_timeout_s:g} s"
            self.stats.peer_lost = True
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

    def _schedule_close(self, reason: str, final_message: ServerMessage | None = None) -> None:
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
        """Stops the turns and frees the engine session, cancels every task and closes the peer connection
        (idempotent; a second call waits for the first to finish)."""
        self._closed = True
        if self._shutdown is None:
            self._shutdown = asyncio.ensure_future(self._shut_down())
        await asyncio.shield(self._shutdown)

    async def _shut_down(self) -> None:
        await self.turns.close()  # the reply in progress ends (interrupted) and the engine session is closed
        close_task = self._close_task
        if close_task is not None and not close_task.done() and close_task is not asyncio.current_task():
            close_task.cancel()  # it only waits for its message to leave, then for this very shutdown
        await self._tasks.cancel_all(_TASK_CANCEL_GRACE_S)
        self.track.stop()
        if self._pc is not None:
            try:
                await self._pc.close()
            except Exception:
                logger.exception("session %s: closing the peer connection failed", self.session_id)
        if self._on_closed is not None:
            try:
                self._on_closed(self)
            except Exception:
                logger.exception("session %s: the on_closed callback failed", self.session_id)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
        """Runs ``coro`` as one of the session's tasks (cancelled by close); None once the session is closing."""
        if self._closed:
            coro.close()
            return None
        return self._tasks.spawn(coro)

    # ----- events out (the reply sink) -----

    def send(self, message: ServerMessage) -> None:
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

    async def play(self, frame: AudioFrame) -> None:
        await self.track.put(frame.pcm)

    def flush_audio(self) -> None:
        self.track.clear()

    def begin_reply(self, on_first_played: Callable[[], None] | None) -> None:
        self.track.begin_reply(on_first_played)

    def end_reply(self) -> None:
        self.track.end_reply()

    async def wait_played(self) -> None:
        # bounded by what is queued (plus the jitter of a busy loop): a stalled track must not hold turn_end forever
        track = self.track
        budget = (track.queued_frames + 5) * track.frame_samples / track.sample_rate + 1.0
        await track.wait_played(timeout=budget)

    def _send_text(self, text: str) -> None:
        """Sends one message, as fragments when it is larger than the caller takes in one (all of them at once, so
        no other message's fragments come in between)."""
        channel = self._channel
        assert channel is not None
        try:
            pieces = fragments.split_message(text, self._send_limit)
            for piece in pieces:
                channel.send(piece)
        except Exception as exc:  # closed under us
            self.stats.send_failures += 1
            logger.warning("session %s: a message of %d characters was not sent: %r", self.session_id, len(text), exc)
            return
        self.stats.messages_sent += 1
        if len(pieces) > 1:
            self.stats.fragments_sent += len(pieces)

    def _flush_pending(self) -> None:
        pending, self._pending_messages = self._pending_messages, []
        for text in pending:
            self._send_text(text)

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
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
                    session_id=self.session_id,
                    sample_rate=self.track.sample_rate,
                    voice=self.voice,
                    voices=self.voices,
                    resume_token=self.resume_token,
                    resumed=self.resumed,
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
        self._expire_upload()
        if not fragments.might_be_fragment(raw):
            self._handle_whole_message(raw, protocol.MAX_MESSAGE_BYTES)
            return
        # A fragment costs bytes of the upload budget, taken before it is parsed; the message it belongs to counts
        # once against the message rate, when it is whole. Over the budget, that message is dropped as it comes.
        if not self._upload_bucket.take(len(raw)):
            self._reassembler.discard()
            self._drop_rate_limited("bytes")
            return
        try:
            fragment = fragments.parse_fragment(raw)
        except ProtocolError as exc:
            self._refuse(exc)
            return
        if fragment is None:  # it only mentions a fragment (a question about one, say)
            self._handle_whole_message(raw, protocol.MAX_MESSAGE_BYTES)
            return
        self.stats.fragments_received += 1
        try:
            whole = self._reassembler.add(fragment)
        except ProtocolError as exc:
            self._refuse(exc)
            return
        if whole is not None:
            self._handle_whole_message(whole, protocol.MAX_UPLOAD_MESSAGE_BYTES)

    def _expire_upload(self) -> None:
        error = self._reassembler.expire()
        if error is not None:
            self.stats.client_errors += 1
            self.send(protocol.ErrorEvent(message=str(error), code=self._code_of(error)))

    def _refuse(self, exc: ProtocolError) -> None:
        """Answers a fragment that cannot be used with an error event. It costs a message of the rate limit as a
        bad message does, so a flood of bad fragments is answered with one ``rate_limited`` error, not a flood."""
        if not self._message_bucket.take():
            self._drop_rate_limited("messages")
            return
        self.stats.client_errors += 1
        self._admitted()
        self.send(protocol.ErrorEvent(message=str(exc), code=self._code_of(exc)))

    def _handle_whole_message(self, raw: str | bytes, max_bytes: int) -> None:
        """One client message: a data-channel message (up to ``MAX_MESSAGE_BYTES``) or one reassembled from
        fragments (up to ``max_bytes``, and only a picture or tune may be that large)."""
        if not self._message_bucket.take():
            self._drop_rate_limited("messages")
            return
        try:
            message = protocol.parse_client_message(raw, max_bytes)
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
            self._request_turn(text=message.text, image=self._take_pending_image(), music=self._take_pending_music())
            return
        if isinstance(message, protocol.ImageMessage | protocol.MusicMessage):
            if message.text is not None and not self._turn_bucket.take():
                self._drop_rate_limited("questions")
                return
            self._admitted()
            self._receive_media(message)
            return
        self._admitted()
        if isinstance(message, protocol.InterruptMessage):
            self.interrupt(drop_picture=True)
        elif isinstance(message, protocol.ByeMessage):
            self._schedule_close("the caller said bye")
        # Hello needs no answer: ``ready`` was sent when the channel opened.

    def _receive_media(self, message: protocol.ImageMessage | protocol.MusicMessage) -> None:
        """A picture or a tune (validated by the parser) waits for the caller's next turn, replacing one of its kind;
        with a question it starts that turn at once, with whatever else waits."""
        self._last_question = None  # a picture or tune is for a question to come: nothing left to continue
        if isinstance(message, protocol.ImageMessage):
            self.stats.images_received += 1
            self.pending_image = message.image_bytes()
        else:
            self.stats.tunes_received += 1
            self.pending_music = message.wav_bytes()
        if message.text is not None:
            self._request_turn(text=message.text, image=self._take_pending_image(), music=self._take_pending_music())

    @staticmethod
    def _code_of(exc: ProtocolError) -> str:
        """The error code for a refused message: the parser's own when it names one, else ``bad_message``."""
        code = getattr(exc, "code", None)
        code = getattr(code, "value", code)
        return code if code in {c.value for c in ErrorCode} else ErrorCode.BAD_MESSAGE.value

    def _drop_rate_limited(self, what: str) -> None:
        """Drops a message (``what``: "messages", "questions", or "bytes" for a fragment over the upload budget,
        which costs its whole message); one ``rate_limited`` error per run of drops."""
        self.stats.messages_dropped += 1
        if self._rate_limit_reported:
            return  # one error per run of drops: a flood must not turn into a flood of errors back
        self._rate_limit_reported = True
        self.stats.rate_limit_errors += 1
        limits = self.limits
        if what == "bytes":
            text = (
                f"too much data (at most {limits.upload_bytes_per_s / 2**20:g} MiB a second); the message being "
                "sent was dropped"
            )
        else:
            rate = limits.messages_per_s if what == "messages" else limits.turns_per_s
            text = f"too many {what} (at most {rate:g} a second); dropped until the rate falls"
        self.send(protocol.ErrorEvent(message=text, code=ErrorCode.RATE_LIMITED.value))

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
                if not isinstance(frame, av.AudioFrame):
                    raise TypeError(f"the caller's audio track gave a {type(frame).__name__}")
                pieces = self._inbound.push(frame)
                for pcm in pieces:
                    for event in self.endpointer.push(pcm.tobytes()):
                        self._on_vad_event(event)
            except Exception:
                self._count_conversion_failure(frame)

    def _count_conversion_failure(self, frame: object) -> None:
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

    def _on_vad_event(self, event: VadEvent) -> None:
        if isinstance(event, SpeechStart):
            self.last_activity_at = self._now()
            self._continuing = self._continuable_question()
            self._last_question = None
            self.send(protocol.SpeechStarted())
            self.interrupt(drop_picture=False)  # barge-in: the server's VAD is the one judge of it
        elif isinstance(event, SpeechProgress):
            # Still speaking: the question so far is encoded and prefilled, so the answer's start has less to do.
            self.turns.prepare(self._spoken_turn(event.audio, self.pending_image, self.pending_music))
        elif isinstance(event, SpeechPaused):
            # The caller may have finished: the answer starts now, on what they said so far and the picture waiting
            # for it, but is only heard if the pause becomes the end of their turn (SpeechEnd.same_as_pause).
            self._speculated_image, self._speculated_music = self.pending_image, self.pending_music
            self._speculated_turn = self._spoken_turn(event.audio, self.pending_image, self.pending_music)
            self.turns.speculate(self._speculated_turn)
        elif isinstance(event, SpeechResumed):
            self.turns.discard()  # they went on: the early answer is stale
        elif isinstance(event, SpeechDiscarded):
            self.turns.discard()  # only a noise: no question, and the one before may still be continued
            self._last_question, self._continuing = self._continuing, None
        elif isinstance(event, SpeechEnd):
            self.send(protocol.SpeechStopped(duration_s=round(event.duration_s, 3)))
            speculated = (
                event.same_as_pause
                and self.pending_image is self._speculated_image
                and self.pending_music is self._speculated_music
            )
            if speculated and self.turns.commit():
                turn = self._speculated_turn
                self._take_pending_image()  # the committed turn already has them
                self._take_pending_music()
            else:
                turn = self._spoken_turn(event.audio, self._take_pending_image(), self._take_pending_music())
                self.turns.request(turn)
            self.stats.continued_questions += self._continuing is not None
            self._speculated_turn = self._continuing = None
            if turn is not None:
                self._last_question = _Question(turn, self._now())

    def _continuable_question(self) -> _Question | None:
        """The last question, when speech starting now goes on from it (see ``EndpointerConfig.continue_within_ms``)."""
        last = self._last_question
        window_s = self.endpointer.config.continue_within_ms / 1000
        if last is None or window_s <= 0 or self._now() - last.ended_at > window_s:
            return None
        return last

    def _spoken_turn(self, audio: np.ndarray, image: bytes | None, music: bytes | None) -> UserTurn:
        """The turn for an utterance: on its own, or, continuing a question, that question's audio and then it, with a
        short pause between (``join_utterances``: the end-of-turn silence and the pre-roll between them would make a
        half-second hole no question the model learnt from has), and that question's picture and tune unless new ones
        came."""
        earlier = self._continuing.turn if self._continuing is not None else None
        if earlier is None or earlier.audio is None:
            return self._make_turn(audio, None, image, music)
        return self._make_turn(
            join_utterances(earlier.audio, audio, SAMPLE_RATE),
            None,
            image if image is not None else earlier.image,
            music if music is not None else earlier.music,
            continues=earlier,
        )

    # ----- turns (the controller's; the session only asks) -----

    def interrupt(self, *, drop_picture: bool) -> bool:
        """Stops the reply in progress (see :meth:`TurnController.interrupt`); False when there was none.

        The one rule for the pending picture and tune: the caller's ``interrupt`` message drops both
        (``drop_picture``), a barge-in keeps them, since the speech that barges in is usually the question about
        them."""
        if drop_picture:
            self.pending_image = None
            self.pending_music = None
            self._last_question = None  # told to stop: what they say next is a new question
        return self.turns.interrupt()

    async def start_turn(
        self,
        *,
        audio: np.ndarray | None = None,
        text: str | None = None,
        image: bytes | None = None,
        music: bytes | None = None,
    ) -> int:
        """Starts a turn (interrupting the previous one) and returns its id; the turn runs in the background.
        Returns -1 when the turn never ran: a newer start replaced it while it waited, or the session closed.
        ``image`` is PNG/JPEG bytes, ``music`` WAV bytes; the pending picture and tune are the caller's to pass (see
        :meth:`_take_pending_image`, :meth:`_take_pending_music`)."""
        return await self._request_turn(audio=audio, text=text, image=image, music=music)

    async def wait_turn(self, timeout: float | None = None) -> None:
        """Waits for the current turn (if any) to end; for tests and orderly shutdown."""
        await self.turns.wait(timeout)

    def _request_turn(
        self,
        *,
        audio: np.ndarray | None = None,
        text: str | None = None,
        image: bytes | None = None,
        music: bytes | None = None,
    ) -> asyncio.Future[int]:
        self._last_question = None  # a typed question (or a picture) comes between: nothing left to continue
        return self.turns.request(self._make_turn(audio, text, image, music))

    def _take_pending_image(self) -> bytes | None:
        image, self.pending_image = self.pending_image, None
        return image

    def _take_pending_music(self) -> bytes | None:
        music, self.pending_music = self.pending_music, None
        return music

    def _make_turn(
        self,
        audio: np.ndarray | None,
        text: str | None,
        image: bytes | None,
        music: bytes | None = None,
        continues: UserTurn | None = None,
    ) -> UserTurn:
        if self._turn_factory is not None:
            return self._turn_factory(audio=audio, text=text, image=image, music=music, continues=continues)
        from assistant.pipeline.engine import UserTurn  # the engine is only needed once a turn starts

        return UserTurn(audio=audio, text=text, image=image, music=music, continues=continues)

    def _turn_changed(self) -> None:
        self.last_activity_at = self._now()  # a turn starting or ending is activity (the idle timeout)
