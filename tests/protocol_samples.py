"""One message of every server message type, with values worth a round trip (non-ASCII text, a finish reason other
than the default, base64 data): shared by the protocol and dispatch tests. Read it, never change it."""

from __future__ import annotations

from assistant import protocol as p

SERVER_MESSAGES: list[p.ServerMessage] = [
    p.Ready(session_id="s1", sample_rate=16000),
    p.SpeechStarted(),
    p.SpeechStopped(duration_s=1.25),
    p.TurnStarted(turn_id=3),
    p.Transcript(turn_id=3, delta="what is"),
    p.TextDelta(turn_id=3, delta="héllo ✓"),
    p.ImageReady(turn_id=3, index=0, width=64, height=64, png_base64="iVBORw0KGgo="),
    p.MusicReady(turn_id=3, index=0, duration_s=2.0),
    p.Interrupted(turn_id=3),
    p.TurnEnd(turn_id=3, reason=p.FinishReason.INTERRUPTED.value),
    p.ErrorEvent(message="bad", turn_id=None),
]
