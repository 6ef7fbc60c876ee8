"""The playback jitter buffer: unit rules, then a whole stream under injected delay, bursts and loss on a virtual
clock (every frame carries its own number in its samples, so what was played, and when, is known exactly)."""

from __future__ import annotations

import asyncio
import random
import statistics

import numpy as np
import pytest
from waiting import run_in_virtual_time

from edge_client.jitter import CONCEALED, PLAYED, PRIMING, STARVED, JitterBuffer, PacedOutput, frame_seq

FRAME = 0.02


def frame(seq: int) -> np.ndarray:
    return np.full(960, seq % 30000 + 1, dtype=np.int16)  # never 0: silence is told apart from every frame


def seq_of(pcm: np.ndarray) -> int | None:
    return int(pcm[0]) - 1 if pcm.any() else None


def pulls(buffer: JitterBuffer, n: int) -> list[int | None]:
    return [seq_of(buffer.pull()) for _ in range(n)]


def test_frame_seq_from_rtp_timestamps():
    from fractions import Fraction

    assert frame_seq(0, Fraction(1, 48000)) == 0
    assert frame_seq(960 * 7, Fraction(1, 48000)) == 7
    assert frame_seq(320 * 3, Fraction(1, 16000)) == 3
    assert frame_seq(None, Fraction(1, 48000)) is None


def test_priming_then_order_then_starving_without_losing_the_timeline():
    buffer = JitterBuffer(target_ms=60, max_ms=160)
    kinds = []
    buffer.on_played.append(lambda pcm, kind: kinds.append(kind))
    assert pulls(buffer, 2) == [None, None]  # nothing yet
    buffer.push(frame(1), 1)
    buffer.push(frame(0), 0)  # out of order: kept in order
    assert buffer.depth_frames == 2
    assert pulls(buffer, 1) == [None]  # primes to 60 ms
    buffer.push(frame(2), 2)
    assert pulls(buffer, 4) == [0, 1, 2, None]  # the fourth pull finds it dry
    assert kinds == [PRIMING, PRIMING, PRIMING, PLAYED, PLAYED, PLAYED, STARVED]
    assert buffer.underruns == 0  # not yet known: a reply may just have ended
    buffer.push(frame(3), 3)  # the stream goes on: that was an underrun
    assert buffer.underruns == 1
    assert pulls(buffer, 4) == [None, None, None, 3]  # primes again: a lone frame plays once it waited 60 ms


def test_a_lost_frame_is_concealed_in_its_slot_and_a_late_one_is_dropped():
    buffer = JitterBuffer(target_ms=40, max_ms=200)
    for seq in (0, 1, 3, 4):  # 2 is lost
        buffer.push(frame(seq), seq)
    assert buffer.depth_frames == 5  # the gap will be played too
    assert pulls(buffer, 5) == [0, 1, None, 3, 4]
    assert buffer.concealed_frames == 1
    buffer.push(frame(2), 2)  # too late now
    assert buffer.late_frames == 1 and buffer.depth_frames == 0


def test_a_jump_after_idle_silence_is_a_new_stretch_neither_filled_nor_an_underrun():
    buffer = JitterBuffer(target_ms=40, max_ms=200, max_gap_ms=100)
    buffer.push(frame(0), 0)
    assert pulls(buffer, 5) == [None, None, 0, None, None]  # played, then dry (the reply ended)
    buffer.push(frame(20), 20)  # the next reply 0.4 s later (the server's clock jumped over its idle time)
    buffer.push(frame(21), 21)
    assert pulls(buffer, 3) == [20, 21, None]  # primed at once (40 ms buffered), the gap is not played
    assert buffer.underruns == 0 and buffer.concealed_frames == 0


def test_too_much_audio_drops_the_oldest_and_flush_drops_everything():
    buffer = JitterBuffer(target_ms=60, max_ms=100)
    for seq in range(12):  # a burst after a stall
        buffer.push(frame(seq), seq)
        assert buffer.depth_frames <= 5
    assert buffer.dropped_frames == 7
    assert pulls(buffer, 5) == [7, 8, 9, 10, 11]  # the newest 100 ms, in order
    for seq in range(12, 15):
        buffer.push(frame(seq), seq)
    buffer.flush()  # interrupted: not one more frame of what was buffered
    assert buffer.depth_frames == 0 and buffer.flushes == 1
    buffer.push(frame(14), 14)  # a straggler of the flushed audio
    assert buffer.late_frames == 1
    buffer.push(frame(15), 15)
    assert pulls(buffer, 4) == [None, None, None, 15]


def test_a_new_timeline_far_behind_resets_rather_than_dropping_everything_as_late():
    buffer = JitterBuffer(target_ms=20)  # one frame buffered is enough to start
    buffer.push(frame(5000), 5000)
    assert pulls(buffer, 2) == [5000, None]
    buffer.push(frame(0), 0)  # a new connection stamps from 0 again
    assert buffer.late_frames == 0
    assert pulls(buffer, 2) == [0, None]
    buffer.push(frame(4), 4)
    buffer.reset()  # forgets the stream and what it held
    assert buffer.depth_frames == 0
    buffer.push(frame(3), 3)
    assert pulls(buffer, 2) == [3, None]


def test_frames_without_a_seq_follow_the_newest():
    buffer = JitterBuffer(target_ms=0)
    for seq in (0, 1, 2):
        buffer.push(frame(seq))  # a sink written without slots: arrival order
    assert buffer.depth_frames == 3
    assert pulls(buffer, 4) == [0, 1, 2, None] and buffer.concealed_frames == 0


def test_bad_settings_are_refused():
    for kwargs in ({"target_ms": -20}, {"target_ms": 200, "max_ms": 100}, {"max_ms": 0}, {"max_gap_ms": -1}):
        with pytest.raises(ValueError):
            JitterBuffer(**kwargs)
    with pytest.raises(ValueError, match="960"):
        JitterBuffer().push(np.zeros(480, np.int16))


class LoopClock:
    """The event loop's clock as a pacing Clock (virtual under run_in_virtual_time)."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def network_schedule(rng: random.Random, frames: int) -> dict[int, float]:
    """Arrival time of each frame sent every 20 ms from t=0: 30 ms base delay plus jitter (up to 60 ms, some
    reordering), 2% random loss, one loss of 3 in a row, and two 600 ms stalls (frames 200-229 arrive together, then
    frames 400-429)."""
    arrivals = {}
    for seq in range(frames):
        if rng.random() < 0.02 or seq in (120, 121, 122):
            continue
        arrivals[seq] = seq * FRAME + 0.03 + rng.uniform(0.0, 0.06)
    for first in STALLS:
        for seq in range(first, first + 30):
            if seq in arrivals:
                arrivals[seq] = (first + 30) * FRAME + 0.03 + rng.uniform(0.0, 0.005)
    return arrivals


STALLS = (200, 400)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_under_jitter_bursts_and_loss_the_depth_stays_bounded_and_latency_does_not_drift(seed):
    frames = 600  # 12 s
    arrivals = network_schedule(random.Random(seed), frames)
    buffer = JitterBuffer(target_ms=60, max_ms=160)
    played: list[tuple[float, str, int | None, int]] = []  # (time, kind, seq, depth after)

    async def main():
        loop = asyncio.get_running_loop()
        for seq, at in arrivals.items():
            loop.call_at(at, buffer.push, frame(seq), seq)
        output = PacedOutput(buffer, lambda pcm: None, LoopClock())
        buffer.on_played.append(lambda pcm, kind: played.append((loop.time(), kind, seq_of(pcm), buffer._depth())))
        output.start()
        await asyncio.sleep(frames * FRAME + 1.0)
        output.cancel()

    run_in_virtual_time(main())
    assert len(played) == pytest.approx((frames * FRAME + 1.0) / FRAME, abs=2)  # one pull per 20 ms, on the clock
    assert max(depth for *_, depth in played) <= buffer.max_frames
    order = [seq for _, kind, seq, _ in played if kind == PLAYED]
    assert order == sorted(order) and len(order) == len(set(order))  # in order, none twice

    # the playout delay (send to play): before the stalls, the network's plus the target; after each 600 ms stall at
    # most the maximum depth more than the network's, and the same after the second as after the first: each stall
    # costs its own audio, not latency that adds up
    delay = {seq: t - seq * FRAME for t, kind, seq, _ in played if kind == PLAYED}
    before = statistics.median(delay[s] for s in delay if 20 <= s < 190)
    after_first = [delay[s] for s in delay if 260 <= s < 390]
    after_second = [delay[s] for s in delay if s >= 460]
    network = 0.03 + 0.06
    assert before <= network + buffer.target_frames * FRAME + FRAME
    for after in (after_first, after_second):
        assert max(after) <= network + buffer.max_frames * FRAME + 1e-9
    assert statistics.median(after_second) == pytest.approx(statistics.median(after_first), abs=FRAME + 1e-9)

    # what a burst could not keep was its OLDEST audio: every frame dropped is older than every frame played of it
    for first in STALLS:
        burst = [s for s in range(first, first + 30) if s in arrivals]
        kept = [s for s in burst if s in delay]
        dropped = [s for s in burst if s not in delay]
        assert dropped and kept and max(dropped) < min(kept)
    # every frame that arrived and was not played is accounted for: dropped (oldest, or too late to play)
    assert buffer.dropped_frames + buffer.late_frames == len(arrivals) - len(delay) >= 2 * 20
    assert buffer.underruns >= 2  # each stall starved the playout

    # a lost frame mid-stream is silence in its own slot: the next frame plays exactly 20 ms after its slot
    concealed = [seq for seq in range(1, frames - 1) if seq not in arrivals and seq - 1 in delay and seq + 1 in delay]
    assert concealed and buffer.concealed_frames >= len(concealed)
    for seq in concealed:
        assert delay[seq + 1] == pytest.approx(delay[seq - 1], abs=1e-9)
    assert any(kind == CONCEALED for _, kind, _, _ in played)
