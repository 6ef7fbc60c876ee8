import numpy as np
import pytest

from assistant.pipeline.chunking import SpeechChunker


def push_all(chunker, codes):
    return [c for c in (chunker.push(x) for x in codes) if c is not None]


def test_first_chunk_small_then_larger_and_flush():
    chunker = SpeechChunker(first_chunk_frames=3, chunk_frames=5)
    chunks = push_all(chunker, range(14))
    assert [c.tolist() for c in chunks] == [[0, 1, 2], [3, 4, 5, 6, 7], [8, 9, 10, 11, 12]]
    assert all(c.dtype == np.int64 for c in chunks)
    assert chunker.pending_frames == 1
    assert chunker.flush().tolist() == [13]
    assert chunker.flush() is None
    # a new segment starts with a small chunk again
    assert [c.size for c in push_all(chunker, range(8))] == [3, 5]


def test_clear_drops_pending():
    chunker = SpeechChunker(2, 4)
    push_all(chunker, range(5))
    chunker.clear()
    assert chunker.pending_frames == 0 and chunker.flush() is None
    assert [c.size for c in push_all(chunker, range(2))] == [2]


def test_chunks_double_up_to_the_large_size():
    chunker = SpeechChunker(first_chunk_frames=5, chunk_frames=25)
    assert [c.size for c in push_all(chunker, range(120))] == [5, 10, 20, 25, 25, 25]
    chunker.flush()
    assert [c.size for c in push_all(chunker, range(15))] == [5, 10]  # a new segment grows again from the start


def test_rejects_bad_sizes():
    with pytest.raises(ValueError):
        SpeechChunker(0, 5)
