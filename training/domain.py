"""The synthesized AnyGPT-style instruction set: task families and a seeded dialogue generator.

Every sentence is lower-case words only (no punctuation, numbers spelled out), because spoken sentences are judged by
pocketsphinx with a JSGF grammar of the domain's sentences: each word must be in pocketsphinx's bundled en-us
dictionary (checked by ``tests/training/test_domain.py``).

Families (``Dialogue.family``):

- ``arithmetic``: plus, minus, times on small numbers in nine phrasings each ("what does six plus three make", "take
  three away from six", "multiply six by three"); answer "six plus three is nine" whatever the phrasing.
  Operands and results stay in zero..twenty and are never negative.
- ``facts``: a fixed table of ~40 facts (colours, capitals, animal sounds, counts, opposites), two to four
  paraphrases of each question ("what does a cow say", "tell me what sound a cow makes").
- ``small_talk``: greetings and small talk, again with paraphrases sharing one reply.
- ``say``: "say ..." / "repeat after me ..." / "can you say ..." and a few more; the reply is the phrase. Phrases
  come from a compositional pool of a few thousand distinct sentences (``say_phrases()``).
- ``draw``: "draw a red circle" (or "show me a picture of ...", "i would like ...") -> "here is a red circle" + the
  canonical image (``ImageSpec`` with jitter 0). Unspecified size and background take ``specs.DEFAULT_SIZE`` /
  ``specs.DEFAULT_BACKGROUND``.
- ``play``: "play a fast minor tune" -> "here is a fast minor tune" + the canonical clip (``MusicSpec`` variant 0).
  Unspecified tempo and mode take ``DEFAULT_TEMPO`` / ``DEFAULT_MODE`` (this module), register and timbre the
  defaults in ``specs``. The reply always names tempo and mode, and register and timbre when the user named them.
- ``image_in``: the user turn carries a picture (``ImageSpec`` with jitter > 0) and a question about it; "play music
  for this picture" answers with ``picture_music(spec)`` (a fixed mapping documented there).
- ``multi_output``: one request for a picture and a tune: "can you draw a blue star and play a slow tune" ->
  "here is a blue star and a slow major tune" + image + music.
- ``follow_up``: two or three turns; later turns refer to the previous one ("and what is that times two",
  "now make it green", "now make it faster", "say that again", "and what colour is the background").

Every reply is spoken (the text reply read aloud by the assistant voice); ``ReplySpec.transcript`` is the user's words
when the user spoke and None when the user typed.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from training.specs import (
    BACKGROUNDS,
    DEFAULT_BACKGROUND,
    DEFAULT_REGISTER,
    DEFAULT_SIZE,
    DEFAULT_TIMBRE,
    MODES,
    SHAPE_COLOURS,
    SHAPES,
    SIZES,
    TEMPOS_BPM,
    TIMBRES,
    ImageSpec,
    MusicSpec,
    Voice,
)

# Defaults for music attributes a request leaves out ("play a tune") that specs gives no default for.
DEFAULT_TEMPO = "medium"
DEFAULT_MODE = "major"

NUMBER_WORDS: tuple[str, ...] = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
)
MAX_NUMBER = len(NUMBER_WORDS) - 1  # every operand and result is in 0..MAX_NUMBER

ARITHMETIC = "arithmetic"
FACTS = "facts"
SMALL_TALK = "small_talk"
SAY = "say"
DRAW = "draw"
PLAY = "play"
IMAGE_IN = "image_in"
MULTI_OUTPUT = "multi_output"
FOLLOW_UP = "follow_up"
SINGLE_TURN_FAMILIES: tuple[str, ...] = (ARITHMETIC, FACTS, SMALL_TALK, SAY, DRAW, PLAY, IMAGE_IN, MULTI_OUTPUT)
FAMILIES: tuple[str, ...] = (*SINGLE_TURN_FAMILIES, FOLLOW_UP)
# Relative frequency of the single-turn families in a training set (follow_up is set by multi_turn_fraction).
TRAIN_WEIGHTS: dict[str, float] = {
    ARITHMETIC: 0.20,
    FACTS: 0.10,
    SMALL_TALK: 0.06,
    SAY: 0.20,
    DRAW: 0.12,
    PLAY: 0.08,
    IMAGE_IN: 0.14,
    MULTI_OUTPUT: 0.10,
}
# Families whose first turn a follow_up dialogue may start with.
FOLLOW_UP_BASES: tuple[str, ...] = (ARITHMETIC, FACTS, SMALL_TALK, SAY, DRAW, PLAY, IMAGE_IN)

SPEED_JITTER = 0.12  # a spoken question's speed is the voice's base speed times U(1 - j, 1 + j)
MAX_PITCH = 99  # espeak-ng's pitch range is 0..99
MAX_JITTER_SEED = 9999  # user pictures get ImageSpec.jitter in 1..MAX_JITTER_SEED


# --------------------------------------------------------------------------------------------------------------------
# Dialogue data
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserTurnSpec:
    """One user turn: ``words`` spoken (by ``voice`` at ``speed`` words per minute) or typed, optionally with
    a picture."""

    words: str
    spoken: bool
    voice: Voice | None = None
    speed: int | None = None
    image: ImageSpec | None = None

    def __post_init__(self) -> None:
        _check_sentence(self.words)
        if self.spoken and (self.voice is None or self.speed is None):
            raise ValueError("a spoken turn needs a voice and a speed")
        if not self.spoken and (self.voice is not None or self.speed is not None):
            raise ValueError("a typed turn has no voice or speed")
        if self.image is not None and self.image.jitter == 0:
            raise ValueError("a user's picture has jitter > 0 (jitter 0 is the canonical rendering of replies)")


@dataclass(frozen=True)
class ReplySpec:
    """The assistant's reply: ``transcript`` of a spoken question (None for typed ones), the text reply (also spoken,
    read by the assistant voice), and optionally a picture and a tune."""

    transcript: str | None
    text: str
    image: ImageSpec | None = None
    music: MusicSpec | None = None

    def __post_init__(self) -> None:
        _check_sentence(self.text)
        if self.transcript is not None:
            _check_sentence(self.transcript)


@dataclass(frozen=True)
class Dialogue:
    family: str
    turns: tuple[tuple[UserTurnSpec, ReplySpec], ...]

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown family {self.family!r}; known: {', '.join(FAMILIES)}")
        if not self.turns:
            raise ValueError("a dialogue needs at least one turn")
        for user, reply in self.turns:
            expected = user.words if user.spoken else None
            if reply.transcript != expected:
                raise ValueError(
                    f"transcript {reply.transcript!r} does not match the user turn (expected {expected!r})"
                )


def _check_sentence(sentence: str) -> None:
    words = sentence.split(" ")
    if not sentence or any(not w or not w.isalpha() or not w.islower() or not w.isascii() for w in words):
        raise ValueError(f"a sentence is lower-case ascii words separated by single spaces, got {sentence!r}")


# --------------------------------------------------------------------------------------------------------------------
# Phrases of pictures and tunes
# --------------------------------------------------------------------------------------------------------------------


def _with_article(words: list[str]) -> str:
    article = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([article, *words])


def image_phrase(spec: ImageSpec, *, size: bool = False, background: bool = False) -> str:
    """'a red circle', 'a small red circle on a gray background' (size and background only when asked for)."""
    words = ([spec.size] if size else []) + [spec.colour, spec.shape]
    if background:
        words += ["on", "a", spec.background, "background"]
    return _with_article(words)


def music_phrase(
    spec: MusicSpec, *, tempo: bool = True, mode: bool = True, register: bool = False, timbre: bool = False
) -> str:
    """'a fast minor tune', 'a slow tune with low notes on the flute' (each attribute only when asked for)."""
    words = ([spec.tempo] if tempo else []) + ([spec.mode] if mode else []) + ["tune"]
    if register:
        words += ["with", spec.register, "notes"]
    if timbre:
        words += ["on", "the", spec.timbre]
    return _with_article(words)


# "play music for this picture": each picture attribute sets one music attribute.
PICTURE_TEMPO: dict[str, str] = {"circle": "slow", "square": "medium", "triangle": "fast", "star": "fast"}
PICTURE_MODE: dict[str, str] = {
    "red": "major",
    "yellow": "major",
    "orange": "major",
    "green": "minor",
    "blue": "minor",
    "purple": "minor",
}
PICTURE_REGISTER: dict[str, str] = {"white": "high", "gray": "middle", "black": "low"}
PICTURE_TIMBRE: dict[str, str] = {"big": "piano", "small": "flute"}


def picture_music(spec: ImageSpec) -> MusicSpec:
    """The tune for a picture: shape -> tempo (circle slow, square medium, triangle and star fast), colour -> mode
    (red, yellow, orange major; green, blue, purple minor), background -> register (white high, gray middle, black
    low), size -> timbre (big piano, small flute)."""
    return MusicSpec(
        tempo=PICTURE_TEMPO[spec.shape],
        mode=PICTURE_MODE[spec.colour],
        register=PICTURE_REGISTER[spec.background],
        timbre=PICTURE_TIMBRE[spec.size],
    )


# --------------------------------------------------------------------------------------------------------------------
# Tables (question templates, answers, phrase pools)
# --------------------------------------------------------------------------------------------------------------------

# Question templates per operator, drawn uniformly; each asks "{a} op {b}" ("take {b} away from {a}" is a minus b) and
# is answered by ``arithmetic_answer``. No "what's": a sentence is letters only, without apostrophes.
OPERATORS: dict[str, tuple[str, ...]] = {
    "plus": (
        "what is {a} plus {b}",
        "how much is {a} plus {b}",
        "what does {a} plus {b} make",
        "can you tell me what {a} plus {b} is",
        "{a} plus {b}",
        "add {a} and {b}",
        "please add {a} and {b}",
        "can you add {a} and {b}",
        "what do you get when you add {a} and {b}",
    ),
    "minus": (
        "what is {a} minus {b}",
        "how much is {a} minus {b}",
        "what does {a} minus {b} make",
        "can you tell me what {a} minus {b} is",
        "{a} minus {b}",
        "take {b} away from {a}",
        "subtract {b} from {a}",
        "please subtract {b} from {a}",
        "what do you get when you take {b} away from {a}",
    ),
    "times": (
        "what is {a} times {b}",
        "how much is {a} times {b}",
        "what does {a} times {b} make",
        "can you tell me what {a} times {b} is",
        "{a} times {b}",
        "multiply {a} by {b}",
        "please multiply {a} by {b}",
        "what is {a} multiplied by {b}",
        "what do you get when you multiply {a} by {b}",
    ),
}


def apply_operator(op: str, a: int, b: int) -> int:
    if op == "plus":
        return a + b
    if op == "minus":
        return a - b
    if op == "times":
        return a * b
    raise ValueError(f"unknown operator {op!r}")


def arithmetic_answer(op: str, a: int, b: int) -> str:
    """'six plus three is nine'."""
    return f"{NUMBER_WORDS[a]} {op} {NUMBER_WORDS[b]} is {NUMBER_WORDS[apply_operator(op, a, b)]}"


@functools.cache
def arithmetic_problems() -> tuple[tuple[str, int, int], ...]:
    """Every (operator, a, b) the set asks: plus and times with operands 0..10, minus with a <= 20 and b <= min(a, 10);
    results in 0..20."""
    out = []
    for op in OPERATORS:
        for a in range(MAX_NUMBER + 1):
            for b in range(11):
                if op != "minus" and a > 10:
                    continue
                if 0 <= apply_operator(op, a, b) <= MAX_NUMBER:
                    out.append((op, a, b))
    return tuple(out)


_CAPITALS = (
    ("france", "paris"),
    ("japan", "tokyo"),
    ("italy", "rome"),
    ("germany", "berlin"),
    ("spain", "madrid"),
    ("england", "london"),
    ("egypt", "cairo"),
    ("canada", "ottawa"),
    ("russia", "moscow"),
    ("china", "beijing"),
    ("greece", "athens"),
)
_ANIMAL_SOUNDS = (
    ("a dog", "woof"),
    ("a cat", "meow"),
    ("a cow", "moo"),
    ("a duck", "quack"),
    ("a sheep", "baa"),
    ("an owl", "hoot"),
    ("a lion", "roar"),
    ("a snake", "hiss"),
    ("a frog", "ribbit"),
)
_OPPOSITES = (("hot", "cold"), ("up", "down"), ("big", "small"), ("day", "night"))

# (paraphrases of one question, its answer); a question is asked in any of its phrasings, drawn uniformly.
FACTS_TABLE: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        (
            "what colour is the sky",
            "what colour is the sky on a sunny day",
            "what is the colour of the sky",
            "tell me the colour of the sky",
        ),
        "the sky is blue",
    ),
    (
        (
            "what colour is the grass",
            "what colour is grass",
            "what is the colour of grass",
            "tell me the colour of grass",
        ),
        "the grass is green",
    ),
    (("what colour is snow", "what colour is the snow", "what is the colour of snow"), "snow is white"),
    (
        ("what colour is the sun", "what is the colour of the sun", "tell me the colour of the sun"),
        "the sun is yellow",
    ),
    (
        ("what colour is a banana", "what colour are bananas", "what is the colour of a banana"),
        "a banana is yellow",
    ),
    (("what colour is a tomato", "what is the colour of a tomato"), "a tomato is red"),
    (("what colour is milk", "what is the colour of milk", "tell me the colour of milk"), "milk is white"),
    (("what colour is coal", "what is the colour of coal"), "coal is black"),
    *(
        (
            (
                f"what is the capital of {country}",
                f"which city is the capital of {country}",
                f"tell me the capital of {country}",
                f"what is the capital city of {country}",
            ),
            f"the capital of {country} is {city}",
        )
        for country, city in _CAPITALS
    ),
    *(
        (
            (f"what does {animal} say", f"what sound does {animal} make", f"tell me what sound {animal} makes"),
            f"{animal} says {sound}",
        )
        for animal, sound in _ANIMAL_SOUNDS
    ),
    (
        (
            "how many days are in a week",
            "how many days does a week have",
            "how many days are there in a week",
            "tell me how many days are in a week",
        ),
        "there are seven days in a week",
    ),
    (
        (
            "how many months are in a year",
            "how many months does a year have",
            "how many months are there in a year",
            "tell me how many months are in a year",
        ),
        "there are twelve months in a year",
    ),
    (
        ("how many legs does a spider have", "how many legs has a spider", "tell me how many legs a spider has"),
        "a spider has eight legs",
    ),
    (
        ("how many legs does a dog have", "how many legs has a dog", "tell me how many legs a dog has"),
        "a dog has four legs",
    ),
    (
        ("how many legs does a bird have", "how many legs has a bird", "tell me how many legs a bird has"),
        "a bird has two legs",
    ),
    (
        (
            "how many wheels does a bike have",
            "how many wheels does a bicycle have",
            "how many wheels has a bike",
            "tell me how many wheels a bike has",
        ),
        "a bike has two wheels",
    ),
    (
        ("how many wheels does a car have", "how many wheels has a car", "tell me how many wheels a car has"),
        "a car has four wheels",
    ),
    *(
        (
            (
                f"what is the opposite of {word}",
                f"tell me the opposite of {word}",
                f"can you tell me the opposite of {word}",
            ),
            f"the opposite of {word} is {opposite}",
        )
        for word, opposite in _OPPOSITES
    ),
    (
        ("which animal gives us milk", "what animal gives us milk", "tell me which animal gives us milk"),
        "the cow gives us milk",
    ),
    (("where do fish live", "where does a fish live", "tell me where fish live"), "fish live in water"),
    (("what do bees make", "what does a bee make", "tell me what bees make"), "bees make honey"),
)

SMALL_TALK_TABLE: tuple[tuple[tuple[str, ...], str], ...] = (
    (("hello", "hi", "hello there", "hi there"), "hello how can i help you"),
    (("good morning", "good morning to you"), "good morning how can i help you"),
    (("good evening", "good evening to you"), "good evening how can i help you"),
    (("good night", "i am going to bed"), "good night sleep well"),
    (("how are you", "how are you today", "how is it going"), "i am fine thank you"),
    (("what is your name", "who are you", "tell me your name"), "i am your voice assistant"),
    (("thank you", "thanks", "thank you very much", "thanks a lot"), "you are welcome"),
    (("goodbye", "bye", "see you later", "bye bye"), "goodbye have a nice day"),
    (
        ("what can you do", "how can you help me", "what can you help me with"),
        "i can talk and draw pictures and play music",
    ),
    (("are you a robot", "are you a person", "are you a computer"), "i am a computer program"),
    (("do you like music", "do you love music"), "yes i love music"),
    (("i am happy", "i feel good", "i am very happy", "i feel great"), "that is great to hear"),
    (("i am sad", "i feel bad", "i am very sad", "i feel sad"), "i am sorry to hear that"),
    (("where do you live", "where are you from"), "i live in this computer"),
    (("how old are you", "tell me how old you are"), "i am very young"),
    (("can you hear me", "are you there", "do you hear me", "hello are you there"), "yes i can hear you"),
)

SAY_PREFIXES: tuple[str, ...] = (
    "say",
    "please say",
    "repeat after me",
    "can you say",
    "could you say",
    "please repeat",
)

_SAY_ADJECTIVES = ("little", "big", "happy", "old", "young", "brown", "lazy", "tiny")
_SAY_ANIMALS = ("dog", "cat", "bird", "horse", "cow", "fish", "duck", "mouse", "sheep", "frog", "rabbit", "bear")
_SAY_ANIMAL_ACTIONS = (
    "runs in the park",
    "sleeps on the bed",
    "sits by the door",
    "jumps over the fence",
    "eats an apple",
    "plays in the garden",
    "swims in the lake",
    "looks at the moon",
    "hides under the table",
    "sings a song",
    "drinks some water",
    "waits for the bus",
    "climbs the hill",
    "likes the rain",
    "lives near the river",
    "walks in the snow",
)
_SAY_PEOPLE = (
    "my friend",
    "my mother",
    "my father",
    "my sister",
    "my brother",
    "the teacher",
    "the doctor",
    "our cook",
)
_SAY_PERSON_ACTIONS = (
    "reads a book",
    "cooks dinner",
    "cleans the kitchen",
    "drives the car",
    "writes a letter",
    "opens the window",
    "buys some bread",
    "paints the wall",
    "plays the piano",
    "visits the farm",
    "bakes a cake",
    "feeds the cat",
)
_SAY_TIMES = (
    "every morning",
    "on sunday",
    "at night",
    "after lunch",
    "in the summer",
    "before breakfast",
    "every day",
    "on monday",
)
_SAY_WEATHER = ("sunny", "cold", "warm", "windy", "rainy", "cloudy", "quiet", "dark")
_SAY_WHEN = ("today", "tonight", "this morning", "outside", "in the city", "at the beach")
_SAY_FOODS = ("apples", "bananas", "eggs", "cookies", "oranges", "carrots", "potatoes", "sandwiches")
_SAY_FOOD_COUNTS = ("two", "three", "four", "five", "some", "many")


@functools.cache
def say_phrases() -> tuple[str, ...]:
    """The pool of phrases for "say ..." / "repeat after me ...": a few thousand distinct sentences."""
    out = [
        f"the {adj} {animal} {action}"
        for adj in _SAY_ADJECTIVES
        for animal in _SAY_ANIMALS
        for action in _SAY_ANIMAL_ACTIONS
    ]
    out += [
        f"{person} {action} {time}" for person in _SAY_PEOPLE for action in _SAY_PERSON_ACTIONS for time in _SAY_TIMES
    ]
    out += [f"it is {weather} {when}" for weather in _SAY_WEATHER for when in _SAY_WHEN]
    out += [f"i would like {count} {food} please" for count in _SAY_FOOD_COUNTS for food in _SAY_FOODS]
    return tuple(out)


DRAW_PREFIXES: tuple[str, ...] = (
    "draw",
    "please draw",
    "can you draw",
    "show me",
    "make a picture of",
    "draw me",
    "please draw me",
    "could you draw",
    "show me a picture of",
    "i would like",
)
PLAY_PREFIXES: tuple[str, ...] = (
    "play",
    "please play",
    "can you play",
    "play me",
    "i want to hear",
    "could you play",
    "please play me",
)
# A two-part request ("draw ... and play ...") is asked plainly or behind one of these.
MULTI_OUTPUT_PREFIXES: tuple[str, ...] = ("", "please", "can you", "could you")
SAY_AGAIN_QUESTIONS: tuple[str, ...] = ("say that again", "please say that again", "repeat that", "can you repeat that")

# Questions about a user's picture, by kind.
PICTURE_QUESTIONS: dict[str, tuple[str, ...]] = {
    "describe": (
        "what is in this picture",
        "what do you see",
        "describe this picture",
        "what is this",
        "what is in the picture",
        "tell me what you see",
    ),
    "colour": ("what colour is the shape", "what colour is it", "what colour is this shape", "which colour is it"),
    "shape": ("what shape is this", "what shape do you see", "what shape is it", "which shape is this"),
    "background": (
        "what colour is the background",
        "which colour is the background",
        "tell me the colour of the background",
    ),
    "size": ("is the shape big or small", "is it big or small", "is this shape big or small"),
    "music": (
        "play music for this picture",
        "play a tune for this picture",
        "make music for this picture",
        "play a song for this picture",
    ),
}


def picture_answer(kind: str, spec: ImageSpec) -> tuple[str, MusicSpec | None]:
    """The answer to a picture question of ``kind`` (and the tune for kind "music")."""
    if kind == "describe":
        return spec.words(), None
    if kind == "colour":
        return f"it is {spec.colour}", None
    if kind == "shape":
        return f"it is a {spec.shape}", None
    if kind == "background":
        return f"the background is {spec.background}", None
    if kind == "size":
        return f"it is {spec.size}", None
    if kind == "music":
        music = picture_music(spec)
        return f"here is {music_phrase(music)} for this picture", music
    raise ValueError(f"unknown picture question kind {kind!r}")


def _all_images() -> list[ImageSpec]:
    return [
        ImageSpec(shape, colour, background, size)
        for shape in SHAPES
        for colour in SHAPE_COLOURS
        for background in BACKGROUNDS
        for size in SIZES
    ]


def _all_music() -> list[MusicSpec]:
    return [
        MusicSpec(tempo, mode, register, timbre)
        for tempo in TEMPOS_BPM
        for mode in MODES
        for register in ("low", "middle", "high")
        for timbre in TIMBRES
    ]


# --------------------------------------------------------------------------------------------------------------------
# One exchange (words + reply content) and what a follow-up can refer to
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ImageRequest:
    spec: ImageSpec
    size: bool  # the user named the size (so the reply names it too)
    background: bool

    def phrase(self) -> str:
        return image_phrase(self.spec, size=self.size, background=self.background)


@dataclass(frozen=True)
class _MusicRequest:
    spec: MusicSpec
    tempo: bool
    mode: bool
    register: bool
    timbre: bool

    def request_phrase(self) -> str:
        return music_phrase(self.spec, tempo=self.tempo, mode=self.mode, register=self.register, timbre=self.timbre)

    def reply_phrase(self) -> str:
        return music_phrase(self.spec, register=self.register, timbre=self.timbre)


@dataclass(frozen=True)
class _Exchange:
    words: str
    text: str
    image_in: ImageSpec | None = None
    image_out: ImageSpec | None = None
    music_out: MusicSpec | None = None
    # what a follow-up may refer to
    number: int | None = None  # the result of an arithmetic answer
    repeatable: bool = False  # a text-only reply "say that again" can repeat
    drawing: _ImageRequest | None = None
    tune: _MusicRequest | None = None
    picture: ImageSpec | None = None  # the user's picture (stays in the history)
    asked: frozenset[str] = field(default_factory=frozenset)  # picture questions asked so far


def _arithmetic(rng: random.Random) -> _Exchange:
    op, a, b = rng.choice(arithmetic_problems())
    words = rng.choice(OPERATORS[op]).format(a=NUMBER_WORDS[a], b=NUMBER_WORDS[b])
    return _Exchange(words, arithmetic_answer(op, a, b), number=apply_operator(op, a, b), repeatable=True)


def _facts(rng: random.Random) -> _Exchange:
    questions, answer = rng.choice(FACTS_TABLE)
    return _Exchange(rng.choice(questions), answer, repeatable=True)


def _small_talk(rng: random.Random) -> _Exchange:
    questions, answer = rng.choice(SMALL_TALK_TABLE)
    return _Exchange(rng.choice(questions), answer, repeatable=True)


def _say(rng: random.Random) -> _Exchange:
    phrase = rng.choice(say_phrases())
    return _Exchange(f"{rng.choice(SAY_PREFIXES)} {phrase}", phrase, repeatable=True)


def _random_drawing(rng: random.Random) -> _ImageRequest:
    size = rng.random() < 1 / 3
    background = rng.random() < 1 / 3
    spec = ImageSpec(
        shape=rng.choice(SHAPES),
        colour=rng.choice(SHAPE_COLOURS),
        background=rng.choice(BACKGROUNDS) if background else DEFAULT_BACKGROUND,
        size=rng.choice(SIZES) if size else DEFAULT_SIZE,
    )
    return _ImageRequest(spec, size, background)


def _random_tune(rng: random.Random, *, simple: bool = False) -> _MusicRequest:
    """A tune request; ``simple`` ones name at most tempo and mode (used inside two-part requests)."""
    tempo, mode = rng.random() < 0.8, rng.random() < 0.7
    register = not simple and rng.random() < 0.25
    timbre = not simple and rng.random() < 0.3
    spec = MusicSpec(
        tempo=rng.choice(tuple(TEMPOS_BPM)) if tempo else DEFAULT_TEMPO,
        mode=rng.choice(MODES) if mode else DEFAULT_MODE,
        register=rng.choice(("low", "high")) if register else DEFAULT_REGISTER,
        timbre=rng.choice(TIMBRES) if timbre else DEFAULT_TIMBRE,
    )
    return _MusicRequest(spec, tempo, mode, register, timbre)


def _draw(rng: random.Random) -> _Exchange:
    request = _random_drawing(rng)
    words = f"{rng.choice(DRAW_PREFIXES)} {request.phrase()}"
    return _Exchange(words, f"here is {request.phrase()}", image_out=request.spec, drawing=request)


def _play(rng: random.Random) -> _Exchange:
    request = _random_tune(rng)
    words = f"{rng.choice(PLAY_PREFIXES)} {request.request_phrase()}"
    return _Exchange(words, f"here is {request.reply_phrase()}", music_out=request.spec, tune=request)


def _image_in(rng: random.Random) -> _Exchange:
    picture = replace(rng.choice(_all_images()), jitter=rng.randint(1, MAX_JITTER_SEED))
    kind = rng.choice(tuple(PICTURE_QUESTIONS))
    text, music = picture_answer(kind, picture)
    return _Exchange(
        rng.choice(PICTURE_QUESTIONS[kind]),
        text,
        image_in=picture,
        music_out=music,
        repeatable=music is None,
        picture=picture,
        asked=frozenset({kind}),
    )


def _multi_output(rng: random.Random) -> _Exchange:
    drawing = _ImageRequest(ImageSpec(rng.choice(SHAPES), rng.choice(SHAPE_COLOURS)), False, False)
    tune = _random_tune(rng, simple=True)
    draw_words, play_words = f"draw {drawing.phrase()}", f"play {tune.request_phrase()}"
    if rng.random() < 0.5:
        words, text = f"{draw_words} and {play_words}", f"here is {drawing.phrase()} and {tune.reply_phrase()}"
    else:
        words, text = f"{play_words} and {draw_words}", f"here is {tune.reply_phrase()} and {drawing.phrase()}"
    words = f"{rng.choice(MULTI_OUTPUT_PREFIXES)} {words}".lstrip(" ")
    return _Exchange(words, text, image_out=drawing.spec, music_out=tune.spec)


_SINGLE_TURN = {
    ARITHMETIC: _arithmetic,
    FACTS: _facts,
    SMALL_TALK: _small_talk,
    SAY: _say,
    DRAW: _draw,
    PLAY: _play,
    IMAGE_IN: _image_in,
    MULTI_OUTPUT: _multi_output,
}

# follow-ups -------------------------------------------------------------------------------------------------------

FOLLOW_UP_ARITHMETIC: tuple[str, ...] = ("and what is that {op} {n}", "what is that {op} {n}", "now {op} {n}")
_TEMPO_ORDER = ("slow", "medium", "fast")


def _arithmetic_follow_ups(number: int) -> list[tuple[str, int, int]]:
    """(op, a, b) with a = the previous result; results stay in 0..20."""
    out = [("times", number, m) for m in (2, 3) if number * m <= MAX_NUMBER]
    out += [("plus", number, n) for n in range(1, 6) if number + n <= MAX_NUMBER]
    out += [("minus", number, n) for n in range(1, 6) if n <= number]
    return out


def _follow_up(previous: _Exchange, rng: random.Random) -> _Exchange | None:
    """A turn that refers to ``previous`` (None when nothing fits)."""
    options = []
    if previous.number is not None:
        options.append(_follow_arithmetic)
    if previous.repeatable:
        options.append(_follow_say_again)
    if previous.drawing is not None:
        options.append(_follow_drawing)
    if previous.tune is not None:
        options.append(_follow_tune)
    if previous.picture is not None and len(previous.asked) < len(PICTURE_QUESTIONS):
        options.append(_follow_picture)
    if not options:
        return None
    return rng.choice(options)(previous, rng)


def _follow_arithmetic(previous: _Exchange, rng: random.Random) -> _Exchange:
    op, a, b = rng.choice(_arithmetic_follow_ups(previous.number))
    words = rng.choice(FOLLOW_UP_ARITHMETIC).format(op=op, n=NUMBER_WORDS[b])
    return _Exchange(words, arithmetic_answer(op, a, b), number=apply_operator(op, a, b), repeatable=True)


def _follow_say_again(previous: _Exchange, rng: random.Random) -> _Exchange:
    return replace(previous, words=rng.choice(SAY_AGAIN_QUESTIONS), image_in=None)


def _drawing_changes(request: _ImageRequest) -> list[tuple[str, _ImageRequest]]:
    spec = request.spec
    out = [
        (f"now make it {c}", replace(request, spec=replace(spec, colour=c))) for c in SHAPE_COLOURS if c != spec.colour
    ]
    out += [(f"now make it a {s}", replace(request, spec=replace(spec, shape=s))) for s in SHAPES if s != spec.shape]
    out += [
        (f"now make it {z}", _ImageRequest(replace(spec, size=z), True, request.background))
        for z in SIZES
        if z != spec.size
    ]
    out += [
        (f"now put it on a {g} background", _ImageRequest(replace(spec, background=g), request.size, True))
        for g in BACKGROUNDS
        if g != spec.background
    ]
    return out


def _follow_drawing(previous: _Exchange, rng: random.Random) -> _Exchange:
    words, request = rng.choice(_drawing_changes(previous.drawing))
    return _Exchange(words, f"here is {request.phrase()}", image_out=request.spec, drawing=request)


def _tune_changes(request: _MusicRequest) -> list[tuple[str, _MusicRequest]]:
    spec = request.spec
    step = _TEMPO_ORDER.index(spec.tempo)
    out = []
    if step + 1 < len(_TEMPO_ORDER):
        out.append(("now make it faster", replace(request, spec=replace(spec, tempo=_TEMPO_ORDER[step + 1]))))
    if step > 0:
        out.append(("now make it slower", replace(request, spec=replace(spec, tempo=_TEMPO_ORDER[step - 1]))))
    other_mode = MODES[1 - MODES.index(spec.mode)]
    out.append((f"now make it {other_mode}", replace(request, spec=replace(spec, mode=other_mode))))
    out += [
        (f"now play it on the {t}", replace(request, spec=replace(spec, timbre=t), timbre=True))
        for t in TIMBRES
        if t != spec.timbre
    ]
    return out


def _follow_tune(previous: _Exchange, rng: random.Random) -> _Exchange:
    words, request = rng.choice(_tune_changes(previous.tune))
    return _Exchange(words, f"here is {request.reply_phrase()}", music_out=request.spec, tune=request)


def _follow_picture(previous: _Exchange, rng: random.Random) -> _Exchange:
    kind = rng.choice([k for k in PICTURE_QUESTIONS if k not in previous.asked])
    text, music = picture_answer(kind, previous.picture)
    return _Exchange(
        f"and {rng.choice(PICTURE_QUESTIONS[kind])}",
        text,
        music_out=music,
        repeatable=music is None,
        picture=previous.picture,
        asked=previous.asked | {kind},
    )


# --------------------------------------------------------------------------------------------------------------------
# Dialogues
# --------------------------------------------------------------------------------------------------------------------


def _utterance_speed(rng: random.Random, voice: Voice) -> int:
    speed = round(voice.speed * rng.uniform(1.0 - SPEED_JITTER, 1.0 + SPEED_JITTER))
    return max(80, min(450, speed))


def _utterance_voice(rng: random.Random, voice: Voice, pitch_jitter: int) -> Voice:
    if pitch_jitter <= 0:  # no draw at all, so sets made without jitter stay what they were
        return voice
    pitch = voice.pitch + rng.randint(-pitch_jitter, pitch_jitter)
    return replace(voice, pitch=max(0, min(MAX_PITCH, pitch)))


def _turn(
    exchange: _Exchange, rng: random.Random, voice: Voice | None, spoken_fraction: float, pitch_jitter: int
) -> tuple[UserTurnSpec, ReplySpec]:
    spoken = voice is not None and rng.random() < spoken_fraction
    user = UserTurnSpec(
        words=exchange.words,
        spoken=spoken,
        voice=_utterance_voice(rng, voice, pitch_jitter) if spoken else None,
        speed=_utterance_speed(rng, voice) if spoken else None,
        image=exchange.image_in,
    )
    reply = ReplySpec(exchange.words if spoken else None, exchange.text, exchange.image_out, exchange.music_out)
    return user, reply


def _exchanges(family: str, rng: random.Random) -> list[_Exchange]:
    if family != FOLLOW_UP:
        return [_SINGLE_TURN[family](rng)]
    exchanges = [_SINGLE_TURN[rng.choice(FOLLOW_UP_BASES)](rng)]
    n_turns = 2 if rng.random() < 0.7 else 3
    while len(exchanges) < n_turns:
        nxt = _follow_up(exchanges[-1], rng)
        if nxt is None:
            break
        exchanges.append(nxt)
    return exchanges


def generate_dialogues(
    n: int,
    *,
    seed: int,
    voices: Sequence[Voice],
    spoken_fraction: float = 0.8,
    multi_turn_fraction: float = 0.15,
    families: Sequence[str] | None = None,
    pitch_jitter: int = 0,
) -> list[Dialogue]:
    """``n`` dialogues, reproducible from ``seed``.

    families=None (training mix): a dialogue is ``follow_up`` with probability ``multi_turn_fraction``, else a
    single-turn family drawn with ``TRAIN_WEIGHTS``. families given (eval sets): the families take turns, so each
    gets n // len(families) dialogues (the first n % len(families) one more); ``multi_turn_fraction`` is unused.
    Each dialogue has one user voice (drawn from ``voices``); each turn is spoken with probability
    ``spoken_fraction`` at a speed drawn around that voice's base speed and, when ``pitch_jitter`` > 0, at a pitch
    drawn uniformly within that many espeak steps of the voice's own (a spoken turn's ``voice`` then carries the drawn
    pitch under the voice's name): more voices for the models to generalise from at no cost in synthesis.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= spoken_fraction <= 1.0 or not 0.0 <= multi_turn_fraction <= 1.0:
        raise ValueError("spoken_fraction and multi_turn_fraction must be in [0, 1]")
    if pitch_jitter < 0:
        raise ValueError(f"pitch_jitter must be >= 0, got {pitch_jitter}")
    if spoken_fraction > 0 and not voices:
        raise ValueError("spoken turns need at least one voice")
    if families is not None:
        unknown = [f for f in families if f not in FAMILIES]
        if unknown or not families:
            raise ValueError(f"families must be a non-empty subset of {FAMILIES}, got {list(families)}")
    rng = random.Random(seed)
    names, weights = list(TRAIN_WEIGHTS), list(TRAIN_WEIGHTS.values())
    out = []
    for k in range(n):
        if families is not None:
            family = families[k % len(families)]
        elif rng.random() < multi_turn_fraction:
            family = FOLLOW_UP
        else:
            family = rng.choices(names, weights)[0]
        voice = rng.choice(list(voices)) if voices else None
        turns = tuple(_turn(e, rng, voice, spoken_fraction, pitch_jitter) for e in _exchanges(family, rng))
        out.append(Dialogue(family, turns))
    return out


# Knowledge drills: the question-to-answer text of the knowledge families, without the speech around it -------------

# Families whose answers are facts to learn rather than words to copy or media to describe, and how often each is drawn.
DRILL_WEIGHTS: dict[str, float] = {ARITHMETIC: 0.7, FACTS: 0.2, SMALL_TALK: 0.1}


@dataclass(frozen=True)
class Drill:
    """One question and its text answer. ``transcript_form``: the answer follows ``<-Ins-> question <-Res->`` as in a
    spoken turn's reply; otherwise it follows the typed question directly, as in a typed turn's reply. ``picture``:
    the user's picture the question is about (sent with the question, as in an ``image_in`` turn)."""

    family: str
    words: str
    answer: str
    transcript_form: bool
    picture: ImageSpec | None = None

    def __post_init__(self) -> None:
        if self.picture is not None and self.picture.jitter == 0:
            raise ValueError("a user's picture has jitter > 0 (jitter 0 is the canonical rendering of replies)")


def _check_drill_count(n: int, transcript_fraction: float) -> None:
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= transcript_fraction <= 1.0:
        raise ValueError("transcript_fraction must be in [0, 1]")


def knowledge_drills(n: int, *, seed: int, transcript_fraction: float = 0.5) -> list[Drill]:
    """``n`` drills drawn with ``DRILL_WEIGHTS``, reproducible from ``seed``.

    Why: a dialogue costs the LM about 340 tokens (mostly speech codes) to teach one answer, so in a CPU-sized budget
    each of the 364 arithmetic problems is seen about ten times; a drill teaches the same answer in about 25 tokens
    (``training.corpus.encode_drill``).
    """
    _check_drill_count(n, transcript_fraction)
    rng = random.Random(seed)
    names, weights = list(DRILL_WEIGHTS), list(DRILL_WEIGHTS.values())
    out = []
    for _ in range(n):
        family = rng.choices(names, weights)[0]
        exchange = _SINGLE_TURN[family](rng)
        out.append(Drill(family, exchange.words, exchange.text, rng.random() < transcript_fraction))
    return out


# Picture questions a drill asks: every kind whose answer is text only (a tune for the picture is a media reply).
PICTURE_DRILL_KINDS: tuple[str, ...] = tuple(kind for kind in PICTURE_QUESTIONS if kind != "music")


def picture_drills(n: int, *, seed: int, transcript_fraction: float = 0.5) -> list[Drill]:
    """``n`` questions about a user's picture (a random jittered picture, a kind from ``PICTURE_DRILL_KINDS`` drawn
    uniformly), reproducible from ``seed``.

    Why: in an ``image_in`` dialogue the 32 picture codes and one question teach one fact about the picture among
    about 340 tokens, and the LM (run 5) answered "it is a circle" for most stars and triangles; a drill teaches it
    in about 60 tokens.
    """
    _check_drill_count(n, transcript_fraction)
    rng = random.Random(seed)
    pictures = _all_images()
    out = []
    for _ in range(n):
        picture = replace(rng.choice(pictures), jitter=rng.randint(1, MAX_JITTER_SEED))
        kind = rng.choice(PICTURE_DRILL_KINDS)
        answer, _ = picture_answer(kind, picture)
        words = rng.choice(PICTURE_QUESTIONS[kind])
        out.append(Drill(IMAGE_IN, words, answer, rng.random() < transcript_fraction, picture=picture))
    return out


def spoken_sentences(dialogues: Sequence[Dialogue]) -> list[str]:
    """Sorted distinct sentences spoken in ``dialogues``: spoken questions and every reply text."""
    out = set()
    for dialogue in dialogues:
        for user, reply in dialogue.turns:
            if user.spoken:
                out.add(user.words)
            out.add(reply.text)
    return sorted(out)


@functools.cache
def _all_sentences() -> tuple[str, ...]:
    out: set[str] = set()
    for op, a, b in arithmetic_problems():
        out.update(t.format(a=NUMBER_WORDS[a], b=NUMBER_WORDS[b]) for t in OPERATORS[op])
        out.add(arithmetic_answer(op, a, b))
    for number in range(MAX_NUMBER + 1):
        for op, a, b in _arithmetic_follow_ups(number):
            out.update(t.format(op=op, n=NUMBER_WORDS[b]) for t in FOLLOW_UP_ARITHMETIC)
            out.add(arithmetic_answer(op, a, b))
    for table in (FACTS_TABLE, SMALL_TALK_TABLE):
        for questions, answer in table:
            out.update(questions)
            out.add(answer)
    for phrase in say_phrases():
        out.add(phrase)
        out.update(f"{prefix} {phrase}" for prefix in SAY_PREFIXES)
    out.update(SAY_AGAIN_QUESTIONS)
    drawings = [
        _ImageRequest(spec, size, background)
        for spec in _all_images()
        for size in (False, True)
        for background in (False, True)
    ]
    for request in drawings:
        out.update(f"{prefix} {request.phrase()}" for prefix in DRAW_PREFIXES)
        out.add(f"here is {request.phrase()}")
        out.update(words for words, _ in _drawing_changes(request))
    tunes = [
        _MusicRequest(spec, *flags)
        for spec in _all_music()
        for flags in (
            (t, m, r, b) for t in (False, True) for m in (False, True) for r in (False, True) for b in (False, True)
        )
    ]
    for request in tunes:
        out.update(f"{prefix} {request.request_phrase()}" for prefix in PLAY_PREFIXES)
        out.add(f"here is {request.reply_phrase()}")
        out.update(words for words, _ in _tune_changes(request))
    simple_tunes = {(r.request_phrase(), r.reply_phrase()) for r in tunes if not r.register and not r.timbre}
    for spec in {replace(s, background=DEFAULT_BACKGROUND, size=DEFAULT_SIZE) for s in _all_images()}:
        drawing = image_phrase(spec)
        for request_words, reply_words in simple_tunes:
            for prefix in MULTI_OUTPUT_PREFIXES:
                out.add(f"{prefix} draw {drawing} and play {request_words}".lstrip(" "))
                out.add(f"{prefix} play {request_words} and draw {drawing}".lstrip(" "))
            out.add(f"here is {drawing} and {reply_words}")
            out.add(f"here is {reply_words} and {drawing}")
    for kind, questions in PICTURE_QUESTIONS.items():
        out.update(questions)
        out.update(f"and {q}" for q in questions)
        out.update(picture_answer(kind, spec)[0] for spec in _all_images())
    return tuple(sorted(out))


def all_spoken_sentences() -> list[str]:
    """Every sentence that can occur as a question or an answer (the judge's grammar; see ``spoken_sentences`` for a
    smaller one built from an eval set)."""
    return list(_all_sentences())


def vocabulary() -> list[str]:
    """Every word of every sentence of the domain, sorted."""
    return sorted({w for s in _all_sentences() for w in s.split(" ")})
