"""Per-modality sampling settings and small logits strategies for the unified LM.

AnyGPT picks a generation config per output modality (config/*_generate_config.json). Here the settings switch token
by token: TEXT settings outside modality segments, the modality's settings between ``<soX>`` and ``<eoX>``.
``ReplyGrammar`` masks logits so the reply stays well-formed whatever the model prefers. The strategies that pick a
token from the masked logits (penalty, greedy, temperature / top-k / top-p) live in
:mod:`assistant.decoding.reply_sampling`, vectorised over many replies at once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from assistant.models.config_io import ConfigError, config_from_dict, read_json_object, write_json_object
from assistant.vocab import CODE_MODALITIES, Modality, TokenKind, UnifiedVocab

SETTINGS_FORMAT_VERSION = 1


@dataclass(frozen=True)
class SamplingSettings:
    """do_sample False means greedy; top_k None or 0 disables top-k; top_p 1.0 disables nucleus filtering;
    max_new_tokens bounds the text outside segments (TEXT) or the codes of one segment (other modalities);
    min_new_tokens is the fewest codes a segment holds before its end marker may come (codes modalities only; e.g.
    min = max = 32 for images, whose de-tokenizer takes exactly 32 codes)."""

    do_sample: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    repetition_penalty: float = 1.0
    max_new_tokens: int = 500
    min_new_tokens: int = 0

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 or None, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be > 0, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"min_new_tokens must be in [0, max_new_tokens], got {self.min_new_tokens}")


@dataclass(frozen=True)
class GenerationSettings:
    """SamplingSettings per modality; ``max_total_new_tokens`` (None: derived) bounds a whole reply;
    ``max_transcript_tokens`` (None: unbounded, as AnyGPT) bounds the text ids of an ``<-Ins->`` transcript, after
    which ``<-Res->`` is the only choice: a transcript that loops cannot eat the reply's text budget."""

    text: SamplingSettings = SamplingSettings()
    speech: SamplingSettings = SamplingSettings()
    image: SamplingSettings = SamplingSettings()
    music: SamplingSettings = SamplingSettings()
    max_total_new_tokens: int | None = None
    max_transcript_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.max_total_new_tokens is not None and self.max_total_new_tokens <= 0:
            raise ValueError(f"max_total_new_tokens must be > 0, got {self.max_total_new_tokens}")
        if self.max_transcript_tokens is not None and self.max_transcript_tokens <= 0:
            raise ValueError(f"max_transcript_tokens must be > 0, got {self.max_transcript_tokens}")

    def for_modality(self, modality: Modality) -> SamplingSettings:
        return getattr(self, modality.value)

    @property
    def total_limit(self) -> int:
        """Overall new-token limit: explicit, else text budget + the largest segment + a few markers."""
        if self.max_total_new_tokens is not None:
            return self.max_total_new_tokens
        return self.text.max_new_tokens + max(self.for_modality(m).max_new_tokens for m in CODE_MODALITIES) + 4

    def with_modality(self, modality: Modality, settings: SamplingSettings) -> GenerationSettings:
        changes: dict[str, Any] = {modality.value: settings}
        return replace(self, **changes)

    @classmethod
    def anygpt_defaults(cls) -> GenerationSettings:
        """Values of AnyGPT's config/*_generate_config.json (beam search and min_new_tokens are not used)."""
        return cls(
            text=SamplingSettings(do_sample=True, temperature=1.0, top_p=1.0, max_new_tokens=500),
            image=SamplingSettings(do_sample=True, temperature=1.0, top_p=1.0, max_new_tokens=200),
            speech=SamplingSettings(
                do_sample=True, temperature=1.0, top_p=1.0, repetition_penalty=1.05, max_new_tokens=1500
            ),
            music=SamplingSettings(
                do_sample=True, temperature=1.0, top_p=1.0, top_k=200, repetition_penalty=1.15, max_new_tokens=2000
            ),
        )

    def to_dict(self) -> dict:
        out: dict = {"format_version": SETTINGS_FORMAT_VERSION}
        for m in (Modality.TEXT, *CODE_MODALITIES):
            out[m.value] = asdict(self.for_modality(m))
        out["max_total_new_tokens"] = self.max_total_new_tokens
        if self.max_transcript_tokens is not None:
            out["max_transcript_tokens"] = self.max_transcript_tokens
        return out

    def to_json(self, path: str | Path) -> None:
        write_json_object(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | Path = "<dict>") -> GenerationSettings:
        """The ``to_dict`` layout: ``format_version``, one ``SamplingSettings`` object per modality (missing: the
        defaults), ``max_total_new_tokens`` and ``max_transcript_tokens``; anything else raises ``ConfigError`` naming
        ``source``."""
        if data.get("format_version") != SETTINGS_FORMAT_VERSION:
            raise ConfigError(f"{source}: unsupported format_version {data.get('format_version')!r}")
        sections = {m.value: m for m in (Modality.TEXT, *CODE_MODALITIES)}
        extra = sorted(set(data) - {"format_version", "max_total_new_tokens", "max_transcript_tokens", *sections})
        if extra:
            raise ConfigError(f"{source}: unknown key {extra[0]!r}")
        kwargs: dict[str, Any] = {
            name: config_from_dict(SamplingSettings, data.get(name, {}), f"{source} [{name}]") for name in sections
        }
        return config_from_dict(
            cls,
            kwargs,
            source,
            max_total_new_tokens=data.get("max_total_new_tokens"),
            max_transcript_tokens=data.get("max_transcript_tokens"),
        )

    @classmethod
    def from_json(cls, path: str | Path) -> GenerationSettings:
        return cls.from_dict(read_json_object(path), source=path)


class GrammarViolation(ValueError):
    pass


class ReplyGrammar:
    """Keeps a reply well-formed, token by token.

    - inside a ``<soX>`` segment: only X's codes and ``<eoX>``; only codes while the segment holds fewer than
      ``settings.for_modality(X).min_new_tokens``; only ``<eoX>`` once it holds ``max_new_tokens`` codes;
    - outside segments: text ids, start markers, ``<-Ins->``/``<-Res->`` and stop ids (raw codes, end markers,
      ``[Human]``/``[MMGPT]``/``<eoh>`` and the BOS id are banned); only ``<eos>`` once the text budget
      (``settings.text.max_new_tokens`` text ids) is used up; only ``<-Res->`` once a transcript (after
      ``<-Ins->``) holds ``settings.max_transcript_tokens`` text ids;
    - after ``<eos>``: only ``</s>``; after any other stop id: nothing more (``finished``).
    """

    def __init__(self, vocab: UnifiedVocab, settings: GenerationSettings, device: torch.device | str = "cpu") -> None:
        self.vocab = vocab
        self.settings = settings
        size = vocab.size
        outside = torch.zeros(size, dtype=torch.bool)
        outside[: vocab.text_size] = True
        outside[vocab.bos_id] = False
        for rng in vocab.ranges.values():
            outside[rng.start_id] = True
        for extra in (vocab.ins_id, vocab.res_id, *vocab.stop_ids):
            if extra is not None:
                outside[extra] = True
        self._outside = outside.to(device)
        self._inside: dict[Modality, torch.Tensor] = {}
        self._end_only: dict[Modality, torch.Tensor] = {}
        self._codes_only: dict[Modality, torch.Tensor] = {}
        for m, rng in vocab.ranges.items():
            inside = torch.zeros(size, dtype=torch.bool)
            inside[rng.first_id : rng.first_id + rng.n_codes] = True
            inside[rng.end_id] = True
            end_only = torch.zeros(size, dtype=torch.bool)
            end_only[rng.end_id] = True
            self._inside[m] = inside.to(device)
            self._end_only[m] = end_only.to(device)
            self._codes_only[m] = (inside & ~end_only).to(device)

        def only(token_id: int) -> torch.Tensor:
            mask = torch.zeros(size, dtype=torch.bool)
            mask[token_id] = True
            return mask.to(device)

        self._eos_only = only(vocab.eos_id)
        self._res_only = only(vocab.res_id) if vocab.res_id is not None else None
        self._text_eos_only = only(vocab.text_eos_id)
        self._nothing = torch.zeros(size, dtype=torch.bool, device=device)
        self.reset()

    def reset(self) -> None:
        self.segment: Modality | None = None
        self.segment_codes = 0
        self.text_tokens = 0
        self.transcript_tokens: int | None = None  # text ids since <-Ins-> (None: not in a transcript)
        self.after_eos = False
        self.finished = False

    def begin_segment(self, modality: Modality) -> None:
        """Enter a segment whose start marker is already in the prompt (forced modality)."""
        if self.segment is not None or self.after_eos or self.finished:
            raise GrammarViolation(f"cannot begin a {modality.value} segment in the current state")
        self.vocab.range_of(modality)
        self.segment, self.segment_codes = modality, 0

    @property
    def current_modality(self) -> Modality:
        return self.segment if self.segment is not None else Modality.TEXT

    def allowed_mask(self) -> torch.Tensor:
        if self.finished:
            return self._nothing
        if self.after_eos:
            return self._text_eos_only
        if self.segment is not None:
            limits = self.settings.for_modality(self.segment)
            if self.segment_codes >= limits.max_new_tokens:
                return self._end_only[self.segment]
            if self.segment_codes < limits.min_new_tokens:
                return self._codes_only[self.segment]
            return self._inside[self.segment]
        if self.text_tokens >= self.settings.text.max_new_tokens:
            return self._eos_only
        limit = self.settings.max_transcript_tokens
        if (
            limit is not None
            and self._res_only is not None
            and self.transcript_tokens is not None
            and self.transcript_tokens >= limit
        ):
            return self._res_only
        return self._outside

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Set disallowed logits ([V]) to -inf."""
        return logits.masked_fill(~self.allowed_mask(), float("-inf"))

    def is_allowed(self, token_id: int) -> bool:
        return 0 <= token_id < self.vocab.size and bool(self.allowed_mask()[token_id])

    def advance(self, token_id: int) -> None:
        if not self.is_allowed(token_id):
            raise GrammarViolation(
                f"token {token_id} ({self.vocab.classify(token_id).kind.value}) not allowed "
                f"in state {self.current_modality.value}"
            )
        info = self.vocab.classify(token_id)
        if self.after_eos or (info.kind is TokenKind.STOP and token_id != self.vocab.eos_id):
            self.finished = True
        elif token_id == self.vocab.eos_id:
            self.after_eos = True
        elif info.kind is TokenKind.START:
            self.segment, self.segment_codes = info.modality, 0
        elif info.kind is TokenKind.END:
            self.segment = None
        elif info.kind is TokenKind.CODE:
            self.segment_codes += 1
        elif info.kind is TokenKind.TEXT:
            self.text_tokens += 1
            if self.transcript_tokens is not None:
                self.transcript_tokens += 1
        if token_id == self.vocab.ins_id:
            self.transcript_tokens = 0
        elif token_id == self.vocab.res_id:
            self.transcript_tokens = None
