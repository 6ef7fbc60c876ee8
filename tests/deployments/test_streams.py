"""batch_chunks: the first chunk leaves at once, later ones are merged, closing reaches the source.

Run on a virtual clock (``waiting.run_in_virtual_time``): the source's delays and the merge interval take no real time
and every time below is exact, not a wall-clock bound.
"""

import asyncio

import pytest
from waiting import run_in_virtual_time

from deployments.streams import batch_chunks


async def timed_source(schedule, log):
    """Yields [i] after each delay in ``schedule``; records each yield with the loop's time, and how it ended, in
    ``log``."""
    loop = asyncio.get_running_loop()
    try:
        for i, delay in enumerate(schedule):
            await asyncio.sleep(delay)
            log.append(("yield", i, loop.time()))
            yield [i]
        log.append("exhausted")
    except (asyncio.CancelledError, GeneratorExit) as exc:
        log.append(type(exc).__name__)
        raise
    finally:
        log.append("finally")


def test_first_chunk_immediate_then_merged():
    async def main():
        loop = asyncio.get_running_loop()
        log = []
        # first token at once, then 10 tokens 4 ms apart (all within one 50 ms interval), a 0.3 s pause, one more
        schedule = [0.0] + [0.004] * 10 + [0.3]
        out = []
        async for chunk in batch_chunks(timed_source(schedule, log), interval_s=0.05):
            out.append((loop.time(), chunk))
        return out, log

    out, log = run_in_virtual_time(main())
    assert [chunk for _, chunk in out] == [[0], list(range(1, 11)), [11]]  # order kept, nothing lost, merged
    sent = [t for t, _ in out]
    assert sent[0] == 0.0  # the first chunk leaves when it arrives
    assert sent[1] == pytest.approx(0.05)  # the merged ones one interval after it, not as each arrives
    arrived = {i: t for _, i, t in (e for e in log if isinstance(e, tuple))}
    assert arrived[11] == pytest.approx(0.34) and sent[2] == arrived[11]  # after a pause: at once, no extra delay
    assert log[-2:] == ["exhausted", "finally"]


def test_zero_interval_passes_chunks_through():
    async def main():
        return [c async for c in batch_chunks(timed_source([0.01] * 3, []), interval_s=0.0)]

    assert run_in_virtual_time(main()) == [[0], [1], [2]]


def test_aclose_reaches_the_source():
    async def main():
        log = []
        gen = batch_chunks(timed_source([0.0] + [0.01] * 1000, log), interval_s=0.02)
        assert await gen.__anext__() == [0]
        await gen.__anext__()
        await gen.aclose()
        assert "finally" in log and "exhausted" not in log
        assert asyncio.all_tasks() == {asyncio.current_task()}  # the reader task is gone
        n = len(log)
        await asyncio.sleep(0.05)  # five of the source's periods: a source still pulled would have yielded by now
        assert len(log) == n

    run_in_virtual_time(main())


def test_cancelling_the_consumer_reaches_the_source():
    async def main():
        log = []

        async def consume():
            async for _ in batch_chunks(timed_source([0.0] + [0.01] * 1000, log), interval_s=0.02):
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.1)
        assert ("yield", 5, pytest.approx(0.05)) in log  # the stream was flowing when it was cancelled
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert "CancelledError" in log and "finally" in log

    run_in_virtual_time(main())


def test_source_error_propagates():
    async def failing():
        yield [1]
        await asyncio.sleep(0.01)
        raise RuntimeError("lm died")

    async def main():
        out = []
        with pytest.raises(RuntimeError, match="lm died"):
            async for c in batch_chunks(failing(), interval_s=0.01):
                out.append(c)
        return out

    assert run_in_virtual_time(main()) == [[1]]
