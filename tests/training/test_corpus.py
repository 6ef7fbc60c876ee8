"""Dialogues -> training sequences: prompts equal the engine's, masks cover exactly the replies, and the engine itself
parses the replies back into transcript, text, speech, picture and tune."""

import asyncio
import zlib

import numpy as np
import pytest

from assistant.pipeline.backends import AcousticBackend, Backends, LMBackend, MediaBackend, SpeechEncoderBackend
from assistant.pipeline.engine import AssistantEngine, EngineConfig, UserTurn
from assistant.pipeline.outputs import ImageOutput, MusicOutput, ReplyTextDelta, TranscriptDelta, TurnFinished
from assistant.prompts import AssistantMessage, ChatPromptBuilder, Conversation
from assistant.protocol import FinishReason
from assistant.vocab import Modality, TokenKind
from training import domain as d
from training.corpus import TrainingSequence, encode_dialogue, encode_dialogues, encode_drill, reply_ids, user_message
from training.specs import ImageSpec, MusicSpec, Voice

N_CODES = 64
VOICES = (Voice("a", "en-us+f2", speed=160), Voice("b", "en-us+m3", speed=190))


def _codes(key: str, n: int) -> list[int]:
    seed = zlib.crc32(key.encode())
    return [(seed + 7 * k) % N_CODES for k in range(n)]


class FakeMedia:
    """Deterministic stand-ins for the codecs: code sequences derived from the content."""

    def question_codes(self, words, voice, speed):
        return _codes(f"{words}|{voice.name}|{speed}", 3 * len(words.split(" ")))

    def reply_codes(self, text):
        return _codes(text, 2 * len(text.split(" ")))

    def image_codes(self, spec: ImageSpec):
        return _codes(repr(spec), 32)

    def music_tokens(self, spec: MusicSpec):
        return _codes(repr(spec), 12)


@pytest.fixture(scope="module")
def vocab(make_tiny_vocab):
    return make_tiny_vocab(N_CODES)


@pytest.fixture(scope="module")
def dialogues():
    return d.generate_dialogues(60, seed=5, voices=VOICES, spoken_fraction=0.6, families=d.FAMILIES)


def masked_spans(seq: TrainingSequence) -> list[list[int]]:
    spans, current = [], None
    for token_id, on in zip(seq.ids, seq.loss_mask, strict=True):
        if on and current is None:
            current = []
            spans.append(current)
        if on:
            current.append(token_id)
        else:
            current = None
    return spans


def test_sequences_are_valid_and_one_per_dialogue(vocab, dialogues):
    media = FakeMedia()
    sequences = encode_dialogues(dialogues, vocab, media)
    assert len(sequences) == len(dialogues)
    for dialogue, seq in zip(dialogues, sequences, strict=True):
        assert seq.family == dialogue.family and len(seq.ids) == len(seq.loss_mask)
        assert all(vocab.classify(i).kind is not TokenKind.INVALID for i in seq.ids)
        spans = masked_spans(seq)
        assert spans == [reply_ids(r, vocab, media, u.spoken) for u, r in dialogue.turns]
        assert seq.ids[-1] == vocab.eos_id and seq.loss_mask[-1]
        assert not any(seq.loss_mask[: len(ChatPromptBuilder(vocab).build(None, None)) - 2])


def test_each_turn_prompt_is_the_builders_prompt_with_engine_history(vocab, dialogues):
    media = FakeMedia()
    builder = ChatPromptBuilder(vocab)
    multi = [x for x in dialogues if len(x.turns) > 1]
    assert multi
    for dialogue in multi:
        (seq,) = encode_dialogue(dialogue, vocab, media)
        history = Conversation()
        reply_end = 0
        for user, reply in dialogue.turns:
            message = user_message(user, media)
            prompt = builder.build(history, message)
            generated = reply_ids(reply, vocab, media, user.spoken)
            assert seq.ids[: len(prompt) + len(generated)] == prompt + generated
            assert not any(seq.loss_mask[reply_end : len(prompt)])  # template and user message: no loss
            assert all(seq.loss_mask[len(prompt) : len(prompt) + len(generated)])
            reply_end = len(prompt) + len(generated)
            history.append_turn(message, AssistantMessage.from_generated(vocab, generated))


def test_reply_layout(vocab):
    media = FakeMedia()
    image, music = ImageSpec("star", "blue"), MusicSpec("slow", "major")
    reply = d.ReplySpec(
        "draw a blue star and play a slow tune", "here is a blue star and a slow major tune", image, music
    )
    ids = reply_ids(reply, vocab, media, spoken=True)
    sp, im, mu = (vocab.range_of(m) for m in (Modality.SPEECH, Modality.IMAGE, Modality.MUSIC))
    text = vocab.encode_text
    speech = vocab.segment_ids(Modality.SPEECH, media.reply_codes(reply.text))
    expected = (
        text(" ")
        + [vocab.ins_id]
        + text(" draw a blue star and play a slow tune\n ")
        + [vocab.res_id]
        + text(" here is a blue star and a slow major tune ")
        + speech
        + text(" ")
        + [im.start_id, *vocab.codes_to_ids(Modality.IMAGE, media.image_codes(image)), im.end_id]
        + text(" ")
        + [mu.start_id, *vocab.codes_to_ids(Modality.MUSIC, media.music_tokens(music)), mu.end_id]
        + [vocab.eos_id]
    )
    assert ids == expected
    typed = reply_ids(d.ReplySpec(None, "hello how can i help you"), vocab, media, spoken=False)
    assert typed == text(" hello how can i help you ") + vocab.segment_ids(
        Modality.SPEECH, media.reply_codes("hello how can i help you")
    ) + [vocab.eos_id]
    assert sp.start_id in typed and vocab.ins_id not in typed
    with pytest.raises(ValueError):
        reply_ids(d.ReplySpec(None, "hi"), vocab, media, spoken=True)


def test_user_messages_carry_speech_or_text_and_the_picture(vocab):
    media = FakeMedia()
    picture = ImageSpec("circle", "red", jitter=3)
    spoken = d.UserTurnSpec("what is this", spoken=True, voice=VOICES[0], speed=150, image=picture)
    message = user_message(spoken, media)
    assert message.text is None and list(message.speech_codes) == media.question_codes("what is this", VOICES[0], 150)
    assert list(message.image_codes) == media.image_codes(picture)
    typed = user_message(d.UserTurnSpec("hello", spoken=False), media)
    assert typed.text == "hello" and typed.speech_codes is None and typed.image_codes is None


# -------------------------------------------------------------------------------------------------------------------
# The engine parses what the corpus teaches
# -------------------------------------------------------------------------------------------------------------------


class ScriptedSpeech(SpeechEncoderBackend):
    def __init__(self, rows: list[list[int]]):
        self.rows = list(rows)

    async def encode(self, wave):
        return np.asarray(self.rows.pop(0), dtype=np.int64)  # level 1 only: [F]


class ScriptedLM(LMBackend):
    def __init__(self, replies: list[list[int]]):
        self.replies = list(replies)
        self.prompts: list[list[int]] = []

    async def stream(self, prompt_ids, force_modality):
        self.prompts.append(list(prompt_ids))
        reply = self.replies.pop(0)
        for k in range(0, len(reply), 5):
            yield reply[k : k + 5]
            await asyncio.sleep(0)


class SilentAcoustic(AcousticBackend):
    async def register_voice(self, prompt):
        raise AssertionError("these sessions have no voice bank")

    async def decode_chunk(self, semantic, context, voice, prompt=None):
        semantic = np.asarray(semantic, dtype=np.int64)
        return np.stack([semantic, semantic]), np.zeros(semantic.size * 320, dtype=np.float32)


class RecordingMedia(MediaBackend):
    def __init__(self, pictures: dict[bytes, list[int]]):
        self.pictures = pictures  # "file bytes" of the user's pictures -> their codes
        self.images: list[list[int]] = []
        self.music: list[list[int]] = []

    async def image_codes(self, png):
        return self.pictures[png]

    async def image_png(self, codes):
        self.images.append(list(codes))
        return b"png", 64, 64

    async def music_wave(self, tokens):
        self.music.append(list(tokens))
        return np.zeros(1600, dtype=np.float32)

    async def music_codes(self, wav):
        raise AssertionError("the corpus's users send no tunes")


def test_engine_prompts_and_parses_every_turn_as_the_corpus_says(vocab):
    media = FakeMedia()
    dialogues = d.generate_dialogues(40, seed=11, voices=VOICES, spoken_fraction=0.5, families=d.FAMILIES)
    assert any(len(x.turns) > 1 for x in dialogues)
    for dialogue in dialogues:
        (seq,) = encode_dialogue(dialogue, vocab, media)
        replies = masked_spans(seq)
        lm = ScriptedLM(replies)
        speech = ScriptedSpeech(
            [media.question_codes(u.words, u.voice, u.speed) for u, _ in dialogue.turns if u.spoken]
        )
        recorder = RecordingMedia(
            {repr(u.image).encode(): media.image_codes(u.image) for u, _ in dialogue.turns if u.image}
        )
        engine = AssistantEngine(Backends(speech, lm, SilentAcoustic(), recorder), vocab, EngineConfig())

        outputs, session = asyncio.run(asyncio.wait_for(run_dialogue(engine, dialogue), timeout=20))
        assert session.stats.total_dropped() == 0
        position = 0
        for (_, reply), turn_outputs, prompt, generated in zip(
            dialogue.turns, outputs, lm.prompts, replies, strict=True
        ):
            start = _find(seq.ids, generated, position)
            assert prompt == seq.ids[:start]  # the engine's prompt (with its remembered history) is ours
            position = start + len(generated)
            transcript = "".join(o.text for o in turn_outputs if isinstance(o, TranscriptDelta))
            text = "".join(o.text for o in turn_outputs if isinstance(o, ReplyTextDelta))
            assert transcript.strip() == (reply.transcript or "")
            assert text.strip() == reply.text
            assert sum(isinstance(o, ImageOutput) for o in turn_outputs) == (reply.image is not None)
            assert sum(isinstance(o, MusicOutput) for o in turn_outputs) == (reply.music is not None)
            assert turn_outputs[-1] == TurnFinished(FinishReason.COMPLETE)
        expected_images = [media.image_codes(r.image) for _, r in dialogue.turns if r.image is not None]
        expected_music = [media.music_tokens(r.music) for _, r in dialogue.turns if r.music is not None]
        assert recorder.images == expected_images and recorder.music == expected_music


async def run_dialogue(engine: AssistantEngine, dialogue: d.Dialogue):
    """Feeds the dialogue's user turns to one engine session (speech as stand-in audio, pictures as stand-in bytes)."""
    session = engine.new_session()
    outputs = []
    for user, _ in dialogue.turns:
        audio = np.zeros(1600, dtype=np.float32) if user.spoken else None
        picture = repr(user.image).encode() if user.image is not None else None
        turn = UserTurn(audio=audio, text=None if user.spoken else user.words, image=picture)
        outputs.append([o async for o in session.respond(turn)])
    return outputs, session


def _find(haystack: list[int], needle: list[int], start: int) -> int:
    for k in range(start, len(haystack) - len(needle) + 1):
        if haystack[k : k + len(needle)] == needle:
            return k
    raise AssertionError("reply not found in the sequence")


def test_a_drill_is_the_start_of_the_dialogue_that_asks_its_question(vocab):
    """A typed-form drill is token for token the beginning of a typed dialogue with the same question, loss on its
    answer only; a transcript-form drill ends as a spoken turn's reply does up to its text, with loss on the text
    only (never on the transcript, which a typed prompt does not get)."""
    media = FakeMedia()
    for drill in d.knowledge_drills(40, seed=9):
        seq = encode_drill(drill, vocab)
        answer = vocab.encode_text(f" {drill.answer} ")
        assert masked_spans(seq) == [answer] and seq.ids[-len(answer) :] == answer
        assert seq.family == f"drill_{drill.family}"
        typed = ChatPromptBuilder(vocab).build(Conversation(), user_message(d.UserTurnSpec(drill.words, False), media))
        assert seq.ids[: len(typed)] == typed
        if drill.transcript_form:
            spoken = reply_ids(d.ReplySpec(drill.words, drill.answer, None, None), vocab, media, spoken=True)
            assert seq.ids[len(typed) :] == spoken[: len(seq.ids) - len(typed)]
            assert vocab.ins_id in seq.ids and vocab.res_id in seq.ids
        else:
            dialogue = d.Dialogue(d.FACTS, ((d.UserTurnSpec(drill.words, False), d.ReplySpec(None, drill.answer)),))
            (whole,) = encode_dialogue(dialogue, vocab, media)
            assert whole.ids[: len(seq.ids)] == seq.ids and whole.loss_mask[: len(seq.ids)] == seq.loss_mask


def test_a_picture_drill_is_the_start_of_the_dialogue_that_asks_about_that_picture(vocab):
    """The picture's codes sit in the prompt exactly as in a typed ``image_in`` dialogue with that question; the loss
    is on the answer only; without the media tokenizers a picture drill cannot be encoded."""
    media = FakeMedia()
    for drill in d.picture_drills(20, seed=3):
        seq = encode_drill(drill, vocab, media)
        answer = vocab.encode_text(f" {drill.answer} ")
        assert masked_spans(seq) == [answer] and seq.ids[-len(answer) :] == answer
        user = d.UserTurnSpec(drill.words, False, image=drill.picture)
        typed = ChatPromptBuilder(vocab).build(Conversation(), user_message(user, media))
        assert seq.ids[: len(typed)] == typed
        image_ids = vocab.segment_ids(Modality.IMAGE, media.image_codes(drill.picture))
        assert _find(seq.ids, image_ids, 0) < len(typed)
        if not drill.transcript_form:
            dialogue = d.Dialogue(d.IMAGE_IN, ((user, d.ReplySpec(None, drill.answer)),))
            (whole,) = encode_dialogue(dialogue, vocab, media)
            assert whole.ids[: len(seq.ids)] == seq.ids and whole.loss_mask[: len(seq.ids)] == seq.loss_mask
    with pytest.raises(ValueError, match="media"):
        encode_drill(d.picture_drills(1, seed=3)[0], vocab)
