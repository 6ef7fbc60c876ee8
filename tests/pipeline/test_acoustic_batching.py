"""AcousticBatcher over a fake decoder: when rounds close (idle, window, max_batch), first chunks first, shape
groups, errors, cancellation, stats. No fixed sleeps: the fake decoder blocks on events the test releases."""

import asyncio
import threading

import pytest
import torch

from assistant.decoding.maskgit import ChunkRequest
from assistant.pipeline.acoustic_batching import AcousticBatcher

HOP, RATE = 320, 16000


class FakeDecoder:
    """Answers every request with its tag (semantic[0]); the first call can be held at ``gate``."""

    hop, sample_rate = HOP, RATE

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def batch_key(self, request: ChunkRequest) -> tuple:
        return (request.semantic.shape[0], 0 if request.context is None else request.context.shape[1])

    def decode_chunks(self, requests):
        self.calls.append([int(r.semantic[0]) for r in requests])
        self.entered.set()
        assert self.gate.wait(10)
        if any(int(r.semantic[0]) < 0 for r in requests):
            raise RuntimeError("bad chunk")
        return [
            (r.semantic[None].repeat(2, 1), torch.full((r.semantic.shape[0] * HOP,), float(r.semantic[0])))
            for r in requests
        ]


def chunk(tag: int, frames: int = 5, first: bool = False) -> ChunkRequest:
    context = None if first else torch.zeros(2, 3, dtype=torch.long)
    return ChunkRequest(torch.full((frames,), tag, dtype=torch.long), context)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=20))


async def hold_first_round(batcher: AcousticBatcher, decoder: FakeDecoder, request: ChunkRequest) -> asyncio.Task:
    """Starts a round with ``request`` alone and returns once the decoder is inside it (held at the gate)."""
    decoder.gate.clear()
    decoder.entered.clear()
    task = asyncio.ensure_future(batcher.decode(request))
    assert await asyncio.to_thread(decoder.entered.wait, 10)
    return task


async def queue_behind_a_held_round(
    batcher: AcousticBatcher, decoder: FakeDecoder, requests: list[ChunkRequest]
) -> tuple[asyncio.Task, list[asyncio.Task]]:
    """Holds a round of ``chunk(1)`` in the decoder and queues ``requests`` behind it: (the held one, the queued)."""
    first = await hold_first_round(batcher, decoder, chunk(1))
    queued = [asyncio.ensure_future(batcher.decode(r)) for r in requests]
    await until(lambda: batcher.stats().queue_depth == len(requests))
    return first, queued


async def until(predicate) -> None:
    """Yields to the event loop until ``predicate()`` holds (queued requests need a step to reach the queue)."""
    for _ in range(10_000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition was never reached")


def test_a_lone_request_on_an_idle_batcher_does_not_wait_for_the_window():
    decoder = FakeDecoder()
    batcher = AcousticBatcher(decoder, window_s=3600.0, max_batch=8)

    async def main():
        codes, wave = await asyncio.wait_for(batcher.decode(chunk(7)), 10)  # far shorter than the window
        return codes, wave

    codes, wave = run(main())
    assert decoder.calls == [[7]] and codes.shape == (2, 5) and wave.shape == (5 * HOP,) and float(wave[0]) == 7
    stats = batcher.stats()
    assert (stats.batches, stats.requests, stats.queue_depth, stats.in_flight) == (1, 1, 0, 0)
    assert stats.audio_s == pytest.approx(5 * HOP / RATE) and stats.real_time_factor == stats.busy_s / stats.audio_s


def test_requests_queued_during_a_round_wait_for_others_up_to_max_batch():
    decoder = FakeDecoder()
    batcher = AcousticBatcher(decoder, window_s=3600.0, max_batch=3)

    async def main():
        first, queued = await queue_behind_a_held_round(batcher, decoder, [chunk(2), chunk(3)])
        assert batcher.stats().in_flight == 1
        decoder.gate.set()
        await first
        # two queued, the window is an hour: the round waits for a third rather than leaving with two
        third = asyncio.ensure_future(batcher.decode(chunk(4)))
        await asyncio.gather(*queued, third)

    run(main())
    assert decoder.calls == [[1], [2, 3, 4]]
    assert batcher.stats().mean_batch_size == pytest.approx(2.0)


def test_the_window_bounds_the_wait_of_a_round_that_is_not_full():
    decoder = FakeDecoder()
    batcher = AcousticBatcher(decoder, window_s=0.02, max_batch=8)

    async def main():
        first, queued = await queue_behind_a_held_round(batcher, decoder, [chunk(2), chunk(3)])
        decoder.gate.set()
        await asyncio.gather(first, *queued)  # nobody else comes: the round leaves after the window

    run(main())
    assert decoder.calls == [[1], [2, 3]]


def test_first_chunks_of_a_turn_go_first():
    decoder = FakeDecoder()
    batcher = AcousticBatcher(decoder, window_s=0.0, max_batch=2)

    async def main():
        first, queued = await queue_behind_a_held_round(batcher, decoder, [chunk(2), chunk(3), chunk(4, first=True)])
        decoder.gate.set()
        await asyncio.gather(first, *queued)

    run(main())
    # the first chunk (4) and the oldest continuation (2) share the round; its group (no context) runs first
    assert decoder.calls == [[1], [4], [2], [3]]
    assert batcher.stats().batches == 3 and batcher.stats().model_calls == 4


def test_shape_groups_run_apart_and_an_error_stays_in_its_group():
    decoder = FakeDecoder()
    batcher = AcousticBatcher(decoder, window_s=0.0, max_batch=8)

    async def main():
        requests = [chunk(2, frames=5), chunk(-3, frames=9), chunk(4, frames=5), chunk(5, frames=9)]
        first, queued = await queue_behind_a_held_round(batcher, decoder, requests)
        decoder.gate.set()
        await first
        return await asyncio.gather(*queued, return_exceptions=True)

    results = run(main())
    assert decoder.calls == [[1], [2, 4], [-3, 5]]
    assert float(results[0][1][0]) == 2 and float(results[2][1][0]) == 4
    assert isinstance(results[1], RuntimeError) and isinstance(results[3], RuntimeError)


def test_a_cancelled_request_is_dropped_before_it_runs():
    decoder = FakeDecoder()
    batcher = AcousticBatcher(decoder, window_s=0.0, max_batch=8)

    async def main():
        first, (gone, kept) = await queue_behind_a_held_round(batcher, decoder, [chunk(2), chunk(3)])
        gone.cancel()
        await until(lambda: batcher.stats().queue_depth == 1)
        decoder.gate.set()
        await asyncio.gather(first, kept)

    run(main())
    assert decoder.calls == [[1], [3]]


def test_it_follows_a_new_event_loop_and_refuses_work_once_closed():
    decoder = FakeDecoder()
    batcher = AcousticBatcher(decoder, window_s=0.0)
    run(batcher.decode(chunk(1)))
    run(batcher.decode(chunk(2)))  # a second asyncio.run: a fresh worker on the new loop
    assert decoder.calls == [[1], [2]]
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        run(batcher.decode(chunk(3)))
    with pytest.raises(ValueError):
        AcousticBatcher(decoder, max_batch=0)
    with pytest.raises(ValueError):
        AcousticBatcher(decoder, window_s=-1.0)
