"""Property tests of the wire protocol's parsers: whatever a peer sends, the answer is a message or a ProtocolError
whose text can be sent back; and every valid message survives the round trip through its JSON."""

import base64
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from assistant import protocol as p

# database=None: no example database written into the checkout
SETTINGS = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
CLIENT_CLASSES = (p.Hello, p.TextMessage, p.ImageMessage, p.InterruptMessage, p.ByeMessage)
CLIENT_TYPES = [kind.value for kind in p.ClientEvent]
CLIENT_FIELDS = ["type", "text", "png_base64", "client", "protocol_version", "voice", "sdp"]

# Hypothesis leaves lone surrogates and NUL out of text unless asked; peers do not.
HOSTILE_CHARACTERS = st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff", "\ud83d", "\x00", "\x1b", "\u2028"])
ANY_CHARACTER = st.one_of(st.characters(), HOSTILE_CHARACTERS)


def hostile_text(max_size: int) -> st.SearchStrategy[str]:
    # a list joined, not st.text(alphabet=...): text() merges the alphabet into character ranges and so drops the
    # surrogates again
    return st.lists(ANY_CHARACTER, max_size=max_size).map("".join)


HOSTILE_TEXT = hostile_text(60)
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), HOSTILE_TEXT)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(HOSTILE_TEXT, children, max_size=4)),
    max_leaves=12,
)


@st.composite
def client_like_objects(draw) -> dict:
    """Objects that look like client messages: a known or odd type, known field names, values of any JSON type."""
    obj = draw(st.dictionaries(st.sampled_from(CLIENT_FIELDS), JSON_VALUES, max_size=4))
    obj["type"] = draw(st.one_of(st.sampled_from(CLIENT_TYPES), JSON_VALUES))
    return obj


@st.composite
def nested(draw) -> str:
    depth = draw(st.integers(1, 3000))
    opener = draw(st.sampled_from(["[", '{"a":', '{"type": "text", "text": ', '[{"x": ']))
    closer = {"[": "]", '{"a":': "}", '{"type": "text", "text": ': "}", '[{"x": ': "}]"}[opener]
    inner = draw(st.sampled_from(["", "1", '"x"', '"\\ud800"']))
    return opener * depth + inner + closer * draw(st.integers(0, depth))


@st.composite
def long_messages(draw) -> str | bytes:
    """Text messages around the size limit, made of one repeated character (cheap to build at any size)."""
    char = draw(st.sampled_from(["a", "é", "\U0001f600", " ", "\\u0000", "\\ud800"]))
    envelope = '{"type":"text","text":""}'
    room = (p.MAX_MESSAGE_BYTES - len(envelope)) // len(char.encode("utf-8"))
    count = draw(st.integers(room - 3, room + 3) | st.integers(0, p.MAX_TEXT_CHARS + 2))
    raw = envelope[:-2] + char * count + envelope[-2:]
    return raw.encode("utf-8") if draw(st.booleans()) else raw


@st.composite
def peer_input(draw) -> str | bytes:
    return draw(
        st.one_of(
            st.binary(max_size=200),
            hostile_text(200),
            nested(),
            long_messages(),
            JSON_VALUES.map(lambda v: json.dumps(v, ensure_ascii=False)),
            client_like_objects().map(lambda obj: json.dumps(obj, ensure_ascii=False)),
        )
    )


def assert_sendable(error: p.ProtocolError) -> None:
    text = str(error)
    text.encode("utf-8")  # raises if it could not go back on the data channel or in an HTTP body
    assert 0 < len(text) <= p.MAX_ERROR_CHARS


def parsed_or_refused(parse, raw):
    """``parse(raw)``, or None where it raised a ProtocolError fit to send back (any other exception fails)."""
    try:
        return parse(raw)
    except p.ProtocolError as error:
        assert_sendable(error)
        return None


def assert_clean_strings(message) -> None:
    for value in vars(message).values():
        if isinstance(value, str):
            value.encode("utf-8")
            assert "\x00" not in value


@SETTINGS
@given(peer_input())
@pytest.mark.slow  # hypothesis: > 1.5 s
def test_parse_client_message_returns_a_message_or_raises_a_sendable_protocol_error(raw):
    message = parsed_or_refused(p.parse_client_message, raw)
    if message is None:
        return
    assert isinstance(message, CLIENT_CLASSES)
    assert_clean_strings(message)


@SETTINGS
@given(client_like_objects(), st.booleans(), st.booleans())
@pytest.mark.slow  # hypothesis: > 1.5 s
def test_client_like_objects_parse_or_fail_cleanly(obj, ascii_only, as_bytes):
    raw = json.dumps(obj, ensure_ascii=ascii_only)
    # as bytes, a lone surrogate becomes a sequence that is not UTF-8 (what a broken peer would send)
    message = parsed_or_refused(p.parse_client_message, raw.encode("utf-8", "surrogatepass") if as_bytes else raw)
    if message is None:
        return
    assert isinstance(message, CLIENT_CLASSES) and message.type == obj["type"]
    assert_clean_strings(message)


# ---------------------------------------------------------------------------------------------------------
# round trip of valid client messages

# exclude_categories spelled out: naming excluded characters alone lets the surrogates back in
CLEAN_CHARACTER = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
VALID_TEXT = st.text(alphabet=CLEAN_CHARACTER, min_size=1, max_size=300).filter(str.strip)
IMAGE_BYTES = st.builds(
    lambda head, rest: head + rest, st.sampled_from([p.PNG_SIGNATURE, p.JPEG_SIGNATURE]), st.binary(max_size=300)
)
VALID_CLIENT_MESSAGES = st.one_of(
    st.builds(
        p.Hello, client=st.text(alphabet=CLEAN_CHARACTER, max_size=50), protocol_version=st.integers(-(2**70), 2**70)
    ),
    st.builds(p.TextMessage, text=VALID_TEXT),
    st.builds(
        lambda data, text: p.ImageMessage(png_base64=base64.b64encode(data).decode("ascii"), text=text),
        IMAGE_BYTES,
        st.none() | VALID_TEXT,
    ),
    st.just(p.InterruptMessage()),
    st.just(p.ByeMessage()),
)


@SETTINGS
@given(VALID_CLIENT_MESSAGES)
def test_valid_client_messages_round_trip(message):
    text = p.to_json(message)
    assert p.parse_client_message(text) == message
    assert p.parse_client_message(text.encode("utf-8")) == message


def with_surrogates_repaired(text: str) -> str:
    """A high surrogate followed by a low one is the character they encode; any other surrogate is U+FFFD."""
    out, i = [], 0
    while i < len(text):
        char = text[i]
        if "\ud800" <= char <= "\udbff" and i + 1 < len(text) and "\udc00" <= text[i + 1] <= "\udfff":
            out.append(chr(0x10000 + ((ord(char) - 0xD800) << 10) + (ord(text[i + 1]) - 0xDC00)))
            i += 2
            continue
        out.append("\ufffd" if "\ud800" <= char <= "\udfff" else char)
        i += 1
    return "".join(out)


@SETTINGS
@given(hostile_text(100), st.integers())
def test_to_json_of_any_server_text_encodes_as_utf8(delta, turn_id):
    for message in (p.TextDelta(turn_id=turn_id, delta=delta), p.ErrorEvent(message=delta, turn_id=turn_id)):
        text = p.to_json(message)
        parsed = p.parse_server_message(text.encode("utf-8"))  # encode raises if a surrogate slipped through
        repaired = parsed.delta if isinstance(parsed, p.TextDelta) else parsed.message
        assert repaired == with_surrogates_repaired(delta)


# ---------------------------------------------------------------------------------------------------------
# offers

MEDIA_KINDS = st.sampled_from(["audio", "application", "video", "text", "", "aud\u00e9o"])
SDP_LINES = st.one_of(
    MEDIA_KINDS.map(lambda kind: f"m={kind} 9 UDP/TLS/RTP/SAVPF 111"),
    hostile_text(30).map(lambda s: "a=" + s),
    st.sampled_from(["o=- 1 1 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=mid:0"]),
)


@st.composite
def sdps(draw) -> str:
    lines = ["v=0"] if draw(st.integers(0, 9)) else []
    lines += draw(st.lists(SDP_LINES, max_size=12))
    if draw(st.integers(0, 19)) == 0:
        lines += ["a=x"] * draw(st.integers(490, 510))
    newline = draw(st.sampled_from(["\r\n", "\n"]))
    return newline.join(lines) + (newline if draw(st.booleans()) else "")


@st.composite
def offer_bodies(draw) -> bytes:
    obj = draw(st.dictionaries(st.sampled_from(["sdp", "type", "voice"]), JSON_VALUES, max_size=3))
    if draw(st.booleans()):
        obj["sdp"] = draw(sdps())
    if draw(st.booleans()):
        obj["type"] = "offer"
    if draw(st.booleans()):
        obj["voice"] = draw(st.sampled_from(["alto", "Alto", "", "x" * 40, None]))
    raw = json.dumps(draw(st.one_of(st.just(obj), JSON_VALUES)), ensure_ascii=draw(st.booleans()))
    return raw.encode("utf-8", "surrogatepass")


@SETTINGS
@given(st.one_of(offer_bodies(), st.binary(max_size=200), nested().map(str.encode)))
@pytest.mark.slow  # hypothesis: > 1.5 s
def test_parse_offer_body_returns_an_offer_or_raises_a_sendable_protocol_error(raw):
    offer = parsed_or_refused(p.parse_offer_body, raw)
    if offer is None:
        return
    assert isinstance(offer, p.OfferRequest)
    assert offer.sdp.startswith("v=0")
    media = [line.split(" ")[0] for line in offer.sdp.split("\n") if line.startswith("m=")]
    assert sorted(media) == ["m=application", "m=audio"]


# SDP text: anything but control characters (TAB aside) and lone surrogates
SDP_ATTRIBUTE = st.text(alphabet=st.one_of(st.characters(exclude_categories=("Cc", "Cs")), st.just("\t")), max_size=40)


@SETTINGS
@given(
    st.lists(SDP_ATTRIBUTE.map(lambda s: "a=" + s), max_size=8),
    st.permutations(["m=audio 9 RTP/SAVPF 111", "m=application 9 DTLS/SCTP 5000"]),
    st.none() | st.from_regex(r"[a-z0-9_-]{1,32}", fullmatch=True),
    st.booleans(),
)
def test_valid_offers_round_trip(attributes, media, voice, ascii_only):
    credentials = ["a=ice-ufrag:abcd", "a=ice-pwd:0123456789abcdefghijkl", "a=fingerprint:sha-256 AB:CD"]
    sdp = "\r\n".join(["v=0", "s=-", *credentials, media[0], *attributes, media[1]]) + "\r\n"
    offer = p.OfferRequest(sdp=sdp, voice=voice)
    assert p.parse_offer_body(json.dumps(offer.to_dict(), ensure_ascii=ascii_only).encode("utf-8")) == offer
