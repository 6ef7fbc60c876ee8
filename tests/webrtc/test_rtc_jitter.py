"""The audio receive buffer hands each frame on as its packet arrives, and stays at zero delay through loss, reordering
and sequence jumps (assistant/webrtc/jitter.py)."""

import pytest
from aiortc.rtp import RtpPacket

from assistant.webrtc.jitter import AudioJitterBuffer


def _packet(sequence: int) -> RtpPacket:
    packet = RtpPacket(payload_type=111, sequence_number=sequence % 65536, timestamp=(sequence * 960) % 2**32)
    packet._data = b"frame %d" % (sequence % 65536)  # what the receiver sets: the depacketised payload
    return packet


def _feed(buffer: AudioJitterBuffer, sequences: list[int]) -> list[bytes | None]:
    """What leaves after each packet (None: nothing)."""
    out = []
    for sequence in sequences:
        pli, frame = buffer.add(_packet(sequence))
        assert pli is False
        out.append(None if frame is None else frame.data)
    return out


def test_each_packet_in_sequence_leaves_as_it_arrives_across_the_wrap():
    buffer = AudioJitterBuffer()
    sequences = list(range(65530, 65536)) + list(range(0, 6))
    assert _feed(buffer, sequences) == [b"frame %d" % s for s in sequences]
    assert (buffer.late, buffer.lost, buffer.dropped) == (0, 0, 0)


def test_by_default_a_gap_is_lost_at_once_and_the_late_packet_dropped():
    buffer = AudioJitterBuffer()
    assert _feed(buffer, [10, 12, 11, 13]) == [b"frame 10", b"frame 12", None, b"frame 13"]
    assert (buffer.late, buffer.lost, buffer.dropped) == (1, 1, 0)


def test_a_reorder_window_waits_for_the_missing_packet_without_lasting_delay():
    buffer = AudioJitterBuffer(reorder_window=1)
    # 12 waits for 11; when 11 comes both are ready and only the newer leaves, so 13 and later leave on arrival
    assert _feed(buffer, [10, 12, 11, 13, 14]) == [b"frame 10", None, b"frame 12", b"frame 13", b"frame 14"]
    assert (buffer.late, buffer.lost, buffer.dropped) == (0, 0, 1)
    # a packet that never comes (15) is given up once the window is full; 16 waited for it and is dropped
    assert _feed(buffer, [16, 17, 18]) == [None, b"frame 17", b"frame 18"]
    assert (buffer.late, buffer.lost, buffer.dropped) == (0, 1, 2)


def test_a_sender_that_jumps_starts_the_sequence_over():
    buffer = AudioJitterBuffer()
    assert _feed(buffer, [100, 101, 5000, 5001, 3]) == [
        b"frame 100",
        b"frame 101",
        b"frame 5000",
        b"frame 5001",
        b"frame 3",
    ]


def test_the_window_must_fit_the_buffer():
    with pytest.raises(ValueError):
        AudioJitterBuffer(reorder_window=-1)
    with pytest.raises(ValueError):
        AudioJitterBuffer(reorder_window=15)
