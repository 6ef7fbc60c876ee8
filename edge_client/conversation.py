"""The conversation on one call: what the client says besides its audio, what it makes of the server's events, and
when a session that came to ask one thing has its answer.

Every server message goes through :func:`assistant.dispatch.dispatch` to one ``on_*`` method of
:class:`Conversation` (a :class:`~assistant.dispatch.ServerMessageHandler`). Barge-in belongs to the server: its VAD
stops a reply the user talks over and sends ``interrupted``, on which the client cuts its playback
(:class:`~edge_client.playback.Playback`). The client's own VAD only times the user's speech (console, records, and
which turn answers a finite session).

One conversation may span several connections (the client reconnects when one drops, :mod:`edge_client.client`):
the server numbers the turns of each connection from 1, the conversation numbers them across the call
(``turn_number``), and everything here (playback, records, archive, console) uses the call's numbers. A finite
session whose question was not answered when its connection dropped asks it again on the next one.
"""

from __future__ import annotations

import base64
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
    MusicMessage,
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
from edge_client.recording import Recording, TurnArchive

log = logging.getLogger(__name__)


class Conversation(ServerMessageHandler):
    """
    send(message) -> bool: puts a client message on the events channel (False when it is not open).
    on_answered(reason): called once a finite session's question (its file, typed text or picture question) has
        been answered by a turn that ended; the client then drains and hangs up.
    archive: ``--save``: where every turn is kept (None: nowhere).
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
        archive: TurnArchive | None = None,
    ):
        self.config = config
        self.source = source
        self.send = send
        self.console = console
        self.recording = recording
        self.playback = playback
        self.on_answered = on_answered
        self.archive = archive
        self.status = console.status
        self.image_message: ImageMessage | None = config.image_message()
        self.music_message: MusicMessage | None = config.music_message()
        self.text_sent = False
        self.image_sent = False
        self.music_sent = False
        self.answered = False  # a finite session's question has been answered
        self._turn_started_at: dict[int, float] = {}
        self._last_user_activity: float | None = None  # local speech start, typed question or picture question
        # the connections of the call, and what the server said in the latest ``ready``
        self.connections = 0
        self.readies = 0  # ``ready`` events so far (one per connection that got as far)
        self.session_id: str | None = None
        self.resume_token: str | None = None
        self.resumed = False
        self._turn_base = 0  # added to the server's turn ids on this connection
        self._highest_turn = 0
        self._open_turn: int | None = None  # the newest turn started and not ended (its audio is what plays)
        self.latencies: dict[int, float] = {}  # turn -> question end to first audible answer frame, seconds

    def turn_number(self, server_turn_id: int) -> int:
        """The call's number for the turn the server calls ``server_turn_id`` on this connection."""
        return self._turn_base + server_turn_id

    # ----- the client's side

    def connection_started(self) -> None:
        """A (new) connection is being set up: its turns are numbered after the previous connection's, and a finite
        session's unanswered question is asked again on it (the text and picture are sent again, a file is spoken
        again from its start)."""
        self.connections += 1
        self._turn_base = self._highest_turn
        self._open_turn = None
        if self.connections > 1:
            self.playback.reset()
            if self.source.finite and not self.answered:
                self.text_sent = self.image_sent = self.music_sent = False
                rewind = getattr(self.source, "rewind", None)
                if rewind is not None:
                    rewind()

    def channel_open(self) -> None:
        self.send(Hello(client=self.config.client_name))

    def user_started_speaking(self) -> None:
        self._last_user_activity = self.recording.now()
        self.recording.local("speech_start")
        self.console.listening()
        self.status.user_started_speaking()

    def user_stopped_speaking(self, duration_s: float) -> None:
        self.recording.local("speech_end", duration_s=round(duration_s, 3))
        self.console.stopped_speaking(duration_s)
        self.status.question_ended(self.recording.clock())
        if self.archive is not None:
            self.archive.question_spoken(duration_s)

    @property
    def wants_audible(self) -> bool:
        """Whether the first audible answer frame would be news (the client watches the playout only then)."""
        return self.status.awaiting_audio

    def answer_audible(self, at: float) -> None:
        """The first audible frame of an answer left the jitter buffer for the speaker at ``at`` (client clock)."""
        if not self.status.awaiting_audio:
            return
        self.status.answer_audible(at)
        latency = self.status.latency_s
        turn = self._open_turn
        self.recording.local("answer_audible", turn=turn, latency_s=None if latency is None else round(latency, 3))
        if turn is not None and latency is not None:
            self.latencies[turn] = latency

    def _send_question(self, now: float) -> None:
        """Once the server is ready: the picture and the tune (the question, if any, goes with the last of them),
        else the typed question."""
        message = self.image_message
        if message is not None and not self.image_sent:
            if not self.send(message):
                return
            self.image_sent = True
            size = len(self.config.image or b"")
            self.recording.image_sent(self.config.image_name, size, message.text)
            if self.archive is not None and self.config.image is not None:
                self.archive.question_picture(self.config.image, self.config.image_name, message.text)
            self.console.picture_sent(self.config.image_name, message.text)
            if message.text is not None:
                self._question_asked(now)  # the picture and its question start a turn now
        if self.music_message is not None:
            self._send_tune(now)
        elif message is None and self.config.text and not self.text_sent:
            if self.send(TextMessage(text=self.config.text)):
                self.recording.local("text_sent", text=self.config.text)
                self.console.typed(self.config.text)
                if self.archive is not None:
                    self.archive.question_typed(self.config.text)
                self._question_asked(now)

    def _send_tune(self, now: float) -> None:
        message = self.music_message
        if message is None or self.music_sent or not self.send(message):
            return
        self.music_sent = True
        self.recording.music_sent(self.config.music_name, len(self.config.music or b""), message.text)
        self.console.tune_sent(self.config.music_name, message.text)
        if message.text is not None:
            self._question_asked(now)  # the tune and its question start a turn now

    def _question_asked(self, now: float) -> None:
        """The typed question left (alone, or with a picture or tune): a turn starts now, and the answer's latency
        counts from here."""
        self.text_sent = True
        self._last_user_activity = now
        self.status.question_ended(self.recording.clock())

    def ask(self, text: str) -> bool:
        """Sends a typed question now (a live session's keyboard, a test); False when the events channel is not
        open."""
        if not self.send(TextMessage(text=text)):
            return False
        self._last_user_activity = self.recording.now()
        self.recording.local("text_sent", text=text)
        self.console.typed(text)
        if self.archive is not None:
            self.archive.question_typed(text)
        self.status.question_ended(self.recording.clock())
        return True

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
        self.session_id, self.resume_token, self.resumed = message.session_id, message.resume_token, message.resumed
        self.readies += 1
        if self.connections > 1:
            self.console.resumed(message.session_id, message.resumed)
        elif message.voice is not None:
            self.console.voice(message.voice, message.voices)
        self.status.ready()
        self._send_question(self._event_time())

    def on_speech_started(self, message: SpeechStarted) -> None:
        log.info("server heard speech")

    def on_speech_stopped(self, message: SpeechStopped) -> None:
        log.info("server: speech stopped (%.2f s)", message.duration_s)

    def on_turn_started(self, message: TurnStarted) -> None:
        turn = self.turn_number(message.turn_id)
        self._highest_turn = max(self._highest_turn, turn)
        self._open_turn = turn
        self._turn_started_at[turn] = self._event_time()
        self.playback.turn_started(turn)
        self.status.turn_started()
        continues = self.turn_number(message.continues) if message.continues is not None else None
        if continues is not None:
            self.console.continued(turn, continues)
        if self.archive is not None:
            self.archive.turn_started(turn, message.turn_id, self.session_id, continues=continues)

    def on_transcript(self, message: Transcript) -> None:
        turn = self.turn_number(message.turn_id)
        self.recording.add_transcript(turn, message.delta)
        self.console.transcript(turn, message.delta)

    def on_text(self, message: TextDelta) -> None:
        turn = self.turn_number(message.turn_id)
        self.recording.add_reply(turn, message.delta)
        self.console.reply(turn, message.delta)

    def on_image(self, message: ImageReady) -> None:
        turn = self.turn_number(message.turn_id)
        try:
            path = self.recording.save_image(message, turn)
            png = base64.b64decode(message.png_base64, validate=True)
        except ValueError:
            self.console.image_invalid(message.index)
            return
        kept = self.archive.image(turn, message.index, png) if self.archive is not None else None
        shown = path if path is not None else kept
        if shown is None:
            self.console.image_not_saved(message.index, message.width, message.height)
        else:
            self.console.image_saved(shown, message.width, message.height)

    def on_music(self, message: MusicReady) -> None:
        self.console.music(message.index, message.duration_s)
        if self.archive is not None:
            self.archive.music(self.turn_number(message.turn_id), message.index, message.duration_s)

    def on_interrupted(self, message: Interrupted) -> None:
        self.recording.barge_ins += 1
        self.playback.interrupted(self.turn_number(message.turn_id))
        self.console.interrupted()

    def on_turn_end(self, message: TurnEnd) -> None:
        turn = self.turn_number(message.turn_id)
        self.playback.turn_ended(turn)
        if self._open_turn == turn:
            self._open_turn = None
        self.console.end_stream()
        self.status.turn_ended()
        if self.archive is not None:
            self.archive.turn_ended(
                turn,
                message.reason,
                self.recording.transcripts.get(turn, ""),
                self.recording.reply_text.get(turn, ""),
                self.latencies.get(turn),
            )
        log.info("turn %d ended (%s)", turn, message.reason)
        if self._answers_request(turn, self._event_time()):
            self.answered = True
            self.on_answered(f"turn {turn} ended ({message.reason})")

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
        if self.music_message is not None and not self.music_sent:
            return False
        started = self._turn_started_at.get(turn_id, now)
        return self._last_user_activity is None or started >= self._last_user_activity
