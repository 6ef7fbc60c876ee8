"""Pictures and tunes over the data channel (assistant.fragments): large messages both ways within the peer's
advertised message size, the pending tune, and fragments that a peer gets wrong.

The over-the-wire tests use a real aiortc caller on loopback whose offer advertises 64 KiB; the rest drive a session
without a peer connection, whose outgoing messages then wait in ``session._pending_messages``.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json

import numpy as np
import pytest
import soundfile
from PIL import Image
from rtc_fakes import ENDPOINTER, Client, FakeClock, FakeEngineSession, FakeTurn
from waiting import until

from assistant import fragments, protocol
from assistant.pipeline.outputs import ImageOutput, TurnFinished
from assistant.protocol import FinishReason, OfferRequest
from assistant.webrtc.ice import use_loopback_only
from assistant.webrtc.limits import SessionLimits
from assistant.webrtc.sctp_guard import advertise_max_message_size
from assistant.webrtc.session import RtcSession

pytestmark = pytest.mark.timeout(120)

ADVERTISED = 64 * 1024


def noisy_png(width: int, height: int) -> bytes:
    """A real PNG that does not compress (random pixels): its size is about width * height * 3 bytes."""
    pixels = np.random.default_rng(7).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def wav_tune(seconds: float, rate: int = 44100) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    buffer = io.BytesIO()
    soundfile.write(buffer, np.stack([tone, tone], axis=1), rate, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


def sent(session: RtcSession) -> list[dict]:
    """What a session without a data channel has sent so far."""
    return [json.loads(text) for text in session._pending_messages]


def errors(session: RtcSession) -> list[dict]:
    return [m for m in sent(session) if m["type"] == "error"]


def frag(message_id: str, index: int, count: int, data: str) -> str:
    return json.dumps({"type": "fragment", "id": message_id, "index": index, "count": count, "data": data})


# ---------------------------------------------------------------------------------------------------------
# over the wire


class MediaClient(Client):
    """A caller that advertises 64 KiB in its offer, reassembles what it receives (noting every single message's
    size) and splits what it sends within the server's advertised size."""

    def __init__(self):
        super().__init__()
        self.received_sizes: list[int] = []
        self.sent_sizes: list[int] = []
        self.reassembler = fragments.Reassembler(protocol.MAX_DOWNLOAD_MESSAGE_BYTES, max_count=4096)

    def _on_message(self, raw):
        self.received_sizes.append(len(raw.encode("utf-8") if isinstance(raw, str) else raw))
        whole = self.reassembler.push(raw)
        if whole is not None:
            super()._on_message(whole)

    async def offer(self) -> OfferRequest:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        sdp = advertise_max_message_size(self.pc.localDescription.sdp, ADVERTISED)
        return OfferRequest.parse({"sdp": sdp, "type": "offer"})

    def send_large(self, message: protocol.ClientMessage) -> None:
        limit = fragments.max_message_size_of(self.pc.remoteDescription.sdp)
        for piece in fragments.split_message(protocol.to_json(message), limit):
            self.sent_sizes.append(len(piece.encode("utf-8")))
            self.channel.send(piece)


async def connect_media_client(engine, **options) -> tuple[RtcSession, MediaClient]:
    use_loopback_only()
    session = RtcSession(engine, "media", ENDPOINTER, turn_factory=FakeTurn, **options)
    client = MediaClient()
    answer = await session.accept(await client.offer())
    await client.answer(answer)
    await client.wait_for("ready")
    return session, client


class PictureEngineSession(FakeEngineSession):
    """Answers every turn with one (large) picture."""

    def __init__(self, png: bytes):
        super().__init__(n_frames=0)
        self.png = png

    async def respond(self, turn):
        self.turns.append(turn)
        yield ImageOutput(index=0, png=self.png, width=600, height=560)
        yield TurnFinished(reason=FinishReason.COMPLETE)


@pytest.mark.slow  # about 2.5 MB over real WebRTC
def test_large_pictures_and_a_tune_cross_a_64_kib_data_channel_intact_both_ways():
    async def main():
        server_png = noisy_png(600, 560)  # ~1 MB of PNG: a message of ~1.3 MB
        engine = PictureEngineSession(server_png)
        session, client = await connect_media_client(engine)
        try:
            assert session._send_limit == ADVERTISED  # read from the caller's offer
            user_png, tune = noisy_png(600, 420), wav_tune(2.0)
            client.send_large(protocol.ImageMessage.from_bytes(user_png))  # waits for the question
            client.send_large(protocol.MusicMessage.from_bytes(tune, text="what do you make of these?"))
            image = (await client.wait_for("image", timeout=60))[0]
            await client.wait_for("turn_end", timeout=30)

            assert base64.b64decode(image["png_base64"]) == server_png
            assert (image["width"], image["height"]) == (600, 560)
            assert max(client.received_sizes) <= ADVERTISED and len(client.received_sizes) > 20
            assert session.stats.fragments_sent > 20 and client.reassembler.completed == 1

            turn = engine.turns[0]
            assert turn.image == user_png and turn.music == tune and turn.text == "what do you make of these?"
            assert max(client.sent_sizes) <= ADVERTISED and session.stats.fragments_received == len(client.sent_sizes)
            assert session.stats.images_received == 1 and session.stats.tunes_received == 1
            assert session.pending_image is None and session.pending_music is None
            assert session.stats.client_errors == 0 and session.stats.messages_dropped == 0
        finally:
            await session.close()
            await client.close()

    asyncio.run(main())


def test_bad_fragments_over_the_wire_get_errors_and_a_question_still_starts_a_turn():
    async def main():
        engine = FakeEngineSession(n_frames=2)
        session, client = await connect_media_client(engine)
        try:
            client.send(frag("a", 0, 3, '{"type":'))
            client.send(frag("a", 2, 3, '"text"}'))  # fragment 1 never came
            client.send(frag("b", 0, 1, "{}"))  # a count below 2
            client.send('{"type":"fragment","id":"c","index":"0","count":2,"data":""}')
            client.send(frag("d", 0, 2, '{"type":"te'))
            client.send(frag("e", 0, 2, '{"type":'))  # abandons d
            client.send(frag("e", 1, 2, '"dance"}'))  # whole, but not a message the server knows
            found = await client.wait_for("error", count=5)
            assert [e["code"] for e in found] == ["bad_message"] * 5
            assert "fragment 2 of message a came where fragment 1 was expected" in found[0]["message"]
            assert "at least 2" in found[1]["message"] and "'index' of fragment c" in found[2]["message"]
            assert "message d was abandoned" in found[3]["message"] and "dance" in found[4]["message"]
            client.send_large(protocol.TextMessage(text="still there?"))
            await client.wait_for("turn_end")
            assert [t.text for t in engine.turns] == ["still there?"]
            assert session.connection_state == "connected" and not session.closed
        finally:
            await session.close()
            await client.close()

    asyncio.run(main())


# ---------------------------------------------------------------------------------------------------------
# reassembly, budgets and refusals (no peer connection)


def fragmented(message: protocol.ClientMessage, limit: int = 1000) -> list[str]:
    pieces = fragments.split_message(protocol.to_json(message), limit)
    assert len(pieces) > 1
    return pieces


def test_a_fragmented_question_counts_once_against_the_message_rate():
    async def main():
        clock = FakeClock()
        engine = FakeEngineSession(n_frames=0)
        limits = SessionLimits(messages_per_s=1.0, message_burst=2)
        session = RtcSession(engine, "s", turn_factory=FakeTurn, now=clock, limits=limits)
        pieces = fragmented(protocol.TextMessage(text="é" * 3000))  # 6 KB in ~7 fragments
        for piece in pieces:
            session._on_message(piece)
        await until(lambda: len(engine.turns) == 1, what="the question started a turn")
        assert engine.turns[0].text == "é" * 3000 and session.stats.messages_dropped == 0
        assert session.stats.fragments_received == len(pieces)
        await session.close()

    asyncio.run(main())


def test_fragments_over_the_byte_budget_cost_their_message_with_one_error():
    async def main():
        clock = FakeClock()
        engine = FakeEngineSession(n_frames=0)
        limits = SessionLimits(upload_bytes_per_s=200_000, upload_burst_bytes=200_000)
        session = RtcSession(engine, "s", turn_factory=FakeTurn, now=clock, limits=limits)
        picture = protocol.ImageMessage.from_bytes(protocol.PNG_SIGNATURE + bytes(300_000), text="what is it?")
        pieces = fragmented(picture, 60_000)
        for piece in pieces:  # all at one instant: ~400 KB against a 200 KB budget
            session._on_message(piece)
        assert [e["code"] for e in errors(session)] == ["rate_limited"]
        assert "too much data" in errors(session)[0]["message"]
        assert not session._reassembler.in_progress and session.pending_image is None
        clock.advance(5.0)  # the budget refills: the same picture sent again, slowly enough, arrives
        for piece in fragmented(picture, 60_000):
            session._on_message(piece)
            clock.advance(0.3)
        await until(lambda: len(engine.turns) == 1, what="the picture's question started a turn")
        assert engine.turns[0].image == picture.image_bytes()
        assert [e["code"] for e in errors(session)] == ["rate_limited"]
        await session.close()

    asyncio.run(main())


def test_uploads_over_the_limits_are_too_large():
    async def main():
        engine = FakeEngineSession(n_frames=0)
        limits = SessionLimits(upload_bytes_per_s=1e9, upload_burst_bytes=10**9)  # at most 512 fragments
        session = RtcSession(engine, "s", turn_factory=FakeTurn, limits=limits)
        big = protocol.PNG_SIGNATURE + bytes(protocol.MAX_IMAGE_BYTES)  # 8 bytes over the picture limit
        for piece in fragments.split_message(_image_json(big), 64 * 1024):
            session._on_message(piece)
        for piece in fragments.split_message(json.dumps({"type": "text", "text": "a" * 70_000}), 64 * 1024):
            session._on_message(piece)
        session._on_message(frag("many", 0, 513, ""))
        session._on_message(frag("huge", 0, 2, "x" * 1000))
        session._reassembler.max_bytes = 1500  # the ceiling, as a smaller one: the second fragment goes past it
        session._on_message(frag("huge", 1, 2, "x" * 1000))
        found = errors(session)
        assert [e["code"] for e in found] == ["too_large"] * 4
        assert f"exceeds the limit of {protocol.MAX_IMAGE_BYTES} bytes" in found[0]["message"]
        assert "only pictures and tunes may be larger" in found[1]["message"]
        assert "513 fragments, over the limit of 512" in found[2]["message"]
        assert "message huge grew to 2000 bytes" in found[3]["message"]
        session._on_message(json.dumps({"type": "text", "text": "a small one"}))
        await until(lambda: len(engine.turns) == 1, what="a question after the refusals started a turn")
        await session.close()

    asyncio.run(main())


def _image_json(data: bytes) -> str:
    return json.dumps({"type": "image", "png_base64": base64.b64encode(data).decode("ascii")})


def test_an_upload_that_stalls_is_dropped_by_the_watchdog_with_an_error():
    async def main():
        clock = FakeClock()
        engine = FakeEngineSession(n_frames=0)
        session = RtcSession(engine, "s", turn_factory=FakeTurn, now=clock, limits=SessionLimits(media_timeout_s=None))
        session.connected_at = clock()
        pieces = fragmented(protocol.TextMessage(text="q" * 3000))
        session._on_message(pieces[0])
        clock.advance(10)
        assert session.check_deadlines(clock()) is None and session._reassembler.in_progress
        clock.advance(6)
        assert session.check_deadlines(clock()) is None  # the upload is dropped, the session stays
        found = errors(session)
        assert len(found) == 1 and found[0]["code"] == "bad_message" and "within 15 s" in found[0]["message"]
        for piece in pieces[1:]:  # the rest of it, late, goes quietly
            session._on_message(piece)
        assert len(errors(session)) == 1 and not engine.turns and not session.closed
        await session.close()

    asyncio.run(main())


def test_a_flood_of_bad_fragments_is_answered_like_a_flood_of_bad_messages():
    async def main():
        clock = FakeClock()
        session = RtcSession(FakeEngineSession(), "s", turn_factory=FakeTurn, now=clock)  # 20/s, burst 40
        for i in range(100):
            session._on_message(frag(f"m{i}", 1, 2, "x"))
        codes = [e["code"] for e in errors(session)]
        assert codes == ["bad_message"] * 40 + ["rate_limited"]
        await session.close()

    asyncio.run(main())


# ---------------------------------------------------------------------------------------------------------
# the pending tune


def tune_message(text: str | None = None, seconds: float = 0.2) -> str:
    return protocol.to_json(protocol.MusicMessage.from_bytes(wav_tune(seconds, rate=16000), text=text))


def test_a_tune_waits_for_the_next_question_which_takes_the_waiting_picture_too():
    async def main():
        engine = FakeEngineSession(n_frames=0)
        session = RtcSession(engine, "s", turn_factory=FakeTurn)
        older, newer = wav_tune(0.1, 16000), wav_tune(0.2, 16000)
        session._on_message(protocol.to_json(protocol.MusicMessage.from_bytes(older)))
        session._on_message(protocol.to_json(protocol.MusicMessage.from_bytes(newer)))  # replaces the older
        png = protocol.PNG_SIGNATURE + b"picture"
        session._on_message(protocol.to_json(protocol.ImageMessage.from_bytes(png)))
        assert session.pending_music == newer and session.pending_image == png and not engine.turns
        session._on_message(json.dumps({"type": "text", "text": "what goes with this?"}))
        await until(lambda: len(engine.turns) == 1, what="the question started a turn")
        turn = engine.turns[0]
        assert (turn.music, turn.image, turn.text) == (newer, png, "what goes with this?")
        assert session.pending_music is None and session.pending_image is None
        session._on_message(json.dumps({"type": "text", "text": "and now?"}))
        await until(lambda: len(engine.turns) == 2, what="the next question started a turn")
        assert engine.turns[1].music is None  # a tune goes with one turn only
        assert session.stats.tunes_received == 2 and not errors(session)
        await session.close()

    asyncio.run(main())


def test_a_tune_with_a_question_starts_a_turn_and_interrupt_drops_what_waits_but_barge_in_keeps_it():
    async def main():
        engine = FakeEngineSession(n_frames=0)
        session = RtcSession(engine, "s", turn_factory=FakeTurn)
        session._on_message(tune_message("what mood is this?"))
        await until(lambda: len(engine.turns) == 1, what="the tune's question started a turn")
        assert engine.turns[0].music is not None and engine.turns[0].text == "what mood is this?"
        session._on_message(tune_message())
        session._on_message(protocol.to_json(protocol.ImageMessage.from_bytes(protocol.PNG_SIGNATURE + b"p")))
        session.interrupt(drop_picture=False)  # what the server's VAD does on a barge-in
        assert session.pending_music is not None and session.pending_image is not None
        session._on_message(json.dumps({"type": "interrupt"}))
        assert session.pending_music is None and session.pending_image is None
        await session.close()

    asyncio.run(main())


def test_bad_tunes_get_errors_and_nothing_waits():
    async def main():
        engine = FakeEngineSession(n_frames=0)
        session = RtcSession(engine, "s", turn_factory=FakeTurn)
        session._on_message(json.dumps({"type": "music", "wav_base64": base64.b64encode(b"ID3 mp3").decode()}))
        too_long = protocol.MusicMessage(wav_base64=base64.b64encode(wav_tune(31.0, rate=16000)).decode("ascii"))
        for piece in fragments.split_message(protocol.to_json(too_long), 64 * 1024):  # ~2.6 MB
            session._on_message(piece)
        found = errors(session)
        assert [e["code"] for e in found] == ["bad_message", "too_large"]
        assert "not a WAV file" in found[0]["message"] and "exceeds the limit of 30 s" in found[1]["message"]
        assert session.pending_music is None and session.stats.tunes_received == 0
        await session.close()

    asyncio.run(main())


def test_a_spoken_turn_takes_the_waiting_tune_and_picture_whether_it_was_started_early_or_not():
    from assistant.endpointing import SpeechEnd, SpeechPaused, SpeechStart

    async def main():
        engine = FakeEngineSession(n_frames=0)
        session = RtcSession(engine, "s", turn_factory=FakeTurn)
        speech = np.full(8000, 0.1, dtype=np.float32)
        png, tune = protocol.PNG_SIGNATURE + b"p", wav_tune(0.1, 16000)
        for count, early in enumerate((False, True), start=1):
            session._on_message(protocol.to_json(protocol.MusicMessage.from_bytes(tune)))
            session._on_message(protocol.to_json(protocol.ImageMessage.from_bytes(png)))
            session._on_vad_event(SpeechStart())  # a barge-in keeps them
            if early:  # the answer starts at the pause and is committed at the end of the turn
                session._on_vad_event(SpeechPaused(audio=speech))
            session._on_vad_event(SpeechEnd(audio=speech, same_as_pause=early))
            await until(lambda n=count: len(engine.turns) == n and session.turns.idle, what="the spoken turn ran")
            turn = engine.turns[-1]
            assert (turn.music, turn.image, turn.audio is speech) == (tune, png, True)
            assert session.pending_music is None and session.pending_image is None
        await session.close()

    asyncio.run(main())
