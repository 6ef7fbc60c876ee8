"""Everything the edge client prints: the conversation on stdout, problems on stderr.

Streamed text (what the server heard, what the assistant says) goes on one line per speaker and turn; status lines
end such a line first. Problems go to stderr as ``anystream-edge: ...`` lines.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

PROGRAM = "anystream-edge"


class Console:
    def __init__(self, out: TextIO | None = None, err: TextIO | None = None):
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self._stream_kind: str | None = None

    # ----- the primitives

    def stream(self, kind: str, prefix: str, delta: str) -> None:
        """Continues the line of ``kind`` (starting it with ``prefix`` when another line was open)."""
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

    def problem(self, message: str) -> None:
        """A line on stderr: something went wrong (the exit code says how badly)."""
        self.err.write(f"{PROGRAM}: {message}\n")
        self.err.flush()

    # ----- the call

    def connected(self, server_url: str, session_id: str | None) -> None:
        self.line(f"connected to {server_url} (session {session_id})")

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

    def server_error(self, message: str) -> None:
        self.line(f"server error: {message}")
        self.problem(f"server error: {message}")
