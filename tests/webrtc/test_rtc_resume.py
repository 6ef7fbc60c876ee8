"""Parking and resuming a conversation whose connection dropped (RtcSessionManager): what the resume token opens,
and what it never opens. Real loopback peers; the parking clock is a hand-moved one."""

from __future__ import annotations

import asyncio

import pytest
from rtc_fakes import Client, FakeClock, FakeEngineSession, FakeTurn
from waiting import until

from assistant.protocol import OfferRequest, ProtocolError, Ready, parse_server_message, to_json
from assistant.webrtc.ice import use_loopback_only
from assistant.webrtc.limits import SessionLimits
from assistant.webrtc.manager import RtcSessionManager

pytestmark = pytest.mark.timeout(60)

NO_TIMEOUTS = SessionLimits(connect_timeout_s=None, media_timeout_s=None, idle_timeout_s=None)


class Server:
    def __init__(self, **options):
        use_loopback_only()
        self.clock = FakeClock()
        self.engines: list[FakeEngineSession] = []
        self.manager = RtcSessionManager(
            self._engine, limits=NO_TIMEOUTS, now=self.clock, turn_factory=FakeTurn, **options
        )
        self.clients: list[Client] = []

    def _engine(self, voice=None):
        self.engines.append(FakeEngineSession(n_frames=2))
        return self.engines[-1]

    async def call(self, resume: str | None = None, client_id: str | None = None):
        """A caller connected through the manager: (session, its ready event, client)."""
        client = Client()
        self.clients.append(client)
        offer = await client.offer()
        session, answer = await self.manager.create(OfferRequest(sdp=offer.sdp, resume=resume), client_id=client_id)
        await client.answer(answer)
        (ready,) = await client.wait_for("ready")
        await until(lambda: session.connection_state == "connected", what="the caller connected")
        return session, ready, client

    async def drop(self, session) -> None:
        """The connection dies under the session (no bye): the manager parks its conversation."""
        await session.peer_connection.close()
        await until(lambda: session.closed and session.session_id not in self.manager.session_ids, what="the drop")

    async def close(self) -> None:
        await self.manager.close_all()
        for client in self.clients:
            await client.close()


def test_ready_and_offer_carry_the_resume_fields():
    ready = parse_server_message(to_json(Ready(session_id="s", sample_rate=16000, resume_token="t" * 43, resumed=True)))
    assert (ready.resume_token, ready.resumed) == ("t" * 43, True)
    old_server = parse_server_message('{"type": "ready", "session_id": "s", "sample_rate": 16000}')
    assert (old_server.resume_token, old_server.resumed) == (None, False)
    with pytest.raises(ProtocolError, match="resumed"):
        parse_server_message('{"type": "ready", "session_id": "s", "sample_rate": 16000, "resumed": 1}')
    sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
    sdp += "a=fingerprint:sha-256 AA\r\na=ice-ufrag:u\r\na=ice-pwd:p\r\n"
    offer = OfferRequest.parse({"sdp": sdp, "type": "offer", "resume": "A-b_9" * 5})
    assert offer.resume == "A-b_9" * 5 and OfferRequest.parse(offer.to_dict()) == offer
    for bad in ("short", "x" * 129, "has space in it!!", 42):
        with pytest.raises(ProtocolError, match="resume"):
            OfferRequest.parse({"sdp": sdp, "type": "offer", "resume": bad})


def test_a_dropped_conversation_is_parked_and_its_token_resumes_it_once():
    async def main():
        server = Server()
        try:
            first, ready, client = await server.call()
            client.send({"type": "text", "text": "remember this"})
            await client.wait_for("turn_end")
            token = ready["resume_token"]
            assert isinstance(token, str) and len(token) >= 32 and ready["resumed"] is False
            await server.drop(first)
            assert server.manager.parked_count == 1
            # parked: the engine session is kept (not closed), no peer connection is held
            assert first.stats.peer_lost and not server.engines[0].closed
            assert len(server.manager) == 0 and server.manager.open_peer_connections() == 0

            resumed, ready2, _ = await server.call(resume=token)
            assert resumed.resumed and ready2["resumed"] is True
            assert resumed.engine_session.inner is server.engines[0] and len(server.engines) == 1
            assert [t.text for t in server.engines[0].turns] == ["remember this"]  # its history came along
            assert ready2["resume_token"] not in (None, token) and server.manager.parked_count == 0

            # the spent token opens nothing: a fresh conversation, with an engine session of its own
            fresh, ready3, _ = await server.call(resume=token)
            assert not fresh.resumed and ready3["resumed"] is False
            assert fresh.engine_session.inner is server.engines[1] and server.engines[1].turns == []
        finally:
            await server.close()
        assert all(engine.closed for engine in server.engines)

    asyncio.run(main())


def test_an_expired_or_unknown_token_gets_a_fresh_conversation_and_the_expired_one_is_freed():
    async def main():
        server = Server(park_s=60)
        try:
            first, ready, _ = await server.call()
            await server.drop(first)
            server.clock.advance(61)
            fresh, ready2, _ = await server.call(resume=ready["resume_token"])
            assert not fresh.resumed and ready2["resumed"] is False and len(server.engines) == 2
            assert server.manager.parked_count == 0
            await until(lambda: server.engines[0].closed, what="the expired conversation closed")
            unknown, ready3, _ = await server.call(resume="Z" * 43)
            assert not unknown.resumed and ready3["resumed"] is False and len(server.engines) == 3
        finally:
            await server.close()

    asyncio.run(main())


def test_another_clients_offer_never_gets_the_conversation_and_does_not_spend_the_token():
    async def main():
        server = Server()
        try:
            alice, ready, _ = await server.call(client_id="alice")
            await server.drop(alice)
            mallory, ready_m, _ = await server.call(resume=ready["resume_token"], client_id="mallory")
            assert not mallory.resumed and ready_m["resumed"] is False
            assert mallory.engine_session.inner is not server.engines[0]
            back, ready_a, _ = await server.call(resume=ready["resume_token"], client_id="alice")
            assert back.resumed and back.engine_session.inner is server.engines[0]
        finally:
            await server.close()

    asyncio.run(main())


def test_bye_ends_the_conversation_and_a_live_sessions_token_moves_it_to_the_new_connection():
    async def main():
        server = Server()
        try:
            polite, ready, client = await server.call()
            client.send({"type": "bye"})
            await until(lambda: polite.closed, what="the session closed after bye")
            assert server.manager.parked_count == 0 and server.engines[0].closed
            fresh, _, _ = await server.call(resume=ready["resume_token"])
            assert not fresh.resumed

            # the caller noticed the drop before the server did: its offer parks the live session and resumes it
            live, ready_live, _ = await server.call()
            moved, ready_moved, _ = await server.call(resume=ready_live["resume_token"])
            assert live.closed and moved.resumed and ready_moved["resumed"] is True
            assert moved.engine_session.inner is live.engine_session.inner
            assert not live.engine_session.inner.closed
        finally:
            await server.close()

    asyncio.run(main())


def test_parking_is_bounded_the_oldest_conversation_is_closed_to_make_room():
    async def main():
        server = Server(max_parked=1)
        try:
            one, ready_one, _ = await server.call()
            two, _, _ = await server.call()
            await server.drop(one)
            await server.drop(two)  # takes the only place: the first parked conversation ends
            await until(lambda: server.engines[0].closed, what="the oldest parked conversation closed")
            assert server.manager.parked_count == 1 and not server.engines[1].closed
            fresh, _, _ = await server.call(resume=ready_one["resume_token"])
            assert not fresh.resumed
        finally:
            await server.close()
        never = Server(park_s=0)  # parking off: no token is handed out, a drop closes the conversation
        try:
            session, ready, _ = await never.call()
            assert ready["resume_token"] is None
            await session.peer_connection.close()
            await until(lambda: never.engines[0].closed, what="the conversation closed")
            assert never.manager.parked_count == 0
        finally:
            await never.close()

    asyncio.run(main())
