"""A real :class:`~assistant.webrtc.manager.RtcSessionManager` behind ``POST /offer`` (aiohttp, in-process), with a
fake engine whose sessions remember their conversation: the edge client's reconnection tests talk to it.

Each engine session (:class:`HistoryEngineSession`) answers a turn with the question as its transcript, the reply
text ``"answer N"`` (N counts the turns of that conversation, so a resumed conversation goes on counting) and a short
tone; ``history`` holds every question it was asked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from aiohttp import web
from edge_doubles import serve_offers

from assistant.audio import OUTPUT_FRAME_SAMPLES
from assistant.endpointing import EndpointerConfig
from assistant.pipeline.outputs import AudioFrame, ReplyTextDelta, TranscriptDelta, TurnFinished
from assistant.protocol import FinishReason, ProtocolError, parse_offer_body
from assistant.webrtc.manager import RtcSessionManager, SessionLimitError
from assistant.webrtc.session import RtcSession


@dataclass
class QuestionTurn:
    audio: np.ndarray | None
    text: str | None
    image: bytes | None = None
    music: bytes | None = None
    continues: QuestionTurn | None = None


class HistoryEngineSession:
    """A conversation: every turn is remembered (``history``); its reply is numbered by that history."""

    def __init__(self, tone_frames: int = 10):
        self.tone_frames = tone_frames
        self.history: list[str | None] = []
        self.closed = False
        self._interrupted = False

    async def respond(self, turn: QuestionTurn):
        self._interrupted = False
        self.history.append(turn.text)
        yield TranscriptDelta(text=turn.text or "(speech)")
        yield ReplyTextDelta(text=f"answer {len(self.history)}")
        t = np.arange(OUTPUT_FRAME_SAMPLES) / 16000
        tone = (0.5 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
        for _ in range(self.tone_frames):
            if self._interrupted:
                break
            yield AudioFrame(pcm=tone.copy())
        yield TurnFinished(reason=FinishReason.INTERRUPTED if self._interrupted else FinishReason.COMPLETE)

    def interrupt(self) -> None:
        self._interrupted = True

    async def close(self) -> None:
        self.closed = True


class ResumeServer:
    """``POST /offer`` answered by ``manager`` (a real RtcSessionManager over HistoryEngineSession); ``engines`` lists
    every engine session made, ``sessions`` every RtcSession answered, in order."""

    def __init__(self, **manager_options):
        self.engines: list[HistoryEngineSession] = []
        self.sessions: list[RtcSession] = []
        self.manager = RtcSessionManager(
            self._new_engine_session,
            endpointer_config=EndpointerConfig(aggressiveness=3),
            turn_factory=QuestionTurn,
            **manager_options,
        )
        self.url = ""
        self._runner: web.AppRunner | None = None

    def _new_engine_session(self, voice: str | None = None) -> HistoryEngineSession:
        self.engines.append(HistoryEngineSession())
        return self.engines[-1]

    async def start(self) -> str:
        self._runner, self.url = await serve_offers(self._offer)
        return self.url

    async def stop(self) -> None:
        await self.manager.close_all()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _offer(self, request: web.Request) -> web.Response:
        try:
            offer = parse_offer_body(await request.read())
            session, answer = await self.manager.create(offer)
        except ProtocolError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except SessionLimitError as exc:
            return web.json_response({"error": str(exc)}, status=503)
        self.sessions.append(session)
        return web.json_response(answer.to_dict())

    async def drop_connection(self, session: RtcSession) -> None:
        """Closes the session's peer connection as a network fault would (no bye, no goodbye message)."""
        assert session.peer_connection is not None
        await session.peer_connection.close()


class EndlessSilence:
    """A live-like source of silence that never ends (the call lasts until stopped), paced by the capture track."""

    live = False
    finite = False

    async def read(self) -> np.ndarray:
        return np.zeros(960, dtype=np.float32)

    def close(self) -> None:
        pass
