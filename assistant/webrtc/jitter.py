"""A shorter receive jitter buffer for one peer connection's audio.

aiortc gives every audio receiver a jitter buffer that holds back four 20 ms frames (``prefetch=4``) before it hands
the oldest one on: 80 ms on every hop, and a turn crosses two (the question up, the answer down). Neither side needs
it here. The server's inbound audio only feeds the VAD and the speech encoder, which are not played and do not care
about jitter; the edge client plays through its own playback buffer, which absorbs jitter where it matters. One
frame of prefetch (a frame is complete when the next packet arrives) keeps the receive path at about 20 ms.

What is given up: packets reordered by more than the prefetch are dropped as late (the Opus decoder conceals one),
which on a LAN or loopback does not happen and on the internet is rare for a 50-packet-a-second audio stream.

aiortc has no setting for it, so :func:`shorten_audio_jitter_buffers` replaces the buffer of each audio receiver of a
peer connection, before any packet has arrived (right after the remote or local description that created the
transceivers). It checks the private attribute it needs and raises :class:`AiortcInternalsChanged` (from
``sctp_guard``) when an aiortc upgrade moves it, rather than silently keeping the long buffer.
"""

from __future__ import annotations

from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer

from assistant.webrtc.sctp_guard import AiortcInternalsChanged

DEFAULT_PREFETCH_FRAMES = 1
_CAPACITY = 16  # aiortc's own capacity for audio (a power of two)
_ATTRIBUTE = "_RTCRtpReceiver__jitter_buffer"


def shorten_audio_jitter_buffers(pc: RTCPeerConnection, prefetch_frames: int = DEFAULT_PREFETCH_FRAMES) -> int:
    """Gives every audio receiver of ``pc`` a jitter buffer of ``prefetch_frames``; returns how many it changed."""
    if not 1 <= prefetch_frames < _CAPACITY:
        raise ValueError(f"prefetch_frames must be 1..{_CAPACITY - 1}, got {prefetch_frames}")
    changed = 0
    for transceiver in pc.getTransceivers():
        if transceiver.kind != "audio":
            continue
        receiver = transceiver.receiver
        current = getattr(receiver, _ATTRIBUTE, None)
        if not isinstance(current, JitterBuffer):
            raise AiortcInternalsChanged(f"RTCRtpReceiver no longer keeps its jitter buffer in {_ATTRIBUTE}")
        setattr(receiver, _ATTRIBUTE, JitterBuffer(capacity=_CAPACITY, prefetch=prefetch_frames))
        changed += 1
    return changed
