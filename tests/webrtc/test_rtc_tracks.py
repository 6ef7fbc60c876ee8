"""ReplyAudioTrack on its own: pacing, clearing, backpressure, the first-played hook and sparse idle silence.

Every test runs on a virtual clock (``waiting.run_in_virtual_time``) and the track is paced by that loop's clock
(``LoopClock``), so the times a test reads are exact: frame ``n`` of a reply leaves at ``n * 20 ms``.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from waiting import run_in_virtual_time

from assistant.audio import OUTPUT_FRAME_SAMPLES, SAMPLE_RATE
from assistant.webrtc.tracks import ReplyAudioTrack

pytestmark = pytest.mark.timeout(60)

FRAME_S = OUTPUT_FRAME_SAMPLES / SAMPLE_RATE  # 20 ms


class LoopClock:
    """The pacing clock of the running loop: ``now()`` is ``loop.time()`` and ``sleep`` is ``asyncio.sleep``, so on a
    virtual-time loop the track's pacing takes no real time and is exact."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def track_on_loop_clock(**options) -> ReplyAudioTrack:
    return ReplyAudioTrack(clock=LoopClock(), **options)


def now() -> float:
    return asyncio.get_running_loop().time()


def tone(value: int = 1000) -> np.ndarray:
    return np.full(OUTPUT_FRAME_SAMPLES, value, dtype=np.int16)


def test_reply_track_paces_and_clears():
    async def main():
        track = track_on_loop_clock(max_queued_frames=4)  # idle: one silent frame every 0.4 s (the default)
        assert track.idle_frame_interval_s == 0.4
        for _ in range(4):
            await track.put(tone())
        frames, sent_at = [], []
        for _ in range(3):
            frames.append(await track.recv())
            sent_at.append(now())
        assert sent_at == pytest.approx([0.0, FRAME_S, 2 * FRAME_S], abs=1e-9)  # the first at once, then every 20 ms
        assert [f.pts for f in frames] == [0, 320, 640] and frames[0].sample_rate == 16000
        assert track.clear() == 1
        assert await track.wait_played(timeout=0.1)
        assert now() == pytest.approx(2 * FRAME_S, abs=1e-9)  # nothing left to play: no waiting
        silent = await track.recv()
        # idle now (cleared, nothing queued): the frame's 20 ms slot, then the idle interval, then silence stamped
        # with the time it left (the RTP clock skips the frames not sent)
        left = 3 * FRAME_S + 0.4
        assert now() == pytest.approx(left, abs=1e-9)
        assert not silent.to_ndarray().any() and silent.pts == round(left * SAMPLE_RATE)
        track.stop()

    run_in_virtual_time(main())


def test_an_idle_reply_track_sends_sparse_silence_and_a_reply_at_once():
    async def main():
        track = track_on_loop_clock(idle_frame_interval_s=0.3)
        first = await track.recv()  # the first frame starts the clock; idle, it is silence after one interval
        assert now() == pytest.approx(0.3, abs=1e-9) and first.pts == round(0.3 * SAMPLE_RATE)
        t0 = now()
        silent = await track.recv()
        idle_gap = now() - t0
        assert not silent.to_ndarray().any()
        # one frame per idle interval (after the frame's own 20 ms slot), not one per 20 ms
        assert idle_gap == pytest.approx(FRAME_S + 0.3, abs=1e-9)
        assert silent.pts - first.pts == round(idle_gap * SAMPLE_RATE)

        async def put_soon():
            await asyncio.sleep(0.1)
            await track.put(tone())
            return now()

        t1 = now()
        putter = asyncio.ensure_future(put_soon())
        loud = await track.recv()
        woke_at = now()
        put_at = await putter
        assert put_at == pytest.approx(t1 + 0.1, abs=1e-9)
        assert loud.to_ndarray().all() and woke_at == put_at  # a frame put while idle leaves at once
        # the RTP clock jumped over the frames not sent: the pts says when the frame left (0.1 s after the silence)
        assert loud.pts - silent.pts == round((woke_at - t1) * SAMPLE_RATE) == round(0.1 * SAMPLE_RATE)
        track.begin_reply()  # during a reply the track is paced at 20 ms again, silence included
        frames, sent_at = [], []
        for _ in range(3):
            frames.append(await track.recv())
            sent_at.append(now())
        assert sent_at == pytest.approx([woke_at + FRAME_S * n for n in (1, 2, 3)], abs=1e-9)
        assert not any(f.to_ndarray().any() for f in frames)
        assert [f.pts - loud.pts for f in frames] == [320, 640, 960]
        track.stop()

    run_in_virtual_time(main())


def test_a_put_waiting_for_room_drops_its_frame_when_the_track_is_cleared_or_stopped():
    async def main():
        track = track_on_loop_clock(max_queued_frames=2)
        await track.put(tone(1))
        await track.put(tone(2))
        waiting = asyncio.ensure_future(track.put(tone(3)))
        await asyncio.sleep(0)  # one turn of the loop: the put is now waiting for room
        assert not waiting.done()
        assert track.clear() == 2
        await waiting
        assert track.queued_frames == 0  # the frame put for the cleared reply never plays
        assert await track.wait_played(timeout=0.1)
        await track.put(tone(4))  # a later reply queues as usual
        await track.put(tone(5))
        stopped = asyncio.ensure_future(track.put(tone(6)))
        await asyncio.sleep(0)
        track.stop()
        await asyncio.wait_for(stopped, 1)  # stopping the track releases a waiting put
        assert track.queued_frames == 2

    run_in_virtual_time(main())


def test_a_waiting_put_takes_the_room_a_sent_frame_leaves():
    async def main():
        track = track_on_loop_clock(max_queued_frames=1, idle_frame_interval_s=None)
        await track.put(tone(1))
        waiting = asyncio.ensure_future(track.put(tone(2)))
        first = await track.recv()
        await asyncio.wait_for(waiting, 1)
        second = await track.recv()
        assert first.to_ndarray()[0, 0] == 1 and second.to_ndarray()[0, 0] == 2
        track.stop()

    run_in_virtual_time(main())


def test_begin_reply_calls_back_once_when_the_replys_first_frame_has_left():
    async def main():
        track = track_on_loop_clock(idle_frame_interval_s=None)
        played = []
        track.begin_reply(lambda: played.append(track.frames_sent))
        await track.put(tone())
        await track.put(tone())
        assert played == []
        await track.recv()
        await track.recv()
        assert played == [1]  # called as the first frame left, and only then
        track.begin_reply(lambda: played.append("cleared"))
        await track.put(tone())
        track.clear()  # the frame it waited for never leaves
        await track.put(tone())
        await track.recv()
        assert played == [1]
        track.stop()

    run_in_virtual_time(main())
