"""Dialogues -> LM training sequences in the AnyGPT chat template, exactly as the engine prompts and remembers them.

For each turn the prompt is ``ChatPromptBuilder.build(history, user message)`` (no forced modality), the same call
``assistant.pipeline.engine.Session`` makes. The reply is what the LM must generate after ``[MMGPT]:``::

    spoken turn:  " " <-Ins-> " {transcript}\\n " <-Res-> " {text} " <sosp> codes <eosp> [" " <soim> 32 codes <eoim>]
                  [" " <somu> tokens <eomu>] <eos>
    typed turn:   " {text} " <sosp> codes <eosp> [...same media...] <eos>

(quoted parts are text tokens, the rest are added tokens). The leading space is AnyGPT's space after ``[MMGPT]:``;
``AssistantMessage.from_generated`` strips it (and ``<eos>``) when the engine remembers the reply, and the builder
puts ``": "`` back in front of remembered replies, so an earlier turn appears in later prompts token for token as it
was generated. Every reply speaks: the speech segment is the text reply read by the assistant voice.

Loss choice: one sequence per dialogue, loss on the reply tokens of every turn (earlier replies sit in the final
prompt unchanged, see above), never on system prompt, user messages or template tokens. If a tokenizer ever breaks
that prefix property, ``encode_dialogue`` falls back to one sequence per turn with loss on that turn's reply only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from assistant.prompts import AssistantMessage, ChatPromptBuilder, Conversation, UserMessage
from assistant.vocab import Modality, UnifiedVocab
from training.domain import Dialogue, Drill, ReplySpec, UserTurnSpec
from training.specs import ImageSpec, MusicSpec, Voice

IMAGE_CODES_PER_PICTURE = 32


class MediaTokenizers(Protocol):
    """The codecs as the corpus needs them (code values, not vocabulary ids)."""

    def question_codes(self, words: str, voice: Voice, speed: int) -> list[int]:
        """Level-1 speech codes of ``words`` spoken by ``voice`` at ``speed`` words per minute."""
        ...

    def reply_codes(self, text: str) -> list[int]:
        """Level-1 speech codes of ``text`` read by the assistant voice."""
        ...

    def image_codes(self, spec: ImageSpec) -> list[int]:
        """The 32 image codes of the rendering of ``spec``."""
        ...

    def music_tokens(self, spec: MusicSpec) -> list[int]:
        """The flattened music tokens of the clip of ``spec``."""
        ...


@dataclass(frozen=True)
class TrainingSequence:
    """Token ids and which of them are predicted (True = loss on this id, i.e. the model must produce it)."""

    ids: list[int]
    loss_mask: list[bool]
    family: str

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.loss_mask):
            raise ValueError(f"{len(self.ids)} ids but {len(self.loss_mask)} mask entries")


def user_message(user: UserTurnSpec, media: MediaTokenizers) -> UserMessage:
    """The engine's ``UserMessage`` for a user turn: speech codes of a spoken turn or the typed words, plus the
    picture's codes."""
    image = media.image_codes(user.image) if user.image is not None else None
    if user.spoken:
        return UserMessage(speech_codes=media.question_codes(user.words, user.voice, user.speed), image_codes=image)
    return UserMessage(text=user.words, image_codes=image)


def reply_ids(reply: ReplySpec, vocab: UnifiedVocab, media: MediaTokenizers, spoken: bool) -> list[int]:
    """The ids the LM generates after ``[MMGPT]:`` for ``reply`` (leading space through ``<eos>``)."""
    enc = vocab.encode_text
    if spoken:
        if reply.transcript is None or vocab.ins_id is None or vocab.res_id is None:
            raise ValueError("a spoken turn's reply needs a transcript and a vocabulary with <-Ins->/<-Res->")
        ids = [*enc(" "), vocab.ins_id, *enc(f" {reply.transcript}\n "), vocab.res_id, *enc(f" {reply.text} ")]
    else:
        ids = enc(f" {reply.text} ")
    ids += vocab.segment_ids(Modality.SPEECH, media.reply_codes(reply.text))
    if reply.image is not None:
        codes = media.image_codes(reply.image)
        if len(codes) != IMAGE_CODES_PER_PICTURE:
            raise ValueError(f"expected {IMAGE_CODES_PER_PICTURE} image codes, got {len(codes)}")
        ids += [*enc(" "), *vocab.segment_ids(Modality.IMAGE, codes)]
    if reply.music is not None:
        ids += [*enc(" "), *vocab.segment_ids(Modality.MUSIC, media.music_tokens(reply.music))]
    ids.append(vocab.eos_id)
    return ids


def encode_dialogue(dialogue: Dialogue, vocab: UnifiedVocab, media: MediaTokenizers) -> list[TrainingSequence]:
    """One sequence for the dialogue (loss on every reply); per-turn sequences if the prefix property fails."""
    builder = ChatPromptBuilder(vocab)
    history = Conversation()
    per_turn: list[tuple[list[int], list[int]]] = []  # (prompt, reply) of each turn
    for user, reply in dialogue.turns:
        message = user_message(user, media)
        prompt = builder.build(history, message)
        generated = reply_ids(reply, vocab, media, user.spoken)
        per_turn.append((prompt, generated))
        history.append_turn(message, AssistantMessage.from_generated(vocab, generated))

    ids: list[int] = []
    mask: list[bool] = []
    for prompt, generated in per_turn:
        if prompt[: len(ids)] != ids:
            return [_sequence(p, g, dialogue.family) for p, g in per_turn]
        mask += [False] * (len(prompt) - len(ids)) + [True] * len(generated)
        ids = prompt + generated
    return [TrainingSequence(ids, mask, dialogue.family)]


def encode_dialogues(
    dialogues: Sequence[Dialogue], vocab: UnifiedVocab, media: MediaTokenizers
) -> list[TrainingSequence]:
    return [seq for dialogue in dialogues for seq in encode_dialogue(dialogue, vocab, media)]


def _sequence(prompt: list[int], generated: list[int], family: str) -> TrainingSequence:
    return TrainingSequence(prompt + generated, [False] * len(prompt) + [True] * len(generated), family)


def encode_drill(drill: Drill, vocab: UnifiedVocab, media: MediaTokenizers | None = None) -> TrainingSequence:
    """A drill as a sequence that stops after the answer text: the engine's prompt for the typed question (with the
    drill's picture, whose codes ``media`` gives), then either the answer (typed form) or ``<-Ins-> question <-Res->``
    and the answer (transcript form, the tail of a spoken turn's reply up to its text). Loss only on the answer.
    Nothing after it is shown, so the model is never taught that a reply ends there (a real reply goes on with its
    speech); the transcript form's prefix is context only, so the model is never taught to transcribe a typed
    question."""
    enc = vocab.encode_text
    image = None
    if drill.picture is not None:
        if media is None:
            raise ValueError("a drill about a picture needs the media tokenizers for its codes")
        image = media.image_codes(drill.picture)
    prompt = ChatPromptBuilder(vocab).build(Conversation(), UserMessage(text=drill.words, image_codes=image))
    if drill.transcript_form:
        if vocab.ins_id is None or vocab.res_id is None:
            raise ValueError("a transcript-form drill needs a vocabulary with <-Ins->/<-Res->")
        prompt = prompt + [*enc(" "), vocab.ins_id, *enc(f" {drill.words}\n "), vocab.res_id]
    return _sequence(prompt, enc(f" {drill.answer} "), f"drill_{drill.family}")
