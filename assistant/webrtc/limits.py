"""What one WebRTC session may cost the server: timeouts, message, turn and upload rates, inbound message sizes.

:class:`SessionLimits` is the one configuration object; :class:`RtcSessionManager` hands it to every session and
its watchdog enforces the timeouts. :class:`TokenBucket` is the rate limiter, with the clock injected so tests
can move time by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from assistant import protocol


@dataclass(frozen=True)
class SessionLimits:
    """Per-session limits (None turns a timeout off).

    connect_timeout_s: a session whose peer connection has not reached ``connected`` this long after the offer was
        answered is closed and its slot freed (an offer that never connects must not hold a slot for good).
    media_timeout_s: a connected session that received no audio frame and no data-channel message for this long
        is closed: the caller vanished (ICE consent would notice too, but only after ~30 s).
    idle_timeout_s: a connected session without user activity (speech start, turn, client message) for this long
        is told so (``error``, code ``timeout``) and closed.
    messages_per_s / message_burst: data-channel messages admitted per second, and how many may come at once.
    turns_per_s / turn_burst: the same for messages that start a turn (a typed question, a picture or tune with one).
    upload_bytes_per_s / upload_burst_bytes: the bytes of fragments (:mod:`assistant.fragments`: a picture or tune
        larger than one message) admitted per second, and how many may come at once. A fragmented message counts as
        one message against ``messages_per_s`` only when it is complete; its fragments count here, by size. A
        fragment over the budget costs its whole message (one ``rate_limited`` error).
    max_upload_fragments / upload_timeout_s: the most fragments one message may have, and how long (from its first
        fragment) it may take to arrive before it is dropped with an error. The reassembled size is bounded by
        ``protocol.MAX_UPLOAD_MESSAGE_BYTES``.
    max_reassembly_bytes: what one SCTP message may hold while it is being reassembled. We advertise
        ``protocol.MAX_MESSAGE_BYTES`` in the answer, so a peer that goes past twice that ignores what it was told
        and is dropped.
    max_reassembly_chunks: the SCTP chunks one inbound stream may hold: the message being reassembled and the whole
        ones waiting behind a lost packet (fragments of a picture come in a burst: up to aiortc's 1 MiB receive
        window may wait, ~900 chunks of ~1200 bytes). The bound keeps a peer sending one-byte chunks from making
        the check itself (and aiortc's list) expensive.
    max_reassembly_total_bytes: bytes held over all streams together (a peer may open many data channels); above
        aiortc's receive window, which a peer that keeps to it never fills.
    """

    connect_timeout_s: float | None = 15.0
    media_timeout_s: float | None = 10.0
    idle_timeout_s: float | None = 600.0
    messages_per_s: float = 20.0
    message_burst: int = 40
    turns_per_s: float = 2.0
    turn_burst: int = 4
    upload_bytes_per_s: float = 2 * 1024 * 1024
    upload_burst_bytes: int = 8 * 1024 * 1024
    max_upload_fragments: int = 512
    upload_timeout_s: float = 15.0
    max_reassembly_bytes: int = 2 * protocol.MAX_MESSAGE_BYTES
    max_reassembly_chunks: int = 4096
    max_reassembly_total_bytes: int = 32 * protocol.MAX_MESSAGE_BYTES

    def __post_init__(self) -> None:
        for name in ("connect_timeout_s", "media_timeout_s", "idle_timeout_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0 or None, got {value}")
        if self.messages_per_s <= 0 or self.turns_per_s <= 0:
            raise ValueError("messages_per_s and turns_per_s must be > 0")
        if self.message_burst < 1 or self.turn_burst < 1:
            raise ValueError("message_burst and turn_burst must be >= 1")
        if self.upload_bytes_per_s <= 0 or self.upload_timeout_s <= 0:
            raise ValueError("upload_bytes_per_s and upload_timeout_s must be > 0")
        if self.upload_burst_bytes < 2 * protocol.MAX_MESSAGE_BYTES:
            raise ValueError("upload_burst_bytes must hold at least two whole fragments (2 * MAX_MESSAGE_BYTES)")
        if self.max_upload_fragments < 2:
            raise ValueError("max_upload_fragments must be >= 2")
        if self.max_reassembly_bytes < protocol.MAX_MESSAGE_BYTES:
            raise ValueError("max_reassembly_bytes below protocol.MAX_MESSAGE_BYTES would refuse allowed messages")
        if self.max_reassembly_chunks < 1:
            raise ValueError("max_reassembly_chunks must be >= 1")
        if self.max_reassembly_total_bytes < self.max_reassembly_bytes:
            raise ValueError("max_reassembly_total_bytes must be >= max_reassembly_bytes")


class TokenBucket:
    """Admits ``rate_per_s`` events a second on average and up to ``burst`` at once; starts full."""

    def __init__(self, rate_per_s: float, burst: int, now: Callable[[], float]):
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate_per_s > 0 and burst >= 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._now = now
        self._tokens = float(burst)
        self._updated_at = now()

    @property
    def tokens(self) -> float:
        self._refill()
        return self._tokens

    def take(self, amount: float = 1.0) -> bool:
        """Takes ``amount`` tokens (one event, or a size); False (and nothing taken) when the bucket holds fewer."""
        self._refill()
        if self._tokens < amount:
            return False
        self._tokens -= amount
        return True

    def _refill(self) -> None:
        now = self._now()
        elapsed = now - self._updated_at
        self._updated_at = now
        if elapsed > 0:  # a clock that steps back must not drain the bucket
            self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate_per_s)
