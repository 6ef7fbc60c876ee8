"""The sessions of one process (a gateway replica): :class:`RtcSessionManager` answers offers with new
:class:`~assistant.webrtc.session.RtcSession` objects, holds them within the process's and each client's limits, and
runs the one watchdog task that enforces every session's timeouts."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from aiortc import RTCPeerConnection

from assistant.endpointing import EndpointerConfig
from assistant.pipeline.turns import EngineSession
from assistant.protocol import OfferAnswer, OfferRequest, ProtocolError
from assistant.webrtc.limits import SessionLimits
from assistant.webrtc.session import RtcSession

if TYPE_CHECKING:
    from assistant.metrics import ServingMetrics

logger = logging.getLogger(__name__)


class SessionLimitError(RuntimeError):
    """The manager already holds its maximum number of sessions."""


class ClientLimitError(SessionLimitError):
    """The client already holds its maximum number of sessions (``max_sessions_per_client``)."""


class VoiceUnavailableError(ProtocolError):
    """The offer asked for a voice the engine does not have (the text says which ones it has)."""


class VoiceNames(Protocol):
    """What the manager needs of the engine's voice bank (``assistant.models.voices.VoiceBank``)."""

    @property
    def names(self) -> Sequence[str]: ...

    @property
    def default(self) -> str: ...


class RtcSessionManager:
    """Creates and tracks the sessions of one process (a gateway replica).

    new_engine_session: called as ``new_engine_session()`` for an offer without a voice and
        ``new_engine_session(voice)`` for one with a voice (``AssistantEngine.new_session``); a ``ValueError`` or
        ``KeyError`` from it means the voice is unknown.
    voices: the engine's voice bank (``.names``, ``.default``) or None; it names the voice in ``ready`` and lets
        an unknown voice be refused with the list of known ones before any engine state exists.
    metrics: None, or an :class:`assistant.metrics.ServingMetrics`; it hears of sessions created and the number held,
        and every session reports to it.
    max_sessions_per_client: how many sessions one ``client_id`` (see :meth:`create`) may hold at once (default 4;
        None = no limit); more is a :class:`ClientLimitError`.
    limits: every session's rates, sizes and timeouts (default :class:`SessionLimits` (): connect within 15 s,
        silent for at most 10 s, idle for at most 600 s, 20 messages/s (burst 40), 2 turns/s (burst 4)).
    now: the clock of the limits (monotonic seconds); tests inject their own.
    watchdog_interval_s: how often the one watchdog task checks every session's timeouts.
    session_options: passed on to every :class:`RtcSession` (``turn_factory``, ``max_queued_frames``, ...).
    """

    def __init__(
        self,
        new_engine_session: Callable[..., EngineSession],
        max_sessions: int = 8,
        endpointer_config: EndpointerConfig | None = None,
        voices: VoiceNames | None = None,
        metrics: ServingMetrics | None = None,
        *,
        max_sessions_per_client: int | None = 4,
        limits: SessionLimits | None = None,
        now: Callable[[], float] = time.monotonic,
        watchdog_interval_s: float = 0.5,
        **session_options: Any,
    ):
        if max_sessions < 1:
            raise ValueError("max_sessions must be >= 1")
        if max_sessions_per_client is not None and max_sessions_per_client < 1:
            raise ValueError("max_sessions_per_client must be >= 1 or None")
        if watchdog_interval_s <= 0:
            raise ValueError("watchdog_interval_s must be > 0")
        self.metrics = metrics
        self._new_engine_session = new_engine_session
        self.max_sessions = max_sessions
        self.max_sessions_per_client = max_sessions_per_client
        self.endpointer_config = endpointer_config
        self.voices = voices
        self.limits = limits or SessionLimits()
        self._now = now
        self.watchdog_interval_s = watchdog_interval_s
        self._session_options = session_options
        self._sessions: dict[str, RtcSession] = {}
        # every peer connection made here, held weakly: one that outlives its session is a leak to report
        self._peer_connections: weakref.WeakSet[RTCPeerConnection] = weakref.WeakSet()
        self._watchdog: asyncio.Task | None = None

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, session_id: str) -> RtcSession | None:
        return self._sessions.get(session_id)

    @property
    def session_ids(self) -> list[str]:
        return list(self._sessions)

    @property
    def watchdog(self) -> asyncio.Task | None:
        """The task that enforces every session's timeouts; None before the first session."""
        return self._watchdog

    def sessions_of(self, client_id: str) -> int:
        return sum(1 for session in self._sessions.values() if session.client_id == client_id)

    def reply_queue_depths(self) -> list[int]:
        """Frames queued on each session's reply track now."""
        return [session.track.queued_frames for session in self._sessions.values()]

    def _count_sessions(self) -> None:
        if self.metrics is not None:
            self.metrics.set_active_sessions(len(self._sessions))

    def open_peer_connections(self) -> int:
        """Peer connections this manager made that are still alive and not closed: after every caller has gone this
        is 0, whatever happened to the sessions (the soak tests watch it through ``/metrics``)."""
        return sum(1 for pc in self._peer_connections if pc.connectionState != "closed")

    async def create(self, offer: OfferRequest, client_id: str | None = None) -> tuple[RtcSession, OfferAnswer]:
        """Answers ``offer`` with a new session. ``client_id`` names the caller (an address, an account) for the
        per-client limit; None = not counted. Raises ClientLimitError, SessionLimitError or ProtocolError."""
        if (
            client_id is not None
            and self.max_sessions_per_client is not None
            and self.sessions_of(client_id) >= self.max_sessions_per_client
        ):
            raise ClientLimitError(f"this client already holds {self.max_sessions_per_client} sessions")
        if len(self._sessions) >= self.max_sessions:
            raise SessionLimitError(f"server is at its limit of {self.max_sessions} sessions")
        engine_session, voice = self._engine_session_for(offer.voice)
        names = list(self.voices.names) if self.voices is not None else None
        session = RtcSession(
            engine_session,
            endpointer_config=self.endpointer_config,
            on_closed=self._forget,
            voice=voice,
            voices=names,
            metrics=self.metrics,
            limits=self.limits,
            now=self._now,
            client_id=client_id,
            **self._session_options,
        )
        self._sessions[session.session_id] = session
        try:
            answer = await session.accept(offer)
        except BaseException:
            await session.close()
            self._sessions.pop(session.session_id, None)
            self._count_sessions()
            raise
        if session.peer_connection is not None:
            self._peer_connections.add(session.peer_connection)
        self._start_watchdog()
        if self.metrics is not None:
            self.metrics.session_created()
        self._count_sessions()
        return session, answer

    def _start_watchdog(self) -> None:
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.ensure_future(self._watch_sessions())

    async def _watch_sessions(self) -> None:
        """One task for all sessions: a timer per session would cost a task each for the life of every call."""
        while True:
            await asyncio.sleep(self.watchdog_interval_s)
            now = self._now()
            for session in list(self._sessions.values()):
                try:
                    session.check_deadlines(now)
                except Exception:  # one broken session must not stop the timeouts of the others
                    logger.exception("session %s: checking its timeouts failed", session.session_id)

    def describe_voices(self) -> str:
        if self.voices is None:
            return "this server has no voice bank; leave 'voice' out of the offer"
        names = ", ".join(self.voices.names)
        return f"known voices: {names} (default: {self.voices.default})"

    def _engine_session_for(self, voice: str | None) -> tuple[EngineSession, str | None]:
        """The engine session for ``voice`` (None = the default) and the name of the voice it speaks with."""
        if voice is None:
            return self._new_engine_session(), (self.voices.default if self.voices is not None else None)
        if self.voices is not None and voice not in self.voices.names:
            raise VoiceUnavailableError(f"unknown voice {voice!r}; {self.describe_voices()}")
        try:
            return self._new_engine_session(voice), voice
        except (ValueError, KeyError) as exc:  # the engine is the judge when no bank was given to us
            # (AssistantEngine raises ValueError without a bank; the bank's own UnknownVoiceError is a KeyError)
            message = str(exc) if isinstance(exc, ValueError) or exc.args else f"unknown voice {voice!r}"
            raise VoiceUnavailableError(message) from None

    def _forget(self, session: RtcSession) -> None:
        self._sessions.pop(session.session_id, None)
        self._count_sessions()

    async def close(self, session_id: str) -> bool:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        self._count_sessions()
        await session.close()
        return True

    async def close_all(self) -> None:
        """Closes every session and stops the watchdog (a later :meth:`create` starts it again)."""
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.cancel()
            await asyncio.wait({watchdog})
        sessions, self._sessions = list(self._sessions.values()), {}
        self._count_sessions()
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
