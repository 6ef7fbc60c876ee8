import base64
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


# ---------------------------------------------------------------------------------------------------------
# pictures from the client, voices

PNG = p.PNG_SIGNATURE + b"\x00\x00\x00\rIHDR rest of a png"
JPEG = p.JPEG_SIGNATURE + b"\xe0 rest of a jpeg"


def _image_json(data: bytes, **extra) -> str:
    return json.dumps({"type": "image", "png_base64": base64.b64encode(data).decode("ascii"), **extra})


def test_image_message_parses_with_and_without_a_question():
    with_question = p.parse_client_message(_image_json(PNG, text="what is this?"))
    assert isinstance(with_question, p.ImageMessage)
    assert with_question.image_bytes() == PNG and with_question.text == "what is this?"
    alone = p.parse_client_message(_image_json(JPEG))
    assert alone.image_bytes() == JPEG and alone.text is None
    assert p.parse_client_message(_image_json(JPEG, text=None)).text is None
    assert p.parse_client_message(_image_json(PNG, text="  ")).text is None  # a blank question is no question
    # the largest allowed picture still fits one message, with a question
    biggest = p.ImageMessage.from_bytes(PNG + b"\x00" * (p.MAX_IMAGE_BYTES - len(PNG)), text="q" * 500)
    assert p.parse_client_message(p.to_json(biggest)).image_bytes() == biggest.image_bytes()


def test_image_message_round_trips_through_from_bytes():
    message = p.ImageMessage.from_bytes(PNG, text="hi")
    assert json.loads(p.to_json(message))["type"] == "image"
    assert p.parse_client_message(p.to_json(message)) == message


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ('{"type": "image"}', "missing field 'png_base64'"),
        ('{"type": "image", "png_base64": 7}', "must be str"),
        ('{"type": "image", "png_base64": "iVBORw0KGgo=", "text": 3}', "'text'"),
        ('{"type": "image", "png_base64": "not base64!!"}', "not valid base64"),
        ('{"type": "image", "png_base64": "iVBORw0KGgo"}', "not valid base64"),  # bad padding
        ('{"type": "image", "png_base64": ""}', "no picture"),
        (_image_json(b"GIF89a" + b"\x00" * 20), "neither PNG nor JPEG"),
        (_image_json(b"\x89PNX\r\n\x1a\n"), "neither PNG nor JPEG"),
        (_image_json(PNG + b"\x00" * p.MAX_IMAGE_BYTES), "exceeds the limit of"),  # fits 64 KiB, too many bytes
        (_image_json(PNG + b"\x00" * (p.MAX_MESSAGE_BYTES)), "exceeds the limit of 65536"),  # the message itself
        (_image_json(PNG, text="a" * (p.MAX_TEXT_CHARS + 1)), "longer than"),
    ],
)
def test_image_message_errors_are_clear(raw, fragment):
    with pytest.raises(p.ProtocolError, match=fragment):
        p.parse_client_message(raw)


def test_image_from_bytes_refuses_what_the_server_would():
    for data, fragment in [(b"BM not an image", "neither PNG"), (PNG + b"\x00" * p.MAX_IMAGE_BYTES, "exceeds"),
                           (b"", "no picture")]:
        with pytest.raises(p.ProtocolError, match=fragment):
            p.ImageMessage.from_bytes(data)
    near_limit = PNG + b"\x00" * (p.MAX_IMAGE_BYTES - len(PNG))
    with pytest.raises(p.ProtocolError, match="shorten the question"):  # picture fits, picture + question do not
        p.ImageMessage.from_bytes(near_limit, text="é" * p.MAX_TEXT_CHARS)


def test_ready_carries_the_voice_and_older_ready_messages_still_parse():
    ready = p.Ready(session_id="s", sample_rate=16000, voice="alto", voices=["alto", "bass"])
    assert p.parse_server_message(p.to_json(ready)) == ready
    old = p.parse_server_message('{"type": "ready", "session_id": "s", "sample_rate": 16000, "protocol_version": 1}')
    assert old.voice is None and old.voices is None
    with pytest.raises(p.ProtocolError, match="list of strings"):
        p.parse_server_message('{"type": "ready", "session_id": "s", "sample_rate": 16000, "voices": ["a", 1]}')
    with pytest.raises(p.ProtocolError, match="'voice'"):
        p.parse_server_message('{"type": "ready", "session_id": "s", "sample_rate": 16000, "voice": 5}')


def test_offer_voice_is_optional_and_validated():
    offer = p.OfferRequest.parse({"sdp": GOOD_SDP, "type": "offer", "voice": "warm_alto-2"})
    assert offer.voice == "warm_alto-2"
    assert offer.to_dict() == {"sdp": GOOD_SDP, "type": "offer", "voice": "warm_alto-2"}
    plain = p.OfferRequest.parse({"sdp": GOOD_SDP, "type": "offer"})
    assert plain.voice is None and "voice" not in plain.to_dict()
    assert p.OfferRequest.parse({"sdp": GOOD_SDP, "type": "offer", "voice": None}).voice is None
    for bad, fragment in [(3, "string"), ("", "1 to"), ("x" * (p.MAX_VOICE_CHARS + 1), "1 to"),
                          ("Alto", "lowercase"), ("al to", "lowercase"), ("../etc", "lowercase")]:
        with pytest.raises(p.ProtocolError, match=fragment):
            p.OfferRequest.parse({"sdp": GOOD_SDP, "type": "offer", "voice": bad})
