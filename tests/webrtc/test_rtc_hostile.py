"""RtcSession against callers that send what they should not: broken messages, oversized messages, floods, a codec
switch mid-call, offers with media we do not take; and engine failures that must not leak details to the caller.

The end-to-end tests use the real loopback aiortc client of test_rtc_session; the rest drive a session without a peer
connection, whose outgoing messages then wait in ``session._pending_messages``.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import logging
from types import SimpleNamespace

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError
from rtc_fakes import Client, FakeClock, FakeEngineSession, FakeTurn, connect, connected
from waiting import until

from assistant import protocol
from assistant.endpointing import EndpointerConfig
from assistant.pipeline.outputs import TurnError, TurnFinished
from assistant.protocol import FinishReason, OfferRequest, ProtocolError
from assistant.webrtc import sctp_guard
from assistant.webrtc.ice import use_loopback_only
from assistant.webrtc.limits import SessionLimits, TokenBucket
from assistant.webrtc.session import RtcSession
from assistant.webrtc.tracks import InboundAudio

pytestmark = pytest.mark.timeout(60)


def allow_oversized_messages(client: Client) -> None:
    """Makes the aiortc client ignore the size the server advertised (0 = no limit), as a hostile peer would."""
    client.pc.sctp._remote_max_message_size = 0


def sent(session: RtcSession) -> list[dict]:
    """What a session without a data channel has sent so far."""
    return [json.loads(text) for text in session._pending_messages]


def text_message(text: str) -> str:
    return json.dumps({"type": "text", "text": text})


# ---------------------------------------------------------------------------------------------------------
# finding 1: no message kills its session


def test_hostile_messages_each_get_an_error_and_the_session_keeps_answering():
    async def main():
        engine = FakeEngineSession(n_frames=2)
        async with connected(engine) as (session, client):
            allow_oversized_messages(client)  # 70,000 bytes is over what the server advertises
            client.send("[" * 5000)
            client.send('{"type": "\\ud800"}')  # a JSON escape that makes a lone surrogate
            client.send({"type": "text", "text": 5})
            client.send("x" * 70_000)
            client.send({"type": "text", "text": "are you still there?"})
            end = (await client.wait_for("turn_end"))[0]
            errors = [m for m in client.messages if m["type"] == "error"]
            assert [e["code"] for e in errors] == ["bad_message"] * 3 + ["too_large"]
            assert "deeper" in errors[0]["message"] and "70000 characters" in errors[3]["message"]
            assert end["reason"] == "complete" and [t.text for t in engine.turns] == ["are you still there?"]
            assert session.connection_state == "connected" and not session.closed
            assert session.stats.client_errors == 4

    asyncio.run(main())


def test_an_unexpected_failure_inside_on_message_becomes_an_internal_error(monkeypatch, caplog):
    async def main():
        session = RtcSession(FakeEngineSession(), "s", turn_factory=FakeTurn)

        def broken_parser(raw, max_bytes=protocol.MAX_MESSAGE_BYTES):
            raise RuntimeError("parser exploded at /srv/secret/path (pid 4242)")

        monkeypatch.setattr(protocol, "parse_client_message", broken_parser)
        with caplog.at_level(logging.ERROR, logger="assistant.webrtc.session"):
            session._on_message(text_message("hello"))  # must not raise into aiortc
        error = sent(session)[-1]
        assert error["type"] == "error" and error["code"] == "internal"
        assert "secret" not in error["message"] and "4242" not in error["message"]
        error_id = error["message"].rsplit("error id ", 1)[1].rstrip(")")
        logged = [r for r in caplog.records if error_id in r.getMessage()]
        assert len(logged) == 1 and "parser exploded" in str(logged[0].exc_info[1])
        monkeypatch.undo()
        session._on_message(text_message("hello again"))  # the session still takes messages
        await until(lambda: session.turns.stats.started == 1, what="the next message started a turn")
        await session.close()

    asyncio.run(main())


def test_a_question_over_the_text_limit_is_refused_without_a_turn():
    async def main():
        engine = FakeEngineSession()
        session = RtcSession(engine, "s", turn_factory=FakeTurn)
        session._on_message(text_message("a" * (protocol.MAX_TEXT_CHARS + 1)))
        error = sent(session)[-1]
        assert error["code"] == "bad_message" and str(protocol.MAX_TEXT_CHARS) in error["message"]
        assert session.turns.idle and session.turns.stats.started == 0 and not engine.turns
        await session.close()

    asyncio.run(main())


def test_send_never_raises():
    async def main():
        async with connected(FakeEngineSession()) as (session, client):
            session.send(object())  # cannot be encoded
            session.send(protocol.ErrorEvent(message="lone \ud800 surrogate"))  # encodes, with U+FFFD
            await client.wait_for("error")
            session._channel.close()
            await until(lambda: session._channel.readyState == "closed", what="the channel closed")
            session.send(protocol.SpeechStarted())  # closed channel: dropped quietly
            assert session.stats.send_failures == 1

    asyncio.run(main())


# ---------------------------------------------------------------------------------------------------------
# finding 2: data-channel messages are bounded before reassembly


def test_the_answer_advertises_the_protocol_message_size():
    async def main():
        async with connected(FakeEngineSession()) as (_, client):
            answer = client.pc.remoteDescription.sdp
            sizes = [line for line in answer.splitlines() if line.startswith("a=max-message-size:")]
            assert sizes == [f"a=max-message-size:{protocol.MAX_MESSAGE_BYTES}"]
            assert client.pc.sctp._remote_max_message_size == protocol.MAX_MESSAGE_BYTES  # the client took it
            with pytest.raises(ValueError, match="only supports messages up to 65536"):
                client.send("x" * 70_000)  # a well-behaved client refuses to go over it

    asyncio.run(main())


def test_advertise_max_message_size_adds_the_line_when_missing():
    sdp = (
        "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
        "a=mid:1\r\na=sctp-port:5000\r\n"
    )
    out = sctp_guard.advertise_max_message_size(sdp, 1234)
    assert out.endswith("a=sctp-port:5000\r\na=max-message-size:1234\r\n")
    assert out.count("max-message-size") == 1
    rewritten = sctp_guard.advertise_max_message_size(out, 99)
    assert "a=max-message-size:99\r\n" in rewritten and "1234" not in rewritten


def test_a_peer_that_ignores_the_advertised_size_is_told_and_dropped():
    async def main():
        engine = FakeEngineSession()
        session, client = await connect(engine)
        allow_oversized_messages(client)
        client.send("x" * 300_000)  # the guard trips at 2 x 64 KiB held, long before this is whole
        error = (await client.wait_for("error"))[0]
        assert error["code"] == "too_large" and "65536 bytes" in error["message"]
        await until(lambda: session.connection_state == "closed", what="the session closed")
        assert engine.closed and "advertised size" in session.stats.close_reason
        await client.close()

    asyncio.run(main())


def test_the_reassembly_guard_sits_on_aiortcs_transport():
    """Fails when an aiortc upgrade moves the internals the guard relies on (the session then only logs)."""

    async def main():
        use_loopback_only()
        client = Client()
        sctp_guard._check_aiortc_internals(client.pc.sctp)  # raises AiortcInternalsChanged with what moved
        await client.close()
        async with connected(FakeEngineSession()) as (session, _):
            assert session._pc.sctp._receive_data_chunk.__name__ == "receive_within_bounds"

    asyncio.run(main())
    with pytest.raises(sctp_guard.AiortcInternalsChanged, match="_receive_data_chunk"):
        sctp_guard.guard_sctp_reassembly(
            SimpleNamespace(), max_stream_bytes=1, max_stream_chunks=1, max_total_bytes=1, on_exceeded=print
        )


class FakeSctp:
    """The parts of aiortc's RTCSctpTransport the guard touches: a chunk is held until its message's last chunk."""

    def __init__(self):
        self._inbound_streams: dict[int, SimpleNamespace] = {}
        self._advertised_rwnd = 1 << 20
        self.messages: list[tuple[int, int]] = []  # (stream id, bytes)

    async def _receive_data_chunk(self, chunk) -> None:
        stream = self._inbound_streams.setdefault(chunk.stream_id, SimpleNamespace(reassembly=[]))
        stream.reassembly.append(chunk)
        self._advertised_rwnd -= len(chunk.user_data)
        if chunk.last:
            size = sum(len(c.user_data) for c in stream.reassembly)
            stream.reassembly = []
            self._advertised_rwnd += size
            self.messages.append((chunk.stream_id, size))


def chunk(stream_id: int, size: int, last: bool = False, stream_seq: int = 0, flags: int = 0) -> SimpleNamespace:
    return SimpleNamespace(stream_id=stream_id, user_data=b"x" * size, last=last, stream_seq=stream_seq, flags=flags)


def guarded(**bounds) -> tuple[FakeSctp, list[str]]:
    transport, reasons = FakeSctp(), []
    sctp_guard.guard_sctp_reassembly(transport, on_exceeded=reasons.append, **bounds)
    return transport, reasons


def test_reassembly_guard_bounds_bytes_fragments_and_the_total():
    async def main():
        bounds = dict(max_stream_bytes=10_000, max_stream_chunks=20, max_total_bytes=15_000)
        transport, reasons = guarded(**bounds)
        for _ in range(9):
            await transport._receive_data_chunk(chunk(1, 1000))
        await transport._receive_data_chunk(chunk(1, 1000, last=True))  # exactly at the bound: delivered
        assert transport.messages == [(1, 10_000)] and reasons == []
        for _ in range(10):
            await transport._receive_data_chunk(chunk(1, 1000))
        await transport._receive_data_chunk(chunk(1, 1))  # one byte past it
        assert reasons == ["more than 10000 bytes held for one message"]
        await transport._receive_data_chunk(chunk(1, 1, last=True))  # everything after is dropped unread
        assert transport.messages == [(1, 10_000)] and len(reasons) == 1

        transport, reasons = guarded(**bounds)
        for _ in range(21):
            await transport._receive_data_chunk(chunk(2, 1))
        assert reasons == ["more than 20 fragments held on one stream"]
        assert len(transport._inbound_streams[2].reassembly) == 20

        transport, reasons = guarded(**bounds)
        for seq in range(3):  # whole messages waiting behind a lost packet: bytes count per message (stream_seq)
            for _ in range(4):
                await transport._receive_data_chunk(chunk(4, 1000, stream_seq=seq))
        assert reasons == []
        transport, reasons = guarded(**bounds)
        unordered = 0x04  # SCTP_DATA_UNORDERED: no stream sequence number, so they count together
        for _ in range(11):
            await transport._receive_data_chunk(chunk(5, 1000, stream_seq=9, flags=unordered))
        assert reasons == ["more than 10000 bytes held for one message"]

        transport, reasons = guarded(**bounds)
        for stream_id in (1, 3):  # 8,000 held on each stream: each is under its bound, together they are not
            for _ in range(8):
                await transport._receive_data_chunk(chunk(stream_id, 1000))
        assert reasons == ["more than 15000 bytes held for unfinished messages"]

    asyncio.run(main())


# ---------------------------------------------------------------------------------------------------------
# finding 3: rate limits and coalesced turn starts


def test_token_bucket_admits_the_burst_then_the_rate():
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=2.0, burst=4, now=clock)
    assert [bucket.take() for _ in range(5)] == [True, True, True, True, False]
    clock.advance(0.4)  # 0.8 of a token
    assert not bucket.take()
    clock.advance(0.1)
    assert bucket.take() and not bucket.take()
    clock.advance(100)  # refills up to the burst, no further
    assert sum(bucket.take() for _ in range(10)) == 4
    clock.advance(-5)  # a clock stepping back takes nothing away
    clock.advance(5)
    assert bucket.take() is False


def test_a_flood_of_questions_costs_one_error_and_at_most_the_turn_burst():
    async def main():
        clock = FakeClock()
        engine = FakeEngineSession(n_frames=0)
        session = RtcSession(engine, "s", turn_factory=FakeTurn, now=clock)  # 20/s burst 40; turns 2/s burst 4
        for i in range(50):  # all at one instant: the loop does not run in between
            session._on_message(text_message(f"q{i}"))
        await until(lambda: session.turns.idle, what="the turn ran")
        # questions 0-3 got turn tokens; 4-39 had no turn token, 40-49 no message token
        assert session.stats.messages_dropped == 46
        # only one start can wait: each newer one replaced the waiting one, and the replaced ones never ran
        assert [t.text for t in engine.turns] == ["q3"] and session.turns.stats.replaced == 3
        errors = [m for m in sent(session) if m["type"] == "error"]
        assert [e["code"] for e in errors] == ["rate_limited"] and session.stats.rate_limit_errors == 1

        clock.advance(1.0)  # two turn tokens come back
        for i in range(50, 53):
            session._on_message(text_message(f"q{i}"))
        await until(lambda: session.turns.idle, what="the turn ran")
        assert session.stats.rate_limit_errors == 2  # an admitted question ended the first run of drops
        assert session.stats.messages_dropped == 47 and engine.turns[-1].text == "q51"
        await session.close()
        assert not session._tasks

    asyncio.run(main())


def test_a_start_waiting_behind_a_turn_is_replaced_by_a_newer_one():
    async def main():
        engine = FakeEngineSession(n_frames=500)  # a long reply; nobody reads the track, so it fills and waits
        session = RtcSession(engine, "s", turn_factory=FakeTurn, max_queued_frames=5)
        first = await session.start_turn(text="one")
        await until(lambda: session.track.queued_frames == 5, what="the first reply is playing")
        second = asyncio.ensure_future(session.start_turn(text="two"))
        third = asyncio.ensure_future(session.start_turn(text="three"))
        assert (first, await second, await third) == (1, -1, 2)
        assert [t.text for t in engine.turns] == ["one", "three"]
        await session.close()
        assert not session._tasks

    asyncio.run(main())


def test_a_flood_over_the_wire_leaves_the_session_working():
    async def main():
        clock = FakeClock()
        engine = FakeEngineSession(n_frames=2)
        limits = SessionLimits()
        async with connected(engine, now=clock, limits=limits) as (session, client):
            for i in range(200):
                client.send({"type": "text", "text": f"flood {i}"})
            await until(lambda: session.stats.messages_dropped == 196, what="the flood was handled")
            await until(lambda: session.turns.idle, what="the turns ended")
            # every admitted question either ran or was replaced while it waited
            assert session.turns.stats.started + session.turns.stats.replaced == limits.turn_burst
            assert session.stats.rate_limit_errors == 1
            assert (await client.wait_for("error"))[0]["code"] == "rate_limited"

            clock.advance(1.0)
            client.send({"type": "text", "text": "and now?"})
            await until(lambda: engine.turns[-1].text == "and now?", what="the later question reached the engine")
            latest = session.turns.turn_id
            await until(
                lambda: any(m["type"] == "turn_end" and m["turn_id"] == latest for m in client.messages),
                what="the later question was answered",
            )
            assert session.connection_state == "connected"

    asyncio.run(main())


# ---------------------------------------------------------------------------------------------------------
# finding 6: a codec switch mid-call


def buzz_frames(rate: int, layout: str, fmt: str, loud_s: float, label: str) -> list[tuple[str, av.AudioFrame]]:
    """0.3 s of silence, ``loud_s`` of a voiced buzz, 0.6 s of silence, as 20 ms frames in the given format."""
    n = rate // 50
    channels = len(av.AudioLayout(layout).channels)
    frames = []
    silence, loud = int(0.3 * 50), int(loud_s * 50)
    for i in range(silence + loud + 30):
        t = (i * n + np.arange(n)) / rate
        wave = np.zeros(n)
        if silence <= i < silence + loud:
            wave = 0.3 * sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 25) if 140 * k < rate / 2)
        if fmt in ("s16", "s16p"):
            samples = (np.clip(wave, -1, 1) * 32767).astype(np.int16)
        elif fmt in ("s32", "s32p"):
            samples = (np.clip(wave, -1, 1) * 2**31 * 0.999).astype(np.int32)
        elif fmt == "u8":
            samples = (np.clip(wave, -1, 1) * 127 + 128).astype(np.uint8)
        else:
            samples = wave.astype(np.float32)
        planes = np.repeat(samples[None, :], channels, axis=0)
        data = planes if fmt.endswith("p") else planes.T.reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=fmt, layout=layout)
        frame.sample_rate = rate
        frame.pts = i * n
        frame.time_base = fractions.Fraction(1, rate)
        frames.append((label, frame))
    return frames


class ReplayedTrack:
    """A caller's track that hands out prepared frames, then ends."""

    kind = "audio"

    def __init__(self, frames: list[tuple[str, av.AudioFrame]]):
        self._frames = list(frames)
        self.label = None

    async def recv(self):
        if not self._frames:
            raise MediaStreamError
        self.label, frame = self._frames.pop(0)
        return frame


def broken_frame() -> tuple[str, av.AudioFrame]:
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.int16), format="s16", layout="mono")
    frame.sample_rate = 0  # libswresample refuses it
    return "broken", frame


def test_the_vad_keeps_working_through_codec_switches():
    async def main():
        config = EndpointerConfig(aggressiveness=1, start_ms=60, end_silence_ms=300, pause_ms=0)
        session = RtcSession(FakeEngineSession(n_frames=0), "s", config, turn_factory=FakeTurn)
        segments = [
            (48000, "stereo", "s16"),
            (16000, "mono", "s16"),
            (8000, "mono", "s32"),
            (44100, "5.1", "fltp"),
            (48000, "mono", "u8"),
            (32000, "stereo", "s16p"),
        ]
        frames = []
        for rate, layout, fmt in segments:
            frames += buzz_frames(rate, layout, fmt, loud_s=0.6, label=f"{rate}/{layout}/{fmt}")
            frames.append(broken_frame())
        track = ReplayedTrack(frames)
        heard: list[tuple[str, str]] = []
        on_vad_event = session._on_vad_event

        def record(event):
            heard.append((type(event).__name__, track.label))
            on_vad_event(event)

        session._on_vad_event = record
        await session._consume_audio(track)  # returns at the end of the track, not at the first odd frame
        expected = []
        for rate, layout, fmt in segments:
            expected += [("SpeechStart", f"{rate}/{layout}/{fmt}"), ("SpeechEnd", f"{rate}/{layout}/{fmt}")]
        assert heard == expected
        assert session.stats.audio_conversion_failures == len(segments)
        assert session.stats.inbound_frames == len(frames)
        await session.close()

    asyncio.run(main())


def test_inbound_audio_rebuilds_its_resampler_on_a_new_format():
    inbound = InboundAudio()
    out = []
    for _, frame in buzz_frames(48000, "stereo", "s16", 0.2, "a") + buzz_frames(8000, "mono", "s32", 0.2, "b"):
        out += inbound.push(frame)
    assert inbound.format_changes == 1
    seconds = 2 * (0.3 + 0.2 + 0.6)
    assert abs(len(out) * 320 / 16000 - seconds) < 0.1  # both halves arrive at 16 kHz in 20 ms frames


# ---------------------------------------------------------------------------------------------------------
# finding 8: error texts


class FailingEngineSession(FakeEngineSession):
    def __init__(self, failure: str):
        super().__init__()
        self.failure = failure

    def respond(self, turn, *, tentative=False):
        self.turns.append(turn)
        if self.failure == "raise":
            raise RuntimeError("cannot reach 10.1.2.3:8000 from worker pid 4242")
        return self._outputs()

    async def _outputs(self):
        if self.failure == "turn_error":
            yield TurnError(message="the speech model is busy; try again shortly", code="unavailable", error_id="e1")
            yield TurnFinished(reason=FinishReason.ERROR)
        else:
            yield TurnFinished(reason=FinishReason.COMPLETE)
            raise RuntimeError("stream broke at /opt/models/secret.bin")


def test_engine_errors_reach_the_caller_as_the_engine_worded_them():
    async def main():
        session = RtcSession(FailingEngineSession("turn_error"), "s", turn_factory=FakeTurn)
        await session.start_turn(text="hi")
        await session.wait_turn()
        messages = sent(session)
        error = next(m for m in messages if m["type"] == "error")
        assert error == {
            "type": "error",
            "message": "the speech model is busy; try again shortly",
            "turn_id": 1,
            "code": "unavailable",
        }
        assert messages[-1] == {"type": "turn_end", "turn_id": 1, "reason": "error"}
        await session.close()

    asyncio.run(main())


@pytest.mark.parametrize("failure, secret", [("raise", "10.1.2.3"), ("mid_stream", "/opt/models")])
def test_a_server_fault_in_a_turn_sends_a_generic_error_with_a_logged_id(failure, secret, caplog):
    async def main():
        session = RtcSession(FailingEngineSession(failure), "s", turn_factory=FakeTurn)
        with caplog.at_level(logging.ERROR, logger="assistant.pipeline.turns"):  # the turn controller's log
            await session.start_turn(text="hi")
            await session.wait_turn()
        messages = sent(session)
        error = next(m for m in messages if m["type"] == "error")
        assert error["code"] == "internal" and error["turn_id"] == 1
        assert secret not in error["message"] and "pid" not in error["message"]
        error_id = error["message"].rsplit("error id ", 1)[1].rstrip(")")
        logged = [r for r in caplog.records if error_id in r.getMessage()]
        assert len(logged) == 1 and secret in str(logged[0].exc_info[1])
        assert messages[-1] == {"type": "turn_end", "turn_id": 1, "reason": "error"}
        await session.close()

    asyncio.run(main())


# ---------------------------------------------------------------------------------------------------------
# finding 9: media sections


def test_offers_with_video_or_a_second_data_channel_section_are_refused():
    async def main():
        use_loopback_only()
        client = Client()
        client.pc.addTransceiver("video")
        await client.pc.setLocalDescription(await client.pc.createOffer())
        session = RtcSession(FakeEngineSession(), "v", turn_factory=FakeTurn)
        with pytest.raises(ProtocolError, match="not video"):  # OfferRequest.parse may refuse it first; see here too
            await session.accept(OfferRequest(sdp=client.pc.localDescription.sdp))
        await session.close()
        await client.close()

        client = Client()
        await client.pc.setLocalDescription(await client.pc.createOffer())
        sdp = client.pc.localDescription.sdp
        application = sdp[sdp.index("m=application") :]
        doubled = sdp + application.replace("a=mid:1", "a=mid:2")
        session = RtcSession(FakeEngineSession(), "d", turn_factory=FakeTurn)
        with pytest.raises(ProtocolError, match="exactly one data channel section, got 2"):
            await session.accept(OfferRequest(sdp=doubled))
        await session.close()
        await client.close()

    asyncio.run(main())


# ---------------------------------------------------------------------------------------------------------
# a bounded fuzz run over the data channel


def fuzz_messages(rng, count: int) -> list[str | bytes]:
    """Seeded hostile messages: random bytes and text, broken JSON, deep nesting, lone surrogates, every client type
    with missing, extra and wrongly typed fields, and sizes around the limit."""
    import random as _random

    assert isinstance(rng, _random.Random)
    values = [None, True, 0, -1, 2**70, 1.5, float("inf"), "", "x" * 5000, "\ud800", "\x00", [], {}, [1, [2, [3]]]]
    kinds = ["hello", "text", "image", "interrupt", "bye", "TEXT", "", "\ud800", "unknown" * 10]
    out: list[str | bytes] = []
    for _ in range(count):
        pick = rng.randrange(8)
        if pick == 0:
            out.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))))
        elif pick == 1:
            out.append("".join(chr(rng.randrange(1, 0xD7FF)) for _ in range(rng.randrange(1, 200))))
        elif pick == 2:
            depth = rng.randrange(5, 3000)
            out.append("[" * depth + "]" * rng.choice([0, depth]))
        elif pick == 3:
            out.append(json.dumps({"type": "text", "text": "x" * rng.choice([10, 3999, 4001, 60_000])}))
        else:
            kind = rng.choice(kinds)
            if kind == "bye":
                kind = "hello"  # a bye ends the session: the one message this fuzz may not send
            message = {"type": kind}
            for name in rng.sample(["text", "png_base64", "client", "protocol_version", "extra"], rng.randrange(4)):
                message[name] = rng.choice(values)
            out.append(json.dumps(message, ensure_ascii=rng.random() < 0.5, allow_nan=True))
    return out


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def test_a_text_message_that_is_not_utf8_costs_the_message_not_the_call():
    # aiortc decodes a text message inside its SCTP receive path: invalid UTF-8 there used to end the association
    async def main():
        engine = FakeEngineSession(n_frames=2)
        async with connected(engine) as (session, client):
            channel = client.channel
            client.pc.sctp._data_channel_send(channel, "x")  # a well-formed text message first: the path works
            text_ppid = 51  # WebRTC String
            client.pc.sctp._data_channel_queue.append((channel, text_ppid, b'{"type": "text", "text": "\xff\xfe"}'))
            await client.pc.sctp._data_channel_flush()
            errors = await client.wait_for("error", count=2)
            assert errors[1]["code"] == "bad_message" and "UTF-8" in errors[1]["message"]
            client.send({"type": "text", "text": "still there?"})
            await until(
                lambda: engine.turns and engine.turns[-1].text == "still there?",
                what="the question after the bad bytes reached the engine",
            )
            assert session.connection_state == "connected" and not session.closed

    asyncio.run(main())


def test_a_bounded_fuzz_run_over_the_data_channel_leaves_the_session_answering():
    import random

    messages = fuzz_messages(random.Random(1234), 150)

    def verdict(raw) -> str:
        """What the server must make of ``raw``: the protocol parser is the oracle."""
        try:
            message = protocol.parse_client_message(raw)
        except ProtocolError:
            return "bad_message"
        return type(message).__name__

    messages = [
        raw if isinstance(raw, bytes) or _encodable(raw) else raw.encode("utf-8", "surrogatepass") for raw in messages
    ]
    expected = [verdict(raw) for raw in messages]
    assert "ByeMessage" not in expected
    bad = expected.count("bad_message")
    assert 50 < bad < len(messages)  # the run exercises both sides

    async def main():
        engine = FakeEngineSession(n_frames=2)
        # rates high enough that every message reaches the parser (rate limits have their own tests)
        limits = SessionLimits(messages_per_s=10_000, message_burst=10_000, turns_per_s=10_000, turn_burst=10_000)
        async with connected(engine, limits=limits) as (session, client):
            for raw in messages:
                client.channel.send(raw)  # bytes go as a binary message
                await asyncio.sleep(0)  # let the SCTP transport take it
            await until(
                lambda: session.stats.client_errors == bad,
                timeout=20,
                what=f"{bad} bad messages answered with errors (got {session.stats.client_errors})",
            )
            errors = await client.wait_for("error", count=bad, timeout=20)
            assert {e["code"] for e in errors} == {"bad_message"}  # no internal error, no rate limit, nothing else
            assert all(len(e["message"]) <= protocol.MAX_ERROR_CHARS for e in errors)
            assert session.connection_state == "connected" and not session.closed

            # and the session still answers a plain question
            before = len(engine.turns)
            client.send({"type": "text", "text": "still there?"})
            await until(
                lambda: len(engine.turns) > before and engine.turns[-1].text == "still there?",
                what="the question after the fuzz reached the engine",
            )
            latest = session.turns.turn_id
            await until(
                lambda: any(m["type"] == "turn_end" and m["turn_id"] == latest for m in client.messages),
                what="the question after the fuzz was answered",
            )

    asyncio.run(main())
