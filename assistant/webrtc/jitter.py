"""A receive jitter buffer for one peer connection's audio that hands each frame on as it arrives.

aiortc gives every audio receiver a jitter buffer that holds back four 20 ms frames (``prefetch=4``) before it hands
the oldest one on: 80 ms on every hop, and a turn crosses two (the question up, the answer down). Even one frame of
prefetch costs 20 ms a hop, because aiortc calls a frame complete only when the next packet arrives. Neither side
needs it here. The server's inbound audio only feeds the VAD and the speech encoder, which are not played and do not
care about jitter; the edge client plays through its own playback buffer, which absorbs jitter where it matters.

:class:`AudioJitterBuffer` knows that an audio RTP packet is a whole frame (Opus, PCM: WebRTC never splits one), so a
packet in sequence leaves the moment it arrives. By default a packet that comes after a gap leaves at once too, and
the missing ones count as lost (a packet arriving after a later one left is dropped as late): the decoder conceals
20 ms, or the VAD hears 20 ms less. ``reorder_window`` > 0 lets up to that many packets wait for a missing one
first. aiortc hands on at most one frame per arriving packet, so when a late packet completes a run of waiting ones
the run's older frames are dropped and its newest leaves: otherwise every later frame would leave that much later
for the rest of the call. Latency never grows; reordering costs a frame. On a LAN or loopback it does not happen,
and on the internet it is rare for a 50-packet-a-second audio stream. ``late``, ``lost`` and ``dropped`` count each
case.

aiortc has no setting for it, so :func:`shorten_audio_jitter_buffers` replaces the buffer of each audio receiver of a
peer connection, before any packet has arrived (right after the remote or local description that created the
transceivers). It checks the private attribute it needs and raises :class:`AiortcInternalsChanged` (from
``sctp_guard``) when an aiortc upgrade moves it, rather than silently keeping the long buffer.
"""

from __future__ import annotations

from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket
from aiortc.utils import uint16_add

from assistant.webrtc.sctp_guard import AiortcInternalsChanged

_CAPACITY = 16  # aiortc's own capacity for audio: a packet further ahead than this restarts the sequence
_MAX_MISORDER = 100  # a packet this far behind is the sender starting over, not a late one (aiortc's rule)
_ATTRIBUTE = "_RTCRtpReceiver__jitter_buffer"


class AudioJitterBuffer(JitterBuffer):
    """aiortc's ``JitterBuffer`` interface (``add(packet) -> (pli_flag, frame | None)``) for audio: one packet, one
    frame, handed on as it arrives (see the module docstring)."""

    def __init__(self, reorder_window: int = 0) -> None:
        if not 0 <= reorder_window < _CAPACITY - 1:
            raise ValueError(f"reorder_window must be in [0, {_CAPACITY - 1}), got {reorder_window}")
        super().__init__(capacity=_CAPACITY)
        self.reorder_window = reorder_window
        self._next: int | None = None  # sequence number of the next frame to hand on
        self._waiting: dict[int, RtpPacket] = {}  # packets that came before their turn, by sequence number
        self.late = 0  # packets that came after a later one was handed on (dropped)
        self.lost = 0  # packets given up on
        self.dropped = 0  # frames dropped so that a late packet does not delay every later one

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        sequence = packet.sequence_number
        if self._next is None:
            self._next = sequence
        ahead = uint16_add(sequence, -self._next)
        if ahead >= 0x8000 and 0x10000 - ahead < _MAX_MISORDER:
            self.late += 1
            return False, None
        if ahead >= _CAPACITY:  # far ahead or far behind: the sender jumped; start over from this packet
            self._waiting.clear()
            self._next = sequence
        self._waiting[sequence] = packet
        return False, self._take()

    def _take(self) -> JitterFrame | None:
        if self._next is None:
            return None
        due: int = self._next
        if due not in self._waiting:
            if len(self._waiting) <= self.reorder_window:
                return None
            first = min(self._waiting, key=lambda s: uint16_add(s, -due))  # the earliest that did come
            self.lost += uint16_add(first, -due)
            due = first
        while uint16_add(due, 1) in self._waiting:  # a run is ready: only its newest frame leaves
            del self._waiting[due]
            due = uint16_add(due, 1)
            self.dropped += 1
        packet = self._waiting.pop(due)
        self._next = uint16_add(due, 1)
        # the receiver sets _data (the depacketised payload) before it adds a packet; aiortc's own buffer reads it too
        return JitterFrame(data=packet._data, timestamp=packet.timestamp)  # type: ignore[attr-defined]


def shorten_audio_jitter_buffers(pc: RTCPeerConnection, reorder_window: int = 0) -> int:
    """Gives every audio receiver of ``pc`` an :class:`AudioJitterBuffer`; returns how many it changed."""
    changed = 0
    for transceiver in pc.getTransceivers():
        if transceiver.kind != "audio":
            continue
        receiver = transceiver.receiver
        current = getattr(receiver, _ATTRIBUTE, None)
        if not isinstance(current, JitterBuffer):
            raise AiortcInternalsChanged(f"RTCRtpReceiver no longer keeps its jitter buffer in {_ATTRIBUTE}")
        setattr(receiver, _ATTRIBUTE, AudioJitterBuffer(reorder_window))
        changed += 1
    return changed
