"""ReplyAudioTrack on its own: pacing, clearing, backpressure, the first-played hook and sparse idle silence."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from assistant.audio import OUTPUT_FRAME_SAMPLES
from assistant.webrtc.tracks import ReplyAudioTrack

pytestmark = pytest.mark.timeout(60)


def run(coro):
    return asyncio.run(coro)


def tone(value: int = 1000) -> np.ndarray:
    return np.full(OUTPUT_FRAME_SAMPLES, value, dtype=np.int16)


def test_reply_track_paces_and_clears():
    async def main():
        track = ReplyAudioTrack(max_queued_frames=4)
        for _ in range(4):
            await track.put(tone())
        t0 = time.monotonic()
        frames = [await track.recv() for _ in range(3)]
        assert 0.03 < time.monotonic() - t0 < 0.1  # 3 frames: sent at 0, 20, 40 ms
        assert [f.pts for f in frames] == [0, 320, 640] and frames[0].sample_rate == 16000
        assert track.clear() == 1
        assert await track.wait_played(timeout=0.1)
        silent = await track.recv()
        assert not silent.to_ndarray().any()
        track.stop()

    run(main())


def test_an_idle_reply_track_sends_sparse_silence_and_a_reply_at_once():
    async def main():
        track = ReplyAudioTrack(idle_frame_interval_s=0.3)
        await track.recv()  # the first frame starts the clock
        t0 = time.monotonic()
        silent = await track.recv()
        idle_gap = time.monotonic() - t0
        assert not silent.to_ndarray().any()
        assert 0.25 < idle_gap < 0.6  # one frame per idle interval, not one per 20 ms

        async def put_soon():
            await asyncio.sleep(0.1)
            await track.put(tone())

        t1 = time.monotonic()
        putter = asyncio.ensure_future(put_soon())
        loud = await track.recv()
        woke_after = time.monotonic() - t1
        await putter
        assert loud.to_ndarray().all() and woke_after < 0.2  # a frame put while idle leaves at once
        # the RTP clock jumped over the frames not sent: the pts says when the frame left (~0.1 s after the silence)
        assert loud.pts - silent.pts >= int(0.08 * 16000) and loud.pts % OUTPUT_FRAME_SAMPLES == 0
        track.begin_reply()  # during a reply the track is paced at 20 ms again, silence included
        t2 = time.monotonic()
        frames = [await track.recv() for _ in range(3)]
        assert time.monotonic() - t2 < 0.15 and not any(f.to_ndarray().any() for f in frames)
        track.stop()

    run(main())


def test_a_put_waiting_for_room_drops_its_frame_when_the_track_is_cleared_or_stopped():
    async def main():
        track = ReplyAudioTrack(max_queued_frames=2)
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

    run(main())


def test_a_waiting_put_takes_the_room_a_sent_frame_leaves():
    async def main():
        track = ReplyAudioTrack(max_queued_frames=1, idle_frame_interval_s=None)
        await track.put(tone(1))
        waiting = asyncio.ensure_future(track.put(tone(2)))
        first = await track.recv()
        await asyncio.wait_for(waiting, 1)
        second = await track.recv()
        assert first.to_ndarray()[0, 0] == 1 and second.to_ndarray()[0, 0] == 2
        track.stop()

    run(main())


def test_begin_reply_calls_back_once_when_the_replys_first_frame_has_left():
    async def main():
        track = ReplyAudioTrack(idle_frame_interval_s=None)
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

    run(main())
