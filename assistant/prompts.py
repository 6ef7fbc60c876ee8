"""AnyGPT prompt templates built as token-id lists (torch-free).

Markers are inserted as their ids, modality payloads as ``<soX>`` + code ids + ``<eoX>``, and only plain text goes
through the text tokenizer; emoji token strings are never parsed here.

Chat (MMGPT) template, as rendered::

    You are an AI assistant named MMGPT who can understand and generate multimodal content, including text, speech,
     images and audio.\\n                                    (one line)
    [Human]: {user}<eoh>\\n
    [MMGPT]: {assistant}<eos>\\n          (earlier turns)
    [Human]: {user}<eoh>\\n
    [MMGPT]:                            (optionally followed by " <sosp>" / " <soim>" / " <somu>")

Base-model templates: ``[Human]: {instruction} This is input: {text}<eoh> [MMGPT]:`` (text -> X) and
``[Human]: {instruction} {<soX>..<eoX>}<eoh> [MMGPT]:`` (X -> text).
Every prompt starts with the text tokenizer's BOS id (the reference LlamaTokenizer adds ``<s>``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from assistant.vocab import Modality, TokenKind, UnifiedVocab

SYSTEM_PROMPT = (
    "You are an AI assistant named MMGPT who can understand and generate multimodal content, "
    "including text, speech, images and audio.\n"
)
SPEECH_INSTRUCTION_SUFFIX = " Please recognize the voice command and give reply and voice"

# One fixed instruction per direction and modality (first entries of AnyGPT's instruction lists).
X_TO_TEXT_INSTRUCTIONS: Mapping[Modality, str] = MappingProxyType(
    {
        Modality.SPEECH: "Analyze the spoken words and transcribe them accurately.",
        Modality.IMAGE: "Describe the scene in this picture.",
        Modality.MUSIC: "Listen to the music and describe the mood it evokes.",
    }
)
TEXT_TO_X_INSTRUCTIONS: Mapping[Modality, str] = MappingProxyType(
    {
        Modality.SPEECH: "Would you kindly read this text out loud so that I can hear it?",
        Modality.IMAGE: "What image comes to mind from this text?",
        Modality.MUSIC: "Create a musical piece that captures the essence of this caption.",
    }
)


@dataclass(frozen=True)
class UserMessage:
    """One user turn; any subset of modalities (at least one)."""

    text: str | None = None
    speech_codes: Sequence[int] | None = None
    image_codes: Sequence[int] | None = None
    music_codes: Sequence[int] | None = None

    def __post_init__(self) -> None:
        payloads = (self.speech_codes, self.image_codes, self.music_codes)
        if not self.text and not any(p is not None and len(p) > 0 for p in payloads):
            raise ValueError("UserMessage needs text or at least one non-empty code sequence")


@dataclass(frozen=True)
class AssistantMessage:
    """An assistant reply as ids: the content that follows ``[MMGPT]: `` (without ``<eos>``/``</s>``)."""

    token_ids: tuple[int, ...]

    def __init__(self, token_ids: Sequence[int]) -> None:
        object.__setattr__(self, "token_ids", tuple(int(i) for i in token_ids))

    @classmethod
    def from_generated(cls, vocab: UnifiedVocab, ids: Sequence[int], prefix: Sequence[int] = ()) -> AssistantMessage:
        """From generated ids: ``prefix`` (e.g. a forced start marker) + ids, trailing stop ids and a leading
        whitespace-only text token (the model's space after ``[MMGPT]:``) removed."""
        body = [*prefix, *ids]
        while body and body[-1] in vocab.stop_ids:
            body.pop()
        if body and body[0] < vocab.text_size and body[0] not in vocab.stop_ids:
            if vocab.text_tokenizer.decode([body[0]]).strip() == "":
                body = body[1:]
        return cls(body)


@dataclass
class Turn:
    user: UserMessage
    assistant: AssistantMessage


@dataclass
class Conversation:
    """Chat history (oldest first)."""

    turns: list[Turn] = field(default_factory=list)

    def append_turn(self, user: UserMessage, assistant: AssistantMessage) -> None:
        self.turns.append(Turn(user, assistant))

    def truncate_to(
        self,
        max_tokens: int,
        builder: ChatPromptBuilder,
        pending: UserMessage | None = None,
        force_modality: Modality | None = None,
    ) -> int:
        """Drop the oldest turns until the prompt (history + ``pending`` user message) fits ``max_tokens``.

        Returns the number of dropped turns; raises ValueError if it cannot fit even with no history.
        """
        dropped = 0
        while builder.prompt_length(self, pending, force_modality) > max_tokens:
            if not self.turns:
                raise ValueError(f"prompt does not fit in {max_tokens} tokens even without history")
            self.turns.pop(0)
            dropped += 1
        return dropped


class ChatPromptBuilder:
    """Builds AnyGPT chat (MMGPT template) prompts as token ids."""

    def __init__(self, vocab: UnifiedVocab, system_prompt: str = SYSTEM_PROMPT) -> None:
        self.vocab = vocab
        self.system_prompt = system_prompt

    def user_message_ids(self, message: UserMessage) -> list[int]:
        """AnyGPT "interleaved" order: image, music, speech (+ Speech-Instruction suffix), text; space-separated."""
        v = self.vocab
        parts: list[list[int]] = []
        if message.image_codes:
            parts.append(v.segment_ids(Modality.IMAGE, message.image_codes))
        if message.music_codes:
            parts.append(v.segment_ids(Modality.MUSIC, message.music_codes))
        if message.speech_codes:
            parts.append(
                v.segment_ids(Modality.SPEECH, message.speech_codes) + v.encode_text(SPEECH_INSTRUCTION_SUFFIX)
            )
        if message.text:
            parts.append(v.encode_text(message.text))
        out: list[int] = []
        space = v.encode_text(" ")
        for k, part in enumerate(parts):
            if k:
                out.extend(space)
            out.extend(part)
        return out

    def build(
        self,
        conversation: Conversation | None,
        user_message: UserMessage | None,
        force_modality: Modality | None = None,
    ) -> list[int]:
        v = self.vocab
        enc = v.encode_text
        ids: list[int] = [v.bos_id, *enc(self.system_prompt)]
        for turn in conversation.turns if conversation is not None else []:
            ids += [v.human_id, *enc(": "), *self.user_message_ids(turn.user), v.eoh_id, *enc("\n")]
            ids += [v.mmgpt_id, *enc(": "), *turn.assistant.token_ids, v.eos_id, *enc("\n")]
        if user_message is not None:
            ids += [v.human_id, *enc(": "), *self.user_message_ids(user_message), v.eoh_id, *enc("\n")]
        ids += [v.mmgpt_id, *enc(":")]
        if force_modality is not None:
            if force_modality is Modality.TEXT:
                raise ValueError("force_modality must be speech, image or music")
            ids += [*enc(" "), v.range_of(force_modality).start_id]
        return ids

    def prompt_length(
        self,
        conversation: Conversation | None,
        user_message: UserMessage | None,
        force_modality: Modality | None = None,
    ) -> int:
        return len(self.build(conversation, user_message, force_modality))


class BasePromptBuilder:
    """AnyGPT base-model task templates (one fixed instruction per direction/modality)."""

    def __init__(self, vocab: UnifiedVocab) -> None:
        self.vocab = vocab

    def text_to_x(self, modality: Modality, text: str, instruction: str | None = None) -> list[int]:
        """``[Human]: {instruction} This is input: {text}<eoh> [MMGPT]:`` (TTS, text-to-image, text-to-music)."""
        v = self.vocab
        instruction = instruction if instruction is not None else TEXT_TO_X_INSTRUCTIONS[modality]
        body = v.encode_text(f": {instruction} This is input: {text}")
        return [v.bos_id, v.human_id, *body, v.eoh_id, *v.encode_text(" "), v.mmgpt_id, *v.encode_text(":")]

    def x_to_text(self, modality: Modality, codes: Sequence[int], instruction: str | None = None) -> list[int]:
        """``[Human]: {instruction} <soX>..<eoX><eoh> [MMGPT]:`` (ASR, captioning, music captioning)."""
        v = self.vocab
        instruction = instruction if instruction is not None else X_TO_TEXT_INSTRUCTIONS[modality]
        return [
            v.bos_id,
            v.human_id,
            *v.encode_text(f": {instruction} "),
            *v.segment_ids(modality, codes),
            v.eoh_id,
            *v.encode_text(" "),
            v.mmgpt_id,
            *v.encode_text(":"),
        ]


def is_well_formed_segment(vocab: UnifiedVocab, ids: Sequence[int], modality: Modality) -> bool:
    """True if ``ids`` is exactly ``<soX>`` + codes of ``modality`` + ``<eoX>``."""
    rng = vocab.range_of(modality)
    if len(ids) < 2 or ids[0] != rng.start_id or ids[-1] != rng.end_id:
        return False
    return all(vocab.classify(i).kind is TokenKind.CODE and rng.contains(i) for i in ids[1:-1])
