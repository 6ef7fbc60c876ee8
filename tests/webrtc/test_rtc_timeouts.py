"""The manager's watchdog against callers that never connect, vanish or go idle, and the per-client session limit.

Time is a hand-moved clock given to the manager (``now=``); the watchdog checks every 20 ms of real time, so a test
moves the clock and then waits for the session to go, never sleeps a fixed time to show that it stayed.
"""

from __future__ import annotations

import asyncio

import pytest
from rtc_fakes import Client, FakeClock, FakeEngineSession, FakeTurn, ScriptedMic
from waiting import until

from assistant.protocol import OfferRequest
from assistant.webrtc.ice import use_loopback_only
from assistant.webrtc.limits import SessionLimits
from assistant.webrtc.manager import ClientLimitError, RtcSessionManager, SessionLimitError

pytestmark = pytest.mark.timeout(60)


def manager_with(clock: FakeClock, limits: SessionLimits, **options) -> RtcSessionManager:
    use_loopback_only()
    return RtcSessionManager(
        lambda: FakeEngineSession(n_frames=2),
        limits=limits,
        now=clock,
        watchdog_interval_s=0.02,
        turn_factory=FakeTurn,
        **options,
    )


def without_candidates(offer: OfferRequest) -> OfferRequest:
    """The offer with its ICE candidates cut out: the server can never reach this caller."""
    lines = [line for line in offer.sdp.split("\r\n") if not line.startswith(("a=candidate", "a=end-of-candidates"))]
    return OfferRequest(sdp="\r\n".join(lines))


async def connected_caller(manager: RtcSessionManager, client: Client):
    session, answer = await manager.create(await client.offer())
    await client.answer(answer)
    await client.wait_for("ready")
    await until(lambda: session.connection_state == "connected", what="the caller connected")
    return session


class StallingMic(ScriptedMic):
    """A mic that stops handing out frames (and so the caller's RTP stops) once ``stall`` is set."""

    def __init__(self):
        super().__init__()
        self.stall = asyncio.Event()
        self._never = asyncio.Event()

    async def recv(self):
        if self.stall.is_set():
            await self._never.wait()
        return await super().recv()


def test_offers_that_never_connect_are_dropped_and_free_their_slot():
    async def main():
        clock = FakeClock()
        manager = manager_with(
            clock, SessionLimits(connect_timeout_s=15, media_timeout_s=None, idle_timeout_s=None), max_sessions=1
        )
        ghost = Client()
        stuck, _ = await manager.create(without_candidates(await ghost.offer()))
        caller = Client()
        with pytest.raises(SessionLimitError):  # the ghost holds the only slot
            await manager.create(await caller.offer())

        clock.advance(14)
        assert stuck.check_deadlines(clock()) is None  # not yet: the timeout is 15 s
        clock.advance(2)
        await until(lambda: len(manager) == 0, what="the never-connected session was dropped")
        assert stuck.closed and "not connected within 15 s" in stuck.stats.close_reason

        session = await connected_caller(manager, caller)  # a real caller now gets the slot
        clock.advance(100)  # connected: the connect timeout no longer applies
        assert session.check_deadlines(clock()) is None and not session.closed
        await manager.close_all()
        assert manager.watchdog is None and session.closed
        await ghost.close()
        await caller.close()

    asyncio.run(main())


def test_a_caller_whose_audio_and_messages_stop_is_closed():
    async def main():
        clock = FakeClock()
        manager = manager_with(clock, SessionLimits(connect_timeout_s=None, media_timeout_s=5, idle_timeout_s=None))
        client = Client()
        client.mic = StallingMic()
        client.pc.getSenders()[0].replaceTrack(client.mic)
        session = await connected_caller(manager, client)

        # while frames flow, 8 s of clock pass in 1 s steps, each step answered by fresh frames: no timeout
        for _ in range(8):
            clock.advance(1)
            frames = session.stats.inbound_frames
            await until(lambda frames=frames: session.stats.inbound_frames >= frames + 2, what="more inbound frames")
        assert not session.closed

        client.mic.stall.set()  # the caller vanishes (its ICE consent still answers)

        def closed_while_time_runs() -> bool:
            clock.advance(1)  # a frame still in flight may land after one step, never after five
            return session.closed

        await until(closed_while_time_runs, what="the silent session was closed")
        error = (await client.wait_for("error"))[0]
        assert error["code"] == "timeout" and "no audio or message" in error["message"]
        await until(lambda: len(manager) == 0, what="the manager forgot the session")
        await manager.close_all()
        await client.close()

    asyncio.run(main())


def test_an_idle_caller_is_told_and_closed():
    async def main():
        clock = FakeClock()
        manager = manager_with(clock, SessionLimits(connect_timeout_s=None, media_timeout_s=None, idle_timeout_s=30))
        client = Client()
        session = await connected_caller(manager, client)

        clock.advance(20)
        client.send({"type": "hello"})  # a client message is activity: the 30 s start again
        await until(lambda: session.last_activity_at == clock(), what="the hello was handled")
        assert session.check_deadlines(clock() + 29) is None

        clock.advance(31)
        error = (await client.wait_for("error"))[0]
        assert error["code"] == "timeout" and "no activity for 30 s" in error["message"]
        await until(lambda: len(manager) == 0, what="the idle session was closed and forgotten")
        assert session.connection_state == "closed" and session.stats.close_reason == "no activity for 30 s"
        assert not session._tasks
        await manager.close_all()
        await client.close()

    asyncio.run(main())


def test_watchdog_is_one_task_started_by_the_first_session_and_stopped_by_close_all():
    async def main():
        clock = FakeClock()
        manager = manager_with(clock, SessionLimits())
        assert manager.watchdog is None
        clients = [Client() for _ in range(3)]
        for client in clients:
            await manager.create(await client.offer())
        watchdog = manager.watchdog
        assert watchdog is not None and not watchdog.done()
        await manager.close_all()
        assert watchdog.done() and manager.watchdog is None and len(manager) == 0
        for client in clients:
            await client.close()

    asyncio.run(main())


def test_a_client_holds_at_most_max_sessions_per_client():
    async def main():
        clock = FakeClock()
        manager = manager_with(clock, SessionLimits(), max_sessions=8, max_sessions_per_client=2)
        clients = [Client() for _ in range(6)]
        first, _ = await manager.create(await clients[0].offer(), client_id="10.0.0.1")
        await manager.create(await clients[1].offer(), client_id="10.0.0.1")
        with pytest.raises(ClientLimitError, match="already holds 2 sessions") as refused:
            await manager.create(await clients[2].offer(), client_id="10.0.0.1")
        assert isinstance(refused.value, SessionLimitError)  # the HTTP layer's 503 path still catches it
        assert len(manager) == 2 and manager.sessions_of("10.0.0.1") == 2

        other, _ = await manager.create(await clients[3].offer(), client_id="10.0.0.2")  # others are not held back
        assert other.client_id == "10.0.0.2"
        await manager.create(await clients[4].offer())  # no client id: not counted
        assert len(manager) == 4

        await manager.close(first.session_id)  # closing frees the client's count
        again, _ = await manager.create(await clients[5].offer(), client_id="10.0.0.1")
        assert manager.sessions_of("10.0.0.1") == 2 and again.client_id == "10.0.0.1"
        await manager.close_all()
        for client in clients:
            await client.close()

    asyncio.run(main())


def test_max_sessions_per_client_none_means_no_limit():
    async def main():
        manager = manager_with(FakeClock(), SessionLimits(), max_sessions=3, max_sessions_per_client=None)
        clients = [Client() for _ in range(3)]
        for client in clients:
            await manager.create(await client.offer(), client_id="same")
        assert manager.sessions_of("same") == 3
        await manager.close_all()
        for client in clients:
            await client.close()

    asyncio.run(main())
