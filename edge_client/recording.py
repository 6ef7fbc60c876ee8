"""The record of one call: every server event and client decision with its time, the text of each turn, the pictures
sent and received, and the ``session.json`` summary written at the end; with ``--save DIR``, every turn kept in a
folder of its own (:class:`TurnArchive`).

Times are seconds since the call started (``Recording.start()``) on the client's clock.

``TurnArchive`` (``--save DIR``) writes, for turn N of the call (numbered across reconnections),
``DIR/turn-NNN/``:

- ``question.wav``: the user's question as the microphone (or file) captured it: the last utterance the client's
  VAD timed before the turn started (48 kHz mono); ``question.png`` / ``.jpg``: a picture sent with or before it;
- ``answer.wav``: the answer as played: the turn's audio from its first audible frame to its last, after the
  interruption cut (audio of an interrupted reply that still came is silence, as at the speaker); 48 kHz mono;
- ``image-K.png``: each picture of the answer, the moment it arrives;
- ``music-K.wav``: each piece of music, cut from ``answer.wav`` by the ``music`` event's duration. The event leaves
  the server when the music's first frame is queued behind at most ``SERVER_AUDIO_QUEUE_FRAMES`` frames of the reply
  track, so the cut starts at most that far after the audio received by then, and exactly where the music must
  start when it ends the answer (the usual case);
- ``turn.json``: the question (typed text, what the server heard), the reply text, the files, how the turn ended,
  its latency (question end to first audible answer frame), and ``continues_turn``: the turn whose question this one
  asks again when the server had taken a pause in the middle of it for its end (else null).

``DIR/session.json`` is the call's summary, as with ``--output DIR``. Everything the archive holds in memory is
bounded: the capture ring (``capture_s``) and each answer (``max_answer_s``; later audio is not kept).
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from assistant.audio import float_to_pcm16
from assistant.protocol import ImageReady, ServerMessage

log = logging.getLogger(__name__)

SUMMARY_FILE = "session.json"
ARCHIVE_RATE = 48_000
ARCHIVE_FRAME = 960  # 20 ms
# Frames an RtcSession's reply track queues (its max_queued_frames): how far the music event may run ahead of its audio.
SERVER_AUDIO_QUEUE_FRAMES = 25
# A frame with no sample louder than this (-60 dBFS) is quiet: the answer's first and last audible frames bound it.
AUDIBLE_PEAK = 33


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
        self.music_sent_records: list[dict[str, Any]] = []  # the tunes sent (session.json: "music_sent")
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

    def music_sent(self, name: str | None, size: int, text: str | None) -> None:
        t = self.now()
        self.music_sent_records.append({"t": t, "name": name, "bytes": size, "text": text})
        self.local_events.append({"t": t, "event": "music_sent", "name": name, "bytes": size, "text": text})

    def save_image(self, message: ImageReady, turn: int | None = None) -> Path | None:
        """Writes the picture as ``image_{turn}_{index}.png`` (``turn``: the call's number for the turn, default the
        server's) and notes it on the latest event (the one announcing it). Returns None when there is no output
        directory; raises ValueError when the data is not base64."""
        png = base64.b64decode(message.png_base64, validate=True)
        record = self.events[-1] if self.events else {}
        record["png_bytes"] = len(png)
        if self.out_dir is None:
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"image_{message.turn_id if turn is None else turn}_{message.index}.png"
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
            "music_sent": self.music_sent_records,
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


# ---------------------------------------------------------------------------------------------------------
# --save DIR: every turn in a folder of its own


@dataclass
class _Question:
    audio: np.ndarray | None = None  # int16, 48 kHz
    text: str | None = None
    picture: bytes | None = None
    picture_name: str | None = None


@dataclass
class _Turn:
    number: int
    server_turn_id: int
    session_id: str | None
    folder: Path
    question: _Question
    frames: list[np.ndarray] = field(default_factory=list)  # the answer from its first audible frame
    dropped_frames: int = 0  # answer audio past max_answer_s, not kept
    music: list[tuple[int, float, int]] = field(default_factory=list)  # (index, duration_s, frames received by then)
    images: list[str] = field(default_factory=list)
    ended_at: float | None = None
    reason: str | None = None
    continues: int | None = None  # the turn whose question this one asks again, continued
    transcript: str = ""
    reply_text: str = ""
    latency_s: float | None = None


class TurnArchive:
    """Keeps every turn of a call under ``root/turn-NNN/`` (see the module docstring).

    The client feeds it: ``captured`` (every capture frame), ``question_spoken`` (the client's VAD ended an
    utterance), ``question_typed`` / ``question_picture``; ``turn_started``, ``answer_frame`` (every received frame
    as the playback has it: stale audio as silence), ``image``, ``music``, ``turn_ended``; and ``close``. A turn is
    written once it has ended and ``answer_tail_s`` more of audio went by (its last frames may come after the
    ``turn_end`` event), or when the next turn starts, or at ``close``. Nothing here raises on a full disk: a failed
    write is logged and counted in ``write_errors``.
    """

    def __init__(
        self,
        root: Path,
        clock: Callable[[], float] = time.monotonic,
        capture_s: float = 35.0,
        max_answer_s: float = 180.0,
        answer_tail_s: float = 0.5,
    ):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self.max_answer_frames = int(max_answer_s * ARCHIVE_RATE / ARCHIVE_FRAME)
        self.answer_tail_s = answer_tail_s
        self._capture: deque[np.ndarray] = deque(maxlen=int(capture_s * ARCHIVE_RATE / ARCHIVE_FRAME))
        self._question = _Question()
        self._turns: dict[int, _Turn] = {}  # started, not written yet
        self._answering: _Turn | None = None  # the turn the received audio belongs to
        self.saved: list[Path] = []  # the folders written, in order
        self.write_errors = 0

    def folder(self, number: int) -> Path:
        return self.root / f"turn-{number:03d}"

    # ----- the question

    def captured(self, frame: np.ndarray) -> None:
        """One 20 ms capture frame (float32 or int16, 48 kHz)."""
        pcm = np.asarray(frame)
        self._capture.append(pcm.copy() if pcm.dtype == np.int16 else float_to_pcm16(pcm))

    def question_spoken(self, duration_s: float) -> None:
        """The client's VAD says an utterance of ``duration_s`` just ended: its audio is the last captured frames."""
        frames = min(len(self._capture), int(np.ceil(duration_s * ARCHIVE_RATE / ARCHIVE_FRAME)))
        if frames > 0:
            self._question.audio = np.concatenate(list(self._capture)[-frames:])

    def question_typed(self, text: str) -> None:
        self._question.text = text

    def question_picture(self, data: bytes, name: str | None, text: str | None) -> None:
        self._question.picture, self._question.picture_name = data, name
        if text is not None:
            self._question.text = text

    # ----- the answer

    def turn_started(
        self, number: int, server_turn_id: int, session_id: str | None, continues: int | None = None
    ) -> None:
        if self._answering is not None:
            self._write(self._answering)  # a newer turn: whatever comes now is its audio
        question, self._question = self._question, _Question()
        turn = _Turn(number, server_turn_id, session_id, self.folder(number), question, continues=continues)
        self._turns[number] = turn
        self._answering = turn

    def answer_frame(self, pcm: np.ndarray) -> None:
        turn = self._answering
        if turn is None:
            return
        if turn.ended_at is not None and self.clock() - turn.ended_at > self.answer_tail_s:
            self._write(turn)
            return
        frame = np.asarray(pcm, dtype=np.int16).reshape(-1)
        if not turn.frames and int(np.abs(frame.astype(np.int32)).max(initial=0)) < AUDIBLE_PEAK:
            return  # before the answer is heard
        if len(turn.frames) >= self.max_answer_frames:
            turn.dropped_frames += 1
            return
        turn.frames.append(frame.copy())

    def image(self, number: int, index: int, png: bytes) -> Path | None:
        turn = self._turns.get(number)
        if turn is None:
            return None
        path = turn.folder / f"image-{index}.png"
        if self._save(path, lambda: path.write_bytes(png)):
            turn.images.append(path.name)
            return path
        return None

    def music(self, number: int, index: int, duration_s: float) -> None:
        turn = self._turns.get(number)
        if turn is not None:
            turn.music.append((index, float(duration_s), len(turn.frames)))

    def turn_ended(
        self, number: int, reason: str, transcript: str, reply_text: str, latency_s: float | None = None
    ) -> None:
        turn = self._turns.get(number)
        if turn is None:
            return
        turn.ended_at = self.clock()
        turn.reason, turn.transcript, turn.reply_text, turn.latency_s = reason, transcript, reply_text, latency_s
        if turn is not self._answering:
            self._write(turn)

    def close(self) -> None:
        """Writes every turn not written yet (the call is over)."""
        for turn in list(self._turns.values()):
            self._write(turn)

    # ----- writing

    def _save(self, path: Path, write: Callable[[], object]) -> bool:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write()
            return True
        except OSError as exc:
            self.write_errors += 1
            log.warning("could not save %s: %s", path, exc)
            return False

    def _write(self, turn: _Turn) -> None:
        import soundfile

        self._turns.pop(turn.number, None)
        if self._answering is turn:
            self._answering = None
        folder = turn.folder
        files: dict[str, Any] = {}
        question = turn.question
        if question.audio is not None:
            path = folder / "question.wav"
            if self._save(path, lambda: soundfile.write(str(path), question.audio, ARCHIVE_RATE, subtype="PCM_16")):
                files["question_audio"] = path.name
        if question.picture is not None:
            suffix = ".jpg" if question.picture[:3] == b"\xff\xd8\xff" else ".png"
            path = folder / f"question{suffix}"
            picture = question.picture
            if self._save(path, lambda: path.write_bytes(picture)):
                files["question_picture"] = path.name
        frames = turn.frames
        while frames and int(np.abs(frames[-1].astype(np.int32)).max(initial=0)) < AUDIBLE_PEAK:
            frames.pop()  # after the answer was heard
        music_files = []
        if frames:
            answer = np.concatenate(frames)
            path = folder / "answer.wav"
            if self._save(path, lambda: soundfile.write(str(path), answer, ARCHIVE_RATE, subtype="PCM_16")):
                files["answer_audio"] = path.name
            for index, duration_s, received in turn.music:
                cut = self._music_cut(received, duration_s, len(frames))
                if cut is None:
                    continue
                start, end = cut
                piece = answer[start * ARCHIVE_FRAME : end * ARCHIVE_FRAME]
                path = folder / f"music-{index}.wav"
                if self._save(path, partial(soundfile.write, str(path), piece, ARCHIVE_RATE, subtype="PCM_16")):
                    music_files.append(
                        {"file": path.name, "index": index, "duration_s": duration_s, "start_s": start * 0.02}
                    )
        record = {
            "turn": turn.number,
            "server_turn_id": turn.server_turn_id,
            "session_id": turn.session_id,
            "continues_turn": turn.continues,
            "question": {
                "text": question.text,
                "heard": turn.transcript,
                "audio": files.get("question_audio"),
                "picture": files.get("question_picture"),
                "picture_name": question.picture_name,
            },
            "reply_text": turn.reply_text,
            "answer_audio": files.get("answer_audio"),
            "answer_s": round(len(frames) * ARCHIVE_FRAME / ARCHIVE_RATE, 3),
            "answer_frames_not_kept": turn.dropped_frames,
            "images": turn.images,
            "music": music_files,
            "end_reason": turn.reason or "unfinished",
            "latency_s": None if turn.latency_s is None else round(turn.latency_s, 3),
        }
        path = folder / "turn.json"
        if self._save(path, lambda: path.write_text(json.dumps(record, indent=2, ensure_ascii=False))):
            self.saved.append(folder)

    @staticmethod
    def _music_cut(received: int, duration_s: float, total: int) -> tuple[int, int] | None:
        """The frames [start, end) of a piece of ``duration_s`` announced when ``received`` frames had come: no
        earlier than that, at most the server's queue later, and exactly its length before the answer's end when the
        piece ends the answer."""
        length = max(1, round(duration_s * ARCHIVE_RATE / ARCHIVE_FRAME))
        start = max(received, min(received + SERVER_AUDIO_QUEUE_FRAMES, total - length))
        end = min(total, start + length)
        return (start, end) if end > start else None
