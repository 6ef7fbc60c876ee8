"""The sessions of one process (a gateway replica): :class:`RtcSessionManager` answers offers with new
:class:`~assistant.webrtc.session.RtcSession` objects, holds them within the process's and each client's limits, and
runs the one watchdog task that enforces every session's timeouts.

Resuming a conversation after a dropped connection: every session's ``ready`` carries a fresh ``resume_token``
(``secrets.token_urlsafe``: unguessable; kept here only as its SHA-256). When a session's peer connection is lost
without ``bye`` (the connection failed or closed, or the caller went silent: ``RtcSessionStats.peer_lost``), the
manager *parks* its conversation: the peer connection, the tracks and the turn in flight are gone (the turn was
interrupted, so no LM slot is held: an engine session holds one only while a turn generates), and what the engine
session needs to go on is kept: the engine session itself (its history and voice), the voice's name and who the
caller was. An offer whose ``resume`` names a parked conversation, from the same client, gets a new session on that
engine session (``ready`` says ``resumed: true`` and carries the next token); the token is spent. An offer with the
token of a session still live (the caller noticed the drop first) parks that session at once, then resumes it. Any
other token (unknown, spent, expired, another replica's, another client's) gets a fresh conversation, never someone
else's. Parking is bounded: ``park_s`` seconds (then the engine session is closed), at most ``max_parked``
conversations in all and ``max_sessions_per_client`` per client (the oldest is closed to make room).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from aiortc import RTCPeerConnection

from assistant.endpointing import EndpointerConfig
from assistant.pipeline.turns import EngineSession
from assistant.protocol import OfferAnswer, OfferRequest, ProtocolError
from assistant.webrtc.limits import SessionLimits
from assistant.webrtc.session import RtcSession

if TYPE_CHECKING:
    from assistant.metrics import ServingMetrics
    from assistant.pipeline.engine import UserTurn
    from assistant.pipeline.outputs import EngineOutput

logger = logging.getLogger(__name__)

# How long a conversation whose connection dropped waits for its caller to come back.
PARK_S = 60.0


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


class _HeldEngineSession:
    """The engine session as a live :class:`RtcSession` sees it: everything is passed through, except that closing it
    (the session's turn controller does so whenever the session ends) leaves the conversation open when ``keep()``
    says it is to be parked; ``kept`` then says so, and the manager parks :attr:`inner`. The manager changes
    ``keep`` as the session's life goes on (answering the offer, live, closing everything)."""

    def __init__(self, inner: EngineSession, keep: Callable[[], bool]):
        self.inner = inner
        self.keep = keep
        self.kept = False

    def respond(self, turn: UserTurn, **options: Any) -> AsyncGenerator[EngineOutput, None]:
        return self.inner.respond(turn, **options)  # options: tentative=True for a speculative turn

    def interrupt(self) -> None:
        self.inner.interrupt()

    async def close(self) -> None:
        # The controller calls this after its turns have ended, so the engine session is idle here either way.
        if self.keep():
            self.kept = True
            return
        await self.inner.close()

    def __getattr__(self, name: str) -> Any:  # whatever else the engine session offers (called for unknown names)
        return getattr(self.inner, name)


@dataclass
class _Parked:
    """A conversation whose connection dropped: what a resumed session needs, and nothing that costs a peer."""

    engine_session: EngineSession
    voice: str | None
    client_id: str | None
    parked_at: float
    session_id: str  # of the session that dropped (logs)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


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
    now: the clock of the limits and of parking (monotonic seconds); tests inject their own.
    watchdog_interval_s: how often the one watchdog task checks every session's timeouts.
    park_s: how long a conversation whose connection dropped waits to be resumed (0: never parked).
    max_parked: how many parked conversations the process keeps (default: ``max_sessions``).
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
        park_s: float = PARK_S,
        max_parked: int | None = None,
        **session_options: Any,
    ):
        if max_sessions < 1:
            raise ValueError("max_sessions must be >= 1")
        if park_s < 0:
            raise ValueError("park_s must be >= 0")
        if max_parked is not None and max_parked < 0:
            raise ValueError("max_parked must be >= 0 or None")
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
        self.park_s = park_s
        self.max_parked = max_sessions if max_parked is None else max_parked
        self._live: dict[str, tuple[str, _HeldEngineSession]] = {}  # session id -> (its token's digest, its engine)
        self._live_tokens: dict[str, str] = {}  # token digest -> the id of the live session whose ready carried it
        self._parked: OrderedDict[str, _Parked] = OrderedDict()  # token digest -> parked conversation, oldest first
        self._closing: set[asyncio.Task[None]] = set()  # engine sessions of ended parked conversations, closing
        self.resumed_count = 0  # conversations resumed so far

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
            self.metrics.set_active_sessions(len(self._sessions), parked=self.parked_count)

    def open_peer_connections(self) -> int:
        """Peer connections this manager made that are still alive and not closed: after every caller has gone this
        is 0, whatever happened to the sessions (the soak tests watch it through ``/metrics``)."""
        return sum(1 for pc in self._peer_connections if pc.connectionState != "closed")

    @property
    def parked_count(self) -> int:
        """Conversations whose connection dropped, waiting to be resumed."""
        return len(self._parked)

    async def create(self, offer: OfferRequest, client_id: str | None = None) -> tuple[RtcSession, OfferAnswer]:
        """Answers ``offer`` with a new session. ``client_id`` names the caller (an address, an account) for the
        per-client limit; None = not counted. An offer whose ``resume`` token names a conversation this process
        parked for the same client continues it (see the module docstring). Raises ClientLimitError,
        SessionLimitError or ProtocolError."""
        claimed = await self._claim(offer.resume, client_id) if offer.resume is not None else None
        try:
            if (
                client_id is not None
                and self.max_sessions_per_client is not None
                and self.sessions_of(client_id) >= self.max_sessions_per_client
            ):
                raise ClientLimitError(f"this client already holds {self.max_sessions_per_client} sessions")
            if len(self._sessions) >= self.max_sessions:
                raise SessionLimitError(f"server is at its limit of {self.max_sessions} sessions")
            if claimed is None:
                engine_session, voice = self._engine_session_for(offer.voice)
            else:
                engine_session, voice = claimed[1].engine_session, claimed[1].voice
        except BaseException:
            if claimed is not None:  # still the caller's to resume, with the same token
                self._parked[claimed[0]] = claimed[1]
            raise
        token = secrets.token_urlsafe(32)
        # Until the offer is answered, a resumed conversation is never closed (a bad offer must not lose it), and a
        # new one always is.
        held = _HeldEngineSession(engine_session, keep=lambda: claimed is not None)
        names = list(self.voices.names) if self.voices is not None else None
        session = RtcSession(
            held,
            endpointer_config=self.endpointer_config,
            on_closed=self._forget,
            voice=voice,
            voices=names,
            metrics=self.metrics,
            limits=self.limits,
            now=self._now,
            client_id=client_id,
            resume_token=token if self.park_s > 0 and self.max_parked > 0 else None,
            resumed=claimed is not None,
            **self._session_options,
        )
        self._sessions[session.session_id] = session
        try:
            answer = await session.accept(offer)
        except BaseException:
            await session.close()
            self._sessions.pop(session.session_id, None)
            self._count_sessions()
            if claimed is not None and held.kept:
                self._parked[claimed[0]] = claimed[1]
            raise
        held.keep = lambda: self._should_park(session)
        digest = _digest(token)
        self._live[session.session_id] = (digest, held)
        self._live_tokens[digest] = session.session_id
        if claimed is not None:
            self.resumed_count += 1
            logger.info("session %s resumes the conversation of session %s", session.session_id, claimed[1].session_id)
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
            self._expire_parked(now)

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
        if self._sessions.get(session.session_id) is session:
            self._sessions.pop(session.session_id)
        self._count_sessions()
        live = self._live.pop(session.session_id, None)
        if live is None:
            return
        digest, held = live
        self._live_tokens.pop(digest, None)
        if held.kept:
            parked = _Parked(held.inner, session.voice, session.client_id, self._now(), session.session_id)
            self._park(digest, parked)

    # ----- parked conversations -----

    def _should_park(self, session: RtcSession) -> bool:
        """Whether a session that is closing keeps its conversation for a resume: its caller was lost without bye,
        and there is a conversation to keep (it connected once, or it was itself resumed)."""
        if self.park_s <= 0 or self.max_parked <= 0:
            return False
        return session.stats.peer_lost and (session.connected_at is not None or session.resumed)

    def _park(self, digest: str, parked: _Parked) -> None:
        self._expire_parked(parked.parked_at)
        if parked.client_id is not None and self.max_sessions_per_client is not None:
            own = [d for d, p in self._parked.items() if p.client_id == parked.client_id]
            for oldest in own[: max(0, len(own) - self.max_sessions_per_client + 1)]:
                self._end_parked(self._parked.pop(oldest), "the client parked more conversations")
        while len(self._parked) >= self.max_parked:
            self._end_parked(self._parked.popitem(last=False)[1], "more conversations were parked")
        self._parked[digest] = parked
        logger.info("session %s: connection lost; conversation parked for %g s", parked.session_id, self.park_s)

    async def _claim(self, token: str, client_id: str | None) -> tuple[str, _Parked] | None:
        """Takes the conversation ``token`` resumes out of the parking (a live session holding it is parked first),
        or None: the token is unknown, spent, expired, or the caller is not the one it was given to."""
        digest = _digest(token)
        live_id = self._live_tokens.get(digest)
        if live_id is not None:
            live_session, live = self._sessions.get(live_id), self._live.get(live_id)
            if live_session is not None and live is not None and live_session.client_id == client_id:
                logger.info("session %s: its caller is back on a new connection; parking it", live_id)
                live[1].keep = lambda: True
                await live_session.close()  # _forget parks it under this token
        self._expire_parked(self._now())
        parked = self._parked.get(digest)
        if parked is None or parked.client_id != client_id:
            return None
        del self._parked[digest]
        return digest, parked

    def _expire_parked(self, now: float) -> None:
        expired = [d for d, p in self._parked.items() if now - p.parked_at > self.park_s]
        for digest in expired:
            self._end_parked(self._parked.pop(digest), f"not resumed within {self.park_s:g} s")

    def _end_parked(self, parked: _Parked, why: str) -> None:
        logger.info("session %s: parked conversation ended: %s", parked.session_id, why)
        task = asyncio.ensure_future(self._close_engine_session(parked))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close_engine_session(parked: _Parked) -> None:
        try:
            await parked.engine_session.close()
        except Exception:
            logger.exception("session %s: closing the parked engine session failed", parked.session_id)

    async def close(self, session_id: str) -> bool:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        self._count_sessions()
        await session.close()
        return True

    async def close_all(self) -> None:
        """Closes every session, ends every parked conversation and stops the watchdog (a later :meth:`create` starts
        it again)."""
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.cancel()
            await asyncio.wait({watchdog})
        for _, held in self._live.values():
            held.keep = lambda: False  # closing everything: nothing is parked
        sessions, self._sessions = list(self._sessions.values()), {}
        self._count_sessions()
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
        parked, self._parked = list(self._parked.values()), OrderedDict()
        for conversation in parked:
            self._end_parked(conversation, "the server is closing")
        await asyncio.gather(*list(self._closing), return_exceptions=True)
