"""batch_chunks: the first chunk leaves at once, later ones are merged, closing reaches the source."""

import asyncio
import time

import pytest

from deployments.streams import batch_chunks


async def timed_source(schedule, log):
    """Yields [i] after each delay in ``schedule``; records how it ended in ``log``."""
    try:
        for i, delay in enumerate(schedule):
            await asyncio.sleep(delay)
            log.append(("yield", i))
            yield [i]
        log.append("exhausted")
    except (asyncio.CancelledError, GeneratorExit) as exc:
        log.append(type(exc).__name__)
        raise
    finally:
        log.append("finally")


def test_first_chunk_immediate_then_merged():
    async def main():
        log = []
        # first token at once, then 10 tokens 5 ms apart, a pause, then one more
        schedule = [0.0] + [0.005] * 10 + [0.3]
        t0 = time.monotonic()
        out = []
        async for chunk in batch_chunks(timed_source(schedule, log), interval_s=0.05):
            out.append((time.monotonic() - t0, chunk))
        assert out[0][1] == [0] and out[0][0] < 0.02
        flat = [i for _, chunk in out for i in chunk]
        assert flat == list(range(12))  # order kept, nothing lost
        assert len(out) <= 5  # ten quick chunks merged into a few
        assert max(len(c) for _, c in out) >= 4
        assert out[-1][1] == [11] and out[-1][0] > 0.3  # after a pause a chunk leaves without extra delay
        assert out[-1][0] - out[-2][0] < 0.3 + 0.05
        assert "exhausted" in log

    asyncio.run(main())


def test_zero_interval_passes_chunks_through():
    async def main():
        out = [c async for c in batch_chunks(timed_source([0.01] * 3, []), interval_s=0.0)]
        assert [i for c in out for i in c] == [0, 1, 2]

    asyncio.run(main())


def test_aclose_reaches_the_source():
    async def main():
        log = []
        gen = batch_chunks(timed_source([0.0] + [0.01] * 1000, log), interval_s=0.02)
        assert await gen.__anext__() == [0]
        await gen.__anext__()
        await gen.aclose()
        assert "finally" in log and "exhausted" not in log
        n = len(log)
        await asyncio.sleep(0.05)
        assert len(log) == n  # nothing keeps pulling from the source

    asyncio.run(main())


def test_cancelling_the_consumer_reaches_the_source():
    async def main():
        log = []

        async def consume():
            async for _ in batch_chunks(timed_source([0.0] + [0.01] * 1000, log), interval_s=0.02):
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert "CancelledError" in log and "finally" in log

    asyncio.run(main())


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
        assert out == [[1]]

    asyncio.run(main())
