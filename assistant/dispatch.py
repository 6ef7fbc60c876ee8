"""The one place a server message is routed to the code that handles it (torch-free).

Whoever reads replies (the edge client over WebRTC, ``assistant chat`` in-process, tests) subclasses
:class:`ServerMessageHandler`, overrides the events it cares about and feeds every message to :func:`dispatch`.
A new message type is added here once, instead of to one ``isinstance`` chain per reader.
"""

from __future__ import annotations

from assistant.protocol import (
    ErrorEvent,
    ImageReady,
    Interrupted,
    MusicReady,
    Ready,
    ServerMessage,
    SpeechStarted,
    SpeechStopped,
    TextDelta,
    Transcript,
    TurnEnd,
    TurnStarted,
)


class ServerMessageHandler:
    """One method per server message; each does nothing unless overridden."""

    def on_ready(self, message: Ready) -> None:
        pass

    def on_speech_started(self, message: SpeechStarted) -> None:
        pass

    def on_speech_stopped(self, message: SpeechStopped) -> None:
        pass

    def on_turn_started(self, message: TurnStarted) -> None:
        pass

    def on_transcript(self, message: Transcript) -> None:
        pass

    def on_text(self, message: TextDelta) -> None:
        pass

    def on_image(self, message: ImageReady) -> None:
        pass

    def on_music(self, message: MusicReady) -> None:
        pass

    def on_interrupted(self, message: Interrupted) -> None:
        pass

    def on_turn_end(self, message: TurnEnd) -> None:
        pass

    def on_error(self, message: ErrorEvent) -> None:
        pass


def dispatch(message: ServerMessage, handler: ServerMessageHandler) -> None:
    """Calls the handler's method for ``message``; a value that is no server message is a ``TypeError``."""
    match message:
        case Ready():
            handler.on_ready(message)
        case SpeechStarted():
            handler.on_speech_started(message)
        case SpeechStopped():
            handler.on_speech_stopped(message)
        case TurnStarted():
            handler.on_turn_started(message)
        case Transcript():
            handler.on_transcript(message)
        case TextDelta():
            handler.on_text(message)
        case ImageReady():
            handler.on_image(message)
        case MusicReady():
            handler.on_music(message)
        case Interrupted():
            handler.on_interrupted(message)
        case TurnEnd():
            handler.on_turn_end(message)
        case ErrorEvent():
            handler.on_error(message)
        case _:
            raise TypeError(f"not a server message: {type(message).__name__}")
