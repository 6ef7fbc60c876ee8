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
    # the largest allowed picture, with the longest question, is one upload (reassembled from fragments)
    biggest = p.ImageMessage.from_bytes(PNG + b"\x00" * (p.MAX_IMAGE_BYTES - len(PNG)), text="é" * p.MAX_TEXT_CHARS)
    parsed = p.parse_client_message(p.to_json(biggest), p.MAX_UPLOAD_MESSAGE_BYTES)
    assert parsed.image_bytes() == biggest.image_bytes() and parsed.text == biggest.text


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
        (_image_json(PNG + b"\x00" * (p.MAX_MESSAGE_BYTES)), "exceeds the limit of 65536"),  # one message's limit
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
    # a picture over one message's size is the fragment layer's to carry, not refused
    assert len(p.to_json(p.ImageMessage.from_bytes(PNG + b"\x00" * 100_000))) > p.MAX_MESSAGE_BYTES


def test_a_reassembled_upload_may_be_large_only_for_a_picture_or_a_tune():
    over_the_limit = PNG + b"\x00" * (p.MAX_IMAGE_BYTES + 1 - len(PNG))
    with pytest.raises(p.ProtocolError, match=f"exceeds the limit of {p.MAX_IMAGE_BYTES} bytes") as caught:
        p.parse_client_message(_image_json(over_the_limit), p.MAX_UPLOAD_MESSAGE_BYTES)
    assert caught.value.code == "too_large"
    huge_text = json.dumps({"type": "text", "text": "a" * 100_000})
    with pytest.raises(p.ProtocolError, match="only pictures and tunes may be larger") as caught:
        p.parse_client_message(huge_text, p.MAX_UPLOAD_MESSAGE_BYTES)
    assert caught.value.code == "too_large"
    with pytest.raises(p.ProtocolError, match="exceeds the limit of 65536 bytes") as caught:  # one message: as before
        p.parse_client_message(huge_text)
    assert caught.value.code == "too_large"
    with pytest.raises(p.ProtocolError, match=f"exceeds the limit of {p.MAX_UPLOAD_MESSAGE_BYTES}") as caught:
        p.parse_client_message(_image_json(PNG, text="a" * p.MAX_UPLOAD_MESSAGE_BYTES), p.MAX_UPLOAD_MESSAGE_BYTES)
    assert caught.value.code == "too_large"
    with pytest.raises(p.ProtocolError, match="not valid JSON") as caught:
        p.parse_client_message("{oops")
    assert caught.value.code == "bad_message"


# ---------------------------------------------------------------------------------------------------------
# tunes from the client


def wav(seconds: float = 0.5, rate: int = 16000, channels: int = 1, subtype: str = "PCM_16") -> bytes:
    import io

    import numpy as np
    import soundfile

    t = np.arange(int(seconds * rate)) / rate
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    buffer = io.BytesIO()
    soundfile.write(buffer, np.stack([tone] * channels, axis=1), rate, subtype=subtype, format="WAV")
    return buffer.getvalue()


def _music_json(data: bytes, **extra) -> str:
    return json.dumps({"type": "music", "wav_base64": base64.b64encode(data).decode("ascii"), **extra})


def test_music_message_parses_with_and_without_a_question():
    tune = wav()
    with_question = p.parse_client_message(_music_json(tune, text="what mood is this?"))
    assert isinstance(with_question, p.MusicMessage)
    assert with_question.wav_bytes() == tune and with_question.text == "what mood is this?"
    assert p.parse_client_message(_music_json(tune)).text is None
    assert p.parse_client_message(_music_json(tune, text=" ")).text is None  # a blank question is no question
    message = p.MusicMessage.from_bytes(tune, text="hi")
    assert json.loads(p.to_json(message))["type"] == "music" and p.parse_client_message(p.to_json(message)) == message


@pytest.mark.parametrize(
    "seconds, rate, channels, subtype", [(0.5, 16000, 1, "PCM_16"), (1.0, 44100, 2, "FLOAT"), (0.2, 8000, 1, "PCM_U8")]
)
def test_a_tune_in_any_usual_wav_layout_is_read(seconds, rate, channels, subtype):
    data = wav(seconds, rate, channels, subtype)
    info = p.wav_info(data)
    assert (info.sample_rate, info.channels) == (rate, channels)
    assert info.duration_s == pytest.approx(seconds, abs=1e-3)
    wave, wave_rate = p.MusicMessage.from_bytes(data).wave()
    assert wave_rate == rate and wave.dtype.name == "float32" and wave.ndim == 1 and wave.size == info.frames
    assert 0.4 < float(abs(wave).max()) < 0.6  # the tone, channels averaged


@pytest.mark.parametrize(
    "data, fragment, code",
    [
        (b"", "no tune", "bad_message"),
        (b"ID3 an mp3", "not a WAV file", "bad_message"),
        (wav()[:30], "cut short", "bad_message"),
        (wav()[:36], "no 'data' chunk", "bad_message"),
        (wav().replace(b"data", b"datx"), "no 'data' chunk", "bad_message"),
        (wav(channels=3), "mono or stereo, not 3 channels", "bad_message"),
        (wav(rate=2000), "outside 4000..192000 Hz", "bad_message"),
        (wav(seconds=0.0), "no samples", "bad_message"),
        (wav(seconds=31, rate=4000, subtype="PCM_U8"), "tune of 31.0 s exceeds the limit of 30 s", "too_large"),
        (b"RIFF\x00\x00\x00\x00WAVE" + b"\x00" * p.MAX_MUSIC_BYTES, "exceeds the limit of 4194304", "too_large"),
    ],
)
def test_music_errors_are_clear(data, fragment, code):
    with pytest.raises(p.ProtocolError, match=fragment) as caught:
        p.parse_client_message(_music_json(data), p.MAX_UPLOAD_MESSAGE_BYTES)
    assert caught.value.code == code
    with pytest.raises(p.ProtocolError, match=fragment):
        p.MusicMessage.from_bytes(data)


def test_music_field_errors_are_clear():
    for raw, fragment in [
        ('{"type": "music"}', "missing field 'wav_base64'"),
        ('{"type": "music", "wav_base64": "%%"}', "not valid base64"),
        (_music_json(wav(), text="a" * (p.MAX_TEXT_CHARS + 1)), "longer than"),
    ]:
        with pytest.raises(p.ProtocolError, match=fragment):
            p.parse_client_message(raw)


def test_a_tune_whose_samples_cannot_be_decoded_says_so():
    broken = bytearray(wav())
    broken[20:22] = (2).to_bytes(2, "little")  # format 2 (MS ADPCM) in the header: refused before decoding
    with pytest.raises(p.ProtocolError, match="format 2"):
        p.MusicMessage.from_bytes(bytes(broken))
    undecodable = p.MusicMessage(wav_base64=base64.b64encode(b"RIFF0000WAVEjunk").decode("ascii"))
    with pytest.raises(p.ProtocolError, match="cannot be decoded"):
        undecodable.wave()


def test_ready_carries_the_voice_and_older_ready_messages_still_parse():
    ready = p.Ready(session_id="s", sample_rate=16000, voice="alto", voices=["alto", "bass"])
    assert p.parse_server_message(p.to_json(ready)) == ready
    old = p.parse_server_message('{"type": "ready", "session_id": "s", "sample_rate": 16000, "protocol_version": 1}')
    assert old.voice is None and old.voices is None
    with pytest.raises(p.ProtocolError, match="list of strings"):
        p.parse_server_message('{"type": "ready", "session_id": "s", "sample_rate": 16000, "voices": ["a", 1]}')
    with pytest.raises(p.ProtocolError, match="'voice'"):
        p.parse_server_message('{"type": "ready", "session_id": "s", "sample_rate": 16000, "voice": 5}')


def test_turn_started_may_name_the_turn_it_continues_and_older_ones_still_parse():
    continued = p.TurnStarted(turn_id=4, continues=3)
    assert p.parse_server_message(p.to_json(continued)) == continued
    assert p.parse_server_message('{"type": "turn_started", "turn_id": 4}') == p.TurnStarted(turn_id=4)
    assert p.parse_server_message('{"type": "turn_started", "turn_id": 4, "continues": null}').continues is None
    with pytest.raises(p.ProtocolError, match="'continues'"):
        p.parse_server_message('{"type": "turn_started", "turn_id": 4, "continues": "3"}')


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
