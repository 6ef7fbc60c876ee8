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


class AudioClock:
    """The session's clock, advanced by the audio a replayed track delivers (20 ms a frame), so windows measured in
    seconds of conversation do not depend on how fast the test replays it."""

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class ClockedTrack(ReplayedTrack):
    def __init__(self, frames, clock: AudioClock):
        super().__init__(frames)
        self.clock = clock

    async def recv(self):
        frame = await super().recv()
        self.clock.t += FRAME / RATE
        return frame


async def converse(parts, engine: FakeEngineSession, config: EndpointerConfig = ENDPOINTING) -> RtcSession:
    """Like ``speak``, with the session's clock following the audio; returns when every turn is over."""
    clock = AudioClock()
    session = RtcSession(engine, "s", config, turn_factory=FakeTurn, now=clock)
    session.sent_messages = []
    session.send = lambda message: session.sent_messages.append(message.__dict__ | {"type": message.type})
    await session._consume_audio(ClockedTrack(frames(*parts), clock))
    await until(lambda: session.turns.idle, what="every turn is over")
    return session


# A question cut in two by a pause longer than the end of a turn (400 ms here), then a gap before the second half.
def halves(gap_s: float) -> list[tuple[str, float]]:
    return [("silence", 0.3), ("buzz", 0.8), ("silence", 0.5), ("silence", gap_s), ("buzz", 0.6), ("silence", 0.8)]


def longest_silence_s(wave: np.ndarray) -> float:
    """The longest run of exactly silent 20 ms blocks before the last sound (the test's silence is digital zero)."""
    silent = [not np.any(wave[i : i + FRAME]) for i in range(0, wave.size - FRAME + 1, FRAME)]
    while silent and silent[-1]:
        silent.pop()
    longest = run = 0
    for quiet in silent:
        run = run + 1 if quiet else 0
        longest = max(longest, run)
    return longest * FRAME / RATE


def test_speech_soon_after_a_turn_continues_its_question_as_one_turn_in_its_place():
    async def main():
        engine = FakeEngineSession(n_frames=2)
        session = await converse(halves(0.3), engine)
        first, whole = engine.history
        assert whole.continues is first and first.continues is None
        # the whole question: the first half's audio, a short pause (not its end-of-turn silence), the second half
        voiced = int(0.9 * RATE)  # the first half's pre-roll and buzz
        assert np.array_equal(whole.audio[:voiced], first.audio[:voiced])
        assert first.audio.size + 0.6 * RATE < whole.audio.size < first.audio.size + 1.0 * RATE
        assert 0.15 <= longest_silence_s(whole.audio[voiced:]) <= 0.25  # a short pause, not 0.4 s + the pre-roll
        assert session.stats.continued_questions == 1
        started = [m for m in session.sent_messages if m["type"] == "turn_started"]
        assert [(m["turn_id"], m["continues"]) for m in started] == [(1, None), (2, 1)]  # the caller is told
        await session.close()

    asyncio.run(main())


def test_speech_after_the_window_or_with_continuation_off_is_a_new_question():
    async def main():
        late = FakeEngineSession(n_frames=2)
        late_session = await converse(halves(1.2), late)  # SpeechStart about 1.4 s after the first turn ended
        off = FakeEngineSession(n_frames=2)
        no_continuing = EndpointerConfig(pause_ms=120, end_silence_ms=400, continue_within_ms=0)
        off_session = await converse(halves(0.3), off, no_continuing)
        for engine, session in ((late, late_session), (off, off_session)):
            first, second = engine.history
            assert second.continues is None and second.audio.size < first.audio.size
            assert session.stats.continued_questions == 0
            await session.close()

    asyncio.run(main())


def test_a_typed_question_in_between_leaves_nothing_to_continue():
    async def main():
        engine = FakeEngineSession(n_frames=2)
        clock = AudioClock()
        session = RtcSession(engine, "s", ENDPOINTING, turn_factory=FakeTurn, now=clock)
        session.send = lambda message: None
        await session._consume_audio(ClockedTrack(frames(*halves(0.3)[:3]), clock))
        await until(lambda: session.turns.idle and len(engine.history) == 1, what="the first question is answered")
        await session.start_turn(text="and what about pictures")
        await session._consume_audio(ClockedTrack(frames(*halves(0.3)[3:]), clock))
        await until(lambda: session.turns.idle and len(engine.history) == 3, what="the spoken question is answered")
        assert engine.history[2].continues is None and engine.history[2].audio.size < 1.2 * RATE
        await session.close()

    asyncio.run(main())


def test_while_the_caller_speaks_the_question_so_far_is_prepared():
    async def main():
        engine = FakeEngineSession(n_frames=2)
        config = EndpointerConfig(pause_ms=120, end_silence_ms=400, progress_every_ms=300)
        session = RtcSession(engine, "s", config, turn_factory=FakeTurn)
        await session._consume_audio(ReplayedTrack(frames(("silence", 0.3), ("buzz", 1.2), ("silence", 0.8))))
        await until(lambda: session.turns.idle and len(engine.turns) == 1, what="the turn is over")
        assert len(engine.prepared) >= 2  # the controller runs one at a time, the newest next
        sizes = [t.audio.size for t in engine.prepared]
        asked = engine.turns[0].audio
        assert sizes == sorted(sizes) and sizes[-1] < asked.size
        assert all(np.array_equal(t.audio, asked[: t.audio.size]) for t in engine.prepared)
        await session.close()

    asyncio.run(main())
