"""What an RtcSessionManager reports to ServingMetrics over a real loopback peer, and ``bye`` ending a session."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry
from rtc_fakes import Client, FakeEngineSession, FakeTurn
from waiting import until

from assistant.metrics import ServingMetrics
from assistant.webrtc.ice import use_loopback_only
from assistant.webrtc.manager import RtcSessionManager

pytestmark = pytest.mark.timeout(60)


def value(metrics: ServingMetrics, name: str, **labels) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


class SlowStartEngineSession(FakeEngineSession):
    """The fake engine, with a pause before the turn's first audio and between frames (``frame_delay_s``)."""

    def __init__(self, first_audio_delay_s: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.first_audio_delay_s = first_audio_delay_s

    async def respond(self, turn, *, tentative=False):
        await asyncio.sleep(self.first_audio_delay_s)
        async for out in super().respond(turn, tentative=tentative):
            yield out


def test_ttfa_turns_underruns_and_sessions_reach_the_metrics_and_bye_ends_the_session():
    async def main():
        use_loopback_only()
        metrics = ServingMetrics(CollectorRegistry(), process=False)
        engines = []

        def new_engine_session():
            engines.append(SlowStartEngineSession(first_audio_delay_s=0.25, n_frames=15))
            return engines[-1]

        manager = RtcSessionManager(new_engine_session, turn_factory=FakeTurn, metrics=metrics)
        client = Client()
        session, answer = await manager.create(await client.offer())
        await client.answer(answer)
        await client.wait_for("ready")
        assert value(metrics, "anystream_active_sessions") == 1
        assert value(metrics, "anystream_sessions_created_total") == 1

        # turn 1: 0.25 s before the first frame, then 15 frames at once: one TTFA of about 0.25 s, no underrun
        client.send({"type": "text", "text": "hello"})
        await client.wait_for("turn_end")
        assert value(metrics, "anystream_time_to_first_audio_seconds_count") == 1
        ttfa = value(metrics, "anystream_time_to_first_audio_seconds_sum")
        assert 0.25 <= ttfa < 2.0, ttfa
        assert value(metrics, "anystream_turns_total", reason="complete") == 1
        assert value(metrics, "anystream_audio_underruns_total") == 0 and session.track.underruns == 0

        # turn 2: three frames 100 ms apart; the track plays 20 ms frames, so it runs dry between them
        engines[0].first_audio_delay_s = 0.0
        engines[0].n_frames, engines[0].frame_delay_s = 3, 0.1
        client.send({"type": "text", "text": "slowly"})
        await client.wait_for("turn_end", count=2)
        assert value(metrics, "anystream_time_to_first_audio_seconds_count") == 2
        runs = value(metrics, "anystream_audio_underruns_total")
        assert 1 <= runs <= 2 and runs == session.track.underruns
        assert value(metrics, "anystream_audio_underrun_seconds_total") >= 0.04
        assert value(metrics, "anystream_turns_total", reason="complete") == 2

        # the caller says bye: the server ends the session without any HTTP request
        client.send({"type": "bye"})
        await until(lambda: len(manager) == 0, what="the session to close after bye")
        assert session.closed and engines[0].closed
        assert value(metrics, "anystream_active_sessions") == 0
        await until(
            lambda: client.pc.connectionState == "closed" or client.channel.readyState == "closed",
            what="the caller to see the connection close",
        )
        await client.close()

    asyncio.run(main())


def test_an_interrupted_turn_counts_as_interrupted_and_its_cleared_audio_gives_no_ttfa():
    async def main():
        use_loopback_only()
        metrics = ServingMetrics(CollectorRegistry(), process=False)
        engine = FakeEngineSession(n_frames=500)
        manager = RtcSessionManager(lambda: engine, turn_factory=FakeTurn, metrics=metrics, max_queued_frames=10)
        client = Client()
        session, answer = await manager.create(await client.offer())
        await client.answer(answer)
        await client.wait_for("ready")
        client.send({"type": "text", "text": "a long story"})
        await client.wait_for("text")
        await until(lambda: session.track.frames_sent > 0, what="the first frame to leave")
        client.send({"type": "interrupt"})
        end = (await client.wait_for("turn_end"))[0]
        assert end["reason"] == "interrupted"
        assert value(metrics, "anystream_turns_total", reason="interrupted") == 1
        assert value(metrics, "anystream_turns_total", reason="complete") == 0
        assert value(metrics, "anystream_time_to_first_audio_seconds_count") == 1  # its audio did start
        assert value(metrics, "anystream_audio_underruns_total") == 0  # an interrupt is not an underrun
        await manager.close_all()
        assert value(metrics, "anystream_active_sessions") == 0
        await client.close()

    asyncio.run(main())
