"""RtcSession against a real in-process aiortc client peer (loopback ICE) and a scripted fake engine session."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from rtc_fakes import ENDPOINTER, Client, FakeEngineSession, FakeTurn, connect, connected
from waiting import until

from assistant.audio import OUTPUT_FRAME_SAMPLES
from assistant.pipeline.outputs import AudioFrame, TurnFinished
from assistant.protocol import FinishReason, OfferRequest, ProtocolError
from assistant.webrtc.ice import use_loopback_only
from assistant.webrtc.manager import RtcSessionManager, VoiceUnavailableError
from assistant.webrtc.session import RtcSession

pytestmark = pytest.mark.timeout(60)


def run(coro):
    return asyncio.run(coro)


def test_answer_sends_audio_and_ready_arrives():
    async def main():
        engine = FakeEngineSession()
        session, client = await connect(engine)
        audio = [line for line in session._pc.localDescription.sdp.splitlines() if line.startswith("a=sendrecv")]
        assert audio, "the answer must offer the server's audio track (sendrecv)"
        ready = client.messages[0]
        assert ready["type"] == "ready" and ready["session_id"] == "s1" and ready["sample_rate"] == 16000
        await session.close()
        assert engine.closed
        await client.close()

    run(main())


def test_text_message_runs_a_turn_with_audio_and_turn_end():
    async def main():
        engine = FakeEngineSession(n_frames=15)
        session, client = await connect(engine)
        client.send({"type": "text", "text": "hi there"})
        end = (await client.wait_for("turn_end"))[0]
        assert end["reason"] == "complete"
        types = client.types()
        assert types.index("turn_started") < types.index("transcript") < types.index("text") < types.index("turn_end")
        assert engine.turns[0].text == "hi there" and engine.turns[0].audio is None and engine.turns[0].image is None
        assert session.track.frames_sent == 15  # turn_end waited for the last frame to leave the track
        await until(lambda: client.loud_frames >= 5, what="the caller heard the reply")  # through its jitter buffer
        await session.close()
        assert not session._tasks  # the audio reader and the turn's tasks are gone with the session
        await client.close()

    run(main())


def test_malformed_message_gets_error_and_session_keeps_working():
    async def main():
        engine = FakeEngineSession(n_frames=2)
        async with connected(engine) as (session, client):
            client.send("{not json")
            client.send({"type": "dance"})
            errors = await client.wait_for("error", count=2)
            assert "JSON" in errors[0]["message"] and "dance" in errors[1]["message"]
            client.send({"type": "text", "text": "still there?"})
            await client.wait_for("turn_end")
            assert session.stats.client_errors == 2

    run(main())


@pytest.mark.slow  # real WebRTC in real time: > 1.5 s
def test_speech_burst_is_endpointed_into_a_turn():
    async def main():
        engine = FakeEngineSession(n_frames=2)
        async with connected(engine) as (session, client):
            await asyncio.sleep(0.3)
            client.mic.loud = True
            await client.wait_for("speech_started", timeout=5)
            await asyncio.sleep(0.6)
            client.mic.loud = False
            stopped = (await client.wait_for("speech_stopped", timeout=5))[0]
            # The turn is the span the mic was loud plus what the endpointer (ENDPOINTER, 20 ms frames) adds to it:
            # - pre-roll: of the pre_roll_ms kept up to the start decision, start_ms are the voiced frames that made
            #   it, so up to pre_roll_ms - start_ms = 140 ms of the silence before (less if the VAD was slower);
            # - trailing: of the end_silence_ms that ended the turn, 100 ms are kept;
            # - webrtcvad's hangover: it calls frames voiced for up to 7 x 20 ms after a loud run (its longest
            #   overhang at 20 ms frames, aggressiveness 1);
            # - the codec: Opus's look-ahead and the 48 -> 16 kHz resampler shift the loud span off the 20 ms grid
            #   and ring after it, so it touches up to 3 more frames (60 ms).
            # Observed on loopback: 140 + 100 + 140 + 40 ms over the loud span.
            pre_roll_silence_s = (ENDPOINTER.pre_roll_ms - ENDPOINTER.start_ms) / 1000
            kept_tail_s, hangover_s, codec_s = 0.1, 7 * 0.02, 3 * 0.02
            added = stopped["duration_s"] - client.mic.loud_s
            assert client.mic.loud_frames > 0
            assert kept_tail_s - 1e-6 <= added <= pre_roll_silence_s + kept_tail_s + hangover_s + codec_s + 1e-6, added
            await client.wait_for("turn_end", timeout=5)
            assert engine.turns and engine.turns[0].audio is not None and engine.turns[0].text is None
            assert abs(engine.turns[0].audio.size / 16000 - stopped["duration_s"]) < 0.05
            assert session.stats.inbound_frames > 20

    run(main())


def test_interrupt_clears_the_queue_and_ends_the_turn():
    async def main():
        engine = FakeEngineSession(n_frames=500)  # 10 s of audio: the bounded queue fills up
        async with connected(engine, max_queued_frames=10) as (session, client):
            client.send({"type": "text", "text": "talk a lot"})
            await client.wait_for("text")
            await until(lambda: session.track.queued_frames == 10, what="backpressure: the engine waits for room")
            client.send({"type": "interrupt"})
            end = (await client.wait_for("turn_end", timeout=5))[0]
            assert end["reason"] == "interrupted"
            assert "interrupted" in client.types()
            assert engine.interrupts == 1
            assert session.track.queued_frames == 0
            assert session.track.frames_sent < 100
            # the next turn works normally
            engine.n_frames = 3
            client.send({"type": "text", "text": "again"})
            ends = await client.wait_for("turn_end", count=2)
            assert ends[1]["reason"] == "complete" and ends[1]["turn_id"] == end["turn_id"] + 1

    run(main())


def test_new_turn_interrupts_the_previous_one():
    async def main():
        engine = FakeEngineSession(n_frames=500)
        async with connected(engine, max_queued_frames=10) as (_, client):
            client.send({"type": "text", "text": "one"})
            await client.wait_for("text")
            engine_turns = len(engine.turns)
            client.send({"type": "text", "text": "two"})
            first_end = (await client.wait_for("turn_end"))[0]
            assert first_end["reason"] == "interrupted" and first_end["turn_id"] == 1
            await client.wait_for("turn_started", count=2)
            assert len(engine.turns) == engine_turns + 1

    run(main())


def test_unusable_offers_are_protocol_errors():
    async def main():
        session = RtcSession(FakeEngineSession(), "bad", turn_factory=FakeTurn)
        with pytest.raises(ProtocolError):
            await session.accept(OfferRequest(sdp="v=0\r\nm=audio garbage\r\nm=application x\r\n"))
        await session.close()

    run(main())


def test_manager_limits_and_closes_sessions():
    async def main():
        use_loopback_only()
        engines = []

        def new_engine_session():
            engines.append(FakeEngineSession())
            return engines[-1]

        manager = RtcSessionManager(new_engine_session, max_sessions=1, turn_factory=FakeTurn)
        client = Client()
        session, answer = await manager.create(await client.offer())
        assert len(manager) == 1 and manager.get(answer.session_id) is session
        other = Client()
        with pytest.raises(RuntimeError, match="limit"):
            await manager.create(await other.offer())
        watchdog = manager.watchdog
        await manager.close_all()
        assert len(manager) == 0 and engines[0].closed and session.closed
        assert watchdog.done() and not session._tasks
        await client.close()
        await other.close()

    run(main())


class MediaEngineSession(FakeEngineSession):
    """Replies with an image, then a piece of music whose samples follow on the audio track."""

    async def respond(self, turn, *, tentative=False):
        from assistant.pipeline.outputs import ImageOutput, MusicOutput

        self.turns.append(turn)
        yield ImageOutput(index=0, png=b"\x89PNG\r\n\x1a\nfake", width=64, height=64)
        wave = np.full(1600, 0.25, dtype=np.float32)
        yield MusicOutput(index=0, wave=wave, duration_s=0.1)
        for _ in range(5):
            yield AudioFrame(pcm=np.full(OUTPUT_FRAME_SAMPLES, 8000, np.int16), source="music")
        yield TurnFinished(reason=FinishReason.COMPLETE)


def test_images_and_music_become_wire_events():
    async def main():
        import base64

        engine = MediaEngineSession()
        async with connected(engine) as (session, client):
            client.send({"type": "text", "text": "draw and play"})
            await client.wait_for("turn_end")
            image = (await client.wait_for("image"))[0]
            assert base64.b64decode(image["png_base64"]) == b"\x89PNG\r\n\x1a\nfake"
            assert (image["width"], image["height"], image["index"], image["turn_id"]) == (64, 64, 0, 1)
            music = (await client.wait_for("music"))[0]
            assert music["duration_s"] == pytest.approx(0.1) and music["index"] == 0
            types = client.types()
            assert types.index("image") < types.index("music") < types.index("turn_end")
            assert session.track.frames_sent == 5

    run(main())


# ---------------------------------------------------------------------------------------------------------
# pictures and voices

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40
JPEG = b"\xff\xd8\xff\xe0" + b"\x11" * 40


def image_message(data: bytes, text: str | None = None) -> dict:
    import base64

    message = {"type": "image", "png_base64": base64.b64encode(data).decode("ascii")}
    if text is not None:
        message["text"] = text
    return message


def test_picture_with_a_question_starts_a_turn_at_once():
    async def main():
        engine = FakeEngineSession(n_frames=2)
        async with connected(engine) as (session, client):
            client.send(image_message(PNG, "what is in this picture?"))
            end = (await client.wait_for("turn_end"))[0]
            assert end["reason"] == "complete"
            turn = engine.turns[0]
            assert (turn.image, turn.text, turn.audio) == (PNG, "what is in this picture?", None)
            assert session.pending_image is None and session.stats.images_received == 1

    run(main())


@pytest.mark.slow  # real WebRTC in real time: > 1.5 s
def test_picture_without_a_question_goes_with_the_next_spoken_turn_only():
    async def main():
        engine = FakeEngineSession(n_frames=2)
        async with connected(engine) as (session, client):
            client.send(image_message(PNG))
            client.send(image_message(JPEG))  # a newer picture replaces the waiting one
            await until(lambda: session.stats.images_received == 2, what="both pictures arrived")
            assert "turn_started" not in client.types() and not engine.turns and session.turns.idle
            assert session.pending_image == JPEG
            client.mic.loud = True
            await client.wait_for("speech_started", timeout=5)
            await asyncio.sleep(0.5)
            client.mic.loud = False
            await client.wait_for("turn_end", timeout=5)
            spoken = engine.turns[0]
            assert spoken.audio is not None and spoken.image == JPEG and spoken.text is None
            assert session.pending_image is None
            client.send({"type": "text", "text": "and now?"})  # the picture went with one turn only
            await client.wait_for("turn_end", count=2)
            assert engine.turns[1].image is None

    run(main())


def test_interrupt_drops_the_pending_picture_and_a_typed_turn_takes_it_otherwise():
    async def main():
        engine = FakeEngineSession(n_frames=2)
        async with connected(engine) as (session, client):
            client.send(image_message(PNG))
            client.send({"type": "interrupt"})
            client.send({"type": "text", "text": "hello"})
            await client.wait_for("turn_end")
            assert engine.turns[0].image is None and session.pending_image is None
            client.send(image_message(JPEG))
            client.send({"type": "text", "text": "what about this one?"})
            await client.wait_for("turn_end", count=2)
            assert (engine.turns[1].image, engine.turns[1].text) == (JPEG, "what about this one?")

    run(main())


@pytest.mark.slow  # real WebRTC in real time: > 1.5 s
def test_speech_during_a_reply_barges_in_keeps_the_picture_and_starts_the_next_turn():
    async def main():
        engine = FakeEngineSession(n_frames=500)  # a 10 s reply
        async with connected(engine, max_queued_frames=10) as (session, client):
            client.send({"type": "text", "text": "tell me a long story"})
            await client.wait_for("text")
            assert session.reply_in_progress
            client.send(image_message(PNG))  # a picture for the next question
            await until(lambda: session.pending_image == PNG, what="the picture waits")
            client.mic.loud = True  # the user talks over the assistant
            await client.wait_for("speech_started", timeout=5)
            interrupted = await client.wait_for("interrupted", timeout=5)
            assert interrupted[0]["turn_id"] == 1
            assert engine.interrupts == 1  # the server's VAD decided; nothing else interrupted
            assert session.track.queued_frames == 0
            assert session.pending_image == PNG  # a barge-in keeps the waiting picture
            await asyncio.sleep(0.5)  # the caller keeps talking for half a second
            client.mic.loud = False
            await client.wait_for("speech_stopped", timeout=5)
            await client.wait_for("turn_started", count=2, timeout=5)
            assert len(engine.turns) == 2 and engine.turns[1].audio is not None and engine.turns[1].image == PNG

    run(main())


def test_bad_pictures_get_errors_and_the_session_keeps_working():
    async def main():
        engine = FakeEngineSession(n_frames=2)
        async with connected(engine) as (session, client):
            client.send({"type": "image", "png_base64": "%%% not base64"})
            client.send(image_message(b"GIF89a" + b"\x00" * 10, "what is it?"))
            client.send({"type": "image", "png_base64": ""})  # (a picture over MAX_IMAGE_BYTES: test_rtc_media.py)
            errors = await client.wait_for("error", count=3)
            assert "base64" in errors[0]["message"]
            assert "PNG nor JPEG" in errors[1]["message"]
            assert "no picture" in errors[2]["message"]
            assert session.pending_image is None and not engine.turns
            client.send(image_message(PNG, "this one is fine"))
            await client.wait_for("turn_end")
            assert engine.turns[0].image == PNG and session.stats.client_errors == 3

    run(main())


def test_ready_names_the_voice_and_the_voices():
    async def main():
        session, client = await connect(FakeEngineSession(), voice="alto", voices=["alto", "bass"])
        ready = client.messages[0]
        assert ready["voice"] == "alto" and ready["voices"] == ["alto", "bass"]
        await session.close()
        await client.close()
        async with connected(FakeEngineSession()) as (_, client):  # no voice bank: the fields are null
            assert client.messages[0]["voice"] is None and client.messages[0]["voices"] is None

    run(main())


class FakeVoiceBank:
    names = ("alto", "bass")
    default = "alto"


def test_manager_creates_the_engine_session_with_the_offered_voice():
    async def main():
        use_loopback_only()
        calls = []

        def new_engine_session(voice=None):
            calls.append(voice)
            if voice not in (None, *FakeVoiceBank.names):
                raise ValueError(f"unknown voice {voice!r}")
            return FakeEngineSession()

        manager = RtcSessionManager(new_engine_session, voices=FakeVoiceBank(), turn_factory=FakeTurn)
        client = Client()
        offer = await client.offer()
        with pytest.raises(
            VoiceUnavailableError, match=r"unknown voice 'tenor'; known voices: alto, bass \(default: alto\)"
        ):
            await manager.create(OfferRequest(sdp=offer.sdp, voice="tenor"))
        assert len(manager) == 0 and calls == []  # refused before any engine state existed

        session, answer = await manager.create(OfferRequest(sdp=offer.sdp, voice="bass"))
        assert calls == ["bass"] and session.voice == "bass" and session.voices == ["alto", "bass"]
        await client.answer(answer)
        ready = (await client.wait_for("ready"))[0]
        assert ready["voice"] == "bass" and ready["voices"] == ["alto", "bass"]
        await manager.close_all()

        other = Client()
        session, _ = await manager.create(await other.offer())  # no voice asked: the engine's default
        assert calls == ["bass", None] and session.voice == "alto"
        await manager.close_all()
        await client.close()
        await other.close()

    run(main())


def test_manager_without_a_bank_lets_the_engine_refuse_a_voice():
    async def main():
        use_loopback_only()
        created = []

        def new_engine_session(voice=None):
            if voice is not None:
                raise ValueError(f"voice {voice!r} requested, but these models have no voice bank")
            created.append(FakeEngineSession())
            return created[-1]

        manager = RtcSessionManager(new_engine_session, turn_factory=FakeTurn)
        client = Client()
        offer = await client.offer()
        with pytest.raises(ProtocolError, match="no voice bank"):
            await manager.create(OfferRequest(sdp=offer.sdp, voice="alto"))
        assert len(manager) == 0 and not created
        session, _ = await manager.create(offer)
        assert session.voice is None and session.voices is None and len(manager) == 1
        await manager.close_all()
        await client.close()

    run(main())


def test_close_is_idempotent_and_a_second_close_waits_for_the_first():
    async def main():
        engine = FakeEngineSession(n_frames=500)
        session, client = await connect(engine, max_queued_frames=10)
        client.send({"type": "text", "text": "a long one"})
        await client.wait_for("text")
        first = asyncio.ensure_future(session.close())
        await asyncio.sleep(0)  # the first close has begun
        await session.close()  # returns only once the first is done
        assert engine.close_calls == 1 and session.connection_state == "closed" and not session._tasks
        await first
        await session.close()
        assert engine.close_calls == 1
        await client.close()

    run(main())
