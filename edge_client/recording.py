"""The record of one call: every server event and client decision with its time, the text of each turn, the pictures
sent and received, and the ``session.json`` summary written at the end.

Times are seconds since the call started (``Recording.start()``) on the client's clock.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from assistant.protocol import ImageReady, ServerMessage

SUMMARY_FILE = "session.json"


class Recording:
    def __init__(self, out_dir: Path | None, clock: Callable[[], float] = time.monotonic):
        """out_dir: where received pictures and session.json go; None keeps everything in memory only."""
        self.out_dir = out_dir
        self.clock = clock
        self.t0 = clock()
        self.events: list[dict[str, Any]] = []  # every server event, with its arrival time (png data left out)
        self.local_events: list[dict[str, Any]] = []  # client-side VAD decisions, interrupts sent, the hang-up
        self.images: list[str] = []  # paths of the pictures saved
        self.images_sent: list[dict[str, Any]] = []
        self.reply_text: dict[int, str] = {}
        self.transcripts: dict[int, str] = {}
        self.server_voice: str | None = None
        self.server_voices: list[str] | None = None
        self.barge_ins = 0  # replies the server reported interrupted

    def start(self) -> None:
        self.t0 = self.clock()

    def now(self) -> float:
        return round(self.clock() - self.t0, 4)

    def since_start(self, t: float) -> float:
        """A time of the client's clock as seconds since the call started."""
        return round(t - self.t0, 4)

    # ----- what happened

    def local(self, event: str, **fields: Any) -> dict[str, Any]:
        record = {"t": self.now(), "event": event, **fields}
        self.local_events.append(record)
        return record

    def server_message(self, message: ServerMessage) -> dict[str, Any]:
        record = {"t": self.now(), **{k: v for k, v in asdict(message).items() if k != "png_base64"}}
        self.events.append(record)
        return record

    def add_transcript(self, turn_id: int, delta: str) -> None:
        self.transcripts[turn_id] = self.transcripts.get(turn_id, "") + delta

    def add_reply(self, turn_id: int, delta: str) -> None:
        self.reply_text[turn_id] = self.reply_text.get(turn_id, "") + delta

    def image_sent(self, name: str | None, size: int, text: str | None) -> None:
        t = self.now()
        self.images_sent.append({"t": t, "name": name, "bytes": size, "text": text})
        self.local_events.append({"t": t, "event": "image_sent", "name": name, "bytes": size, "text": text})

    def save_image(self, message: ImageReady) -> Path | None:
        """Writes the picture as ``image_{turn}_{index}.png`` and notes it on the latest event (the one announcing
        it). Returns None when there is no output directory; raises ValueError when the data is not base64."""
        png = base64.b64decode(message.png_base64, validate=True)
        record = self.events[-1] if self.events else {}
        record["png_bytes"] = len(png)
        if self.out_dir is None:
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"image_{message.turn_id}_{message.index}.png"
        path.write_bytes(png)
        record["path"] = str(path)
        self.images.append(str(path))
        return path

    # ----- the summary

    def summary(
        self,
        *,
        server: str,
        session_id: str | None,
        exit_code: int | None,
        exit_reason: str,
        requested_voice: str | None,
        audio: dict[str, Any],
    ) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for event in self.events:
            counts[event["type"]] = counts.get(event["type"], 0) + 1
        return {
            "server": server,
            "session_id": session_id,
            "exit_code": exit_code,
            "exit_reason": exit_reason,
            "duration_s": self.now(),
            "counts": counts,
            "events": self.events,
            "local_events": self.local_events,
            "images": self.images,
            "images_sent": self.images_sent,
            "voice": {"requested": requested_voice, "server": self.server_voice, "available": self.server_voices},
            "reply_text": {str(k): v for k, v in self.reply_text.items()},
            "transcripts": {str(k): v for k, v in self.transcripts.items()},
            "barge_ins": self.barge_ins,
            "audio": audio,
        }

    def write_summary(self, summary: dict[str, Any]) -> Path | None:
        """Writes session.json into the output directory (None: there is none). Raises OSError."""
        if self.out_dir is None:
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / SUMMARY_FILE
        path.write_text(json.dumps(summary, indent=2, ensure_ascii=False))
        return path
