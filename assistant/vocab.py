"""Unified AnyGPT-style vocabulary (torch-free).

Layout (AnyGPT, arXiv 2402.12226): text tokens first, then the added tokens in this order:
``[Human]``, ``[MMGPT]``, ``<eoh>``, ``<eos>``, image codes ``<👀{n}>`` + ``<soim>``/``<eoim>``, speech codes
``<🗣️{n}>`` + ``<sosp>``/``<eosp>``, music codes ``<🎶{n}>`` + ``<somu>``/``<eomu>``, then optionally
``<-Ins->``/``<-Res->``.

No token id is hard-coded: ``UnifiedVocab.from_dir`` reads ``added_tokens.json`` (Hugging Face format,
token string -> id) plus a text tokenizer (``tokenizer.model`` for SentencePiece, else ``text_tokenizer.json``).
Token strings are parsed once at load time into contiguous id ranges; at run time ids are classified by range.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from assistant.models.config_io import ConfigError, read_json_object

ADDED_TOKENS_FILE = "added_tokens.json"
TEXT_TOKENIZER_FILE = "text_tokenizer.json"
SENTENCEPIECE_FILE = "tokenizer.model"
EMBEDDED_TOKENIZER_DIR = Path(__file__).resolve().parent / "assets" / "embedded" / "tokenizer"

HUMAN = "[Human]"
MMGPT = "[MMGPT]"
EOH = "<eoh>"
EOS = "<eos>"
EOM = "<eom>"  # possible extra stop token of the chat vocab (absent in the embedded vocab)
INS = "<-Ins->"
RES = "<-Res->"
TEXT_SPECIALS = ("<unk>", "<s>", "</s>")


class Modality(enum.StrEnum):
    TEXT = "text"
    SPEECH = "speech"
    IMAGE = "image"
    MUSIC = "music"


# Token-string spelling per code modality: (code prefix, start marker, end marker). AnyGPT order: image, speech, music.
_CODE_SPELLING: dict[Modality, tuple[str, str, str]] = {
    Modality.IMAGE: ("\U0001f440", "<soim>", "<eoim>"),  # 👀
    Modality.SPEECH: ("\U0001f5e3\ufe0f", "<sosp>", "<eosp>"),  # 🗣️ (U+1F5E3 U+FE0F)
    Modality.MUSIC: ("\U0001f3b6", "<somu>", "<eomu>"),  # 🎶
}
CODE_MODALITIES: tuple[Modality, ...] = tuple(_CODE_SPELLING)
# "<PREFIX{n}>" ; the speech prefix is also accepted without the variation selector U+FE0F.
_CODE_TOKEN_RE = re.compile("^<(\U0001f440|\U0001f5e3\ufe0f?|\U0001f3b6)(\\d+)>$")
_PREFIX_TO_MODALITY = {
    "\U0001f440": Modality.IMAGE,
    "\U0001f5e3\ufe0f": Modality.SPEECH,
    "\U0001f5e3": Modality.SPEECH,
    "\U0001f3b6": Modality.MUSIC,
}


def code_token_string(modality: Modality, code: int) -> str:
    """The AnyGPT token string of one code, e.g. ``<🗣️12>``."""
    return f"<{_CODE_SPELLING[modality][0]}{code}>"


class TokenKind(enum.StrEnum):
    TEXT = "text"  # id of the text tokenizer (except its eos, which is STOP)
    CODE = "code"  # a modality code (modality + code set)
    START = "start"  # <soim>/<sosp>/<somu>
    END = "end"  # <eoim>/<eosp>/<eomu>
    MARKER = "marker"  # [Human], [MMGPT], <eoh>, <-Ins->, <-Res->, other added tokens
    STOP = "stop"  # <eos>, </s>, <eom>
    INVALID = "invalid"  # outside the vocabulary or an unassigned id


@dataclass(frozen=True)
class TokenInfo:
    kind: TokenKind
    modality: Modality | None = None  # for CODE/START/END; TEXT for text ids
    code: int | None = None  # for CODE


@dataclass(frozen=True)
class ModalityRange:
    """Contiguous id range of one modality's codes plus its start/end marker ids."""

    modality: Modality
    first_id: int
    n_codes: int
    start_id: int
    end_id: int

    def __post_init__(self) -> None:
        if self.n_codes <= 0:
            raise ValueError(f"{self.modality.value}: n_codes must be positive, got {self.n_codes}")
        if self.first_id < 0:
            raise ValueError(f"{self.modality.value}: first_id must be >= 0, got {self.first_id}")

    @property
    def last_id(self) -> int:
        return self.first_id + self.n_codes - 1

    def contains(self, token_id: int) -> bool:
        return self.first_id <= token_id <= self.last_id

    def id_to_code(self, token_id: int) -> int:
        if not self.contains(token_id):
            raise ValueError(
                f"id {token_id} is not a {self.modality.value} code (range {self.first_id}..{self.last_id})"
            )
        return token_id - self.first_id

    def code_to_id(self, code: int) -> int:
        if not 0 <= code < self.n_codes:
            raise ValueError(f"{self.modality.value} code {code} out of range 0..{self.n_codes - 1}")
        return self.first_id + code


# --------------------------------------------------------------------------------------------------------------------
# Text tokenizers
# --------------------------------------------------------------------------------------------------------------------


@runtime_checkable
class TextTokenizer(Protocol):
    vocab_size: int
    bos_id: int
    eos_id: int
    unk_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTextTokenizer:
    """Byte-level text tokenizer with optional whole pieces.

    Ids: the specials (``<unk>``, ``<s>``, ``</s>``), the 256 byte values, then ``pieces`` (e.g. the words of a small
    domain, each with and without a leading space). Encoding takes the longest piece that matches at each position
    and does not start or end inside a word; anything else falls back to bytes, so every string round-trips.
    A model over a small domain learns one id per word far faster than the spelling of each word.
    """

    def __init__(self, specials: Sequence[str] = TEXT_SPECIALS, pieces: Sequence[str] = ()) -> None:
        specials = list(specials)
        if len(set(specials)) != len(specials):
            raise ValueError(f"duplicate specials in {specials}")
        missing = [s for s in TEXT_SPECIALS if s not in specials]
        if missing:
            raise ValueError(f"byte tokenizer specials must include {list(TEXT_SPECIALS)}, missing {missing}")
        pieces = list(pieces)
        if len(set(pieces)) != len(pieces):
            raise ValueError("duplicate pieces in the text tokenizer")
        short = [p for p in pieces if len(p) < 2]
        if short:
            raise ValueError(f"pieces must be at least 2 characters long (single characters are bytes): {short[:5]}")
        self.specials = specials
        self.pieces = pieces
        self.unk_id = specials.index("<unk>")
        self.bos_id = specials.index("<s>")
        self.eos_id = specials.index("</s>")
        self.byte_offset = len(specials)
        self.piece_offset = self.byte_offset + 256
        self.vocab_size = self.piece_offset + len(pieces)
        self._piece_bytes = [p.encode("utf-8") for p in pieces]
        # Candidates by their first two characters, longest first: a lookup instead of a scan of every piece.
        self._by_head: dict[str, list[tuple[str, int]]] = {}
        for k, piece in enumerate(pieces):
            self._by_head.setdefault(piece[:2], []).append((piece, self.piece_offset + k))
        for candidates in self._by_head.values():
            candidates.sort(key=lambda c: -len(c[0]))

    @classmethod
    def from_file(cls, path: str | Path) -> ByteTextTokenizer:
        data = read_json_object(path)
        if data.get("type") != "bytes":
            raise ConfigError(f"{path}: unsupported text tokenizer type {data.get('type')!r} (expected 'bytes')")
        try:
            return cls(data.get("specials", list(TEXT_SPECIALS)), data.get("pieces", []))
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from exc

    def to_dict(self) -> dict:
        out: dict = {"type": "bytes", "specials": list(self.specials)}
        if self.pieces:
            out["pieces"] = list(self.pieces)
        return out

    def _piece_at(self, text: str, i: int) -> tuple[str, int] | None:
        for piece, piece_id in self._by_head.get(text[i : i + 2], ()):
            end = i + len(piece)
            if not text.startswith(piece, i):
                continue
            if piece[0].isalnum() and i > 0 and text[i - 1].isalnum():
                continue
            if piece[-1].isalnum() and end < len(text) and text[end].isalnum():
                continue
            return piece, piece_id
        return None

    def encode(self, text: str) -> list[int]:
        if not self.pieces:
            return [self.byte_offset + b for b in text.encode("utf-8")]
        out: list[int] = []
        i = 0
        while i < len(text):
            match = self._piece_at(text, i)
            if match is not None:
                out.append(match[1])
                i += len(match[0])
            else:
                out.extend(self.byte_offset + b for b in text[i].encode("utf-8"))
                i += 1
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """Decode ids; specials decode to nothing, incomplete UTF-8 becomes U+FFFD."""
        data = bytearray()
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"id {i} outside the byte tokenizer (size {self.vocab_size})")
            if i >= self.piece_offset:
                data.extend(self._piece_bytes[i - self.piece_offset])
            elif i >= self.byte_offset:
                data.append(i - self.byte_offset)
        return data.decode("utf-8", errors="replace")


class SentencePieceTextTokenizer:
    """LLaMA SentencePiece tokenizer (``tokenizer.model``); the ``sentencepiece`` package is imported lazily."""

    def __init__(self, model_path: str | Path) -> None:
        try:
            import sentencepiece
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                f"{model_path} needs the 'sentencepiece' package: install it with `.venv/bin/pip install sentencepiece`"
            ) from exc
        self._sp = sentencepiece.SentencePieceProcessor(model_file=str(model_path))
        self.vocab_size = int(self._sp.get_piece_size())
        self.bos_id = int(self._sp.bos_id())
        self.eos_id = int(self._sp.eos_id())
        self.unk_id = int(self._sp.unk_id())

    def encode(self, text: str) -> list[int]:
        return list(self._sp.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode(list(ids))


def load_text_tokenizer(directory: str | Path) -> TextTokenizer:
    directory = Path(directory)
    if (directory / SENTENCEPIECE_FILE).is_file():
        return SentencePieceTextTokenizer(directory / SENTENCEPIECE_FILE)
    if (directory / TEXT_TOKENIZER_FILE).is_file():
        return ByteTextTokenizer.from_file(directory / TEXT_TOKENIZER_FILE)
    raise ConfigError(f"{directory}: no text tokenizer ({SENTENCEPIECE_FILE} or {TEXT_TOKENIZER_FILE})")


# --------------------------------------------------------------------------------------------------------------------
# Unified vocabulary
# --------------------------------------------------------------------------------------------------------------------


class UnifiedVocab:
    """Text tokenizer + AnyGPT added tokens; ids are classified by range."""

    def __init__(
        self,
        text_tokenizer: TextTokenizer,
        added_tokens: dict[str, int],
        vocab_size: int | None = None,
        source: str = "<memory>",
    ) -> None:
        self.text_tokenizer = text_tokenizer
        self.text_size = int(text_tokenizer.vocab_size)
        self.source = source
        self._validate_added(added_tokens)
        self._token_to_id = dict(added_tokens)
        self._id_to_token = {i: s for s, i in added_tokens.items()}
        max_id = max(added_tokens.values(), default=self.text_size - 1)
        self.size = max(self.text_size, max_id + 1)
        if vocab_size is not None:
            if vocab_size < self.size:
                raise ValueError(f"{source}: vocab_size {vocab_size} is smaller than the ids in the file ({self.size})")
            self.size = vocab_size

        def required(token: str) -> int:
            if token not in added_tokens:
                raise ValueError(f"{source}: required token {token!r} is missing")
            return added_tokens[token]

        self.human_id = required(HUMAN)
        self.mmgpt_id = required(MMGPT)
        self.eoh_id = required(EOH)
        self.eos_id = required(EOS)
        self.text_eos_id = int(text_tokenizer.eos_id)
        self.bos_id = int(text_tokenizer.bos_id)
        self.ins_id: int | None = added_tokens.get(INS)
        self.res_id: int | None = added_tokens.get(RES)
        self.eom_id: int | None = added_tokens.get(EOM)
        self.ranges: dict[Modality, ModalityRange] = self._build_ranges(added_tokens, source)
        stops = [self.eos_id, self.text_eos_id] + ([self.eom_id] if self.eom_id is not None else [])
        self.stop_ids: frozenset[int] = frozenset(stops)
        self._start_to_modality = {r.start_id: m for m, r in self.ranges.items()}
        self._end_to_modality = {r.end_id: m for m, r in self.ranges.items()}

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_dir(cls, path: str | Path, vocab_size: int | None = None) -> UnifiedVocab:
        """The vocabulary of a tokenizer folder: ``added_tokens.json`` plus its text tokenizer (``ConfigError``
        naming the file when one is missing or malformed)."""
        path = Path(path)
        added_path = path / ADDED_TOKENS_FILE
        raw = read_json_object(added_path)
        if not all(type(v) is int for v in raw.values()):
            raise ConfigError(f"{added_path}: expected an object mapping token strings to integer ids")
        try:
            return cls(load_text_tokenizer(path), raw, vocab_size=vocab_size, source=str(added_path))
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc

    @classmethod
    def embedded(cls) -> UnifiedVocab:
        """The committed embedded default (byte text tokenizer, 1024 codes per modality)."""
        return cls.from_dir(EMBEDDED_TOKENIZER_DIR)

    def _validate_added(self, added: dict[str, int]) -> None:
        seen: dict[int, str] = {}
        for token, token_id in added.items():
            if token_id < self.text_size:
                raise ValueError(
                    f"{self.source}: added token {token!r} has id {token_id}, inside the text vocabulary "
                    f"(size {self.text_size})"
                )
            if token_id in seen:
                raise ValueError(f"{self.source}: tokens {seen[token_id]!r} and {token!r} share id {token_id}")
            seen[token_id] = token

    @staticmethod
    def _build_ranges(added: dict[str, int], source: str) -> dict[Modality, ModalityRange]:
        codes: dict[Modality, dict[int, int]] = {m: {} for m in CODE_MODALITIES}
        for token, token_id in added.items():
            match = _CODE_TOKEN_RE.match(token)
            if match:
                modality = _PREFIX_TO_MODALITY[match.group(1)]
                code = int(match.group(2))
                if code in codes[modality]:
                    raise ValueError(f"{source}: {modality.value} code {code} appears twice")
                codes[modality][code] = token_id
        ranges: dict[Modality, ModalityRange] = {}
        for modality in CODE_MODALITIES:
            table = codes[modality]
            _, start, end = _CODE_SPELLING[modality]
            if not table:
                if start in added or end in added:
                    raise ValueError(f"{source}: {start}/{end} present but no {modality.value} code tokens")
                continue
            n = len(table)
            if sorted(table) != list(range(n)):
                raise ValueError(f"{source}: {modality.value} codes are not 0..{n - 1}")
            first = table[0]
            bad = [c for c, i in table.items() if i != first + c]
            if bad:
                raise ValueError(
                    f"{source}: {modality.value} code ids are not one contiguous range "
                    f"(code {bad[0]} has id {table[bad[0]]}, expected {first + bad[0]})"
                )
            if start not in added or end not in added:
                raise ValueError(f"{source}: {modality.value} codes present but {start}/{end} missing")
            ranges[modality] = ModalityRange(modality, first, n, added[start], added[end])
        return ranges

    # ---------------------------------------------------------------- lookup
    def token_id(self, token: str) -> int:
        """Id of an added token string (e.g. ``"<sosp>"``); KeyError if absent."""
        return self._token_to_id[token]

    def token_string(self, token_id: int) -> str | None:
        """The added-token string of an id, or None for text / unassigned ids."""
        return self._id_to_token.get(token_id)

    def range_of(self, modality: Modality) -> ModalityRange:
        try:
            return self.ranges[modality]
        except KeyError:
            raise ValueError(f"modality {modality.value} has no codes in {self.source}") from None

    def start_modality(self, token_id: int) -> Modality | None:
        return self._start_to_modality.get(token_id)

    def end_modality(self, token_id: int) -> Modality | None:
        return self._end_to_modality.get(token_id)

    def classify(self, token_id: int) -> TokenInfo:
        if not isinstance(token_id, int) or token_id < 0 or token_id >= self.size:
            return TokenInfo(TokenKind.INVALID)
        if token_id in self.stop_ids:
            return TokenInfo(TokenKind.STOP)
        if token_id < self.text_size:
            return TokenInfo(TokenKind.TEXT, Modality.TEXT)
        for modality, rng in self.ranges.items():
            if rng.contains(token_id):
                return TokenInfo(TokenKind.CODE, modality, token_id - rng.first_id)
        if token_id in self._start_to_modality:
            return TokenInfo(TokenKind.START, self._start_to_modality[token_id])
        if token_id in self._end_to_modality:
            return TokenInfo(TokenKind.END, self._end_to_modality[token_id])
        if token_id in self._id_to_token:
            return TokenInfo(TokenKind.MARKER)
        return TokenInfo(TokenKind.INVALID)

    def check_id(self, token_id: int) -> int:
        if self.classify(token_id).kind is TokenKind.INVALID:
            raise ValueError(f"invalid token id {token_id!r} (vocabulary size {self.size})")
        return token_id

    # ---------------------------------------------------------------- text
    def encode_text(self, text: str) -> list[int]:
        return list(self.text_tokenizer.encode(text))

    def decode_text(self, ids: Iterable[int]) -> str:
        """Decode text ids (raises ValueError on any non-text id)."""
        ids = list(ids)
        for i in ids:
            if not (isinstance(i, int) and 0 <= i < self.text_size):
                raise ValueError(f"id {i!r} is not a text id (text vocabulary size {self.text_size})")
        return self.text_tokenizer.decode(ids)

    def render(self, ids: Iterable[int]) -> str:
        """Human-readable rendering: text decoded, added tokens as their strings (no separators)."""
        out: list[str] = []
        run: list[int] = []
        for i in ids:
            kind = self.classify(i).kind
            if kind is TokenKind.INVALID:
                raise ValueError(f"invalid token id {i!r} (vocabulary size {self.size})")
            if i < self.text_size:
                if i == self.text_eos_id:
                    if run:
                        out.append(self.text_tokenizer.decode(run))
                        run = []
                    out.append("</s>")
                else:
                    run.append(i)
                continue
            if run:
                out.append(self.text_tokenizer.decode(run))
                run = []
            out.append(self._id_to_token[i])
        if run:
            out.append(self.text_tokenizer.decode(run))
        return "".join(out)

    # ---------------------------------------------------------------- codes
    def codes_to_ids(self, modality: Modality, codes: Iterable[int]) -> list[int]:
        rng = self.range_of(modality)
        return [rng.code_to_id(int(c)) for c in codes]

    def ids_to_codes(self, modality: Modality, ids: Iterable[int]) -> list[int]:
        rng = self.range_of(modality)
        return [rng.id_to_code(int(i)) for i in ids]

    def segment_ids(self, modality: Modality, codes: Iterable[int]) -> list[int]:
        """``<soX>`` + code ids + ``<eoX>`` (AnyGPT payload, no spaces)."""
        rng = self.range_of(modality)
        return [rng.start_id, *self.codes_to_ids(modality, codes), rng.end_id]


class TextDetokenizer:
    """Streaming text decoder: push text ids one at a time, get back only complete UTF-8 text deltas.

    Keeps a small window of previous ids as context (so SentencePiece leading-space handling stays right) and holds
    text back while the decoded tail is an incomplete character (U+FFFD).
    """

    def __init__(self, vocab: UnifiedVocab) -> None:
        self.vocab = vocab
        self._ids: list[int] = []
        self._prefix = 0  # start of the context window
        self._read = 0  # ids up to here have been emitted

    def push(self, token_id: int) -> str:
        if not (isinstance(token_id, int) and 0 <= token_id < self.vocab.text_size):
            raise ValueError(f"TextDetokenizer got non-text id {token_id!r}")
        self._ids.append(token_id)
        prefix_text = self.vocab.text_tokenizer.decode(self._ids[self._prefix : self._read])
        full_text = self.vocab.text_tokenizer.decode(self._ids[self._prefix :])
        if len(full_text) > len(prefix_text) and not full_text.endswith("\ufffd"):
            delta = full_text[len(prefix_text) :]
            self._prefix = self._read
            self._read = len(self._ids)
            return delta
        return ""

    def flush(self) -> str:
        """Emit whatever is pending (an incomplete character becomes U+FFFD) and reset."""
        prefix_text = self.vocab.text_tokenizer.decode(self._ids[self._prefix : self._read])
        full_text = self.vocab.text_tokenizer.decode(self._ids[self._prefix :])
        self.reset()
        return full_text[len(prefix_text) :]

    def reset(self) -> None:
        self._ids, self._prefix, self._read = [], 0, 0


# --------------------------------------------------------------------------------------------------------------------
# Embedded default files
# --------------------------------------------------------------------------------------------------------------------


def embedded_added_tokens(
    text_size: int,
    image_codes: int = 1024,
    speech_codes: int = 1024,
    music_codes: int = 1024,
    with_ins_res: bool = True,
) -> dict[str, int]:
    """Added tokens in AnyGPT order, ids starting right after the text vocabulary."""
    tokens: list[str] = [HUMAN, MMGPT, EOH, EOS]
    for modality, n in ((Modality.IMAGE, image_codes), (Modality.SPEECH, speech_codes), (Modality.MUSIC, music_codes)):
        if n <= 0:
            raise ValueError(f"{modality.value} code count must be positive, got {n}")
        _, start, end = _CODE_SPELLING[modality]
        tokens.extend(code_token_string(modality, c) for c in range(n))
        tokens.extend([start, end])
    if with_ins_res:
        tokens.extend([INS, RES])
    return {t: text_size + k for k, t in enumerate(tokens)}


def write_embedded_vocab_files(
    directory: str | Path,
    image_codes: int = 1024,
    speech_codes: int = 1024,
    music_codes: int = 1024,
    with_ins_res: bool = True,
    pieces: Sequence[str] = (),
) -> Path:
    """Write ``text_tokenizer.json`` (byte tokenizer, with ``pieces`` if given) and ``added_tokens.json`` (AnyGPT
    order, after the text ids) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    text = ByteTextTokenizer(pieces=pieces)
    (directory / TEXT_TOKENIZER_FILE).write_text(json.dumps(text.to_dict(), indent=2) + "\n", encoding="utf-8")
    added = embedded_added_tokens(text.vocab_size, image_codes, speech_codes, music_codes, with_ins_res)
    (directory / ADDED_TOKENS_FILE).write_text(json.dumps(added, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return directory
