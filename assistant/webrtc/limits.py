"""What one WebRTC session may cost the server: timeouts, message and turn rates, inbound message sizes.

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
    turns_per_s / turn_burst: the same for messages that start a turn (a typed question, a picture with one).
    max_reassembly_bytes / max_reassembly_chunks: what one inbound SCTP stream may hold while a message is being
        reassembled. We advertise ``protocol.MAX_MESSAGE_BYTES`` in the answer, so a peer that goes past twice that
        ignores what it was told and is dropped. The chunk bound keeps a peer sending one-byte fragments from
        making the check itself (and aiortc's list) expensive: a 64 KiB message is ~55 chunks of ~1200 bytes.
    max_reassembly_total_bytes: the same over all streams together (a peer may open many data channels).
    """

    connect_timeout_s: float | None = 15.0
    media_timeout_s: float | None = 10.0
    idle_timeout_s: float | None = 600.0
    messages_per_s: float = 20.0
    message_burst: int = 40
    turns_per_s: float = 2.0
    turn_burst: int = 4
    max_reassembly_bytes: int = 2 * protocol.MAX_MESSAGE_BYTES
    max_reassembly_chunks: int = 1024
    max_reassembly_total_bytes: int = 8 * protocol.MAX_MESSAGE_BYTES

    def __post_init__(self) -> None:
        for name in ("connect_timeout_s", "media_timeout_s", "idle_timeout_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0 or None, got {value}")
        if self.messages_per_s <= 0 or self.turns_per_s <= 0:
            raise ValueError("messages_per_s and turns_per_s must be > 0")
        if self.message_burst < 1 or self.turn_burst < 1:
            raise ValueError("message_burst and turn_burst must be >= 1")
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

    def take(self) -> bool:
        """Takes one token; False (and nothing taken) when the bucket is empty."""
        self._refill()
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def _refill(self) -> None:
        now = self._now()
        elapsed = now - self._updated_at
        self._updated_at = now
        if elapsed > 0:  # a clock that steps back must not drain the bucket
            self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate_per_s)
