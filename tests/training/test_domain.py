"""The synthesized instruction set: exact answers, reply shapes, follow-ups, determinism, the judge's vocabulary."""

import collections
import importlib.util
import itertools
from pathlib import Path

import pytest

from training import domain as d
from training.specs import (
    DEFAULT_BACKGROUND,
    DEFAULT_REGISTER,
    DEFAULT_SIZE,
    DEFAULT_TIMBRE,
    ImageSpec,
    MusicSpec,
    Voice,
)

VOICES = (Voice("a", "en-us+f2", pitch=40, speed=160), Voice("b", "en-us+m3", pitch=60, speed=190))
NUMBER = {w: k for k, w in enumerate(d.NUMBER_WORDS)}


@pytest.fixture(scope="module")
def dialogues():
    return d.generate_dialogues(3000, seed=7, voices=VOICES)


def by_family(dialogues, family):
    return [x for x in dialogues if x.family == family]


def parse_answer(text):
    """'six plus three is nine' -> ('plus', 6, 3, 9)."""
    a, op, b, is_, c = text.split(" ")
    assert is_ == "is"
    return op, NUMBER[a], NUMBER[b], NUMBER[c]


def check_arithmetic(text):
    op, a, b, c = parse_answer(text)
    assert c == {"plus": a + b, "minus": a - b, "times": a * b}[op]
    assert 0 <= c <= d.MAX_NUMBER
    return op, a, b, c


def test_every_domain_word_is_in_the_pocketsphinx_dictionary():
    spec = importlib.util.find_spec("pocketsphinx")
    if spec is None:
        pytest.skip("pocketsphinx not installed")
    found = sorted(Path(next(iter(spec.submodule_search_locations))).rglob("model/en-us/*.dict"))
    assert found, "no en-us dictionary inside the pocketsphinx package"
    known = {line.split(" ", 1)[0] for line in found[0].read_text(encoding="utf-8", errors="replace").splitlines()}
    missing = [w for w in d.vocabulary() if w not in known]
    assert not missing


def test_all_spoken_sentences_are_plain_words_and_fit_a_grammar():
    sentences = d.all_spoken_sentences()
    assert 5000 < len(sentences) <= 40000
    assert len(set(sentences)) == len(sentences)
    for s in sentences:
        assert s == s.strip() and "  " not in s and all(w.isalpha() and w.islower() for w in s.split(" "))


def test_every_generated_sentence_is_in_the_grammar(dialogues):
    grammar = set(d.all_spoken_sentences())
    for dialogue in dialogues:
        for user, reply in dialogue.turns:
            assert user.words in grammar and reply.text in grammar


def test_arithmetic_table_is_exact_small_and_non_negative():
    problems = d.arithmetic_problems()
    assert {op for op, _, _ in problems} == {"plus", "minus", "times"}
    for op, a, b in problems:
        assert check_arithmetic(d.arithmetic_answer(op, a, b))[1:3] == (a, b)
    assert ("minus", 3, 5) not in problems and ("times", 5, 5) not in problems


def test_arithmetic_answers_follow_from_the_question(dialogues):
    found = by_family(dialogues, d.ARITHMETIC)
    assert len(found) > 100
    phrasings = set()
    for dialogue in found:
        ((user, reply),) = dialogue.turns
        op, a, b, _ = check_arithmetic(reply.text)
        words = user.words.split(" ")
        assert d.NUMBER_WORDS[a] in words and d.NUMBER_WORDS[b] in words
        phrasings.add(user.words.replace(d.NUMBER_WORDS[a], "A").replace(d.NUMBER_WORDS[b], "B").split(" ")[0])
    assert len(phrasings) >= 4  # several phrasings of the question


def test_turn_modality_fields_are_consistent(dialogues):
    speeds = collections.defaultdict(list)
    for dialogue in dialogues:
        voices = {u.voice for u, _ in dialogue.turns if u.spoken}
        assert len(voices) <= 1  # one user per dialogue
        for user, reply in dialogue.turns:
            if user.spoken:
                assert reply.transcript == user.words and user.voice in VOICES
                speeds[user.voice].append(user.speed)
            else:
                assert reply.transcript is None and user.voice is None and user.speed is None
    spoken = sum(u.spoken for x in dialogues for u, _ in x.turns) / sum(len(x.turns) for x in dialogues)
    assert 0.75 < spoken < 0.85
    for voice, values in speeds.items():
        assert (
            min(values) >= voice.speed * (1 - d.SPEED_JITTER) - 1
            and max(values) <= voice.speed * (1 + d.SPEED_JITTER) + 1
        )
        assert len(set(values)) > 10


def test_pitch_jitter_varies_pitch_per_turn_under_the_voice_name_and_is_off_by_default():
    plain = d.generate_dialogues(300, seed=5, voices=VOICES)
    jittered = d.generate_dialogues(300, seed=5, voices=VOICES, pitch_jitter=8)
    assert all(u.voice in VOICES for x in plain for u, _ in x.turns if u.spoken)
    pitches = collections.defaultdict(set)
    for dialogue in jittered:
        for user, _ in dialogue.turns:
            if user.spoken:
                base = next(v for v in VOICES if v.name == user.voice.name)
                assert user.voice.espeak == base.espeak and user.voice.speed == base.speed
                assert abs(user.voice.pitch - base.pitch) <= 8
                pitches[base.name].add(user.voice.pitch)
    assert all(len(values) >= 12 for values in pitches.values())  # most of the 17 allowed pitches occur
    with pytest.raises(ValueError):
        d.generate_dialogues(3, seed=5, voices=VOICES, pitch_jitter=-1)


def test_generation_is_reproducible_and_seeded():
    a = d.generate_dialogues(50, seed=3, voices=VOICES)
    assert a == d.generate_dialogues(50, seed=3, voices=VOICES)
    assert a != d.generate_dialogues(50, seed=4, voices=VOICES)


def test_family_mix_and_balanced_eval_sets(dialogues):
    counts = collections.Counter(x.family for x in dialogues)
    assert set(counts) == set(d.FAMILIES)
    assert 0.12 < counts[d.FOLLOW_UP] / len(dialogues) < 0.18
    assert all(len(x.turns) == 1 for x in dialogues if x.family != d.FOLLOW_UP)
    assert all(len(x.turns) >= 2 for x in by_family(dialogues, d.FOLLOW_UP))

    balanced = d.generate_dialogues(len(d.FAMILIES) * 5 + 2, seed=1, voices=VOICES, families=d.FAMILIES)
    counts = collections.Counter(x.family for x in balanced)
    assert sorted(counts.values()) == [5] * (len(d.FAMILIES) - 2) + [6, 6]
    assert not any(
        x.family == d.FOLLOW_UP for x in d.generate_dialogues(300, seed=1, voices=VOICES, multi_turn_fraction=0)
    )
    typed = d.generate_dialogues(20, seed=1, voices=(), spoken_fraction=0.0)
    assert not any(u.spoken for x in typed for u, _ in x.turns)
    with pytest.raises(ValueError):
        d.generate_dialogues(5, seed=1, voices=VOICES, families=["poetry"])


def test_say_repeats_the_phrase_from_a_large_pool(dialogues):
    assert len(set(d.say_phrases())) == len(d.say_phrases()) >= 2000
    found = by_family(dialogues, d.SAY)
    for dialogue in found:
        ((user, reply),) = dialogue.turns
        assert user.words.endswith(" " + reply.text) and reply.text in d.say_phrases()
        assert reply.image is None and reply.music is None
    assert len({x.turns[0][1].text for x in found}) > 0.8 * len(found)  # mostly distinct


def test_facts_and_small_talk_answer_from_their_tables(dialogues):
    for family, table in ((d.FACTS, d.FACTS_TABLE), (d.SMALL_TALK, d.SMALL_TALK_TABLE)):
        answers = {q: a for questions, a in table for q in questions}
        for dialogue in by_family(dialogues, family):
            ((user, reply),) = dialogue.turns
            assert answers[user.words] == reply.text
    assert len(d.FACTS_TABLE) >= 30
    assert dict((q, a) for qs, a in d.FACTS_TABLE for q in qs)["what colour is the sky"] == "the sky is blue"


def test_knowledge_drills_ask_the_knowledge_families_and_answer_as_the_dialogues_do():
    drills = d.knowledge_drills(3000, seed=4)
    assert drills == d.knowledge_drills(3000, seed=4) and drills != d.knowledge_drills(3000, seed=5)
    counts = {family: sum(x.family == family for x in drills) for family in d.DRILL_WEIGHTS}
    assert set(counts) == {x.family for x in drills}
    for family, weight in d.DRILL_WEIGHTS.items():
        assert abs(counts[family] / len(drills) - weight) < 0.04
    answers = {q: a for table in (d.FACTS_TABLE, d.SMALL_TALK_TABLE) for questions, a in table for q in questions}
    for drill in drills:
        if drill.family == d.ARITHMETIC:
            _, a, b, _ = check_arithmetic(drill.answer)
            assert {d.NUMBER_WORDS[a], d.NUMBER_WORDS[b]} <= set(drill.words.split(" "))
        else:
            assert answers[drill.words] == drill.answer
    asked = {(x.family, x.words) for x in drills}
    assert len({w for f, w in asked if f == d.ARITHMETIC}) > 1000  # many problems in many phrasings
    assert {x.answer for x in drills if x.family != d.ARITHMETIC} == set(answers.values())  # every fact is drilled
    assert 0.45 < sum(x.transcript_form for x in drills) / len(drills) < 0.55
    assert not any(x.transcript_form for x in d.knowledge_drills(50, seed=4, transcript_fraction=0.0))
    assert all(x.transcript_form for x in d.knowledge_drills(50, seed=4, transcript_fraction=1.0))
    with pytest.raises(ValueError):
        d.knowledge_drills(-1, seed=0)


def test_picture_drills_ask_about_a_users_picture_and_answer_as_the_dialogues_do():
    drills = d.picture_drills(2000, seed=4)
    assert drills == d.picture_drills(2000, seed=4) and drills != d.picture_drills(2000, seed=5)
    asked_kinds = set()
    for drill in drills:
        assert drill.family == d.IMAGE_IN and drill.picture is not None and drill.picture.jitter > 0
        (kind,) = [k for k, questions in d.PICTURE_QUESTIONS.items() if drill.words in questions]
        assert kind != "music" and d.picture_answer(kind, drill.picture) == (drill.answer, None)
        asked_kinds.add(kind)
    assert asked_kinds == set(d.PICTURE_DRILL_KINDS) == set(d.PICTURE_QUESTIONS) - {"music"}
    assert {x.picture.shape for x in drills} == set(d.SHAPES)  # every shape, colour and background is drilled
    assert {x.picture.colour for x in drills} == set(d.SHAPE_COLOURS)
    assert {x.picture.background for x in drills} == set(d.BACKGROUNDS)
    assert len({x.picture for x in drills}) > 1900  # nearly every picture is new (jitter seeds)
    assert 0.45 < sum(x.transcript_form for x in drills) / len(drills) < 0.55
    with pytest.raises(ValueError):
        d.picture_drills(-1, seed=0)
    with pytest.raises(ValueError, match="jitter"):
        d.Drill(d.IMAGE_IN, "what shape is it", "it is a star", False, picture=ImageSpec("star", "red"))


def test_draw_replies_with_the_canonical_picture(dialogues):
    for dialogue in by_family(dialogues, d.DRAW):
        ((user, reply),) = dialogue.turns
        spec = reply.image
        assert spec is not None and spec.jitter == 0 and reply.music is None and user.image is None
        asked = user.words.split(" ")
        assert spec.colour in asked and spec.shape in asked
        assert spec.size == (next((w for w in asked if w in ("small", "big")), DEFAULT_SIZE))
        assert spec.background == (
            asked[asked.index("background") - 1] if "background" in asked else DEFAULT_BACKGROUND
        )
        assert reply.text.startswith("here is a") and user.words.endswith(reply.text.removeprefix("here is "))
    assert d.image_phrase(ImageSpec("circle", "orange")) == "an orange circle"


def test_play_fills_defaults_and_names_tempo_and_mode(dialogues):
    found = by_family(dialogues, d.PLAY)
    assert found
    for dialogue in found:
        ((user, reply),) = dialogue.turns
        music = reply.music
        assert music is not None and music.variant == 0 and reply.image is None
        asked = user.words.split(" ")
        assert music.tempo == next((w for w in asked if w in ("slow", "medium", "fast")), d.DEFAULT_TEMPO)
        assert music.mode == next((w for w in asked if w in ("major", "minor")), d.DEFAULT_MODE)
        assert music.timbre == (asked[-1] if "the" in asked else DEFAULT_TIMBRE)
        assert music.register == (asked[asked.index("notes") - 1] if "notes" in asked else DEFAULT_REGISTER)
        assert reply.text.split(" ")[3:5] == [music.tempo, music.mode]


def test_image_in_answers_describe_the_users_picture(dialogues):
    found = by_family(dialogues, d.IMAGE_IN)
    kinds = set()
    for dialogue in found:
        ((user, reply),) = dialogue.turns
        spec = user.image
        assert spec is not None and spec.jitter > 0 and reply.image is None
        kind = next(k for k, qs in d.PICTURE_QUESTIONS.items() if user.words in qs)
        kinds.add(kind)
        expected = {
            "describe": spec.words(),
            "colour": f"it is {spec.colour}",
            "shape": f"it is a {spec.shape}",
            "background": f"the background is {spec.background}",
            "size": f"it is {spec.size}",
        }
        if kind == "music":
            assert reply.music == d.picture_music(spec)
        else:
            assert reply.text == expected[kind] and reply.music is None
    assert kinds == set(d.PICTURE_QUESTIONS)


def test_picture_music_mapping_is_the_documented_one():
    assert d.picture_music(ImageSpec("circle", "red", "black", "small")) == MusicSpec("slow", "major", "low", "flute")
    assert d.picture_music(ImageSpec("star", "blue", "white", "big")) == MusicSpec("fast", "minor", "high", "piano")
    tunes = {
        d.picture_music(ImageSpec(s, c, g, z))
        for s in ("circle", "square", "triangle")
        for c in ("red", "blue")
        for g in ("white", "gray", "black")
        for z in ("big", "small")
    }
    assert len(tunes) == 3 * 2 * 3 * 2


def test_multi_output_replies_with_picture_and_tune(dialogues):
    found = by_family(dialogues, d.MULTI_OUTPUT)
    orders = set()
    for dialogue in found:
        ((user, reply),) = dialogue.turns
        assert reply.image is not None and reply.music is not None
        assert f"{reply.image.colour} {reply.image.shape}" in reply.text
        assert f"{reply.music.tempo} {reply.music.mode} tune" in reply.text
        orders.add(next(w for w in user.words.split(" ") if w in ("draw", "play")))
    assert orders == {"draw", "play"}


# Phrasings ----------------------------------------------------------------------------------------------------------

MAX_WORDS = 14  # the longest sentence before the paraphrases ("i want to hear a fast minor tune with ...")


def family_dialogues(family, n=400, seed=11):
    return d.generate_dialogues(n, seed=seed, voices=(), spoken_fraction=0.0, families=(family,))


def split_prefix(words, prefixes):
    """('please draw me', 'a red circle'): the longest of ``prefixes`` that ``words`` starts with ('' counts)."""
    prefix = max((p for p in prefixes if not p or words.startswith(p + " ")), key=len)
    return prefix, words.removeprefix(prefix).lstrip(" ")


OPERATOR_WORDS = {
    "plus": "plus",
    "add": "plus",
    "minus": "minus",
    "take": "minus",
    "subtract": "minus",
    "times": "times",
    "multiply": "times",
    "multiplied": "times",
}


def parse_question(words):
    """An arithmetic question read on its own: (op, a, b) from its operator word and the order of its numbers."""
    tokens = words.split(" ")
    (op,) = {OPERATOR_WORDS[w] for w in tokens if w in OPERATOR_WORDS}
    numbers = [NUMBER[w] for w in tokens if w in NUMBER]
    assert len(numbers) == 2, words
    if "from" in tokens:  # "take b away from a", "subtract b from a"
        numbers.reverse()
    return op, *numbers


def phrasing(family, user, reply):
    """What is left of a question once the content its reply depends on is taken out."""
    words = user.words
    if family == d.ARITHMETIC:
        return " ".join("N" if w in NUMBER else w for w in words.split(" "))
    if family in (d.FACTS, d.SMALL_TALK):
        table = d.FACTS_TABLE if family == d.FACTS else d.SMALL_TALK_TABLE
        return next(questions.index(words) for questions, _ in table if words in questions)
    if family == d.SAY:
        return words.removesuffix(" " + reply.text)
    if family == d.DRAW:
        return split_prefix(words, d.DRAW_PREFIXES)[0]
    if family == d.PLAY:
        return split_prefix(words, d.PLAY_PREFIXES)[0]
    if family == d.MULTI_OUTPUT:
        tokens = words.split(" ")
        return " ".join(tokens[: next(k for k, w in enumerate(tokens) if w in ("draw", "play")) + 1])
    return words  # image_in (the reply depends on the picture) and follow_up: the whole question


def test_every_family_asks_in_several_phrasings():
    for family in d.FAMILIES:
        found = family_dialogues(family)
        forms = {phrasing(family, *x.turns[-1]) for x in found}
        assert len(forms) > 1, family
    arithmetic = {phrasing(d.ARITHMETIC, *x.turns[0]) for x in family_dialogues(d.ARITHMETIC)}
    assert arithmetic == {
        " ".join("N" if w.startswith("{") else w for w in template.split(" "))
        for templates in d.OPERATORS.values()
        for template in templates
    }  # every template is drawn
    assert {phrasing(d.DRAW, *x.turns[0]) for x in family_dialogues(d.DRAW)} == set(d.DRAW_PREFIXES)
    assert {phrasing(d.PLAY, *x.turns[0]) for x in family_dialogues(d.PLAY)} == set(d.PLAY_PREFIXES)
    assert {phrasing(d.SAY, *x.turns[0]) for x in family_dialogues(d.SAY)} == set(d.SAY_PREFIXES)
    assert {phrasing(d.FACTS, *x.turns[0]) for x in family_dialogues(d.FACTS)} == {0, 1, 2, 3}
    multi = {phrasing(d.MULTI_OUTPUT, *x.turns[0]) for x in family_dialogues(d.MULTI_OUTPUT)}
    assert multi == {f"{p} {w}".lstrip(" ") for p in d.MULTI_OUTPUT_PREFIXES for w in ("draw", "play")}
    assert all(len(qs) >= 2 for table in (d.FACTS_TABLE, d.SMALL_TALK_TABLE) for qs, _ in table)
    assert all(len(qs) >= 2 for qs in d.PICTURE_QUESTIONS.values())


def test_every_user_sentence_is_plain_words_and_short():
    for family in d.FAMILIES:
        for dialogue in family_dialogues(family, n=300):
            for user, _ in dialogue.turns:
                d._check_sentence(user.words)
                assert len(user.words.split(" ")) <= MAX_WORDS, user.words
    for sentence in d.all_spoken_sentences():
        d._check_sentence(sentence)
        assert len(sentence.split(" ")) <= MAX_WORDS, sentence
    with pytest.raises(ValueError):
        d._check_sentence("what's six plus three")


def test_every_arithmetic_phrasing_is_answered_by_the_sum_it_asks():
    for op, a, b in d.arithmetic_problems():
        for template in d.OPERATORS[op]:
            words = template.format(a=d.NUMBER_WORDS[a], b=d.NUMBER_WORDS[b])
            assert parse_question(words) == (op, a, b), words
    for dialogue in family_dialogues(d.ARITHMETIC):
        ((user, reply),) = dialogue.turns
        assert reply.text == d.arithmetic_answer(*parse_question(user.words))
    assert parse_question("take three away from seven") == ("minus", 7, 3)
    assert d.arithmetic_answer(*parse_question("what do you get when you take three away from seven")) == (
        "seven minus three is four"
    )


def test_questions_are_not_ambiguous():
    tables = [qs for qs, _ in d.FACTS_TABLE] + [qs for qs, _ in d.SMALL_TALK_TABLE] + list(d.PICTURE_QUESTIONS.values())
    questions = [q for qs in tables for q in qs]
    assert len(set(questions)) == len(questions)  # no question in two rows (or twice in one)
    # single-turn requests without a picture: a question always gets the same reply, whatever its family
    replies = {}
    for family in (d.ARITHMETIC, d.FACTS, d.SMALL_TALK, d.SAY, d.DRAW, d.PLAY, d.MULTI_OUTPUT):
        for dialogue in family_dialogues(family, n=500, seed=3):
            ((user, reply),) = dialogue.turns
            assert replies.setdefault(user.words, reply) == reply, user.words


def test_a_paraphrased_request_gets_the_reply_of_the_plain_one():
    """draw / play / say / multi_output: the reply depends on what follows the request form, never on the form."""
    forms = {
        d.DRAW: d.DRAW_PREFIXES,
        d.PLAY: d.PLAY_PREFIXES,
        d.SAY: d.SAY_PREFIXES,
        d.MULTI_OUTPUT: d.MULTI_OUTPUT_PREFIXES,
    }
    plain = {d.DRAW: "draw", d.PLAY: "play", d.SAY: "say", d.MULTI_OUTPUT: ""}
    for family, prefixes in forms.items():
        replies, asked_as = {}, collections.defaultdict(set)
        for dialogue in family_dialogues(family, n=1500, seed=5):
            ((user, reply),) = dialogue.turns
            form, content = split_prefix(user.words, prefixes)
            assert replies.setdefault(content, reply) == reply, user.words
            asked_as[content].add(form)
        # the same request asked plainly and in another form: one reply
        assert any(plain[family] in f and len(f) > 1 for f in asked_as.values()), family
    paraphrases = {q: a for table in (d.FACTS_TABLE, d.SMALL_TALK_TABLE) for qs, a in table for q in qs}
    cow = ("what does a cow say", "what sound does a cow make", "tell me what sound a cow makes")
    assert {paraphrases[q] for q in cow} == {"a cow says moo"}
    assert paraphrases["tell me the capital of japan"] == paraphrases["what is the capital of japan"]
    assert paraphrases["tell me how old you are"] == paraphrases["how old are you"] == "i am very young"


def test_follow_ups_refer_to_the_previous_turn(dialogues):
    seen = collections.Counter()
    for dialogue in by_family(dialogues, d.FOLLOW_UP):
        for (_, before), (user, reply) in itertools.pairwise(dialogue.turns):
            words = user.words
            if words in d.SAY_AGAIN_QUESTIONS:
                seen["again"] += 1
                assert reply.text == before.text and before.image is None and reply.music is None
            elif (
                " that " in f" {words} "
                or words.startswith("now ")
                and words.split(" ")[1] in ("plus", "minus", "times")
            ):
                seen["arithmetic"] += 1
                assert check_arithmetic(reply.text)[1] == check_arithmetic(before.text)[3]
            elif words.startswith("now make it") or words.startswith("now put it"):
                if before.image is not None:
                    seen["drawing"] += 1
                    changed = [
                        f
                        for f in ("shape", "colour", "background", "size")
                        if getattr(before.image, f) != getattr(reply.image, f)
                    ]
                    assert len(changed) == 1 and getattr(reply.image, changed[0]) in words
                else:
                    seen["tune"] += 1
                    old, new = before.music, reply.music
                    if words.endswith("faster"):
                        assert new.bpm > old.bpm and new.mode == old.mode
                    elif words.endswith("slower"):
                        assert new.bpm < old.bpm
                    else:
                        assert new.mode != old.mode and new.tempo == old.tempo
            elif words.startswith("now play it on the"):
                seen["tune"] += 1
                assert reply.music.timbre == words.split(" ")[-1] and reply.music.tempo == before.music.tempo
            elif words.startswith("and "):
                seen["picture"] += 1
                picture = dialogue.turns[0][0].image
                assert user.image is None and picture is not None
                assert reply.text in (
                    picture.words(),
                    f"it is {picture.colour}",
                    f"it is a {picture.shape}",
                    f"the background is {picture.background}",
                    f"it is {picture.size}",
                ) or reply.music == d.picture_music(picture)
            else:
                raise AssertionError(f"unexpected follow-up {words!r}")
    assert set(seen) == {"again", "arithmetic", "drawing", "tune", "picture"}


def test_spoken_sentences_lists_spoken_questions_and_all_replies():
    dialogues = d.generate_dialogues(200, seed=2, voices=VOICES, spoken_fraction=0.5)
    sentences = set(d.spoken_sentences(dialogues))
    for dialogue in dialogues:
        for user, reply in dialogue.turns:
            assert reply.text in sentences
            if user.spoken:
                assert user.words in sentences


def test_specs_are_validated():
    with pytest.raises(ValueError):
        d.UserTurnSpec("hello", spoken=True)
    with pytest.raises(ValueError):
        d.UserTurnSpec("Hello there", spoken=False)
    with pytest.raises(ValueError):
        d.UserTurnSpec("what is this", spoken=False, image=ImageSpec("circle", "red"))
    with pytest.raises(ValueError):
        d.ReplySpec(None, "six plus 3 is nine")
    with pytest.raises(ValueError):  # a typed turn has no transcript
        d.Dialogue(d.SMALL_TALK, ((d.UserTurnSpec("hello", spoken=False), d.ReplySpec("hello", "hi")),))
