"""The gateway's HTTP handlers without Ray: an offer's voice, ``GET /voices``, and what a refused offer leaves behind.

The handlers are called on a bare ``Gateway`` object whose engine and session manager are in-process fakes, so no
model and no Serve instance is needed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from offer_fakes import BareGateway, FakeRequest, client_offer, offering, reply_json

from assistant.access import AccessConfig
from assistant.webrtc.ice import use_loopback_only
from assistant.webrtc.manager import RtcSessionManager

pytestmark = pytest.mark.timeout(60)

# the embedded tokenizer, found without importing assistant.models.bundle (which imports torch and transformers)
TOKENIZER_DIR = Path(__file__).resolve().parents[2] / "assistant" / "assets" / "embedded" / "tokenizer"


class FakeVoiceBank:
    names = ("alto", "bass")
    default = "alto"


class FakeEngineSession:
    def __init__(self, voice):
        self.voice = voice
        self.closed = False

    async def respond(self, turn):  # pragma: no cover - no turn runs here
        if False:
            yield None

    def interrupt(self):
        pass

    async def close(self):
        self.closed = True


class FakeEngine:
    """``AssistantEngine.new_session``'s contract: None = the default voice, ValueError for an unknown one."""

    def __init__(self, voices):
        self.voices = voices
        self.sessions: list[FakeEngineSession] = []

    def new_session(self, voice=None):
        if voice is not None and self.voices is None:
            raise ValueError(f"voice {voice!r} requested, but these models have no voice bank")
        if voice is not None and voice not in self.voices.names:
            raise ValueError(f"unknown voice {voice!r}")
        self.sessions.append(FakeEngineSession(voice or (self.voices.default if self.voices else None)))
        return self.sessions[-1]


def bare_gateway(voices) -> tuple[BareGateway, FakeEngine]:
    engine = FakeEngine(voices)
    sessions = RtcSessionManager(engine.new_session, max_sessions=2, voices=engine.voices)
    return BareGateway(engine=engine, sessions=sessions, access=AccessConfig(), serving_metrics=None), engine


def test_unknown_voice_is_a_400_that_lists_the_voices_and_leaves_no_session():
    async def main():
        gw, engine = bare_gateway(FakeVoiceBank())
        async with offering(gw) as sdp:
            status, body = reply_json(await gw.offer(FakeRequest({"sdp": sdp, "type": "offer", "voice": "tenor"})))
            assert status == 400
            assert "unknown voice 'tenor'" in body["error"] and "alto, bass" in body["error"]
            assert len(gw.sessions) == 0 and not engine.sessions
            status, body = reply_json(await gw.offer(FakeRequest({"sdp": sdp, "type": "offer", "voice": "Bad Name"})))
            assert status == 400 and "lowercase" in body["error"] and len(gw.sessions) == 0

            status, body = reply_json(await gw.offer(FakeRequest({"sdp": sdp, "type": "offer", "voice": "bass"})))
            assert status == 200 and body["type"] == "answer"
            session = gw.sessions.get(body["session_id"])
            assert session is not None and session.voice == "bass" and engine.sessions[0].voice == "bass"

    asyncio.run(main())


def test_a_voice_offered_to_models_without_a_bank_is_a_400():
    async def main():
        gw, engine = bare_gateway(None)
        async with offering(gw) as sdp:
            status, body = reply_json(await gw.offer(FakeRequest({"sdp": sdp, "type": "offer", "voice": "alto"})))
            assert status == 400 and "'alto'" in body["error"] and "no voice bank" in body["error"]
            assert len(gw.sessions) == 0 and not engine.sessions
            status, body = reply_json(await gw.offer(FakeRequest({"sdp": sdp, "type": "offer"})))
            assert status == 200 and gw.sessions.get(body["session_id"]).voice is None

    asyncio.run(main())


def test_voices_lists_names_and_default():
    gw, _ = bare_gateway(FakeVoiceBank())
    assert reply_json(asyncio.run(gw.voices(FakeRequest()))) == (200, {"voices": ["alto", "bass"], "default": "alto"})
    gw, _ = bare_gateway(None)
    assert reply_json(asyncio.run(gw.voices(FakeRequest()))) == (200, {"voices": [], "default": None})


def test_the_real_engine_and_voice_bank_behind_the_gateway():
    """The contract with ``AssistantEngine.new_session`` and ``VoiceBank``, not just with the fakes above."""
    import numpy as np

    from assistant.models.voices import VoiceBank
    from assistant.pipeline.engine import AssistantEngine
    from assistant.vocab import UnifiedVocab

    async def main():
        use_loopback_only()
        bank = VoiceBank(
            {"f2": np.zeros((2, 3), np.int64), "m1": np.ones((2, 4), np.int64)}, default="f2", codebook_size=8
        )
        engine = AssistantEngine(backends=None, vocab=UnifiedVocab.from_dir(TOKENIZER_DIR), voices=bank)
        sessions = RtcSessionManager(engine.new_session, voices=engine.voices)
        gw = BareGateway(engine=engine, sessions=sessions, access=AccessConfig(), serving_metrics=None)
        assert reply_json(await gw.voices(FakeRequest())) == (200, {"voices": ["f2", "m1"], "default": "f2"})
        pc, sdp = await client_offer()
        status, body = reply_json(await gw.offer(FakeRequest({"sdp": sdp, "type": "offer", "voice": "x9"})))
        assert status == 400 and "'x9'" in body["error"] and "f2, m1" in body["error"] and len(sessions) == 0
        status, body = reply_json(await gw.offer(FakeRequest({"sdp": sdp, "type": "offer", "voice": "m1"})))
        assert status == 200
        session = sessions.get(body["session_id"])
        assert session.voice == "m1" and session.engine_session.voice_prompt.shape == (2, 4)
        await sessions.close_all()
        # a manager that was not told about the bank still refuses the voice (the bank's KeyError)
        blind = RtcSessionManager(engine.new_session)
        gw = BareGateway(engine=engine, sessions=blind, access=AccessConfig(), serving_metrics=None)
        status, body = reply_json(await gw.offer(FakeRequest({"sdp": sdp, "type": "offer", "voice": "x9"})))
        assert status == 400 and "unknown voice 'x9'" in body["error"] and len(blind) == 0
        await pc.close()

    asyncio.run(main())
