"""The fragment format (assistant.fragments): splitting within a size limit, reassembly, and every way a peer can get
it wrong."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from assistant import fragments as f
from assistant import protocol as p

SETTINGS = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def utf8_size(text: str) -> int:
    return len(text.encode("utf-8"))


def fragment(message_id: str, index: int, count: int, data: str, **extra) -> str:
    return json.dumps({"type": "fragment", "id": message_id, "index": index, "count": count, "data": data, **extra})


def reassemble(pieces: list[str], max_bytes: int = 10**9) -> str:
    reassembler = f.Reassembler(max_bytes, max_count=10**6)
    results = [reassembler.push(piece) for piece in pieces]
    assert all(r is None for r in results[:-1]) and isinstance(results[-1], str)
    return results[-1]


# ---------------------------------------------------------------------------------------------------------
# splitting


def test_a_message_that_fits_is_sent_as_it_is():
    text = p.to_json(p.TextMessage(text="hello"))
    assert f.split_message(text, 64 * 1024) == [text]
    exact = "é" * 50  # 100 bytes
    assert f.split_message(exact, 100) == [exact]


def test_a_large_picture_message_splits_within_the_limit_and_comes_back_whole():
    message = p.ImageMessage.from_bytes(p.PNG_SIGNATURE + bytes(range(256)) * 4000, text="what is this?")
    text = p.to_json(message)
    pieces = f.split_message(text, 65536)
    assert len(pieces) == -(-utf8_size(text) // (65536 - 100))  # ~90 bytes of envelope each
    assert all(utf8_size(piece) <= 65536 for piece in pieces)
    parsed = [json.loads(piece) for piece in pieces]
    assert {m["id"] for m in parsed} == {parsed[0]["id"]} and f._FRAGMENT_ID.fullmatch(parsed[0]["id"])
    assert [m["index"] for m in parsed] == list(range(len(pieces))) and {m["count"] for m in parsed} == {len(pieces)}
    assert p.parse_client_message(reassemble(pieces), p.MAX_UPLOAD_MESSAGE_BYTES) == message


def test_escaping_counts_against_the_limit():
    # every quote becomes \" and every control character \u00XX: the raw text would fit twice as many per fragment
    text = '"' * 3000 + "\x01" * 1000
    pieces = f.split_message(text, 1000)
    assert all(utf8_size(piece) <= 1000 for piece in pieces)
    assert reassemble(pieces) == text


def test_every_message_gets_a_fresh_id():
    ids = {json.loads(f.split_message("x" * 5000, 1000)[0])["id"] for _ in range(20)}
    assert len(ids) == 20


def test_split_refuses_what_cannot_be_sent():
    with pytest.raises(ValueError, match="lone surrogate"):
        f.split_message("a\ud800b", 1000)
    with pytest.raises(ValueError, match="at least"):
        f.split_message("x" * 300, 200)


@SETTINGS
@given(
    text=st.text(min_size=0, max_size=3000) | st.text(alphabet='"\\\x00\n\U0001f600é ab', max_size=3000),
    max_bytes=st.integers(f.MIN_SPLIT_BYTES, 5000),
)
def test_split_then_reassemble_gives_back_the_text(text, max_bytes):
    pieces = f.split_message(text, max_bytes)
    assert all(utf8_size(piece) <= max_bytes for piece in pieces)
    if len(pieces) == 1:
        assert pieces[0] == text
        return
    # as few as the limit allows: a piece other than the last falls short of it by less than one more character
    # (at most 6 bytes escaped) and the digits its index has fewer than the count
    slack = 6 + len(str(len(pieces)))
    assert all(utf8_size(piece) > max_bytes - slack for piece in pieces[:-1])
    assert reassemble(pieces) == text


# ---------------------------------------------------------------------------------------------------------
# the peer's limit


@pytest.mark.parametrize(
    "lines, expected",
    [
        ([], 65536),
        (["a=max-message-size:0"], 65536),
        (["a=max-message-size:262144"], 65536),
        (["a=max-message-size:16384"], 16384),
        (["a=max-message-size:junk"], 65536),
    ],
)
def test_max_message_size_is_read_from_the_data_channel_section(lines, expected):
    sdp = "\r\n".join(["v=0", "m=audio 9 UDP/TLS/RTP/SAVPF 111", "m=application 9 UDP/DTLS/SCTP webrtc-datachannel"])
    assert f.max_message_size_of(sdp + "\r\n" + "".join(line + "\r\n" for line in lines)) == expected


def test_the_data_channel_section_wins_over_a_stray_line():
    sdp = "v=0\r\nm=audio 9 X 111\r\na=max-message-size:1000\r\nm=application 9 Y z\r\na=max-message-size:2000\r\n"
    assert f.max_message_size_of(sdp) == 2000


# ---------------------------------------------------------------------------------------------------------
# reassembly


def test_messages_that_are_not_fragments_come_straight_back():
    reassembler = f.Reassembler(1000)
    for raw in [
        '{"type":"text","text":"hi"}',
        b'{"type":"hello"}',
        "not json",
        b"\xff fragment",
        '{"type":"fragment!"}',
        '{"type":"text","text":"a fragment"}',
        '{"type":"\\u0066ragment","id":"m","index":0,"count":2,"data":""}',  # spelled escaped: not taken as one
    ]:
        assert reassembler.push(raw) is raw
    assert not f.might_be_fragment('{"type":"text","text":"hi"}') and f.might_be_fragment(b'{"type":"fragment"}')


def test_small_messages_between_fragments_are_handled_and_the_message_still_completes():
    reassembler = f.Reassembler(1000)
    assert reassembler.push(fragment("m1", 0, 2, '{"type":"te')) is None
    assert reassembler.push('{"type":"interrupt"}') == '{"type":"interrupt"}'
    assert reassembler.in_progress and reassembler.held_bytes == 11
    assert reassembler.push(fragment("m1", 1, 2, 'xt","text":"hi"}').encode()) == '{"type":"text","text":"hi"}'
    assert not reassembler.in_progress and reassembler.completed == 1


@pytest.mark.parametrize(
    "raw, fragment_text",
    [
        ('{"type":"fragment","index":0,"count":2,"data":""}', "'id' must be 1 to 32"),
        (fragment("a" * 33, 0, 2, ""), "'id' must be 1 to 32"),
        (fragment("a b", 0, 2, ""), "'id' must be"),
        (fragment("m", "0", 2, ""), "'index' of fragment m must be an integer"),
        (fragment("m", True, 2, ""), "'index'"),
        (fragment("m", 0, 2.0, ""), "'count' of fragment m must be an integer"),
        (fragment("m", 0, 1, "x"), "at least 2"),
        (fragment("m", 2, 2, "x"), "outside 0..1"),
        (fragment("m", -1, 2, "x"), "outside"),
        (fragment("m", 0, 2, 5), "'data' of fragment m must be a string"),
        ('{"type":"fragment","id":"m","index":0,"count":2,"data":"\\ud800"}', "not valid Unicode"),
    ],
)
def test_malformed_fragments_are_refused_clearly(raw, fragment_text):
    reassembler = f.Reassembler(1000)
    with pytest.raises(f.FragmentError, match=fragment_text) as caught:
        reassembler.push(raw)
    assert caught.value.code == "bad_message" and isinstance(caught.value, p.ProtocolError)


def test_a_wrong_index_drops_the_message_with_one_error():
    reassembler = f.Reassembler(1000)
    reassembler.push(fragment("m", 0, 4, "a"))
    with pytest.raises(f.FragmentError, match="fragment 2 of message m came where fragment 1 was expected"):
        reassembler.push(fragment("m", 2, 4, "c"))
    assert reassembler.push(fragment("m", 3, 4, "d")) is None  # the rest of a dropped message goes quietly
    assert not reassembler.in_progress and reassembler.dropped == 1
    reassembler.push(fragment("n", 0, 2, "{}"))  # the next message is fine
    assert reassembler.push(fragment("n", 1, 2, "")) == "{}"


def test_a_changed_count_drops_the_message():
    reassembler = f.Reassembler(1000)
    reassembler.push(fragment("m", 0, 3, "a"))
    with pytest.raises(f.FragmentError, match="changed its fragment count from 3 to 4"):
        reassembler.push(fragment("m", 1, 4, "b"))
    assert not reassembler.in_progress


def test_a_message_that_starts_in_the_middle_is_refused_and_the_one_in_progress_goes_on():
    reassembler = f.Reassembler(1000)
    reassembler.push(fragment("good", 0, 2, "{"))
    with pytest.raises(f.FragmentError, match="fragment 1 of message m came without the ones before it"):
        reassembler.push(fragment("m", 1, 3, "b"))
    assert reassembler.push(fragment("m", 2, 3, "c")) is None  # quietly: one error per message
    assert reassembler.push(fragment("good", 1, 2, "}")) == "{}"


def test_too_many_fragments_or_bytes_are_too_large():
    reassembler = f.Reassembler(10, max_count=4)
    with pytest.raises(f.FragmentError, match="5 fragments, over the limit of 4") as caught:
        reassembler.push(fragment("m", 0, 5, "a"))
    assert caught.value.code == "too_large"
    reassembler.push(fragment("n", 0, 3, "ééé"))  # 6 bytes
    with pytest.raises(f.FragmentError, match="grew to 12 bytes, over the limit of 10 bytes") as caught:
        reassembler.push(fragment("n", 1, 3, "ééé"))
    assert caught.value.code == "too_large" and not reassembler.in_progress
    assert reassembler.push(fragment("n", 2, 3, "x")) is None


def test_a_new_id_abandons_the_old_message_and_starts_its_own():
    reassembler = f.Reassembler(1000)
    reassembler.push(fragment("old", 0, 3, "a"))
    with pytest.raises(f.FragmentError, match="message old was abandoned after 1 of its 3 fragments") as caught:
        reassembler.push(fragment("new", 0, 2, '{"type":'))
    assert caught.value.code == "bad_message"
    assert reassembler.push(fragment("old", 1, 3, "b")) is None  # the abandoned one is gone for good, quietly
    assert reassembler.push(fragment("new", 1, 2, '"hello"}')) == '{"type":"hello"}'


def test_an_incomplete_message_expires():
    clock = Clock()
    reassembler = f.Reassembler(1000, timeout_s=15.0, now=clock)
    reassembler.push(fragment("m", 0, 3, "a"))
    clock.now += 15.0
    assert reassembler.expire() is None and reassembler.in_progress
    clock.now += 0.1
    error = reassembler.expire()
    assert error is not None and "message m was dropped: 1 of its 3 fragments arrived within 15 s" in str(error)
    assert not reassembler.in_progress and reassembler.expire() is None
    assert reassembler.push(fragment("m", 1, 3, "b")) is None  # late fragments of it go quietly


def test_a_late_fragment_reports_the_expired_message():
    clock = Clock()
    reassembler = f.Reassembler(1000, timeout_s=15.0, now=clock)
    reassembler.push(fragment("m", 0, 3, "a"))
    clock.now += 20
    with pytest.raises(f.FragmentError, match="message m was dropped"):
        reassembler.push(fragment("m", 1, 3, "b"))
    reassembler.push(fragment("x", 0, 2, "a"))
    clock.now += 20
    with pytest.raises(f.FragmentError, match="message x was dropped"):  # a new message reports it and goes on
        reassembler.push(fragment("y", 0, 2, "{}"))
    assert reassembler.push(fragment("y", 1, 2, "")) == "{}"


def test_discard_drops_the_message_quietly():
    reassembler = f.Reassembler(1000)
    reassembler.push(fragment("m", 0, 3, "a"))
    reassembler.discard("m")
    assert not reassembler.in_progress
    assert reassembler.push(fragment("m", 1, 3, "b")) is None and reassembler.push(fragment("m", 2, 3, "c")) is None
    reassembler.discard("q")  # a message not yet begun: its fragments are refused quietly from the start
    assert reassembler.push(fragment("q", 0, 2, "a")) is None


def test_after_a_discard_the_rest_of_a_message_whose_start_was_refused_goes_quietly():
    reassembler = f.Reassembler(1000)
    reassembler.discard()  # the first fragment of "m" was refused unread: its id is unknown
    assert reassembler.push(fragment("m", 1, 3, "b")) is None and reassembler.push(fragment("m", 2, 3, "c")) is None
    reassembler.push(fragment("n", 0, 2, "{"))  # the next message begins: fragments out of place are errors again
    with pytest.raises(f.FragmentError, match="without the ones before it"):
        reassembler.push(fragment("x", 1, 2, "b"))
    assert reassembler.push(fragment("n", 1, 2, "}")) == "{}"


def test_the_upload_limit_leaves_room_for_the_largest_picture_and_tune_with_the_longest_question():
    question = "\U0001f600" * p.MAX_TEXT_CHARS
    for media in (p.MAX_IMAGE_BYTES, p.MAX_MUSIC_BYTES):
        base64_chars = 4 * -(-media // 3)
        envelope = len(p.to_json(p.ImageMessage(png_base64="", text=question)).encode("utf-8"))
        assert base64_chars + envelope + 64 <= p.MAX_UPLOAD_MESSAGE_BYTES
