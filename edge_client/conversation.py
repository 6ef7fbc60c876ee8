"""The conversation on one call: what the client says besides its audio, what it makes of the server's events, and
when a session that came to ask one thing has its answer.

Every server message goes through :func:`assistant.dispatch.dispatch` to one ``on_*`` method of
:class:`Conversation` (a :class:`~assistant.dispatch.ServerMessageHandler`). Barge-in belongs to the server: its VAD
stops a reply the user talks over and sends ``interrupted``, on which the client cuts its playback
(:class:`~edge_client.playback.Playback`). The client's own VAD only times the user's speech (console, records, and
which turn answers a finite session).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from assistant import protocol
from assistant.dispatch import ServerMessageHandler, dispatch
from assistant.protocol import (
    ClientMessage,
    ErrorEvent,
    Hello,
    ImageMessage,
    ImageReady,
    Interrupted,
    MusicReady,
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
from edge_client.audio_io import AudioSource
from edge_client.config import EdgeClientConfig
from edge_client.console import Console
from edge_client.playback import Playback
from edge_client.recording import Recording

log = logging.getLogger(__name__)


class Conversation(ServerMessageHandler):
    """
    send(message) -> bool: puts a client message on the events channel (False when it is not open).
    on_answered(reason): called once a finite session's question (its file, typed text or picture question) has
        been answered by a turn that ended; the client then drains and hangs up.
    """

    def __init__(
        self,
        config: EdgeClientConfig,
        source: AudioSource,
        *,
        send: Callable[[ClientMessage], bool],
        console: Console,
        recording: Recording,
        playback: Playback,
        on_answered: Callable[[str], None],
    ):
        self.config = config
        self.source = source
        self.send = send
        self.console = console
        self.recording = recording
        self.playback = playback
        self.on_answered = on_answered
        self.image_message: ImageMessage | None = config.image_message()
        self.text_sent = False
        self.image_sent = False
        self._turn_started_at: dict[int, float] = {}
        self._last_user_activity: float | None = None  # local speech start, typed question or picture question

    # ----- the client's side

    def channel_open(self) -> None:
        self.send(Hello(client=self.config.client_name))

    def user_started_speaking(self) -> None:
        self._last_user_activity = self.recording.now()
        self.recording.local("speech_start")
        self.console.listening()

    def user_stopped_speaking(self, duration_s: float) -> None:
        self.recording.local("speech_end", duration_s=round(duration_s, 3))
        self.console.stopped_speaking(duration_s)

    def _send_question(self, now: float) -> None:
        """Once the server is ready: the picture (with its question, if any), else the typed question."""
        message = self.image_message
        if message is not None:
            if self.image_sent or not self.send(message):
                return
            self.image_sent = True
            size = len(self.config.image or b"")
            self.recording.image_sent(self.config.image_name, size, message.text)
            if message.text is not None:
                self.text_sent = True
                self._last_user_activity = now  # the picture and its question start a turn now
            self.console.picture_sent(self.config.image_name, message.text)
        elif self.config.text and not self.text_sent:
            if self.send(TextMessage(text=self.config.text)):
                self.text_sent = True
                self._last_user_activity = now
                self.recording.local("text_sent", text=self.config.text)
                self.console.typed(self.config.text)

    # ----- the server's side

    def handle(self, raw: str | bytes) -> None:
        """One message from the events channel: parsed, recorded, dispatched."""
        try:
            message = protocol.parse_server_message(raw)
        except ProtocolError as exc:
            self.recording.local("bad_message", error=str(exc))
            log.warning("ignoring a malformed server message: %s", exc)
            return
        self.recording.server_message(message)
        try:
            dispatch(message, self)
        except Exception:
            log.exception("handling %s failed", message.type)

    def _event_time(self) -> float:
        return self.recording.events[-1]["t"] if self.recording.events else self.recording.now()

    def on_ready(self, message: Ready) -> None:
        if message.protocol_version != protocol.PROTOCOL_VERSION:
            self.console.protocol_mismatch(message.protocol_version, protocol.PROTOCOL_VERSION)
        self.recording.server_voice, self.recording.server_voices = message.voice, message.voices
        if message.voice is not None:
            self.console.voice(message.voice, message.voices)
        self._send_question(self._event_time())

    def on_speech_started(self, message: SpeechStarted) -> None:
        log.info("server heard speech")

    def on_speech_stopped(self, message: SpeechStopped) -> None:
        log.info("server: speech stopped (%.2f s)", message.duration_s)

    def on_turn_started(self, message: TurnStarted) -> None:
        self._turn_started_at[message.turn_id] = self._event_time()
        self.playback.turn_started(message.turn_id)

    def on_transcript(self, message: Transcript) -> None:
        self.recording.add_transcript(message.turn_id, message.delta)
        self.console.transcript(message.turn_id, message.delta)

    def on_text(self, message: TextDelta) -> None:
        self.recording.add_reply(message.turn_id, message.delta)
        self.console.reply(message.turn_id, message.delta)

    def on_image(self, message: ImageReady) -> None:
        try:
            path = self.recording.save_image(message)
        except ValueError:
            self.console.image_invalid(message.index)
            return
        if path is None:
            self.console.image_not_saved(message.index, message.width, message.height)
        else:
            self.console.image_saved(path, message.width, message.height)

    def on_music(self, message: MusicReady) -> None:
        self.console.music(message.index, message.duration_s)

    def on_interrupted(self, message: Interrupted) -> None:
        self.recording.barge_ins += 1
        self.playback.interrupted(message.turn_id)
        self.console.interrupted()

    def on_turn_end(self, message: TurnEnd) -> None:
        self.playback.turn_ended(message.turn_id)
        self.console.end_stream()
        log.info("turn %d ended (%s)", message.turn_id, message.reason)
        if self._answers_request(message.turn_id, self._event_time()):
            self.on_answered(f"turn {message.turn_id} ended ({message.reason})")

    def on_error(self, message: ErrorEvent) -> None:
        self.console.server_error(message.message)

    def _answers_request(self, turn_id: int, now: float) -> bool:
        """True when this turn is the answer to what a finite session came to ask (the file / typed text)."""
        if not self.source.finite:
            return False  # a live microphone session runs until stopped
        if not getattr(self.source, "file_done", True):
            return False  # the file is still being spoken
        if (self.config.text and not self.text_sent) or (self.image_message is not None and not self.image_sent):
            return False
        started = self._turn_started_at.get(turn_id, now)
        return self._last_user_activity is None or started >= self._last_user_activity
