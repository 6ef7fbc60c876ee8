"""The session starts its answer at the caller's pause and commits it at the end of their turn: over the real VAD,
fed 20 ms frames of a voiced buzz and silence (no network: the session's audio reader is handed a replayed track)."""

from __future__ import annotations

import asyncio
import fractions

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError
from rtc_fakes import FakeEngineSession, FakeTurn
from waiting import until

from assistant.endpointing import EndpointerConfig
from assistant.webrtc.session import RtcSession

RATE = 16000
FRAME = RATE // 50
ENDPOINTING = EndpointerConfig(pause_ms=120, end_silence_ms=400)
ONE_TURN = ["speech_started", "speech_stopped", "turn_started", "transcript", "text", "turn_end"]


def frames(*parts: tuple[str, float]) -> list[av.AudioFrame]:
    """("buzz" | "silence", seconds) parts as 20 ms s16 mono frames."""
    out = []
    for kind, seconds in parts:
        for _ in range(int(round(seconds * 50))):
            i = len(out)
            t = (i * FRAME + np.arange(FRAME)) / RATE
            wave = np.zeros(FRAME)
            if kind == "buzz":
                wave = 0.3 * sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 25))
            frame = av.AudioFrame.from_ndarray((wave * 32767).astype(np.int16)[None, :], format="s16", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = RATE, i * FRAME, fractions.Fraction(1, RATE)
            out.append(frame)
    return out


class ReplayedTrack:
    kind = "audio"

    def __init__(self, frames):
        self._frames = list(frames)

    async def recv(self):
        await asyncio.sleep(0.001)  # frames arrive apart, so the session's tasks run between them
        if not self._frames:
            raise MediaStreamError
        return self._frames.pop(0)


def messages(session: RtcSession) -> list[str]:
    return [m["type"] for m in session.sent_messages]


async def speak(parts, engine: FakeEngineSession) -> RtcSession:
    session = RtcSession(engine, "s", ENDPOINTING, turn_factory=FakeTurn)
    session.sent_messages = []
    session.send = lambda message: session.sent_messages.append(message.__dict__ | {"type": message.type})
    await session._consume_audio(ReplayedTrack(frames(*parts)))
    await until(lambda: session.turns.idle, what="the turn is over")
    return session


def test_a_pause_that_becomes_the_end_commits_the_early_answer():
    async def main():
        engine = FakeEngineSession(n_frames=2)
        session = await speak([("silence", 0.3), ("buzz", 1.0), ("silence", 0.8)], engine)
        assert engine.tentative == [True] and engine.discards == 0  # one turn, started at the pause
        assert engine.history == engine.turns and engine.turns[0].audio.size > 0.9 * RATE
        assert messages(session) == ONE_TURN
        assert session.turns.stats.committed == 1
        await session.close()

    asyncio.run(main())


def test_going_on_after_a_pause_discards_the_early_answer_without_a_trace():
    async def main():
        engine = FakeEngineSession(n_frames=2)
        parts = [("silence", 0.3), ("buzz", 0.6), ("silence", 0.2), ("buzz", 0.6), ("silence", 0.8)]
        session = await speak(parts, engine)
        assert engine.tentative == [True, True] and engine.discards == 1
        first, second = engine.turns
        assert engine.history == [second] and second.audio.size > first.audio.size + 0.7 * RATE
        # one question, one answer: the discarded start sent nothing
        assert messages(session) == ONE_TURN
        assert [m["turn_id"] for m in session.sent_messages if m["type"] == "turn_started"] == [1]
        await session.close()

    asyncio.run(main())


def test_without_pause_events_the_turn_starts_at_the_end_as_before():
    async def main():
        engine = FakeEngineSession(n_frames=2)
        session = RtcSession(engine, "s", EndpointerConfig(pause_ms=0, end_silence_ms=400), turn_factory=FakeTurn)
        await session._consume_audio(ReplayedTrack(frames(("silence", 0.3), ("buzz", 1.0), ("silence", 0.8))))
        await until(lambda: session.turns.idle and len(engine.turns) == 1, what="the turn is over")
        assert engine.tentative == [False] and session.turns.stats.speculated == 0
        await session.close()

    asyncio.run(main())
