import json

import pytest

from assistant import protocol as p


def test_server_messages_round_trip():
    messages = [
        p.Ready(session_id="s1", sample_rate=16000),
        p.SpeechStarted(),
        p.SpeechStopped(duration_s=1.25),
        p.TurnStarted(turn_id=3),
        p.Transcript(turn_id=3, delta="what is"),
        p.TextDelta(turn_id=3, delta="héllo ✓"),
        p.ImageReady(turn_id=3, index=0, width=64, height=64, png_base64="iVBORw0KGgo="),
        p.MusicReady(turn_id=3, index=0, duration_s=2.0),
        p.Interrupted(turn_id=3),
        p.TurnEnd(turn_id=3, reason=p.FinishReason.INTERRUPTED.value),
        p.ErrorEvent(message="bad", turn_id=None),
    ]
    for message in messages:
        assert p.parse_server_message(p.to_json(message)) == message


def test_every_server_event_kind_has_a_message_class():
    kinds = {json.loads(p.to_json(m))["type"] for m in [
        p.Ready("s", 16000), p.SpeechStarted(), p.SpeechStopped(0.1), p.TurnStarted(1), p.Transcript(1, ""),
        p.TextDelta(1, ""), p.ImageReady(1, 0, 1, 1, ""), p.MusicReady(1, 0, 0.1), p.Interrupted(1), p.TurnEnd(1),
        p.ErrorEvent("x")]}
    assert kinds == {e.value for e in p.ServerEvent}


def test_client_messages_parse():
    assert p.parse_client_message('{"type":"text","text":"hi"}') == p.TextMessage(text="hi")
    assert p.parse_client_message(b'{"type":"interrupt"}') == p.InterruptMessage()
    assert p.parse_client_message('{"type":"hello"}') == p.Hello()


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"text": "x"}', "'type'"),
        ('{"type": "shout"}', "unknown message type"),
        ('{"type": "text"}', "missing field 'text'"),
        ('{"type": "text", "text": 5}', "must be str"),
        ('{"type": "text", "text": "   "}', "empty"),
        ('{"type": "text", "text": "' + "a" * (p.MAX_TEXT_CHARS + 1) + '"}', "longer than"),
        ('{"type": "text", "text": "' + "a" * p.MAX_MESSAGE_BYTES + '"}', "exceeds the limit"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_client_message_errors_are_clear(raw, fragment):
    with pytest.raises(p.ProtocolError, match=fragment):
        p.parse_client_message(raw)


def test_bool_is_not_accepted_as_number():
    with pytest.raises(p.ProtocolError, match="turn_id"):
        p.parse_server_message('{"type": "turn_started", "turn_id": true}')


GOOD_SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"


def test_offer_validation():
    assert p.OfferRequest.parse({"sdp": GOOD_SDP, "type": "offer"}).sdp == GOOD_SDP
    for bad, fragment in [
        (None, "JSON object"),
        ({"sdp": GOOD_SDP, "type": "answer"}, "'offer'"),
        ({"type": "offer"}, "non-empty string"),
        ({"sdp": "hello", "type": "offer"}, "v=0"),
        ({"sdp": GOOD_SDP.replace("m=audio", "m=video"), "type": "offer"}, "audio"),
        ({"sdp": GOOD_SDP.replace("m=application", "m=video"), "type": "offer"}, "data channel"),
        ({"sdp": "v=0" + "x" * 70000, "type": "offer"}, "exceeds"),
    ]:
        with pytest.raises(p.ProtocolError, match=fragment):
            p.OfferRequest.parse(bad)
    answer = p.OfferAnswer(sdp="v=0", session_id="abc").to_dict()
    assert answer == {"sdp": "v=0", "type": "answer", "session_id": "abc"}
