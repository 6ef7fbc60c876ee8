"""The edge client's call to the anystream server, from opening the audio devices to hanging up.

``EdgeClient(config, source, sink).run()`` opens the microphone/speaker (or files), creates the peer connection (one
sendrecv audio transceiver carrying the capture track, plus the ``events`` data channel), sets the call up over HTTP
(:mod:`edge_client.signalling`), then lets the :class:`~edge_client.conversation.Conversation` talk until the call
ends: for a finite source (a file, typed text) after the answer to it, for a live microphone on SIGINT/SIGTERM,
:meth:`EdgeClient.stop` or the timeout. It hangs up by saying ``bye`` on the data channel and waiting (at most
``bye_timeout`` s) for the server to close the connection, so no HTTP request after the offer has to reach the
gateway replica that holds the session. At the end it writes ``session.json`` (:mod:`edge_client.recording`).

What it prints lives in :mod:`edge_client.console`, what it records in :mod:`edge_client.recording`, how it treats
the server's events in :mod:`edge_client.conversation`, its settings in :mod:`edge_client.config`.

Exit codes: 0 done (or stopped by SIGINT/SIGTERM), 1 audio device could not be opened, 2 server unreachable /
rejected the offer / bad answer / connection lost, 3 timed out.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from typing import Any, TextIO

from aiortc import RTCConfiguration, RTCPeerConnection

from assistant import protocol
from assistant.protocol import DATA_CHANNEL_LABEL, ByeMessage, ClientMessage, InterruptMessage
from assistant.rtc_audio import REAL_TIME, Clock
from assistant.webrtc.ice import use_loopback_only
from edge_client.audio_io import CAPTURE_RATE, AudioSink, AudioSource
from edge_client.config import CLIENT_NAME, EdgeClientConfig
from edge_client.console import Console
from edge_client.conversation import Conversation
from edge_client.playback import Playback
from edge_client.recording import Recording
from edge_client.signalling import SignallingError, negotiate
from edge_client.tracks import CaptureTrack, RemoteAudioConsumer

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_DEVICE = 1
EXIT_SERVER = 2
EXIT_TIMEOUT = 3

__all__ = ["CLIENT_NAME", "EXIT_DEVICE", "EXIT_OK", "EXIT_SERVER", "EXIT_TIMEOUT", "EdgeClient", "EdgeClientConfig"]


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
        clock: the clock of the records (seconds, monotonic); pacing_clock: the one that paces a file source.
        """
        self.config = config
        self.source = source
        self.sink = sink
        self.console = Console(stdout, stderr)
        self.recording = Recording(config.out_dir, clock)
        self.playback = Playback(sink)
        self.conversation = Conversation(
            config,
            source,
            send=self._send,
            console=self.console,
            recording=self.recording,
            playback=self.playback,
            on_answered=self._on_answered,
        )
        self._clock = clock
        self._pacing_clock = pacing_clock

        self.session_id: str | None = None
        self.exit_code: int | None = None
        self.exit_reason = ""

        self._pc: RTCPeerConnection | None = None
        self._channel: Any = None
        self._capture: CaptureTrack | None = None
        self._consumer: RemoteAudioConsumer | None = None
        self._done: asyncio.Future[tuple[int, str]] | None = None
        self._channel_closed = asyncio.Event()

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
        loop = asyncio.get_running_loop()
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
        self._write_summary()
        return code

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
            for device in (self.source, self.sink):
                start = getattr(device, "start", None)
                if start is not None:
                    start()
        except Exception as exc:
            return self._fail(EXIT_DEVICE, f"cannot open the audio device: {type(exc).__name__}: {exc}")
        return None

    def _connect_media(self) -> RTCPeerConnection:
        config = self.config
        if config.loopback_only:
            use_loopback_only(True)
        ice = RTCConfiguration(iceServers=[]) if config.loopback_only else RTCConfiguration()  # default: public STUN
        pc = self._pc = RTCPeerConnection(configuration=ice)
        channel = self._channel = pc.createDataChannel(DATA_CHANNEL_LABEL)
        channel.on("open", self.conversation.channel_open)
        channel.on("message", self.conversation.handle)
        channel.on("close", lambda: self._finish(EXIT_SERVER, "the server closed the events channel"))
        channel.on("close", self._channel_closed.set)
        self._capture = CaptureTrack(
            self.source,
            vad_aggressiveness=config.vad_aggressiveness,
            on_speech_start=self.conversation.user_started_speaking,
            on_speech_end=self.conversation.user_stopped_speaking,
            clock=self._pacing_clock,
        )
        pc.addTrack(self._capture)  # one sendrecv audio transceiver

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "audio" and self._consumer is None:
                self._consumer = RemoteAudioConsumer(track, self.playback, clock=self._clock)
                self._consumer.start()

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            log.debug("connection state: %s", pc.connectionState)
            if pc.connectionState == "failed":
                self._finish(EXIT_SERVER, "the WebRTC connection to the server failed")

        return pc

    async def _call(self) -> tuple[int, str]:
        assert self._done is not None
        failed = self._open_devices()
        if failed is not None:
            return failed
        pc = self._connect_media()
        config = self.config
        try:
            self.session_id = await negotiate(
                pc, config.server_url, voice=config.voice, api_key=config.api_key, timeout=config.offer_timeout
            )
        except SignallingError as exc:
            return self._fail(EXIT_SERVER, str(exc))
        self.console.connected(config.server_url, self.session_id)
        try:
            return await asyncio.wait_for(asyncio.shield(self._done), timeout=config.timeout)
        except TimeoutError:
            message = f"timed out after {config.timeout:g} s"
            if self.source.finite:
                message += " waiting for the assistant's answer"
            return self._fail(EXIT_TIMEOUT, message)

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
        self.console.end_stream()
        await self._say_bye()
        if self._pc is not None:
            try:
                await self._pc.close()
            except Exception:
                log.debug("closing the peer connection failed", exc_info=True)
        if self._consumer is not None:
            await self._consumer.stop()
        for closeable in (self.source, self.sink):
            try:
                closeable.close()
            except Exception:
                log.debug("closing %r failed", closeable, exc_info=True)

    def _send(self, message: ClientMessage) -> bool:
        channel = self._channel
        if channel is None or channel.readyState != "open":
            return False
        channel.send(protocol.to_json(message))
        return True

    # ----- the summary

    def summary(self) -> dict[str, Any]:
        consumer, capture = self._consumer, self._capture
        audio = {
            "frames_sent": capture.frames_sent if capture else 0,
            "frames_received": consumer.frames if consumer else 0,
            "seconds_received": round(consumer.samples / CAPTURE_RATE, 3) if consumer else 0.0,
            "peak_received": consumer.peak if consumer else 0,
            # seconds since start (the clock of "events") at which received audio became audible
            "onsets_s": [self.recording.since_start(t) for t in consumer.onsets] if consumer else [],
            # frames of interrupted replies that arrived after the server's "interrupted" and were played as silence
            "stale_frames_muted": self.playback.stale_frames,
        }
        return self.recording.summary(
            server=self.config.server_url,
            session_id=self.session_id,
            exit_code=self.exit_code,
            exit_reason=self.exit_reason,
            requested_voice=self.config.voice,
            audio=audio,
        )

    def _write_summary(self) -> None:
        try:
            self.recording.write_summary(self.summary())
        except OSError as exc:
            self.console.problem(f"could not write session.json: {exc}")
