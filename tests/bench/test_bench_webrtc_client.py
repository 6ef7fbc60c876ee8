"""The benchmark's WebRTC callers against the Ray-free local gateway over a scripted engine: the figures they report
are the ones the script makes (time to first audio, a mid-answer gap as one underrun, a refused caller)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from speechlike import voiced_like

from anystream_bench.local_gateway import LocalGateway
from anystream_bench.timeline import AnswerTimeline, Thresholds
from anystream_bench.webrtc_client import run_clients
from assistant.audio import OUTPUT_FRAME_SAMPLES
from assistant.pipeline.outputs import AudioFrame, ReplyTextDelta, TurnFinished
from assistant.protocol import FinishReason

pytestmark = pytest.mark.timeout(120)

FIRST_AUDIO_DELAY_S = 0.3
GAP_S = 0.4


class ScriptedSession:
    """0.3 s after the turn starts: 0.4 s of tone, a 0.4 s pause (the engine falls behind), 0.4 s more tone."""

    def __init__(self):
        self.turns = []

    async def respond(self, turn, *, tentative=False):
        self.turns.append(turn)
        yield ReplyTextDelta(text="beep")
        await asyncio.sleep(FIRST_AUDIO_DELAY_S)
        t = np.arange(OUTPUT_FRAME_SAMPLES) / 16000
        tone = (0.5 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
        for _ in range(20):
            yield AudioFrame(pcm=tone.copy())
        await asyncio.sleep(GAP_S + 20 * 0.02)  # the 20 frames play out first, then the track runs dry for GAP_S
        for _ in range(20):
            yield AudioFrame(pcm=tone.copy())
        yield TurnFinished(reason=FinishReason.COMPLETE)

    def interrupt(self):
        pass

    def commit(self):
        pass

    def discard(self):
        pass

    async def close(self):
        pass


class ScriptedEngine:
    voices = None

    def __init__(self):
        self.sessions = []

    def new_session(self, voice=None):
        self.sessions.append(ScriptedSession())
        return self.sessions[-1]


def voice_burst_question(seconds: float = 0.8) -> np.ndarray:
    """A burst of voice-like sound (the VAD calls it speech) at 16 kHz."""
    return voiced_like(seconds)


@pytest.mark.slow  # real WebRTC with the script's real-time delays: seconds
def test_callers_report_ttfa_one_underrun_and_a_refused_offer():
    engine = ScriptedEngine()
    gateway = LocalGateway(engine, max_sessions=1)
    url = gateway.start()
    try:
        # two callers, one place: the second (starting later) is refused with 503 busy
        # The callers receive through a one-frame jitter buffer, as the edge client does (its playback buffer absorbs
        # the rest): a loaded machine's scheduling stalls of up to 0.1 s are not the scripted 0.4 s gap.
        thresholds = Thresholds(underrun_gap_s=0.1)
        results = asyncio.run(
            run_clients(url, voice_burst_question(), [0.0, 0.3], turn_timeout_s=30.0, thresholds=thresholds)
        )
    finally:
        gateway.stop()
    first, second = results
    assert second.status == "rejected" and second.http_status == 503 and second.reason == "busy"
    assert first.status == "ok", first.reason
    (turn,) = first.turns
    assert turn["finish_reason"] == "complete" and not turn["errors"]
    # the server's endpointer waits for silence before the turn starts, then the engine waits FIRST_AUDIO_DELAY_S
    assert turn["endpoint_s"] is not None and 0.1 < turn["endpoint_s"] < 3.0
    assert FIRST_AUDIO_DELAY_S <= turn["ttfa_after_endpoint_s"] < FIRST_AUDIO_DELAY_S + 1.5
    assert turn["ttfa_s"] == pytest.approx(turn["endpoint_s"] + turn["ttfa_after_endpoint_s"])
    # 0.8 s of tone arrived, with one gap of about GAP_S in the middle
    assert 0.7 <= turn["answer_audio_s"] <= 0.9
    assert turn["underruns"] == 1 and GAP_S - 0.1 < turn["underrun_s"] < GAP_S + 0.3
    assert turn["rtf"] == pytest.approx(turn["answer_span_s"] / turn["answer_audio_s"])
    assert 1.2 < turn["rtf"] < 2.0
    assert len(engine.sessions) == 1 and engine.sessions[0].turns[0].audio is not None


def test_timeline_definitions():
    loud = np.full(960, 3000, np.int16)
    quiet_speech = np.full(960, 40, np.int16)  # below loud, above digital silence: still answer audio
    silence = np.zeros(960, np.int16)
    timeline = AnswerTimeline(t0=10.0)
    timeline.add(9.9, loud, 48000)  # before the end of the question: not the answer
    t = 10.5
    for pcm in [silence, loud, quiet_speech, loud] + [silence] * 5 + [loud, loud]:
        timeline.add(t, pcm, 48000)
        t += 0.02
    figures = timeline.figures(Thresholds(loud_rms=300, silence_peak=16, underrun_gap_s=0.06))
    assert figures["ttfa_s"] == pytest.approx(0.52)
    assert figures["answer_audio_s"] == pytest.approx(5 * 0.02)
    assert figures["underruns"] == 1 and figures["underrun_s"] == pytest.approx(0.10)
    assert figures["answer_span_s"] == pytest.approx(10 * 0.02)
    assert figures["rtf"] == pytest.approx(2.0)
    assert AnswerTimeline(t0=0.0).figures()["ttfa_s"] is None
