import base64
import json
import typing

import pytest
from protocol_samples import SERVER_MESSAGES

from assistant import protocol as p


def test_server_messages_round_trip():
    assert {type(m) for m in SERVER_MESSAGES} == set(typing.get_args(p.ServerMessage))  # one of every type
    for message in SERVER_MESSAGES:
        assert p.parse_server_message(p.to_json(message)) == message


def test_every_server_event_kind_has_a_message_class():
    kinds = {json.loads(p.to_json(m))["type"] for m in SERVER_MESSAGES}
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
        (b"\xff\xfe", "not valid UTF-8"),
    ],
)
def test_client_message_errors_are_clear(raw, fragment):
    with pytest.raises(p.ProtocolError, match=fragment):
        p.parse_client_message(raw)


def test_bool_is_not_accepted_as_number():
    with pytest.raises(p.ProtocolError, match="turn_id"):
        p.parse_server_message('{"type": "turn_started", "turn_id": true}')


# what every connectable offer carries (DTLS fingerprint, ICE credentials); without them an offer is refused
CREDENTIALS = "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdefghijkl\r\na=fingerprint:sha-256 AB:CD\r\n"
GOOD_SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n" + CREDENTIALS + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
)


def test_offer_validation():
    assert p.OfferRequest.parse({"sdp": GOOD_SDP, "type": "offer"}).sdp == GOOD_SDP
    for bad, fragment in [
        (None, "JSON object"),
        ({"sdp": GOOD_SDP, "type": "answer"}, "'offer'"),
        ({"type": "offer"}, "non-empty string"),
        ({"sdp": "hello", "type": "offer"}, "v=0"),
        ({"sdp": GOOD_SDP.replace("m=audio", "m=video"), "type": "offer"}, "got 0 audio, 1 application, 1 'video'"),
        ({"sdp": GOOD_SDP.replace("m=application", "m=video"), "type": "offer"}, "got 1 audio, 0 application"),
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
    for data, fragment in [
        (b"BM not an image", "neither PNG"),
        (PNG + b"\x00" * p.MAX_IMAGE_BYTES, "exceeds"),
        (b"", "no picture"),
    ]:
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
    for bad, fragment in [
        (3, "string"),
        ("", "1 to"),
        ("x" * (p.MAX_VOICE_CHARS + 1), "1 to"),
        ("Alto", "lowercase"),
        ("al to", "lowercase"),
        ("../etc", "lowercase"),
    ]:
        with pytest.raises(p.ProtocolError, match=fragment):
            p.OfferRequest.parse({"sdp": GOOD_SDP, "type": "offer", "voice": bad})


# ---------------------------------------------------------------------------------------------------------
# hostile input: nothing but ProtocolError, and error texts that can always be sent back


def _refusal(raw) -> str:
    with pytest.raises(p.ProtocolError) as caught:
        p.parse_client_message(raw)
    text = str(caught.value)
    text.encode("utf-8")  # raises if the text could not travel back on the data channel
    assert len(text) <= p.MAX_ERROR_CHARS
    return text


@pytest.mark.parametrize(
    "raw", ["[" * 5000, '{"a":' * 5000, b"[" * 5000, '{"type": "hello", "x": ' + "[" * 20 + "]" * 20 + "}"]
)
def test_deep_nesting_is_a_protocol_error(raw):
    assert "nests deeper than" in _refusal(raw)


def test_a_number_too_long_to_read_is_a_protocol_error():
    # Python refuses int() of more than 4300 digits with a plain ValueError from inside json.loads.
    assert "not valid JSON" in _refusal('{"type": "hello", "protocol_version": ' + "1" * 5000 + "}")


@pytest.mark.parametrize(
    "raw",
    [
        '{"type": "\\ud800"}',
        '{"type": "text", "text": "hi \\udfff there"}',
        '{"type": "hello", "client": "\\ud83d"}',
        '{"type": "image", "png_base64": "\\ud800"}',
        '{"type": "text", "text": "ok", "extra": ["\\udc00"]}',
        '{"type": "text", "text": "ok", "\\ud800": 1}',
        '{"type": "text", "text": "a\ud800b"}',  # a str that already holds one (no JSON escape)
    ],
)
def test_a_lone_surrogate_anywhere_is_refused_without_echoing_it(raw):
    text = _refusal(raw)
    assert "not valid Unicode" in text and "\ud800" not in text


def test_a_surrogate_pair_escape_is_one_character_and_accepted():
    assert p.parse_client_message('{"type": "text", "text": "\\ud83d\\ude00"}') == p.TextMessage(text="\U0001f600")


def test_unknown_type_is_quoted_short_and_ascii():
    text = _refusal(json.dumps({"type": "\u00e9\x07" + "z" * 500}, ensure_ascii=False))
    assert text.startswith("unknown message type '\\xe9\\x07zzz") and text.endswith("'...")
    assert text.isascii() and text.isprintable()
    assert len(text) < len("unknown message type ") + p.EXCERPT_CHARS + 6


def test_printable_excerpt_escapes_and_cuts():
    assert p.printable_excerpt("ab") == "'ab'"
    assert p.printable_excerpt("it's \\ \n\x00\ud800\U0001f600") == "'it\\'s \\\\ \\n\\x00\\ud800\\U0001f600'"
    cut = p.printable_excerpt("\U0001f600" * 10, limit=25)
    assert cut == "'" + "\\U0001f600" * 2 + "'..."  # never half an escape


def test_every_protocol_error_text_is_sendable_and_short():
    # the guard under every ProtocolError, whoever raises it (session.py wraps aiortc's text, for one)
    error = p.ProtocolError("bad \ud800 " + "x" * 1000)
    str(error).encode("utf-8")
    assert len(str(error)) == p.MAX_ERROR_CHARS and str(error).endswith("...")


@pytest.mark.parametrize(
    "raw", [b"\xc3\x28", b'{"type": "text", "text": "\xed\xa0\x80"}', '{"type":"hello"}'.encode("utf-16")]
)
def test_bytes_that_are_not_utf8_are_refused(raw):
    # UTF-8 only: json.loads(bytes) alone would also have guessed UTF-16,
    # and encoded surrogates (ED A0 80) are not UTF-8
    assert "not valid UTF-8" in _refusal(raw)


def test_nul_is_refused_in_text_other_control_characters_are_kept():
    assert "NUL" in _refusal('{"type": "text", "text": "a\\u0000b"}')
    assert "NUL" in _refusal(_image_json(PNG, text="what\x00"))
    assert "NUL" in _refusal('{"type": "hello", "client": "edge\\u0000"}')
    kept = "line one\nline\ttwo\x07\x1b"
    assert p.parse_client_message(json.dumps({"type": "text", "text": kept})) == p.TextMessage(text=kept)


def test_to_json_replaces_lone_surrogates_and_never_raises():
    text = p.to_json(p.TextDelta(turn_id=1, delta="a\ud800b\ud83d\ude00"))
    assert json.loads(text.encode("utf-8"))["delta"] == "a\ufffdb\U0001f600"  # the split pair is joined again
    ready = p.to_json(p.Ready(session_id="s", sample_rate=16000, voices=["\udfff"]))
    assert json.loads(ready.encode("utf-8"))["voices"] == ["\ufffd"]
    clean = p.TextDelta(turn_id=1, delta="héllo ✓")
    assert p.to_json(clean) == '{"turn_id":1,"delta":"héllo ✓","type":"text"}'


def _sdp(*media: str) -> str:
    return (
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"
        + CREDENTIALS
        + "".join(f"m={m} 9 UDP/TLS/RTP/SAVPF 111\r\n" for m in media)
    )


@pytest.mark.parametrize(
    "sdp, fragment",
    [
        (_sdp("audio", "audio", "application"), "got 2 audio, 1 application"),
        (_sdp("audio", "application", "application"), "got 1 audio, 2 application"),
        (_sdp("audio", "video", "application", "video"), "got 1 audio, 1 application, 2 'video'"),
        (_sdp("application"), "got 0 audio, 1 application"),
        # only at a line start: "m=audio" inside an attribute is not a media section
        (_sdp("application") + "a=note:m=audio\r\n", "got 0 audio"),
        (_sdp("audio", "application", "\u00e9" * 50), "'\\xe9\\xe9\\xe9\\xe9'..."),
    ],
)
def test_offer_needs_exactly_one_audio_section_and_one_data_channel(sdp, fragment):
    with pytest.raises(p.ProtocolError, match="exactly one audio section and one data channel") as caught:
        p.OfferRequest.parse({"sdp": sdp, "type": "offer"})
    assert fragment in str(caught.value)
    assert len(str(caught.value)) <= p.MAX_ERROR_CHARS


def test_offer_media_lines_are_counted_with_lf_only_and_without_a_final_newline():
    for sdp in (_sdp("audio", "application").replace("\r\n", "\n"), _sdp("audio", "application").rstrip()):
        assert p.OfferRequest.parse({"sdp": sdp, "type": "offer"}).sdp == sdp


def test_offer_sdp_line_bound():
    filler = "a=x\r\n" * (p.MAX_SDP_LINES - 7)
    assert p.OfferRequest.parse({"sdp": _sdp("audio", "application") + filler, "type": "offer"})  # 500 lines
    with pytest.raises(p.ProtocolError, match="over the limit of 500"):
        p.OfferRequest.parse({"sdp": _sdp("audio", "application") + filler + "a=y\r\n", "type": "offer"})


@pytest.mark.parametrize(
    "sdp, fragment",
    [
        (GOOD_SDP + "a=x\ud800\r\n", "not valid Unicode"),
        (GOOD_SDP + "a=x\x00\r\n", "'\\x00'"),
        (GOOD_SDP + "a=x\x1b[31m\r\n", "'\\x1b'"),
        (GOOD_SDP + "a=x\x7f\r\n", "'\\x7f'"),
        (GOOD_SDP + "a=x\x85\r\n", "'\\x85'"),
    ],
)
def test_offer_sdp_must_be_unicode_without_control_characters(sdp, fragment):
    with pytest.raises(p.ProtocolError) as caught:
        p.OfferRequest.parse({"sdp": sdp, "type": "offer"})
    assert fragment in str(caught.value)
    str(caught.value).encode("utf-8")
    assert p.OfferRequest.parse({"sdp": GOOD_SDP + "a=tab\there\r\n", "type": "offer"})


def test_parse_offer_body():
    body = json.dumps({"sdp": GOOD_SDP, "type": "offer", "voice": "alto"}).encode("utf-8")
    assert p.parse_offer_body(body) == p.OfferRequest(sdp=GOOD_SDP, voice="alto")
    # a 64 KiB SDP of short lines fits the body limit even though JSON escapes every CRLF
    big_sdp = _sdp("audio", "application") + "a=" + "x" * (p.OfferRequest.MAX_SDP_BYTES - 200) + "\r\n"
    assert p.parse_offer_body(json.dumps({"sdp": big_sdp, "type": "offer"}).encode()).sdp == big_sdp


@pytest.mark.parametrize(
    "raw, fragment",
    [
        (b"", "not valid JSON"),
        (b"\xff{}", "not valid UTF-8"),
        (b"[" * 5000, "nests deeper"),
        (b'{"sdp": "v=0\\ud800", "type": "offer"}', "not valid Unicode"),
        (b'{"sdp": 5, "type": "offer"}', "non-empty string"),
        (b'["offer"]', "JSON object"),
        (b'{"sdp": "' + b"x" * p.MAX_OFFER_BODY_BYTES + b'"}', "exceeds the limit"),
        (b'{"type": "offer", "sdp": "v=0", "n": ' + b"9" * 5000 + b"}", "not valid JSON"),
    ],
)
def test_parse_offer_body_refuses_with_protocol_errors_only(raw, fragment):
    with pytest.raises(p.ProtocolError) as caught:
        p.parse_offer_body(raw)
    assert fragment in str(caught.value)


@pytest.mark.parametrize("missing", ["a=fingerprint:", "a=ice-ufrag:", "a=ice-pwd:"])
def test_an_offer_that_could_never_connect_is_refused(missing):
    # without DTLS fingerprints or ICE credentials aiortc answered and then failed in the background, holding a slot
    sdp = "".join(line + "\r\n" for line in GOOD_SDP.split("\r\n") if line and not line.startswith(missing))
    with pytest.raises(p.ProtocolError, match=f"no {missing[2:-1]}"):
        p.OfferRequest.parse({"sdp": sdp, "type": "offer"})


def test_to_json_writes_no_nan_that_a_browser_would_refuse():
    text = p.to_json(p.MusicReady(turn_id=1, index=0, duration_s=float("nan")))
    assert json.loads(text)["duration_s"] is None and "NaN" not in text
    assert json.loads(p.to_json(p.MusicReady(turn_id=1, index=0, duration_s=2.5)))["duration_s"] == 2.5
