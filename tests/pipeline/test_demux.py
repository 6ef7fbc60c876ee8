"""The reply grammar (assistant.pipeline.demux): properties on arbitrary id sequences, then each repair rule."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vocab_fixtures import make_tiny_vocab

from assistant.pipeline.demux import (
    ImageSegment,
    MusicSegment,
    ReplyDemultiplexer,
    SegmentRules,
    SessionStats,
    SpeechCode,
    SpeechEnd,
    SpeechStart,
    Stop,
    TextPiece,
)
from assistant.vocab import Modality

SP, IM, MU = Modality.SPEECH, Modality.IMAGE, Modality.MUSIC
CODES_PER_MODALITY = 8  # few codes, so that random ids land on codes, starts and ends often
EXTRA_IDS = 3  # ids past the added tokens that the vocabulary counts but assigns to nothing
SETTINGS = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


# read only; module level, as hypothesis tests cannot take function-scoped fixtures
VOCAB = make_tiny_vocab(CODES_PER_MODALITY, extra_ids=EXTRA_IDS)
RULES = SegmentRules(image_codes=4, music_codebooks=3)


def text_ids(text: str) -> list[int]:
    return VOCAB.encode_text(text)


def code_ids(modality: Modality, codes) -> list[int]:
    return VOCAB.codes_to_ids(modality, codes)


def start(modality: Modality) -> int:
    return VOCAB.range_of(modality).start_id


def end(modality: Modality) -> int:
    return VOCAB.range_of(modality).end_id


def run(ids, forced: Modality | None = None, rules: SegmentRules | None = None):
    """All events of ``ids`` plus ``finish()``, and the stats."""
    stats = SessionStats()
    demux = ReplyDemultiplexer(VOCAB, forced, stats, rules)
    events = [event for token_id in ids for event in demux.push(token_id)]
    events += demux.finish()
    assert demux.finish() == [] and demux.push(text_ids("x")[0]) == []  # finished for good
    return events, stats


def reply_text(events) -> str:
    return "".join(e.text for e in events if isinstance(e, TextPiece) and not e.transcript)


def transcript(events) -> str:
    return "".join(e.text for e in events if isinstance(e, TextPiece) and e.transcript)


def speech_codes(events) -> list[int]:
    return [e.code for e in events if isinstance(e, SpeechCode)]


def assert_well_formed(events, forced: Modality | None = None, rules: SegmentRules | None = None) -> None:
    """The event grammar every caller relies on (see the module docstring of demux)."""
    in_speech = stopped = False
    images = music = 0
    if forced is SP:
        assert events and events[0] == SpeechStart()
    for event in events:
        assert not stopped, f"{event} after Stop"
        if isinstance(event, SpeechStart):
            assert not in_speech, "a speech segment opened inside another"
            in_speech = True
        elif isinstance(event, SpeechCode):
            assert in_speech, "a speech code outside a speech segment"
            assert 0 <= event.code < CODES_PER_MODALITY
        elif isinstance(event, SpeechEnd):
            assert in_speech, "a speech end without its start"
            in_speech = False
        elif isinstance(event, TextPiece):
            assert not in_speech and event.text
        elif isinstance(event, ImageSegment):
            assert not in_speech and event.index == images and event.codes
            assert all(0 <= c < CODES_PER_MODALITY for c in event.codes)
            if rules is not None and rules.image_codes is not None:
                assert len(event.codes) == rules.image_codes
            images += 1
        elif isinstance(event, MusicSegment):
            assert not in_speech and event.index == music and event.tokens
            assert all(0 <= c < CODES_PER_MODALITY for c in event.tokens)
            if rules is not None and rules.music_codebooks is not None:
                assert len(event.tokens) % rules.music_codebooks == 0
            music += 1
        else:
            assert isinstance(event, Stop)
            stopped = True
    assert not in_speech, "a speech segment left open after finish()"


# ---------------------------------------------------------------------------------------------------------
# properties

STRUCTURAL_IDS = sorted(
    {VOCAB.eos_id, VOCAB.text_eos_id, VOCAB.human_id, VOCAB.mmgpt_id, VOCAB.eoh_id, VOCAB.ins_id, VOCAB.res_id}
    | {start(m) for m in (SP, IM, MU)}
    | {end(m) for m in (SP, IM, MU)}
)
ANY_ID = st.one_of(
    st.integers(-3, VOCAB.size + 3),  # every id of the vocabulary and just past it
    st.sampled_from(STRUCTURAL_IDS),  # starts, ends, markers and stops, often
    st.integers(),  # anything, negative and huge included
    st.integers(min_value=2**63 - 2, max_value=2**80),
)


@SETTINGS
@given(st.lists(ANY_ID, max_size=120), st.sampled_from([None, SP, IM, MU]), st.sampled_from([None, RULES]))
@pytest.mark.slow  # hypothesis: > 1.5 s
def test_any_id_sequence_gives_well_formed_events(ids, forced, rules):
    events, stats = run(ids, forced, rules)  # push never raises
    assert_well_formed(events, forced, rules)
    assert all(count >= 0 for count in vars(stats).values())


SEGMENT_NOISE = st.one_of(  # what may appear inside a segment without closing it
    st.sampled_from(text_ids("ABCDEFGHIJKLMNOPQRSTUVWXYZ")),
    st.sampled_from([start(m) for m in (SP, IM, MU)] + [VOCAB.human_id, VOCAB.eoh_id, VOCAB.mmgpt_id]),
    st.sampled_from([-1, VOCAB.size, VOCAB.size - 1, 2**70]),
)
UPPERCASE_IDS = set(text_ids("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))


@st.composite
def segment_block(draw) -> list[int]:
    modality = draw(st.sampled_from([SP, IM, MU]))
    inner = draw(
        st.lists(
            st.one_of(st.integers(0, CODES_PER_MODALITY - 1).map(lambda c: code_ids(modality, [c])[0]), SEGMENT_NOISE),
            max_size=12,
        )
    )
    return [start(modality), *inner, end(modality)]


BLOCKS = st.one_of(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz ", min_size=1, max_size=8).map(text_ids),
    segment_block(),
    st.lists(ANY_ID.filter(lambda i: i not in UPPERCASE_IDS), max_size=3),  # junk between blocks
)


@SETTINGS
@given(st.lists(BLOCKS, max_size=12), st.sampled_from([None, RULES]))
@pytest.mark.slow  # hypothesis: > 1.5 s
def test_text_inside_a_segment_never_reaches_the_text_output(blocks, rules):
    # Capital letters appear only inside segments: START ... END blocks whose insides hold no END, so whatever the
    # junk around them opened, a segment is open wherever a capital letter arrives.
    events, _ = run([i for block in blocks for i in block], rules=rules)
    assert_well_formed(events, rules=rules)  # many segments here: their lengths are checked too
    assert not any("A" <= char <= "Z" for event in events if isinstance(event, TextPiece) for char in event.text)


@st.composite
def clean_replies(draw) -> list[tuple[str, object]]:
    """A grammatical reply as parts: ("text" | "transcript", str), ("speech" | "image" | "music", codes)."""
    kinds = st.sampled_from(["text", "transcript", "speech", "image", "music"])
    parts = []
    for kind in draw(st.lists(kinds, max_size=8)):
        if kind in ("text", "transcript"):
            parts.append((kind, draw(st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=10))))
        else:
            size = {
                "speech": st.integers(1, 20),
                "image": st.just(RULES.image_codes),
                "music": st.integers(1, 4).map(lambda frames: frames * RULES.music_codebooks),
            }[kind]
            codes = draw(st.lists(st.integers(0, CODES_PER_MODALITY - 1), min_size=1, max_size=20))
            count = draw(size)
            parts.append((kind, (codes * count)[:count]))
    return parts


def ids_of(parts) -> list[int]:
    modality = {"speech": SP, "image": IM, "music": MU}
    ids: list[int] = []
    for kind, value in parts:
        if kind == "text":
            ids += text_ids(value)
        elif kind == "transcript":
            ids += [VOCAB.ins_id, *text_ids(value), VOCAB.res_id]
        else:
            ids += VOCAB.segment_ids(modality[kind], value)
    return ids


@SETTINGS
@given(clean_replies(), st.booleans())
@pytest.mark.slow  # hypothesis: > 1.5 s
def test_a_grammatical_reply_comes_back_whole_and_nothing_is_dropped(parts, with_stop):
    events, stats = run(ids_of(parts) + ([VOCAB.eos_id] if with_stop else []), rules=RULES)
    assert_well_formed(events, rules=RULES)
    assert stats.total_dropped() == 0
    assert reply_text(events) == "".join(v for k, v in parts if k == "text")
    assert transcript(events) == "".join(v for k, v in parts if k == "transcript")
    assert speech_codes(events) == [c for k, v in parts if k == "speech" for c in v]
    assert events.count(SpeechStart()) == sum(k == "speech" for k, _ in parts)
    assert [list(e.codes) for e in events if isinstance(e, ImageSegment)] == [v for k, v in parts if k == "image"]
    assert [list(e.tokens) for e in events if isinstance(e, MusicSegment)] == [v for k, v in parts if k == "music"]
    assert (events[-1:] == [Stop()]) is with_stop


# ---------------------------------------------------------------------------------------------------------
# examples: splitting


def test_transcript_and_reply_are_split_at_the_markers():
    ids = [VOCAB.ins_id, *text_ids("what is it"), VOCAB.res_id, *text_ids("a cat"), VOCAB.eos_id]
    events, stats = run(ids)
    assert transcript(events) == "what is it" and reply_text(events) == "a cat"
    assert events[-1] == Stop() and stats.total_dropped() == 0


def test_pending_text_is_flushed_at_every_boundary():
    e_acute = text_ids("é")  # two bytes: the first alone is no character yet
    events, _ = run([*text_ids("a"), e_acute[0], start(SP), *code_ids(SP, [1]), end(SP)])
    # the incomplete character is flushed (as U+FFFD) before the speech starts, never glued to later text
    assert events == [
        TextPiece("a", False),
        TextPiece("\ufffd", False),
        SpeechStart(),
        SpeechCode(1),
        SpeechEnd(complete=True),
    ]
    events, _ = run([e_acute[0], VOCAB.ins_id, e_acute[1]])
    assert events == [TextPiece("\ufffd", False), TextPiece("\ufffd", True)]
    events, _ = run([*e_acute, *text_ids("!")])
    assert reply_text(events) == "é!"


def test_segments_are_numbered_per_modality():
    ids = (
        VOCAB.segment_ids(IM, [1, 2])
        + VOCAB.segment_ids(MU, [3])
        + VOCAB.segment_ids(IM, [4])
        + VOCAB.segment_ids(MU, [5, 6])
    )
    events, _ = run(ids)
    assert events == [ImageSegment(0, (1, 2)), MusicSegment(0, (3,)), ImageSegment(1, (4,)), MusicSegment(1, (5, 6))]


def test_forced_speech_opens_with_a_speech_start_and_finish_closes_it():
    events, stats = run(code_ids(SP, [1, 2]))
    assert events == [] and stats.stray_codes == 2  # not forced: codes without a segment
    events, stats = run(code_ids(SP, [1, 2]), forced=SP)
    assert events == [SpeechStart(), SpeechCode(1), SpeechCode(2), SpeechEnd(complete=False)]
    assert stats.unterminated_segments == 1
    assert run([], forced=SP)[0] == [SpeechStart(), SpeechEnd(complete=False)]


def test_forced_image_collects_codes_from_the_first_id():
    events, stats = run([*code_ids(IM, [1, 2, 3, 4]), end(IM), *text_ids("ok")], forced=IM, rules=RULES)
    assert events == [ImageSegment(0, (1, 2, 3, 4)), TextPiece("o", False), TextPiece("k", False)]
    assert stats.total_dropped() == 0


# ---------------------------------------------------------------------------------------------------------
# examples: each repair rule


def test_stop_ends_everything_and_nothing_follows():
    stats = SessionStats()
    demux = ReplyDemultiplexer(VOCAB, None, stats)
    assert demux.push(text_ids("a")[0]) == [TextPiece("a", False)]
    assert demux.push(start(SP)) == [SpeechStart()]
    assert demux.push(VOCAB.text_eos_id) == [SpeechEnd(complete=False), Stop()]
    assert stats.unterminated_segments == 1
    assert demux.finished and demux.push(text_ids("b")[0]) == [] and demux.push(start(SP)) == []
    assert demux.finish() == []


@pytest.mark.parametrize("stop_id", [VOCAB.eos_id, VOCAB.text_eos_id])
def test_every_stop_id_stops(stop_id):
    events, _ = run([*text_ids("hi"), stop_id, *text_ids("after")])
    assert reply_text(events) == "hi" and events[-1] == Stop()


def test_text_and_other_codes_inside_a_segment_are_dropped():
    events, stats = run(
        [start(SP), *code_ids(SP, [1]), *text_ids("xy"), *code_ids(IM, [2]), *code_ids(SP, [3]), end(SP)]
    )
    assert speech_codes(events) == [1, 3] and reply_text(events) == ""
    assert stats.stray_codes == 3


def test_an_end_without_its_start_is_dropped():
    events, stats = run([end(SP), end(IM), start(IM), *code_ids(IM, [1]), end(MU), end(IM)])
    assert events == [ImageSegment(0, (1,))]
    assert stats.stray_ends == 3


def test_a_nested_start_is_ignored_and_the_open_segment_goes_on():
    events, stats = run([start(SP), *code_ids(SP, [1]), start(IM), start(SP), *code_ids(SP, [2]), end(SP)])
    assert events == [SpeechStart(), SpeechCode(1), SpeechCode(2), SpeechEnd(complete=True)]
    assert stats.nested_starts == 2


def test_empty_image_and_music_segments_are_dropped():
    events, stats = run([start(IM), end(IM), start(MU), end(MU), *VOCAB.segment_ids(IM, [5])])
    assert events == [ImageSegment(0, (5,))]  # the first image that was passed on is still number 0
    assert stats.empty_segments == 2


def test_an_empty_speech_segment_still_opens_and_closes():
    # the audio worker ends the (silent) segment; nothing is dropped, so nothing is counted
    events, stats = run([start(SP), end(SP)])
    assert events == [SpeechStart(), SpeechEnd(complete=True)] and stats.total_dropped() == 0


def test_ids_outside_the_vocabulary_are_dropped():
    unassigned = VOCAB.size - 1  # counted by the vocabulary, assigned to no token
    events, stats = run([-1, VOCAB.size, 2**80, unassigned, *text_ids("ok")])
    assert reply_text(events) == "ok" and stats.invalid_ids == 4


def test_turn_markers_inside_a_reply_are_dropped():
    events, stats = run([VOCAB.human_id, *text_ids("a"), VOCAB.eoh_id, VOCAB.mmgpt_id, *text_ids("b")])
    assert reply_text(events) == "ab" and stats.markers_ignored == 3


def test_an_image_or_music_segment_left_open_is_dropped():
    for modality in (IM, MU):
        events, stats = run([*text_ids("a"), start(modality), *code_ids(modality, [1, 2])])
        assert events == [TextPiece("a", False)] and stats.unterminated_segments == 1


def test_an_image_of_the_wrong_length_is_dropped_when_the_length_is_known():
    ids = (
        VOCAB.segment_ids(IM, [1, 2, 3]) + VOCAB.segment_ids(IM, [1, 2, 3, 4, 5]) + VOCAB.segment_ids(IM, [1, 2, 3, 4])
    )
    events, stats = run(ids, rules=RULES)
    assert events == [ImageSegment(0, (1, 2, 3, 4))]
    assert stats.malformed_segments == 2
    # without the rule, every non-empty image is passed on (the media backend pads or truncates it)
    events, stats = run(ids)
    assert [len(e.codes) for e in events] == [3, 5, 4] and stats.total_dropped() == 0


def test_music_is_cut_to_whole_frames_when_the_codebooks_are_known():
    events, stats = run(VOCAB.segment_ids(MU, [1, 2, 3, 4, 5]) + VOCAB.segment_ids(MU, [6, 7]), rules=RULES)
    assert events == [MusicSegment(0, (1, 2, 3))]  # 5 tokens -> one frame of 3; 2 tokens -> not one frame
    assert stats.trimmed_segments == 1 and stats.malformed_segments == 1
    events, stats = run(VOCAB.segment_ids(MU, [1, 2, 3, 4, 5, 6]), rules=RULES)
    assert events == [MusicSegment(0, (1, 2, 3, 4, 5, 6))] and stats.total_dropped() == 0
    events, _ = run(VOCAB.segment_ids(MU, [1, 2, 3, 4, 5]))
    assert events == [MusicSegment(0, (1, 2, 3, 4, 5))]  # no rule: as generated


@pytest.mark.parametrize("field", ["image_codes", "music_codebooks"])
@pytest.mark.parametrize("value", [0, -4])
def test_segment_rules_must_be_positive(field, value):
    with pytest.raises(ValueError, match=field):
        SegmentRules(**{field: value})
