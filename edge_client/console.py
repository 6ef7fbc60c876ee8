"""Everything the edge client prints: the conversation on stdout, problems on stderr.

Streamed text (what the server heard, what the assistant says) goes on one line per speaker and turn; status lines
end such a line first. Problems go to stderr as ``anystream-edge: ...`` lines.

The status line (:class:`StatusLine`) says what the call is doing: connecting, listening, thinking (the question has
ended, no answer is audible yet), speaking, reconnecting; and how long the last answer took: from the end of the
user's question (the client's own VAD's speech end, or the moment a typed question was sent) to its first audible
frame at the speaker. On a terminal it is one line, rewritten in place below the conversation; when stdout is not a
terminal (a log, a pipe) each change is a plain ``status: ...`` line. Either way it never breaks a line of streamed
text: while one is open, the status waits for it to end.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TextIO

PROGRAM = "anystream-edge"


class CallState(StrEnum):
    CONNECTING = "connecting"
    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"
    RECONNECTING = "reconnecting"


class StatusLine:
    """The call's state, moved by events (times in seconds of one monotonic clock); ``render(text)`` shows it.

    connecting -> (ready) listening -> (the question ends) thinking -> (its answer is audible) speaking -> (the turn
    ends or is interrupted) listening; a lost connection -> reconnecting -> (ready again) listening. ``latency_s``
    is the last answer's: question end to first audible frame (None until one was timed).
    """

    def __init__(self, render: Callable[[str], None]):
        self._render = render
        self.state = CallState.CONNECTING
        self.latency_s: float | None = None
        self.detail = ""  # e.g. which reconnection attempt
        self._question_end: float | None = None  # the end of the question waiting for its answer
        self._turn_open = False

    @property
    def awaiting_audio(self) -> bool:
        """True while the first audible answer frame would mean something (thinking, or a turn that is open)."""
        return self.state == CallState.THINKING or (self.state == CallState.LISTENING and self._turn_open)

    def text(self) -> str:
        text = self.state.value + (f" ({self.detail})" if self.detail else "")
        if self.latency_s is not None:
            text += f" · last answer {self.latency_s:.2f} s after the question"
        return text

    def _move(self, state: CallState, detail: str = "") -> None:
        if (state, detail) == (self.state, self.detail):
            return
        self.state, self.detail = state, detail
        self._render(self.text())

    # ----- the connection

    def connecting(self) -> None:
        self._move(CallState.CONNECTING)

    def ready(self) -> None:
        self._turn_open = False
        self._question_end = None
        self._move(CallState.LISTENING)

    def reconnecting(self, attempt: int, delay_s: float) -> None:
        self._turn_open = False
        self._question_end = None
        self._move(CallState.RECONNECTING, f"attempt {attempt} in {delay_s:.1f} s")

    # ----- the user

    def user_started_speaking(self) -> None:
        if self.state in (CallState.THINKING, CallState.LISTENING):
            self._question_end = None  # the question goes on
            self._move(CallState.LISTENING)

    def question_ended(self, at: float) -> None:
        """The user stopped speaking, or a typed question (or a picture with one) was sent."""
        if self.state in (CallState.CONNECTING, CallState.RECONNECTING):
            return
        self._question_end = at
        self._move(CallState.THINKING)

    # ----- the server

    def turn_started(self) -> None:
        self._turn_open = True
        if self.state == CallState.LISTENING:
            self._move(CallState.THINKING)  # the server heard a question the client's VAD did not time

    def answer_audible(self, at: float) -> None:
        if not self.awaiting_audio:
            return
        if self._question_end is not None:
            self.latency_s = max(0.0, at - self._question_end)
            self._question_end = None
        self._move(CallState.SPEAKING)

    def turn_ended(self) -> None:
        self._turn_open = False
        if self.state in (CallState.SPEAKING, CallState.THINKING):
            self._question_end = None
            self._move(CallState.LISTENING)


_CLEAR_LINE = "\r\x1b[2K"  # back to the start of the line, and erase it


class Console:
    """``tty``: draw the status line in place (default: whether ``out`` is a terminal)."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None, tty: bool | None = None):
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.tty = tty if tty is not None else bool(getattr(self.out, "isatty", lambda: False)())
        self._stream_kind: str | None = None
        self.status = StatusLine(self._show_status)
        self._status_text: str | None = None
        self._status_pending = False  # it changed while a streamed line was open
        self._status_drawn = False  # (terminal) the status line is on screen, the cursor at its end

    # ----- the primitives

    def stream(self, kind: str, prefix: str, delta: str) -> None:
        """Continues the line of ``kind`` (starting it with ``prefix`` when another line was open)."""
        if self._stream_kind != kind:
            self.end_stream()
            self._clear_status()
            self.out.write(prefix)
            self._stream_kind = kind
        self.out.write(delta)
        self.out.flush()

    def end_stream(self) -> None:
        if self._stream_kind is not None:
            self.out.write("\n")
            self._stream_kind = None
            self._status_after_text()
            self.out.flush()

    def line(self, text: str) -> None:
        self.end_stream()
        self._clear_status()
        self.out.write(text + "\n")
        self._status_after_text()
        self.out.flush()

    def finish(self) -> None:
        """The call is over: ends the streamed line and leaves the last status on a line of its own."""
        self.end_stream()
        if self._status_drawn:
            self.out.write("\n")
            self._status_drawn = False
            self.out.flush()

    # ----- the status line

    def _show_status(self, text: str) -> None:
        self._status_text = text
        if self._stream_kind is not None:
            self._status_pending = True  # a streamed line is open: the status waits for its end
            return
        self._draw_status()
        self.out.flush()

    def _draw_status(self) -> None:
        self._status_pending = False
        if self._status_text is None:
            return
        if self.tty:
            self.out.write(_CLEAR_LINE + self._status_text)
            self._status_drawn = True
        else:
            self.out.write(f"status: {self._status_text}\n")

    def _clear_status(self) -> None:
        if self._status_drawn:
            self.out.write(_CLEAR_LINE)
            self._status_drawn = False

    def _status_after_text(self) -> None:
        if self.tty or self._status_pending:  # a terminal redraws it below the text; a log gets a missed change
            self._draw_status()

    def problem(self, message: str) -> None:
        """A line on stderr: something went wrong (the exit code says how badly)."""
        self.err.write(f"{PROGRAM}: {message}\n")
        self.err.flush()

    # ----- the call

    def connected(self, server_url: str, session_id: str | None) -> None:
        self.line(f"connected to {server_url} (session {session_id})")

    def resumed(self, session_id: str | None, resumed: bool) -> None:
        if resumed:
            self.line(f"reconnected: the conversation goes on (session {session_id})")
        else:
            self.line(f"reconnected: the server did not keep the conversation; a new one starts (session {session_id})")

    def connection_lost(self, why: str) -> None:
        self.line(f"connection lost: {why}")

    def reconnecting(self, attempt: int, limit: int | None, delay_s: float) -> None:
        of = f" of {limit}" if limit is not None else ""
        self.line(f"reconnecting in {delay_s:.1f} s (attempt {attempt}{of})")
        self.status.reconnecting(attempt, delay_s)

    def protocol_mismatch(self, server_version: int, client_version: int) -> None:
        self.line(f"warning: server speaks protocol {server_version}, this client {client_version}")

    def voice(self, voice: str, available: list[str] | None) -> None:
        others = f" (available: {', '.join(available)})" if available else ""
        self.line(f"voice: {voice}{others}")

    # ----- the user

    def typed(self, text: str) -> None:
        self.line(f"you (typed): {text}")

    def picture_sent(self, name: str | None, text: str | None) -> None:
        if text is not None:
            self.line(f"you (picture {name}): {text}")
        else:
            self.line(f"you (picture {name}): sent; it goes with your next question")

    def tune_sent(self, name: str | None, text: str | None) -> None:
        if text is not None:
            self.line(f"you (tune {name}): {text}")
        else:
            self.line(f"you (tune {name}): sent; it goes with your next question")

    def listening(self) -> None:
        self.line("listening…")

    def stopped_speaking(self, duration_s: float) -> None:
        self.line(f"you stopped ({duration_s:.1f} s)")

    def interrupt_sent(self) -> None:
        self.line("(interrupting the assistant)")

    # ----- the server

    def transcript(self, turn_id: int, delta: str) -> None:
        self.stream(f"transcript{turn_id}", "you said: ", delta)

    def reply(self, turn_id: int, delta: str) -> None:
        self.stream(f"text{turn_id}", "assistant: ", delta)

    def image_saved(self, path: Path, width: int, height: int) -> None:
        self.line(f"image saved: {path} ({width}x{height})")

    def image_not_saved(self, index: int, width: int, height: int) -> None:
        self.line(f"image #{index} ({width}x{height}) received, not saved (no output directory)")

    def image_invalid(self, index: int) -> None:
        self.line(f"image #{index}: invalid base64, skipped")

    def music(self, index: int, duration_s: float) -> None:
        self.line(f"♪ music #{index} ({duration_s:.1f} s) is playing")

    def interrupted(self) -> None:
        self.line("[assistant interrupted]")

    def continued(self, turn: int, earlier: int) -> None:
        """The server took a pause in the middle of a question for its end: turn ``turn`` asks turn ``earlier``'s
        question again, with what was said after the pause."""
        self.line(f"(turn {turn} goes on from turn {earlier}'s question: you had only paused)")

    def server_error(self, message: str) -> None:
        self.line(f"server error: {message}")
        self.problem(f"server error: {message}")
