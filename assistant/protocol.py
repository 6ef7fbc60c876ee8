"""Every message that crosses the wire between the server, the edge client and the browser.

This module is torch-free and ray-free on purpose: the edge client and the browser page rely on it (the
browser mirrors the same names). Messages travel as JSON text on the WebRTC data channel labelled
``events``; the assistant's audio travels on the audio track, never in these messages.

Every message has a ``type``. Parsers validate size, UTF-8, JSON (and its nesting depth), Unicode (no lone
surrogates), type and field types, and raise :class:`ProtocolError` and nothing else, with a message fit to send back
to the peer: UTF-8-encodable, at most ``MAX_ERROR_CHARS`` long, quoting the peer's data only through
:func:`printable_excerpt`, and with the :class:`ErrorCode` to send it under (``too_large`` for a size limit,
``bad_message`` for the rest). :func:`to_json` never raises, whatever text the model produced.

A message larger than the data channel carries in one piece (a picture, a tune) travels as fragments
(:mod:`assistant.fragments`); the parsers see the reassembled text. One data-channel message may be
``MAX_MESSAGE_BYTES``; a reassembled one from the client up to ``MAX_UPLOAD_MESSAGE_BYTES`` (pictures and tunes
only), one from the server up to ``MAX_DOWNLOAD_MESSAGE_BYTES``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import re
import struct
from collections import Counter
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

PROTOCOL_VERSION = 1
DATA_CHANNEL_LABEL = "events"
# aiortc advertises 256 KiB; 64 KiB is what a peer may assume when the remote does not say. It bounds one
# data-channel message, the unit the server rate-limits and parses before anything else.
MAX_MESSAGE_BYTES = 64 * 1024
MAX_TEXT_CHARS = 4000
# A picture from the client (AnyGPT draws and reads 768-pixel pictures: a PNG of one is ~1 MB). Larger than one
# message, it arrives in fragments (assistant.fragments).
MAX_IMAGE_BYTES = 4 * 1024 * 1024
# A tune from the client: a WAV file (any rate, mono or stereo) of at most this many bytes and seconds.
MAX_MUSIC_BYTES = 4 * 1024 * 1024
MAX_MUSIC_SECONDS = 30.0
# The most a client message reassembled from fragments may be (only a picture or a tune may exceed
# MAX_MESSAGE_BYTES): the base64 of the largest picture or tune (4/3 of its bytes) plus the envelope and the longest
# question (MAX_TEXT_CHARS of up to 4 UTF-8 bytes each) fits, so any upload the limits above allow can be sent.
MAX_UPLOAD_MESSAGE_BYTES = 6 * 1024 * 1024
# The most a server message reassembled from fragments may be on a client (a picture the server drew).
MAX_DOWNLOAD_MESSAGE_BYTES = 32 * 1024 * 1024
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
MAX_VOICE_CHARS = 32
_VOICE_NAME = re.compile(r"[a-z0-9_-]+")
# Messages are flat objects (a list inside Ready is the deepest part), so anything deeper is not ours; the bound
# also keeps validation from walking a pathological tree.
MAX_JSON_DEPTH = 8
# Error texts go back to the peer in an ErrorEvent or an HTTP body; they stay short whatever the peer sent.
MAX_ERROR_CHARS = 300
EXCERPT_CHARS = 40  # how much of the peer's data an error text may quote


def printable_excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """``text`` quoted as printable ASCII for an error message: non-ASCII, control characters and lone surrogates are
    escaped as ``ascii()`` would, and the escaped form is cut after ``limit`` characters with ``...``."""
    pieces: list[str] = []
    used = 0
    for char in text:
        if char == "'" or char == "\\":
            piece = "\\" + char
        elif " " <= char <= "~":
            piece = char
        else:
            piece = ascii(char)[1:-1]  # \xNN, \uNNNN, \UNNNNNNNN, \n ...
        if used + len(piece) > limit:
            return "'" + "".join(pieces) + "'..."
        pieces.append(piece)
        used += len(piece)
    return "'" + "".join(pieces) + "'"


def _sendable(message: str) -> str:
    """A last guard under every ProtocolError: its text always encodes as UTF-8 and stays short."""
    message = str(message).encode("utf-8", "backslashreplace").decode("utf-8")
    if len(message) > MAX_ERROR_CHARS:
        message = message[: MAX_ERROR_CHARS - 3] + "..."
    return message


def _is_valid_unicode(text: str) -> bool:
    """False when ``text`` holds a lone UTF-16 surrogate (JSON's "\\ud800" makes one): it cannot be sent as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class ProtocolError(ValueError):
    """A message that does not follow this protocol; the text is safe to send back to the peer, ``code`` (an
    :class:`ErrorCode` value) is the code to send it under: ``too_large`` when a size limit refused it."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(_sendable(message))
        self.code: str = code if code is not None else ErrorCode.BAD_MESSAGE.value


def _too_large(message: str) -> ProtocolError:
    return ProtocolError(message, ErrorCode.TOO_LARGE.value)


class ServerEvent(StrEnum):
    READY = "ready"
    SPEECH_STARTED = "speech_started"
    SPEECH_STOPPED = "speech_stopped"
    TURN_STARTED = "turn_started"
    TRANSCRIPT = "transcript"  # what the assistant understood the user to say (AnyGPT's <-Ins-> part)
    TEXT = "text"  # a delta of the assistant's text reply
    IMAGE = "image"
    MUSIC = "music"
    INTERRUPTED = "interrupted"
    TURN_END = "turn_end"
    ERROR = "error"


class ClientEvent(StrEnum):
    HELLO = "hello"
    TEXT = "text"
    IMAGE = "image"  # a picture from the user, with an optional typed question
    MUSIC = "music"  # a tune from the user (a WAV file), with an optional typed question
    INTERRUPT = "interrupt"
    BYE = "bye"  # the caller hangs up: the server ends the session and closes the peer connection


class FinishReason(StrEnum):
    COMPLETE = "complete"
    INTERRUPTED = "interrupted"
    MAX_TOKENS = "max_tokens"
    ERROR = "error"


# ---------------------------------------------------------------------------------------------------------
# server -> client


@dataclass(frozen=True)
class Ready:
    session_id: str
    sample_rate: int  # rate of the assistant's audio before WebRTC's Opus resampling
    protocol_version: int = PROTOCOL_VERSION
    voice: str | None = None  # the voice of the spoken replies; None when the server has no voice bank
    voices: list[str] | None = None  # the voices an offer may ask for; None when the server has no voice bank
    # Secret, single-use: an offer carrying it as "resume" after the connection dropped (without bye) continues this
    # conversation on the replica that holds it (for a while); None when the server does not park conversations.
    resume_token: str | None = None
    resumed: bool = False  # this session continues a parked conversation (its history and voice)
    type: str = field(default=ServerEvent.READY.value, init=False)


@dataclass(frozen=True)
class SpeechStarted:
    type: str = field(default=ServerEvent.SPEECH_STARTED.value, init=False)


@dataclass(frozen=True)
class SpeechStopped:
    duration_s: float
    type: str = field(default=ServerEvent.SPEECH_STOPPED.value, init=False)


@dataclass(frozen=True)
class TurnStarted:
    turn_id: int
    # The turn whose question this one asks again with what the caller added: they paused mid-question, the pause
    # was taken for the end, and that turn's answer was cut off when they went on. None for a question of its own.
    continues: int | None = None
    type: str = field(default=ServerEvent.TURN_STARTED.value, init=False)


@dataclass(frozen=True)
class Transcript:
    turn_id: int
    delta: str
    type: str = field(default=ServerEvent.TRANSCRIPT.value, init=False)


@dataclass(frozen=True)
class TextDelta:
    turn_id: int
    delta: str
    type: str = field(default=ServerEvent.TEXT.value, init=False)


@dataclass(frozen=True)
class ImageReady:
    turn_id: int
    index: int
    width: int
    height: int
    png_base64: str
    type: str = field(default=ServerEvent.IMAGE.value, init=False)


@dataclass(frozen=True)
class MusicReady:
    """Announces a piece of music; its samples follow on the audio track right after the speech before it."""

    turn_id: int
    index: int
    duration_s: float
    type: str = field(default=ServerEvent.MUSIC.value, init=False)


@dataclass(frozen=True)
class Interrupted:
    turn_id: int
    type: str = field(default=ServerEvent.INTERRUPTED.value, init=False)


@dataclass(frozen=True)
class TurnEnd:
    turn_id: int
    reason: str = FinishReason.COMPLETE.value
    type: str = field(default=ServerEvent.TURN_END.value, init=False)


class ErrorCode(StrEnum):
    """What went wrong, for programs; ``ErrorEvent.message`` says it for people."""

    BAD_MESSAGE = "bad_message"  # a client message the server could not use (the message says why)
    RATE_LIMITED = "rate_limited"  # the client sent messages or started turns faster than allowed; that one was dropped
    TOO_LARGE = "too_large"  # a message, turn or upload over a limit
    TURN_FAILED = "turn_failed"  # the reply could not be produced (a model failed or timed out); the next turn may work
    UNAVAILABLE = "unavailable"  # a model deployment is down or overloaded; try again shortly
    TIMEOUT = "timeout"  # the session ended for inactivity, or never connected
    INTERNAL = "internal"  # a server fault; the text carries no detail


@dataclass(frozen=True)
class ErrorEvent:
    message: str
    turn_id: int | None = None
    code: str | None = None  # an ErrorCode value; None from servers older than the field
    type: str = field(default=ServerEvent.ERROR.value, init=False)


# ---------------------------------------------------------------------------------------------------------
# client -> server


@dataclass(frozen=True)
class Hello:
    client: str = "unknown"
    protocol_version: int = PROTOCOL_VERSION
    type: str = field(default=ClientEvent.HELLO.value, init=False)


@dataclass(frozen=True)
class TextMessage:
    text: str
    type: str = field(default=ClientEvent.TEXT.value, init=False)


@dataclass(frozen=True)
class ImageMessage:
    """A picture (PNG or JPEG, base64) and an optional typed question about it.

    With ``text`` the picture and the question start a turn at once. Without it the server keeps the picture and
    attaches it to the user's next turn (usually the spoken question); a newer picture replaces it and an
    ``interrupt`` message drops it. The server's voice detection interrupting a reply (the user starts to speak
    over it: barge-in) keeps it, since that speech is usually the question about the picture.
    """

    png_base64: str  # named for the common case; JPEG bytes are accepted too
    text: str | None = None
    type: str = field(default=ClientEvent.IMAGE.value, init=False)

    @classmethod
    def from_bytes(cls, data: bytes, text: str | None = None) -> ImageMessage:
        """Builds the message for a picture, raising :class:`ProtocolError` when the server would refuse it. A
        message over ``MAX_MESSAGE_BYTES`` is the fragment layer's to carry (:mod:`assistant.fragments`)."""
        message = cls(png_base64=base64.b64encode(data).decode("ascii"), text=text)
        _refuse_nul(message)
        _check_image_message(message)
        return message

    def image_bytes(self) -> bytes:
        return base64.b64decode(self.png_base64, validate=True)


@dataclass(frozen=True)
class MusicMessage:
    """A tune (a WAV file, base64: any rate, mono or stereo, at most ``MAX_MUSIC_SECONDS`` and ``MAX_MUSIC_BYTES``)
    and an optional typed question about it.

    The same rules as :class:`ImageMessage`: with ``text`` it starts a turn at once; without it the server keeps the
    tune for the user's next turn (a newer tune replaces it, an ``interrupt`` message drops it, a barge-in keeps it).
    """

    wav_base64: str
    text: str | None = None
    type: str = field(default=ClientEvent.MUSIC.value, init=False)

    @classmethod
    def from_bytes(cls, data: bytes, text: str | None = None) -> MusicMessage:
        """Builds the message for a WAV file, raising :class:`ProtocolError` when the server would refuse it."""
        message = cls(wav_base64=base64.b64encode(data).decode("ascii"), text=text)
        _refuse_nul(message)
        _check_music_message(message)
        return message

    def wav_bytes(self) -> bytes:
        return base64.b64decode(self.wav_base64, validate=True)

    def wave(self) -> tuple[np.ndarray, int]:
        """The tune as a float32 mono wave (channels averaged) and its sample rate; needs soundfile. Raises
        :class:`ProtocolError` when the file cannot be decoded."""
        from assistant.audio import AudioFormatError, decode_wav_bytes  # numpy and soundfile, only when asked

        try:
            return decode_wav_bytes(self.wav_bytes(), max_seconds=MAX_MUSIC_SECONDS)
        except (AudioFormatError, binascii.Error, ValueError) as exc:
            raise ProtocolError(f"the tune cannot be decoded: {exc}") from None


@dataclass(frozen=True)
class WavInfo:
    """What a WAV file's header says about its samples (read by :func:`wav_info` without decoding them)."""

    format_tag: int  # 1 PCM, 3 IEEE float, 6 A-law, 7 mu-law (WAVE_FORMAT_EXTENSIBLE: its sub-format)
    channels: int
    sample_rate: int
    bits_per_sample: int
    frames: int  # samples per channel in the data chunk (what is present of it)

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate


@dataclass(frozen=True)
class InterruptMessage:
    type: str = field(default=ClientEvent.INTERRUPT.value, init=False)


@dataclass(frozen=True)
class ByeMessage:
    """Ends the session: the server stops any reply, frees the session and closes the peer connection (which the
    caller sees as its data channel closing). Everything after the offer travels on the peer connection, so with
    several gateway replicas no HTTP request has to find the replica that holds the session."""

    type: str = field(default=ClientEvent.BYE.value, init=False)


ServerMessage = (
    Ready
    | SpeechStarted
    | SpeechStopped
    | TurnStarted
    | Transcript
    | TextDelta
    | ImageReady
    | MusicReady
    | Interrupted
    | TurnEnd
    | ErrorEvent
)
ClientMessage = Hello | TextMessage | ImageMessage | MusicMessage | InterruptMessage | ByeMessage


def to_json(message: ServerMessage | ClientMessage) -> str:
    """The message as JSON text; never raises. A lone surrogate in a string field (model text can hold one) becomes
    U+FFFD, so the text always encodes as UTF-8 on the data channel."""
    fields = asdict(message)
    try:
        text = json.dumps(fields, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:  # NaN or infinity (e.g. a duration): JSON has no such number and browsers refuse the message
        finite = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in fields.items()}
        text = json.dumps(finite, ensure_ascii=False, separators=(",", ":"))
    if _is_valid_unicode(text):
        return text
    # Through UTF-16 so that a surrogate pair split across code units is joined, and only lone halves are replaced.
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


# ---------------------------------------------------------------------------------------------------------
# parsing

_SERVER_CLASSES: dict[str, type] = {
    ServerEvent.READY.value: Ready,
    ServerEvent.SPEECH_STARTED.value: SpeechStarted,
    ServerEvent.SPEECH_STOPPED.value: SpeechStopped,
    ServerEvent.TURN_STARTED.value: TurnStarted,
    ServerEvent.TRANSCRIPT.value: Transcript,
    ServerEvent.TEXT.value: TextDelta,
    ServerEvent.IMAGE.value: ImageReady,
    ServerEvent.MUSIC.value: MusicReady,
    ServerEvent.INTERRUPTED.value: Interrupted,
    ServerEvent.TURN_END.value: TurnEnd,
    ServerEvent.ERROR.value: ErrorEvent,
}
_CLIENT_CLASSES: dict[str, type] = {
    ClientEvent.HELLO.value: Hello,
    ClientEvent.TEXT.value: TextMessage,
    ClientEvent.IMAGE.value: ImageMessage,
    ClientEvent.MUSIC.value: MusicMessage,
    ClientEvent.INTERRUPT.value: InterruptMessage,
    ClientEvent.BYE.value: ByeMessage,
}
# Field -> accepted python types, checked before construction so a wrong type is a ProtocolError, not a crash
# somewhere downstream.
_FIELD_TYPES: dict[type, dict[str, tuple[type, ...]]] = {
    Ready: {
        "session_id": (str,),
        "sample_rate": (int,),
        "protocol_version": (int,),
        "voice": (str, type(None)),
        "voices": (list, type(None)),
        "resume_token": (str, type(None)),
        "resumed": (bool,),
    },
    SpeechStarted: {},
    SpeechStopped: {"duration_s": (int, float)},
    TurnStarted: {"turn_id": (int,), "continues": (int, type(None))},
    Transcript: {"turn_id": (int,), "delta": (str,)},
    TextDelta: {"turn_id": (int,), "delta": (str,)},
    ImageReady: {"turn_id": (int,), "index": (int,), "width": (int,), "height": (int,), "png_base64": (str,)},
    MusicReady: {"turn_id": (int,), "index": (int,), "duration_s": (int, float)},
    Interrupted: {"turn_id": (int,)},
    TurnEnd: {"turn_id": (int,), "reason": (str,)},
    ErrorEvent: {"message": (str,), "turn_id": (int, type(None)), "code": (str, type(None))},
    Hello: {"client": (str,), "protocol_version": (int,)},
    TextMessage: {"text": (str,)},
    ImageMessage: {"png_base64": (str,), "text": (str, type(None))},
    MusicMessage: {"wav_base64": (str,), "text": (str, type(None))},
    InterruptMessage: {},
    ByeMessage: {},
}
_OPTIONAL_FIELDS: dict[type, set[str]] = {
    Ready: {"protocol_version", "voice", "voices", "resume_token", "resumed"},
    ErrorEvent: {"turn_id", "code"},
    TurnStarted: {"continues"},
    TurnEnd: {"reason"},
    Hello: {"client", "protocol_version"},
    ImageMessage: {"text"},
    MusicMessage: {"text"},
}
# The client messages that may be larger than MAX_MESSAGE_BYTES (reassembled from fragments).
_LARGE_CLIENT_CLASSES = (ImageMessage, MusicMessage)


def _text_of(raw: str | bytes, max_bytes: int, what: str) -> str:
    """Size check and strict UTF-8: ``raw`` as text that is valid Unicode."""
    if isinstance(raw, (bytes, bytearray, memoryview)):
        data = bytes(raw)
        if len(data) > max_bytes:
            raise _too_large(f"{what} of {len(data)} bytes exceeds the limit of {max_bytes} bytes")
        try:
            # Explicitly UTF-8: json.loads(bytes) would also guess UTF-16 and UTF-32.
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"{what} is not valid UTF-8 (byte {exc.start})") from None
    if not isinstance(raw, str):
        raise ProtocolError(f"{what} must be text or bytes")
    if len(raw) > max_bytes:  # every character takes at least one byte: too large, without encoding all of it
        raise _too_large(f"{what} of {len(raw)} characters exceeds the limit of {max_bytes} bytes")
    size = len(raw.encode("utf-8", "surrogatepass"))  # surrogatepass: a lone surrogate counts, it does not raise
    if size > max_bytes:
        raise _too_large(f"{what} of {size} bytes exceeds the limit of {max_bytes} bytes")
    if not _is_valid_unicode(raw):
        raise ProtocolError(f"{what} is not valid Unicode (it holds a lone surrogate)")
    return raw


def _check_tree(obj: Any, what: str) -> None:
    """Every string (keys too) valid Unicode and no container deeper than MAX_JSON_DEPTH; iterative, so a deep tree
    cannot exhaust the stack here."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if not _is_valid_unicode(value):
                raise ProtocolError(f"{what} holds a string that is not valid Unicode (a lone surrogate)")
        elif isinstance(value, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise ProtocolError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
            if isinstance(value, dict):
                stack.extend((key, depth) for key in value)
                stack.extend((item, depth + 1) for item in value.values())
            else:
                stack.extend((item, depth + 1) for item in value)


def _load_json(raw: str | bytes, max_bytes: int, what: str) -> Any:
    text = _text_of(raw, max_bytes, what)
    try:
        obj = json.loads(text)
    except RecursionError:  # json's C parser recurses per nesting level
        raise ProtocolError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels") from None
    except json.JSONDecodeError as exc:
        # exc.msg is json's own wording (no quoted input); the position says where.
        raise ProtocolError(f"{what} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except ValueError:  # an integer over Python's digit limit for int(str), for one
        raise ProtocolError(f"{what} is not valid JSON: it holds a value that cannot be read") from None
    _check_tree(obj, what)
    return obj


def _decode(raw: str | bytes, max_bytes: int) -> dict[str, Any]:
    obj = _load_json(raw, max_bytes, "message")
    if not isinstance(obj, dict):
        raise ProtocolError("message must be a JSON object")
    if not isinstance(obj.get("type"), str):
        raise ProtocolError("message has no string field 'type'")
    return obj


def _build(cls: type, obj: dict[str, Any]) -> Any:
    spec = _FIELD_TYPES[cls]
    optional = _OPTIONAL_FIELDS.get(cls, set())
    kind = {f.name: f.default for f in dataclasses.fields(cls)}["type"]  # our own name for it, not the peer's text
    kwargs = {}
    for name, types in spec.items():
        if name not in obj:
            if name in optional:
                continue
            raise ProtocolError(f"'{kind}' message is missing field '{name}'")
        value = obj[name]
        # bool is an int subclass; a boolean where a number belongs is a client bug worth reporting.
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            want = " or ".join(t.__name__ for t in types)
            raise ProtocolError(f"field '{name}' of '{kind}' must be {want}")
        kwargs[name] = value
    return cls(**kwargs)


def parse_client_message(raw: str | bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> ClientMessage:
    """One message from the client; raises :class:`ProtocolError` and nothing else.

    max_bytes: the most the message may be: ``MAX_MESSAGE_BYTES`` for one data-channel message, up to
    ``MAX_UPLOAD_MESSAGE_BYTES`` for one reassembled from fragments. Only a picture or a tune may be larger than
    ``MAX_MESSAGE_BYTES``: any other message over it is refused (``too_large``) whatever ``max_bytes`` allows."""
    obj = _decode(raw, max_bytes)
    cls = _CLIENT_CLASSES.get(obj["type"])
    if cls is None:
        raise ProtocolError(f"unknown message type {printable_excerpt(obj['type'])}")
    if max_bytes > MAX_MESSAGE_BYTES and cls not in _LARGE_CLIENT_CLASSES:
        size = len(bytes(raw)) if isinstance(raw, (bytes, bytearray, memoryview)) else len(raw.encode("utf-8"))
        if size > MAX_MESSAGE_BYTES:
            kind = {f.name: f.default for f in dataclasses.fields(cls)}["type"]
            raise _too_large(
                f"a '{kind}' message of {size} bytes exceeds the limit of {MAX_MESSAGE_BYTES} bytes (only pictures "
                "and tunes may be larger)"
            )
    message = _build(cls, obj)
    _refuse_nul(message)
    if isinstance(message, TextMessage):
        if not message.text.strip():
            raise ProtocolError("text message is empty")
        if len(message.text) > MAX_TEXT_CHARS:
            raise ProtocolError(f"text message longer than {MAX_TEXT_CHARS} characters")
    elif isinstance(message, ImageMessage):
        if message.text is not None and not message.text.strip():
            message = ImageMessage(png_base64=message.png_base64)  # a blank question is no question
        _check_image_message(message)
    elif isinstance(message, MusicMessage):
        if message.text is not None and not message.text.strip():
            message = MusicMessage(wav_base64=message.wav_base64)
        _check_music_message(message)
    return message


def _refuse_nul(message: ClientMessage) -> None:
    # Control characters other than NUL pass through untouched (a typed tab or newline is text); NUL is never text
    # and truncates the string in C code further down (logs, tokenizers).
    for name, value in vars(message).items():
        if isinstance(value, str) and "\x00" in value:
            raise ProtocolError(f"field '{name}' of '{message.type}' holds a NUL character")


def image_kind(data: bytes) -> str | None:
    """ "png" or "jpeg" from the leading signature, None for anything else."""
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(JPEG_SIGNATURE):
        return "jpeg"
    return None


def _check_image_message(message: ImageMessage) -> None:
    if message.text is not None and len(message.text) > MAX_TEXT_CHARS:
        raise ProtocolError(f"the picture's question is longer than {MAX_TEXT_CHARS} characters")
    try:
        data = message.image_bytes()
    except (binascii.Error, ValueError):
        raise ProtocolError("field 'png_base64' of 'image' is not valid base64") from None
    if not data:
        raise ProtocolError("image message carries no picture")
    if len(data) > MAX_IMAGE_BYTES:
        raise _too_large(f"picture of {len(data)} bytes exceeds the limit of {MAX_IMAGE_BYTES} bytes")
    if image_kind(data) is None:
        raise ProtocolError("picture is neither PNG nor JPEG (checked by its first bytes)")


def _check_music_message(message: MusicMessage) -> None:
    if message.text is not None and len(message.text) > MAX_TEXT_CHARS:
        raise ProtocolError(f"the tune's question is longer than {MAX_TEXT_CHARS} characters")
    try:
        data = message.wav_bytes()
    except (binascii.Error, ValueError):
        raise ProtocolError("field 'wav_base64' of 'music' is not valid base64") from None
    if not data:
        raise ProtocolError("music message carries no tune")
    if len(data) > MAX_MUSIC_BYTES:
        raise _too_large(f"tune of {len(data)} bytes exceeds the limit of {MAX_MUSIC_BYTES} bytes")
    info = wav_info(data)
    if info.duration_s > MAX_MUSIC_SECONDS:
        raise _too_large(f"tune of {info.duration_s:.1f} s exceeds the limit of {MAX_MUSIC_SECONDS:g} s")


# The WAV encodings soundfile decodes that a tune may use, by format tag, and their sample sizes in bits.
_WAV_ENCODINGS = {1: ("PCM", (8, 16, 24, 32)), 3: ("float", (32, 64)), 6: ("A-law", (8,)), 7: ("mu-law", (8,))}
_WAV_EXTENSIBLE = 0xFFFE
MIN_WAV_RATE = 4000
MAX_WAV_RATE = 192_000


def wav_info(data: bytes) -> WavInfo:
    """Reads the header of a WAV file (RIFF/WAVE: its ``fmt `` and ``data`` chunks) without decoding a sample; raises
    :class:`ProtocolError` unless it is a mono or stereo PCM, float, A-law or mu-law file with samples."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ProtocolError("tune is not a WAV file (it does not start with a RIFF/WAVE header)")
    layout: tuple[int, int, int, int, int] | None = None  # format tag, channels, rate, block align, bits
    pos = 12
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        body = pos + 8
        if chunk == b"fmt ":
            if size < 16 or body + 16 > len(data):
                raise ProtocolError("tune's WAV 'fmt ' chunk is cut short")
            tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", data, body)
            if tag == _WAV_EXTENSIBLE:  # the real encoding is the first two bytes of the sub-format GUID
                if size < 40 or body + 26 > len(data):
                    raise ProtocolError("tune's WAV 'fmt ' chunk is cut short")
                tag = struct.unpack_from("<H", data, body + 24)[0]
            layout = (tag, channels, rate, block_align, bits)
        elif chunk == b"data":
            if layout is None:
                raise ProtocolError("tune's WAV file has its samples before its 'fmt ' chunk")
            present = min(size, len(data) - body)  # a streamed file may declare more (or 0xFFFFFFFF)
            return _checked_wav(*layout, data_bytes=present)
        pos = body + size + (size & 1)  # chunks are padded to an even length
    raise ProtocolError("tune's WAV file has no 'data' chunk" if layout else "tune's WAV file has no 'fmt ' chunk")


def _checked_wav(tag: int, channels: int, rate: int, block_align: int, bits: int, *, data_bytes: int) -> WavInfo:
    encoding = _WAV_ENCODINGS.get(tag)
    if encoding is None:
        raise ProtocolError(f"tune's WAV encoding (format {tag}) is not PCM, float, A-law or mu-law")
    name, sizes = encoding
    if bits not in sizes:
        raise ProtocolError(f"tune's {name} samples of {bits} bits are not supported")
    if channels not in (1, 2):
        raise ProtocolError(f"tune must be mono or stereo, not {channels} channels")
    if not MIN_WAV_RATE <= rate <= MAX_WAV_RATE:
        raise ProtocolError(f"tune's sample rate of {rate} Hz is outside {MIN_WAV_RATE}..{MAX_WAV_RATE} Hz")
    if block_align != channels * bits // 8:
        raise ProtocolError(f"tune's WAV header is inconsistent (block align {block_align} for {channels}x{bits} bits)")
    frames = data_bytes // block_align
    if frames == 0:
        raise ProtocolError("tune holds no samples")
    return WavInfo(format_tag=tag, channels=channels, sample_rate=rate, bits_per_sample=bits, frames=frames)


def parse_server_message(raw: str | bytes, max_bytes: int = MAX_DOWNLOAD_MESSAGE_BYTES) -> ServerMessage:
    # Server messages carry PNGs (reassembled from fragments), so the client accepts more than the server does.
    obj = _decode(raw, max_bytes)
    cls = _SERVER_CLASSES.get(obj["type"])
    if cls is None:
        raise ProtocolError(f"unknown message type {printable_excerpt(obj['type'])}")
    message = _build(cls, obj)
    if isinstance(message, Ready) and message.voices is not None:
        if not all(isinstance(v, str) for v in message.voices):
            raise ProtocolError("field 'voices' of 'ready' must be a list of strings")
    return message


def validate_voice_name(voice: Any) -> str:
    """Returns ``voice`` when it is a well-formed voice name, else raises :class:`ProtocolError`."""
    if not isinstance(voice, str):
        raise ProtocolError("field 'voice' must be a string")
    if not voice or len(voice) > MAX_VOICE_CHARS:
        raise ProtocolError(f"field 'voice' must have 1 to {MAX_VOICE_CHARS} characters")
    if not _VOICE_NAME.fullmatch(voice):
        raise ProtocolError("field 'voice' may only hold lowercase letters, digits, '_' and '-'")
    return voice


# ---------------------------------------------------------------------------------------------------------
# signalling (HTTP POST /offer)

MAX_SDP_LINES = 500  # a browser's audio + data channel offer has well under 100
# C0 controls other than TAB, LF and CR, DEL and the C1 controls: no SDP line holds them.
_SDP_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_OFFER_MEDIA = ("audio", "application")  # the one audio section and the data channel (error texts list them so)


@dataclass(frozen=True)
class OfferRequest:
    """The body of ``POST /offer``: ``{"sdp", "type": "offer"}`` and optionally ``"voice"``, the name of the voice
    the assistant should speak with (see ``GET /voices``; left out = the server's default), and ``"resume"``, the
    ``resume_token`` of an earlier session's ``ready``: the replica that still holds that conversation continues it
    (then the voice is the conversation's own); an unknown, expired or used token gets a fresh conversation."""

    sdp: str
    type: str = "offer"
    voice: str | None = None
    resume: str | None = None

    MAX_SDP_BYTES = 64 * 1024

    def to_dict(self) -> dict[str, str]:
        body = {"sdp": self.sdp, "type": self.type}
        if self.voice is not None:
            body["voice"] = self.voice
        if self.resume is not None:
            body["resume"] = self.resume
        return body

    @classmethod
    def parse(cls, obj: Any) -> OfferRequest:
        if not isinstance(obj, dict):
            raise ProtocolError("offer must be a JSON object with 'sdp' and 'type'")
        voice = obj.get("voice")
        if voice is not None:
            validate_voice_name(voice)
        resume = obj.get("resume")
        if resume is not None and not (isinstance(resume, str) and _RESUME_TOKEN.fullmatch(resume)):
            raise ProtocolError("field 'resume' must be a resume token from 'ready' (16 to 128 of A-Z a-z 0-9 _ -)")
        sdp, kind = obj.get("sdp"), obj.get("type")
        if kind != "offer":
            raise ProtocolError("field 'type' must be 'offer'")
        if not isinstance(sdp, str) or not sdp.strip():
            raise ProtocolError("field 'sdp' must be a non-empty string")
        if not _is_valid_unicode(sdp):
            raise ProtocolError("sdp is not valid Unicode (it holds a lone surrogate)")
        if len(sdp.encode("utf-8")) > cls.MAX_SDP_BYTES:
            raise ProtocolError(f"sdp exceeds {cls.MAX_SDP_BYTES} bytes")
        control = _SDP_CONTROL.search(sdp)
        if control is not None:
            raise ProtocolError(
                f"sdp holds the control character {printable_excerpt(control.group())} at offset "
                f"{control.start()}; only TAB, CR and LF may appear"
            )
        if not sdp.startswith("v=0"):
            raise ProtocolError("sdp does not start with 'v=0'")
        _check_offer_media(sdp)
        _check_offer_security(sdp)
        return cls(sdp=sdp, voice=voice, resume=resume)


# What a resume token looks like (the server makes them with secrets.token_urlsafe(32): 43 such characters).
_RESUME_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,128}")


# An offer without these can never connect: aiortc would accept it and fail later in the background, holding a
# session slot until the connect deadline. DTLS needs the fingerprint (media is always encrypted), ICE the credentials.
_OFFER_REQUIRED_ATTRIBUTES = ("a=fingerprint:", "a=ice-ufrag:", "a=ice-pwd:")


def _check_offer_security(sdp: str) -> None:
    lines = [line.rstrip("\r") for line in sdp.split("\n")]
    missing = [attr[2:-1] for attr in _OFFER_REQUIRED_ATTRIBUTES if not any(line.startswith(attr) for line in lines)]
    if missing:
        raise ProtocolError(
            f"offer has no {', '.join(missing)} attribute: it could never connect (WebRTC needs DTLS "
            "fingerprints and ICE credentials)"
        )


def _check_offer_media(sdp: str) -> None:
    """Exactly one ``m=audio`` and one ``m=application`` line and no other media (each counted at a line start)."""
    lines = sdp.split("\n")
    if lines[-1] == "":
        lines.pop()  # the final CRLF ends the last line; it does not start another
    if len(lines) > MAX_SDP_LINES:
        raise ProtocolError(f"sdp has {len(lines)} lines, over the limit of {MAX_SDP_LINES}")
    kinds = Counter(line[2:].split(" ", 1)[0].rstrip("\r") for line in lines if line.startswith("m="))
    if all(kinds[kind] == 1 for kind in _OFFER_MEDIA) and len(kinds) == len(_OFFER_MEDIA):
        return
    counts = [f"{kinds.pop(kind, 0)} {kind}" for kind in _OFFER_MEDIA]
    shown = 4  # a few of the other kinds are enough to say what is wrong
    counts += [f"{n} {printable_excerpt(kind, 16)}" for kind, n in kinds.most_common(shown)]
    if len(kinds) > shown:
        counts.append(f"{len(kinds) - shown} more kinds")
    raise ProtocolError(
        f"offer must have exactly one audio section and one data channel (label "
        f"'{DATA_CHANNEL_LABEL}') and no other media; got {', '.join(counts)}"
    )


# JSON doubles every CRLF of the SDP ("\\r\\n"), so the body may be up to twice the SDP it carries.
MAX_OFFER_BODY_BYTES = 2 * OfferRequest.MAX_SDP_BYTES


def parse_offer_body(raw: bytes, max_bytes: int = MAX_OFFER_BODY_BYTES) -> OfferRequest:
    """The body of ``POST /offer`` as it arrived: size, UTF-8, JSON, then :meth:`OfferRequest.parse`. Raises
    :class:`ProtocolError` and nothing else, so every refusal is a 400 whose text can go back to the caller."""
    return OfferRequest.parse(_load_json(raw, max_bytes, "offer body"))


@dataclass(frozen=True)
class OfferAnswer:
    sdp: str
    session_id: str
    type: str = "answer"

    def to_dict(self) -> dict[str, str]:
        return {"sdp": self.sdp, "type": self.type, "session_id": self.session_id}
