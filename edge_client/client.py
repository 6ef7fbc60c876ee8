"""The edge client session: one WebRTC call to the anystream server.

``EdgeClient.run()`` creates the peer connection (one sendrecv audio transceiver carrying the capture track,
plus the ``events`` data channel), posts the offer to ``{server}/offer``, plays/records the server's audio,
prints the streamed text, saves images as they arrive, sends a picture (``image``, with or without a typed question)
once the server is ready and, for a finite source (a file), hangs up after the
answer to the file's speech (a live microphone session runs until SIGINT/SIGTERM or the timeout). It hangs up by
saying ``bye`` on the data channel and waiting (at most ``bye_timeout`` s) for the server to close the connection, so
no HTTP request after the offer has to reach the gateway replica that holds the session.
Exit codes: 0 done (or stopped by SIGINT/SIGTERM), 1 audio device could not be opened, 2 server unreachable /
rejected the offer / bad answer / connection lost, 3 timed out.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from assistant import protocol
from assistant.protocol import (
    DATA_CHANNEL_LABEL,
    ByeMessage,
    ErrorEvent,
    Hello,
    ImageMessage,
    ImageReady,
    Interrupted,
    InterruptMessage,
    MusicReady,
    OfferRequest,
    ProtocolError,
    Ready,
    SpeechStarted,
    SpeechStopped,
    TextDelta,
    TextMessage,
    Transcript,
    TurnEnd,
    TurnStarted,
)
from assistant.webrtc.ice import use_loopback_only
from edge_client.audio_io import AudioSink, AudioSource
from edge_client.tracks import CaptureTrack, RemoteAudioConsumer

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_SERVER = 2
EXIT_TIMEOUT = 3
EXIT_DEVICE = 1
CLIENT_NAME = "anystream-edge"


class _Console:
    """Prints streamed deltas on one line per speaker and status lines in between."""

    def __init__(self, out: TextIO):
        self.out = out
        self._stream_kind: str | None = None

    def stream(self, kind: str, prefix: str, delta: str) -> None:
        if self._stream_kind != kind:
            self.end_stream()
            self.out.write(prefix)
            self._stream_kind = kind
        self.out.write(delta)
        self.out.flush()

    def end_stream(self) -> None:
        if self._stream_kind is not None:
            self.out.write("\n")
            self._stream_kind = None
            self.out.flush()

    def line(self, text: str) -> None:
        self.end_stream()
        self.out.write(text + "\n")
        self.out.flush()


class EdgeClient:
    def __init__(
        self,
        server_url: str,
        source: AudioSource,
        sink: AudioSink,
        out_dir: str | Path | None = None,
        loopback_only: bool = False,
        text: str | None = None,
        timeout: float | None = None,
        vad_aggressiveness: int = 2,
        offer_timeout: float = 15.0,
        drain_s: float = 0.4,
        handle_signals: bool = True,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
        image: bytes | None = None,
        image_name: str | None = None,
        voice: str | None = None,
        bye_timeout: float = 1.0,
        api_key: str | None = None,
    ):
        """
        server_url: base URL of the server (``http://host:port``); the offer goes to ``{server_url}/offer``.
        source / sink: see :mod:`edge_client.audio_io`. A ``finite`` source makes the session end after the
            turn that answers it.
        out_dir: where images (``image_{turn}_{index}.png``) and ``session.json`` go; None saves nothing.
        loopback_only: keep ICE on 127.0.0.1 and use no STUN server (tests, single machine).
        text: a typed question sent once the server says ``ready`` (with ``image``: the question about it).
        image: PNG/JPEG bytes sent once the server says ``ready``: with ``text`` in one ``image`` message that
            starts a turn, without it as a picture the server attaches to the next spoken question.
            Raises ProtocolError here when the server would refuse it (not PNG/JPEG, too large).
        image_name: how the picture is named in the console and session.json (e.g. its path).
        voice: the voice the assistant should speak with (sent in the offer); None = the server's default.
        timeout: seconds before giving up (exit 3); None waits forever (until Ctrl-C).
        drain_s: how long to keep reading the audio track after ``turn_end`` (the jitter buffer still
            holds the last ~80 ms) before hanging up.
        bye_timeout: how long to wait, after saying ``bye``, for the server to close the connection before closing
            it from this side.
        api_key: an API key or session token, sent with the offer as ``Authorization: Bearer ...``; None sends none
            (a server with access off).
        """
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be positive")
        self.server_url = server_url.rstrip("/")
        self.source = source
        self.sink = sink
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.loopback_only = loopback_only
        self.text = text
        self.image_message = ImageMessage.from_bytes(image, text) if image is not None else None
        self.image_name = image_name or ("picture" if image is not None else None)
        self.image_bytes = len(image) if image is not None else 0
        if voice is not None:
            protocol.validate_voice_name(voice)
        self.voice = voice
        self.timeout = timeout
        self.vad_aggressiveness = vad_aggressiveness
        self.offer_timeout = offer_timeout
        self.drain_s = drain_s
        self.bye_timeout = bye_timeout
        self.api_key = api_key
        self.handle_signals = handle_signals
        self.console = _Console(stdout or sys.stdout)
        self.err = stderr or sys.stderr

        self.session_id: str | None = None
        self.events: list[dict[str, Any]] = []  # every server event, with its arrival time (png data left out)
        self.local_events: list[dict[str, Any]] = []  # client-side VAD decisions, barge-ins, hang-up reason
        self.images: list[str] = []
        self.images_sent: list[dict[str, Any]] = []
        self.server_voice: str | None = None
        self.server_voices: list[str] | None = None
        self.reply_text: dict[int, str] = {}
        self.transcripts: dict[int, str] = {}
        self.barge_ins = 0
        self.exit_code: int | None = None
        self.exit_reason = ""

        self._t0 = 0.0
        self._pc: RTCPeerConnection | None = None
        self._channel: Any = None
        self._capture: CaptureTrack | None = None
        self._consumer: RemoteAudioConsumer | None = None
        self._done: asyncio.Future[tuple[int, str]] | None = None
        self._assistant_talking = False
        self._turn_started_at: dict[int, float] = {}
        self._last_user_activity: float | None = None  # local speech start or typed question
        self._text_sent = False
        self._image_sent = False
        self._channel_closed = asyncio.Event()

    # ------------------------------------------------------------------------------------------------------
    # lifecycle

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._t0 = time.monotonic()
        self._done = loop.create_future()
        installed = self._install_signals(loop)
        try:
            code, reason = await self._session()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            await self._teardown()
        self.exit_code, self.exit_reason = code, reason
        self._write_summary()
        return code

    def _finish(self, code: int, reason: str) -> None:
        if self._done is not None and not self._done.done():
            self._local("hangup", code=code, reason=reason)
            self._done.set_result((code, reason))

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        if not self.handle_signals:
            return []
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self._finish, EXIT_OK, f"stopped by {signal.Signals(sig).name}")
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / platform
                pass
        return installed

    async def _session(self) -> tuple[int, str]:
        assert self._done is not None
        try:  # open the microphone / speaker first: no device is an error worth one clear line
            for device in (self.source, self.sink):
                start = getattr(device, "start", None)
                if start is not None:
                    start()
        except Exception as exc:
            message = f"cannot open the audio device: {type(exc).__name__}: {exc}"
            self.err.write(f"anystream-edge: {message}\n")
            self._finish(EXIT_DEVICE, message)
            return EXIT_DEVICE, message
        if self.loopback_only:
            use_loopback_only(True)
        config = RTCConfiguration(iceServers=[]) if self.loopback_only else RTCConfiguration()
        pc = self._pc = RTCPeerConnection(configuration=config)
        self._channel = pc.createDataChannel(DATA_CHANNEL_LABEL)
        self._channel.on("open", self._on_channel_open)
        self._channel.on("message", self._on_message)
        self._channel.on("close", lambda: self._finish(EXIT_SERVER, "the server closed the events channel"))
        self._channel.on("close", self._channel_closed.set)
        self._capture = CaptureTrack(
            self.source,
            vad_aggressiveness=self.vad_aggressiveness,
            on_speech_start=self._on_local_speech_start,
            on_speech_end=self._on_local_speech_end,
        )
        pc.addTrack(self._capture)  # one sendrecv audio transceiver

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "audio" and self._consumer is None:
                self._consumer = RemoteAudioConsumer(track, self.sink)
                self._consumer.start()

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            log.debug("connection state: %s", pc.connectionState)
            if pc.connectionState == "failed":
                self._finish(EXIT_SERVER, "the WebRTC connection to the server failed")

        answer_or_error = await self._negotiate(pc)
        if isinstance(answer_or_error, tuple):
            return answer_or_error
        self.console.line(f"connected to {self.server_url} (session {self.session_id})")

        try:
            return await asyncio.wait_for(asyncio.shield(self._done), timeout=self.timeout)
        except TimeoutError:
            msg = f"timed out after {self.timeout:g} s"
            if self.source.finite:
                msg += " waiting for the assistant's answer"
            self._finish(EXIT_TIMEOUT, msg)
            self.err.write(f"anystream-edge: {msg}\n")
            return EXIT_TIMEOUT, msg

    async def _negotiate(self, pc: RTCPeerConnection) -> tuple[int, str] | None:
        """Offer/answer over HTTP. Returns (exit code, reason) on failure, None on success."""
        await pc.setLocalDescription(await pc.createOffer())  # aiortc gathers ICE candidates here
        url = f"{self.server_url}/offer"
        body = OfferRequest(sdp=pc.localDescription.sdp, type=pc.localDescription.type, voice=self.voice).to_dict()
        try:
            timeout = aiohttp.ClientTimeout(total=self.offer_timeout)
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            async with aiohttp.ClientSession(timeout=timeout) as http:
                async with http.post(url, json=body, headers=headers) as resp:
                    text = await resp.text()
                    if resp.status != 200:
                        detail = _error_detail(text)
                        hint = _REFUSAL_HINTS.get(resp.status, "")
                        return self._fail(f"the server rejected the offer (HTTP {resp.status}): {detail}{hint}")
                    try:
                        answer = json.loads(text)
                        sdp, kind = answer["sdp"], answer["type"]
                    except (ValueError, KeyError, TypeError):
                        return self._fail(f"the server sent an answer that is not {{sdp, type}} JSON: {text[:200]!r}")
        except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.InvalidURL, OSError) as exc:
            return self._fail(f"cannot reach the server at {url}: {exc or type(exc).__name__}")
        self.session_id = answer.get("session_id")
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
        except Exception as exc:
            return self._fail(f"the server's answer could not be applied: {exc}")
        return None

    def _fail(self, message: str) -> tuple[int, str]:
        self.err.write(f"anystream-edge: {message}\n")
        self.err.flush()
        self._finish(EXIT_SERVER, message)
        return EXIT_SERVER, message

    async def _say_bye(self) -> None:
        """Asks the server to end the session and waits (bounded) until it has closed the events channel."""
        if not self._send(ByeMessage()):
            return
        try:
            await asyncio.wait_for(self._channel_closed.wait(), self.bye_timeout)
            self._local("bye", acknowledged=True)
        except TimeoutError:
            self._local("bye", acknowledged=False)
            log.info("the server did not close the session within %.1f s of bye", self.bye_timeout)

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

    # ------------------------------------------------------------------------------------------------------
    # data channel

    def _now(self) -> float:
        return round(time.monotonic() - self._t0, 4)

    def _local(self, event: str, **fields: Any) -> None:
        self.local_events.append({"t": self._now(), "event": event, **fields})

    def _send(self, message: Any) -> bool:
        channel = self._channel
        if channel is None or channel.readyState != "open":
            return False
        channel.send(protocol.to_json(message))
        return True

    def _on_channel_open(self) -> None:
        self._send(Hello(client=CLIENT_NAME))

    def _on_message(self, raw: str | bytes) -> None:
        try:
            message = protocol.parse_server_message(raw)
        except ProtocolError as exc:
            self._local("bad_message", error=str(exc))
            log.warning("ignoring a malformed server message: %s", exc)
            return
        record = {"t": self._now(), **{k: v for k, v in asdict(message).items() if k != "png_base64"}}
        self.events.append(record)
        try:
            self._handle(message, record)
        except Exception:
            log.exception("handling %s failed", message.type)

    def _handle(self, message: Any, record: dict[str, Any]) -> None:
        now = record["t"]
        if isinstance(message, Ready):
            if message.protocol_version != protocol.PROTOCOL_VERSION:
                self.console.line(
                    f"warning: server speaks protocol {message.protocol_version}, "
                    f"this client {protocol.PROTOCOL_VERSION}"
                )
            self.server_voice, self.server_voices = message.voice, message.voices
            if message.voice is not None:
                others = f" (available: {', '.join(message.voices)})" if message.voices else ""
                self.console.line(f"voice: {message.voice}{others}")
            if self.image_message is not None:
                self._send_image(now)
            elif self.text and not self._text_sent:
                if self._send(TextMessage(text=self.text)):
                    self._text_sent = True
                    self._last_user_activity = now
                    self._local("text_sent", text=self.text)
                    self.console.line(f"you (typed): {self.text}")
        elif isinstance(message, SpeechStarted):
            log.info("server heard speech")
        elif isinstance(message, SpeechStopped):
            log.info("server: speech stopped (%.2f s)", message.duration_s)
        elif isinstance(message, TurnStarted):
            self._turn_started_at[message.turn_id] = now
            self._assistant_talking = True
        elif isinstance(message, Transcript):
            self.transcripts[message.turn_id] = self.transcripts.get(message.turn_id, "") + message.delta
            self.console.stream(f"transcript{message.turn_id}", "you said: ", message.delta)
        elif isinstance(message, TextDelta):
            self._assistant_talking = True
            self.reply_text[message.turn_id] = self.reply_text.get(message.turn_id, "") + message.delta
            self.console.stream(f"text{message.turn_id}", "assistant: ", message.delta)
        elif isinstance(message, ImageReady):
            self._save_image(message, record)
        elif isinstance(message, MusicReady):
            self.console.line(f"♪ music #{message.index} ({message.duration_s:.1f} s) is playing")
        elif isinstance(message, Interrupted):
            self._assistant_talking = False
            self.sink.flush()
            self.console.line("[assistant interrupted]")
        elif isinstance(message, TurnEnd):
            self._on_turn_end(message, now)
        elif isinstance(message, ErrorEvent):
            self.console.line(f"server error: {message.message}")
            self.err.write(f"anystream-edge: server error: {message.message}\n")

    def _send_image(self, now: float) -> None:
        message = self.image_message
        if message is None or self._image_sent or not self._send(message):
            return
        self._image_sent = True
        self.images_sent.append({"t": now, "name": self.image_name, "bytes": self.image_bytes, "text": message.text})
        self._local("image_sent", name=self.image_name, bytes=self.image_bytes, text=message.text)
        if message.text is not None:
            self._text_sent = True
            self._last_user_activity = now  # the picture and its question start a turn now
            self.console.line(f"you (picture {self.image_name}): {message.text}")
        else:
            self.console.line(f"you (picture {self.image_name}): sent; it goes with your next question")

    def _save_image(self, message: ImageReady, record: dict[str, Any]) -> None:
        try:
            png = base64.b64decode(message.png_base64, validate=True)
        except ValueError:
            self.console.line(f"image #{message.index}: invalid base64, skipped")
            return
        record["png_bytes"] = len(png)
        if self.out_dir is None:
            self.console.line(
                f"image #{message.index} ({message.width}x{message.height}) received, not saved (no output directory)"
            )
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"image_{message.turn_id}_{message.index}.png"
        path.write_bytes(png)
        record["path"] = str(path)
        self.images.append(str(path))
        self.console.line(f"image saved: {path} ({message.width}x{message.height})")

    def _on_turn_end(self, message: TurnEnd, now: float) -> None:
        self._assistant_talking = False
        self.console.end_stream()
        log.info("turn %d ended (%s)", message.turn_id, message.reason)
        if not self._answers_request(message.turn_id, now):
            return
        reason = f"turn {message.turn_id} ended ({message.reason})"
        loop = asyncio.get_running_loop()
        # turn_end leaves the server after the turn's last audio frame; let the jitter buffer play it out.
        loop.call_later(self.drain_s, self._finish, EXIT_OK, reason)

    def _answers_request(self, turn_id: int, now: float) -> bool:
        """True when this turn is the answer to what a finite session came to ask (the file / typed text)."""
        file_pending = self.source.finite and not getattr(self.source, "file_done", True)
        if file_pending:
            return False
        if not self.source.finite:
            return False  # a live microphone session runs until stopped
        if (self.text and not self._text_sent) or (self.image_message is not None and not self._image_sent):
            return False
        started = self._turn_started_at.get(turn_id, now)
        return self._last_user_activity is None or started >= self._last_user_activity

    # ------------------------------------------------------------------------------------------------------
    # client-side endpointing

    def _on_local_speech_start(self) -> None:
        self._last_user_activity = self._now()
        self._local("speech_start")
        self.console.line("listening…")
        if self._assistant_talking:
            self.barge_ins += 1
            self._local("barge_in")
            self._send(InterruptMessage())
            self.sink.flush()
            self._assistant_talking = False
            self.console.line("(barge-in: interrupting the assistant)")

    def _on_local_speech_end(self, duration_s: float) -> None:
        self._local("speech_end", duration_s=round(duration_s, 3))
        self.console.line(f"you stopped ({duration_s:.1f} s)")

    # ------------------------------------------------------------------------------------------------------
    # summary

    def summary(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for event in self.events:
            counts[event["type"]] = counts.get(event["type"], 0) + 1
        consumer = self._consumer
        capture = self._capture
        return {
            "server": self.server_url,
            "session_id": self.session_id,
            "exit_code": self.exit_code,
            "exit_reason": self.exit_reason,
            "duration_s": self._now(),
            "counts": counts,
            "events": self.events,
            "local_events": self.local_events,
            "images": self.images,
            "images_sent": self.images_sent,
            "voice": {"requested": self.voice, "server": self.server_voice, "available": self.server_voices},
            "reply_text": {str(k): v for k, v in self.reply_text.items()},
            "transcripts": {str(k): v for k, v in self.transcripts.items()},
            "barge_ins": self.barge_ins,
            "audio": {
                "frames_sent": capture.frames_sent if capture else 0,
                "frames_received": consumer.frames if consumer else 0,
                "seconds_received": round(consumer.samples / 48000, 3) if consumer else 0.0,
                "peak_received": consumer.peak if consumer else 0,
                # seconds since start (the clock of "events") at which received audio became audible
                "onsets_s": [round(t - self._t0, 4) for t in consumer.onsets] if consumer else [],
            },
        }

    def _write_summary(self) -> None:
        if self.out_dir is None:
            return
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "session.json").write_text(json.dumps(self.summary(), indent=2, ensure_ascii=False))
        except OSError as exc:
            self.err.write(f"anystream-edge: could not write session.json: {exc}\n")


# What the caller can do about a refusal (the server's own text comes first).
_REFUSAL_HINTS = {
    401: " (give an API key or token: --api-key, or the ANYSTREAM_API_KEY environment variable)",
    429: " (this key already holds as many sessions as the server allows; end one first)",
}


def _error_detail(body: str) -> str:
    try:
        obj = json.loads(body)
        if isinstance(obj, dict) and isinstance(obj.get("error"), str):
            return obj["error"]
    except ValueError:
        pass
    return body.strip()[:200] or "(empty body)"
