"""The edge client's call to the anystream server, from opening the audio devices to hanging up.

``EdgeClient(config, source, sink).run()`` opens the microphone/speaker (or files), creates the peer connection (one
sendrecv audio transceiver carrying the capture track, plus the ``events`` data channel), sets the call up over HTTP
(:mod:`edge_client.signalling`), then lets the :class:`~edge_client.conversation.Conversation` talk until the call
ends: for a finite source (a file, typed text) after the answer to it, for a live microphone on SIGINT/SIGTERM,
:meth:`EdgeClient.stop` or the timeout. It hangs up by saying ``bye`` on the data channel and waiting (at most
``bye_timeout`` s) for the server to close the connection, so no HTTP request after the offer has to reach the
gateway replica that holds the session. At the end it writes ``session.json`` (:mod:`edge_client.recording`).

The received audio plays through a jitter buffer (:mod:`edge_client.jitter`): the speaker's own, or, for a sink
without a clock (a file), a :class:`~edge_client.audio_io.PacedSink` paced by ``pacing_clock``. The frames it plays
tell the status line when an answer became audible.

Reconnection: a connection is lost when the events channel closes without our ``bye``, the peer connection fails
or is closed by the server, or no audio came from the server for ``stall_timeout_s`` (it sends some even when
idle). The client then says so, waits (:mod:`edge_client.reconnect`: exponential backoff with jitter) and offers
again with the ``resume_token`` of the last ``ready``: the server continues the conversation if it still holds it
(``resumed``), else a new one starts. The capture track lives for the whole call; each connection sends it through
a track of its own (aiortc ends a sender's track with its connection). The first connection is never retried: a
server that cannot be reached or refuses the offer is an error at once.

Messages larger than one data-channel message (a picture or tune sent, a picture received) travel as fragments
(:mod:`assistant.fragments`): sent within the size the server's answer advertises, reassembled (up to
``protocol.MAX_DOWNLOAD_MESSAGE_BYTES``) before the conversation sees them.

What it prints lives in :mod:`edge_client.console`, what it records in :mod:`edge_client.recording`, how it treats
the server's events in :mod:`edge_client.conversation`, its settings in :mod:`edge_client.config`.

Exit codes: 0 done (or stopped by SIGINT/SIGTERM), 1 audio device could not be opened, 2 server unreachable /
rejected the offer / bad answer / connection lost (and not regained), 3 timed out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections.abc import Callable
from typing import Any, TextIO

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection

from assistant import fragments, protocol
from assistant.protocol import DATA_CHANNEL_LABEL, ByeMessage, ClientMessage, InterruptMessage
from assistant.rtc_audio import REAL_TIME, Clock
from assistant.webrtc.ice import use_loopback_only
from assistant.webrtc.jitter import shorten_audio_jitter_buffers
from edge_client.audio_io import CAPTURE_RATE, AudioSink, AudioSource, JitteredSink, PacedSink, TappedSource, takes_seq
from edge_client.config import CLIENT_NAME, EdgeClientConfig
from edge_client.console import Console
from edge_client.conversation import Conversation
from edge_client.echo import EchoCanceller
from edge_client.jitter import PLAYED, JitterBuffer
from edge_client.playback import Playback
from edge_client.reconnect import Backoff, Finished, Lost, keep_connected
from edge_client.recording import SUMMARY_FILE, Recording, TurnArchive
from edge_client.signalling import SignallingError, negotiate
from edge_client.tracks import CaptureTrack, RemoteAudioConsumer

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_DEVICE = 1
EXIT_SERVER = 2
EXIT_TIMEOUT = 3

__all__ = ["CLIENT_NAME", "EXIT_DEVICE", "EXIT_OK", "EXIT_SERVER", "EXIT_TIMEOUT", "EdgeClient", "EdgeClientConfig"]

# Fragments of one server message: MAX_DOWNLOAD_MESSAGE_BYTES in fragments of a little under 64 KiB, and time for a
# picture to arrive over a slow link.
_MAX_DOWNLOAD_FRAGMENTS = 1024
_DOWNLOAD_TIMEOUT_S = 60.0

# A played frame this loud (about -40 dBFS) is an audible answer (as RemoteAudioConsumer.ONSET_PEAK).
AUDIBLE_PEAK = 328


class _ConnectionTrack(MediaStreamTrack):
    """One connection's view of the call's capture track: aiortc stops a sender's track when its connection ends,
    and the capture track (its VAD, its pacing, what it has sent) must outlive a reconnection."""

    kind = "audio"

    def __init__(self, capture: CaptureTrack):
        super().__init__()
        self.capture = capture

    async def recv(self) -> av.AudioFrame:
        return await self.capture.recv()


class EdgeClient:
    def __init__(
        self,
        config: EdgeClientConfig,
        source: AudioSource,
        sink: AudioSink,
        *,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        pacing_clock: Clock = REAL_TIME,
    ):
        """
        source / sink: see :mod:`edge_client.audio_io`. A ``finite`` source makes the call end after the turn that
            answers it.
        stdout / stderr: where the conversation and the problems are printed (default: the process's).
        clock: the clock of the records (seconds, monotonic); pacing_clock: the one that paces a file source, and the
            playout of a sink without a clock of its own.
        """
        self.config = config
        self.archive = TurnArchive(config.save_dir, clock) if config.save_dir is not None else None
        self.source: AudioSource = TappedSource(source, self.archive.captured) if self.archive is not None else source
        self.sink = sink
        self.output = self._jittered(sink, pacing_clock)  # what plays: the sink behind its jitter buffer
        self.output.jitter.on_played.append(self._on_played)
        # the assistant's voice is taken out of the capture against what the device plays (see edge_client.echo)
        self.echo = EchoCanceller(clock=pacing_clock.now) if config.echo_cancel else None
        if self.echo is not None:
            self.output.jitter.on_played.append(self.echo.on_played)
        self.console = Console(stdout, stderr)
        self.recording = Recording(config.out_dir, clock)
        self.playback = Playback(self.output)
        if self.archive is not None:
            self.playback.on_frame.append(self.archive.answer_frame)
        self.conversation = Conversation(
            config,
            self.source,
            send=self._send,
            console=self.console,
            recording=self.recording,
            playback=self.playback,
            on_answered=self._on_answered,
            archive=self.archive,
        )
        self._clock = clock
        self._pacing_clock = pacing_clock
        self.backoff = Backoff(config.reconnect_initial_s, config.reconnect_max_s)
        self.reconnections = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lost: asyncio.Future[str] | None = None  # the current connection's loss, with why
        self._connected_at: float | None = None  # clock() when the current connection reached "connected"
        self._consumers: list[RemoteAudioConsumer] = []  # one per connection

        self.session_id: str | None = None
        self.exit_code: int | None = None
        self.exit_reason = ""

        self._pc: RTCPeerConnection | None = None
        self._channel: Any = None
        self._capture: CaptureTrack | None = None
        self._consumer: RemoteAudioConsumer | None = None  # the current connection's
        self._done: asyncio.Future[tuple[int, str]] | None = None
        self._channel_closed = asyncio.Event()

    def _jittered(self, sink: AudioSink, clock: Clock) -> JitteredSink:
        """``sink`` when it plays through a jitter buffer of its own (the speaker), else behind a paced one."""
        if takes_seq(sink) and isinstance(getattr(sink, "jitter", None), JitterBuffer):
            return sink  # type: ignore[return-value]  # checked just above
        jitter = JitterBuffer(self.config.jitter_ms, self.config.jitter_max_ms)
        return PacedSink(sink, jitter, clock)

    # ----- what the call recorded (see Recording)

    @property
    def err(self) -> TextIO:
        return self.console.err

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.recording.events

    @property
    def local_events(self) -> list[dict[str, Any]]:
        return self.recording.local_events

    @property
    def reply_text(self) -> dict[int, str]:
        return self.recording.reply_text

    @property
    def transcripts(self) -> dict[int, str]:
        return self.recording.transcripts

    @property
    def images(self) -> list[str]:
        return self.recording.images

    @property
    def barge_ins(self) -> int:
        return self.recording.barge_ins

    # ----- the call

    async def run(self) -> int:
        loop = self._loop = asyncio.get_running_loop()
        self.recording.start()
        self._done = loop.create_future()
        installed = self._install_signals(loop)
        try:
            code, reason = await self._call()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            await self._teardown()
        self.exit_code, self.exit_reason = code, reason
        if self.archive is not None:
            self.archive.close()
        self._write_summary()
        return code

    def ask(self, text: str) -> bool:
        """Sends a typed question now; False when the events channel is not open."""
        return self.conversation.ask(text)

    def stop(self, reason: str = "stopped") -> None:
        """Ends the call (exit 0): it hangs up as after an answer."""
        self._finish(EXIT_OK, reason)

    def interrupt(self) -> bool:
        """Asks the server to stop the reply in progress (an explicit request: a key, a button). Speaking over the
        assistant needs no call: the server's VAD hears it. The playback is cut when the server's ``interrupted``
        comes back. False when the events channel is not open."""
        if not self._send(InterruptMessage()):
            return False
        self.recording.local("interrupt_sent")
        self.console.interrupt_sent()
        return True

    def _finish(self, code: int, reason: str) -> None:
        if self._done is not None and not self._done.done():
            self.recording.local("hangup", code=code, reason=reason)
            self._done.set_result((code, reason))

    def _on_answered(self, reason: str) -> None:
        # turn_end leaves the server after the turn's last audio frame; let the jitter buffer play it out.
        asyncio.get_running_loop().call_later(self.config.drain_s, self._finish, EXIT_OK, reason)

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> list[signal.Signals]:
        if not self.config.handle_signals:
            return []
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self._finish, EXIT_OK, f"stopped by {signal.Signals(sig).name}")
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / platform
                pass
        return installed

    def _open_devices(self) -> tuple[int, str] | None:
        """Opens the microphone / speaker first: no device is an error worth one clear line."""
        try:
            for device in (self.source, self.output):
                start = getattr(device, "start", None)
                if start is not None:
                    start()
        except Exception as exc:
            return self._fail(EXIT_DEVICE, f"cannot open the audio device: {type(exc).__name__}: {exc}")
        return None

    def _capture_track(self) -> CaptureTrack:
        """The call's one capture track (made on the first connection, sent on every one)."""
        if self._capture is None:
            self._capture = CaptureTrack(
                self.source,
                vad_aggressiveness=self.config.vad_aggressiveness,
                on_speech_start=self.conversation.user_started_speaking,
                on_speech_end=self.conversation.user_stopped_speaking,
                clock=self._pacing_clock,
                echo=self.echo,
            )
        else:
            self._capture.skip_to_now()  # a file's frames go on from now, not in a burst over the gap
        return self._capture

    def _connect_media(self) -> RTCPeerConnection:
        """A new peer connection (one per connection of the call) and its events channel."""
        config = self.config
        if config.loopback_only:
            use_loopback_only(True)
        ice = RTCConfiguration(iceServers=[]) if config.loopback_only else RTCConfiguration()  # default: public STUN
        pc = self._pc = RTCPeerConnection(configuration=ice)
        channel = self._channel = pc.createDataChannel(DATA_CHANNEL_LABEL)
        channel_closed = self._channel_closed = asyncio.Event()
        channel.on("open", self.conversation.channel_open)
        reassembler = fragments.Reassembler(
            protocol.MAX_DOWNLOAD_MESSAGE_BYTES, max_count=_MAX_DOWNLOAD_FRAGMENTS, timeout_s=_DOWNLOAD_TIMEOUT_S
        )
        channel.on("message", lambda raw: self._receive(reassembler, raw))
        channel.on("close", lambda: self._lose(pc, "the server closed the events channel"))
        channel.on("close", channel_closed.set)
        pc.addTrack(_ConnectionTrack(self._capture_track()))  # one sendrecv audio transceiver
        shorten_audio_jitter_buffers(pc)  # the playback jitter buffer absorbs jitter; aiortc's would add 80 ms

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "audio" and self._pc is pc and self._consumer is None:
                self._consumer = RemoteAudioConsumer(track, self.playback, clock=self._clock)
                self._consumers.append(self._consumer)
                self._consumer.start()

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            log.debug("connection state: %s", pc.connectionState)
            if pc.connectionState == "connected" and pc is self._pc and self._connected_at is None:
                self._connected_at = self._clock()
            elif pc.connectionState == "failed":
                self._lose(pc, "the WebRTC connection to the server failed")
            elif pc.connectionState == "closed":
                self._lose(pc, "the server closed the connection")

        return pc

    async def _call(self) -> tuple[int, str]:
        assert self._done is not None
        failed = self._open_devices()
        if failed is not None:
            return failed
        config = self.config
        try:
            outcome = await asyncio.wait_for(
                keep_connected(
                    self._connect_once,
                    attempts=config.reconnect_attempts,
                    backoff=self.backoff,
                    sleep=self._wait_or_finish,
                    on_retry=self._reconnecting,
                ),
                timeout=config.timeout,
            )
        except TimeoutError:
            message = f"timed out after {config.timeout:g} s"
            if self.source.finite:
                message += " waiting for the assistant's answer"
            return self._fail(EXIT_TIMEOUT, message)
        if isinstance(outcome, Lost):
            attempts = self.reconnections
            given_up = f" (gave up after {attempts} reconnection attempts)" if attempts else ""
            return self._fail(EXIT_SERVER, outcome.reason + given_up)
        return outcome.code, outcome.reason

    async def _connect_once(self) -> Finished | Lost:
        """One connection of the call, from the offer until the call ends or the connection is lost."""
        assert self._done is not None
        if self._done.done():
            return Finished(*self._done.result())
        first = self.conversation.connections == 0
        await self._drop_connection()
        readies = self.conversation.readies
        self.conversation.connection_started()
        self.output.jitter.reset()  # the new connection's audio is stamped from 0 again
        self._connected_at = None  # (set when this connection reaches "connected", maybe before the offer returns)
        pc = self._connect_media()
        lost = self._lost = asyncio.get_running_loop().create_future()
        config = self.config
        try:
            self.session_id = await negotiate(
                pc,
                config.server_url,
                voice=config.voice,
                api_key=config.api_key,
                timeout=config.offer_timeout,
                resume=self.conversation.resume_token,
            )
        except SignallingError as exc:
            if first:
                return Finished(*self._fail(EXIT_SERVER, str(exc)))
            self.recording.local("reconnect_failed", reason=str(exc))
            return Lost(str(exc), permanent=exc.permanent)
        answered_at = self._clock()
        if first:
            self.console.connected(config.server_url, self.session_id)
        watch = asyncio.ensure_future(self._watch_for_stall(pc, answered_at))
        try:
            await asyncio.wait({self._done, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
        if self._done.done():
            return Finished(*self._done.result())
        reason = lost.result()
        self.recording.local("connection_lost", reason=reason)
        self.console.connection_lost(reason)
        await self._drop_connection()
        return Lost(reason, ready=self.conversation.readies > readies)

    def _lose(self, pc: RTCPeerConnection, reason: str) -> None:
        """The connection ``pc`` is lost (ignored for an older connection, or once the call is ending)."""
        lost = self._lost
        if pc is self._pc and lost is not None and not lost.done():
            lost.set_result(reason)

    async def _watch_for_stall(self, pc: RTCPeerConnection, answered_at: float) -> None:
        """A connection that does not connect within ``offer_timeout`` of the answer, or that brings no audio from
        the server for ``stall_timeout_s`` once connected (the server sends some every 0.4 s, even idle), is dead,
        whatever ICE (which notices after about 30 s) says."""
        while True:
            now = self._clock()
            if self._connected_at is None:
                limit, since = self.config.offer_timeout, answered_at
                why = f"the connection was not established within {limit:g} s"
            else:
                limit, since = self.config.stall_timeout_s, self._connected_at
                consumer = self._consumer
                if consumer is not None and consumer.last_frame_at is not None:
                    since = max(since, consumer.last_frame_at)
                why = f"no audio from the server for {limit:g} s"
            if now - since > limit:
                self._lose(pc, why)
                return
            await asyncio.sleep(min(0.5, max(0.05, limit - (now - since))))

    async def _wait_or_finish(self, delay_s: float) -> None:
        """The wait before a reconnection; the call may end meanwhile (SIGINT, stop())."""
        assert self._done is not None
        await asyncio.wait({self._done}, timeout=delay_s)

    def _reconnecting(self, lost: Lost, attempt: int, delay_s: float) -> None:
        self.reconnections += 1
        self.recording.local("reconnecting", attempt=attempt, delay_s=round(delay_s, 3), reason=lost.reason)
        self.console.reconnecting(attempt, self.config.reconnect_attempts, delay_s)

    async def _drop_connection(self) -> None:
        """Closes the current connection without a word to the server (it is lost, or being replaced)."""
        pc, self._pc = self._pc, None
        self._lost = None
        self._channel = None
        consumer, self._consumer = self._consumer, None
        if pc is not None:
            try:
                await pc.close()
            except Exception:
                log.debug("closing the lost peer connection failed", exc_info=True)
        if consumer is not None:
            await consumer.stop()

    def _on_played(self, frame: np.ndarray, kind: str) -> None:
        """Every frame the jitter buffer plays (the sound card's thread, for a speaker): the first audible one of an
        answer is handed to the conversation (in the event loop), with the time it was played."""
        if kind != PLAYED or not self.conversation.wants_audible:
            return
        if int(np.abs(frame.astype(np.int32)).max(initial=0)) < AUDIBLE_PEAK:
            return
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.conversation.answer_audible, self._clock())

    def _fail(self, code: int, message: str) -> tuple[int, str]:
        self.console.problem(message)
        self._finish(code, message)
        return code, message

    async def _say_bye(self) -> None:
        """Asks the server to end the session and waits (bounded) until it has closed the events channel."""
        if not self._send(ByeMessage()):
            return
        try:
            await asyncio.wait_for(self._channel_closed.wait(), self.config.bye_timeout)
            self.recording.local("bye", acknowledged=True)
        except TimeoutError:
            self.recording.local("bye", acknowledged=False)
            log.info("the server did not close the session within %.1f s of bye", self.config.bye_timeout)

    async def _teardown(self) -> None:
        self.console.finish()
        self._lost = None  # the hang-up closes the connection: not a loss
        await self._say_bye()
        if self._pc is not None:
            try:
                await self._pc.close()
            except Exception:
                log.debug("closing the peer connection failed", exc_info=True)
        if self._consumer is not None:
            await self._consumer.stop()
        for closeable in (self.source, self.output):
            try:
                closeable.close()
            except Exception:
                log.debug("closing %r failed", closeable, exc_info=True)

    def _send(self, message: ClientMessage) -> bool:
        """Puts ``message`` on the events channel, as fragments when it is larger than the server takes in one."""
        channel, pc = self._channel, self._pc
        if channel is None or channel.readyState != "open":
            return False
        answer = pc.remoteDescription if pc is not None else None
        limit = fragments.max_message_size_of(answer.sdp) if answer is not None else fragments.DEFAULT_MAX_MESSAGE_SIZE
        for piece in fragments.split_message(protocol.to_json(message), limit):
            channel.send(piece)
        return True

    def _receive(self, reassembler: fragments.Reassembler, raw: str | bytes) -> None:
        """One message from the events channel: a whole one goes to the conversation, a fragment waits for the rest
        of its message."""
        try:
            whole = reassembler.push(raw)
        except protocol.ProtocolError as exc:
            self.recording.local("bad_message", error=str(exc))
            log.warning("dropping a server message that could not be reassembled: %s", exc)
            return
        if whole is not None:
            self.conversation.handle(whole)

    # ----- the summary

    def summary(self) -> dict[str, Any]:
        consumers, capture = self._consumers, self._capture
        jitter = self.output.jitter.stats()
        audio = {
            "frames_sent": capture.frames_sent if capture else 0,
            "frames_received": sum(c.frames for c in consumers),
            "seconds_received": round(sum(c.samples for c in consumers) / CAPTURE_RATE, 3),
            "peak_received": max((c.peak for c in consumers), default=0),
            # seconds since start (the clock of "events") at which received audio became audible
            "onsets_s": [self.recording.since_start(t) for c in consumers for t in c.onsets],
            # frames of interrupted replies that arrived after the server's "interrupted" and were played as silence
            "stale_frames_muted": self.playback.stale_frames,
            # the echo canceller's ERLE, double talk and cost (None: off)
            "echo": self.echo.stats() if self.echo is not None else None,
            # the playback jitter buffer: stretches that ran dry mid-stream, oldest audio dropped to bound the
            # latency, frames that came too late to play, lost frames played as silence
            "jitter": {
                "target_ms": self.output.jitter.target_frames * 20,
                "underruns": jitter.underruns,
                "dropped_frames": jitter.dropped_frames,
                "late_frames": jitter.late_frames,
                "concealed_frames": jitter.concealed_frames,
            },
        }
        summary = self.recording.summary(
            server=self.config.server_url,
            session_id=self.session_id,
            exit_code=self.exit_code,
            exit_reason=self.exit_reason,
            requested_voice=self.config.voice,
            audio=audio,
        )
        summary["connections"] = self.conversation.connections
        summary["resumed"] = self.conversation.resumed
        summary["latencies_s"] = {str(turn): round(s, 3) for turn, s in self.conversation.latencies.items()}
        if self.archive is not None:
            summary["turns_saved"] = [str(path) for path in self.archive.saved]
        return summary

    def _write_summary(self) -> None:
        summary = self.summary()
        try:
            self.recording.write_summary(summary)
            save_dir = self.config.save_dir
            if save_dir is not None and save_dir != self.config.out_dir:
                (save_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, ensure_ascii=False))
        except OSError as exc:
            self.console.problem(f"could not write session.json: {exc}")
