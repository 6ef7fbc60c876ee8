"""Data-channel messages larger than one data-channel message: sent as consecutive fragments, reassembled here.

Messages stay JSON text. A message whose UTF-8 encoding is larger than the sender's limit goes as ``count`` fragment
messages::

    {"type":"fragment","id":ID,"index":i,"count":n,"data":TEXT}

- ``id``: 1 to 32 characters of ``[A-Za-z0-9_-]``, fresh for every message;
- ``index``: 0 to n-1, sent in order; ``count``: n >= 2, the same in every fragment of the message;
- the ``data`` strings concatenated in index order are the whole message's JSON text, which is then parsed as usual
  (:mod:`assistant.protocol`);
- each fragment's own UTF-8 JSON encoding is at most the sender's limit: the peer's advertised SDP
  ``a=max-message-size`` (:func:`max_message_size_of`: 65536 when absent or 0, never more than 65536);
- a sender sends every fragment of one message before any fragment of another (a small unfragmented message may come
  in between, and is handled as usual), so a receiver holds at most one message in reassembly: the first fragment of
  another message while one is incomplete abandons the incomplete one.

:func:`split_message` is the sender's side. :class:`Reassembler` is the receiver's: every incoming message goes
through :meth:`Reassembler.push` (a message that is not a fragment comes straight back), or, for a receiver that
treats fragments differently before reassembly (the server's byte budget), :func:`might_be_fragment` (no parse),
:func:`parse_fragment` and then :meth:`Reassembler.add`. Bad fragments raise :class:`FragmentError`, a
:class:`~assistant.protocol.ProtocolError` whose ``code`` is ``bad_message`` or ``too_large`` and whose text is fit
to send back to the peer. One bad message costs one error: the later fragments of a dropped message go quietly.

The browser page implements the same format in JavaScript. This module imports neither torch nor aiortc.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

from assistant.protocol import ErrorCode, ProtocolError

FRAGMENT_TYPE = "fragment"
# RFC 8841: the size a peer may assume when the SDP does not say; also the most this project ever sends in one message.
DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024
MAX_ID_CHARS = 32
# split_message needs room for the envelope (about 90 bytes with a long index) and a few characters of data.
MIN_SPLIT_BYTES = 256
_REMEMBERED_DROPS = 4  # see Reassembler._dropped_ids
_FRAGMENT_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
_MAX_MESSAGE_SIZE_LINE = re.compile(r"^a=max-message-size:(\d+)\s*$")


class FragmentError(ProtocolError):
    """A fragment that cannot be used, or a message lost in reassembly; the text says which message and why."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.BAD_MESSAGE) -> None:
        super().__init__(message, code.value)


def max_message_size_of(sdp: str) -> int:
    """The most one message to the peer that wrote ``sdp`` may be: its ``a=max-message-size`` (of the data-channel
    section when there is one), 65536 when it says nothing or 0 (RFC 8841's "no limit"), and never over 65536 (the
    limit every browser accepts)."""
    in_application = False
    found: int | None = None
    for line in sdp.splitlines():
        if line.startswith("m="):
            in_application = line.startswith("m=application")
            continue
        match = _MAX_MESSAGE_SIZE_LINE.match(line)
        if match is not None and (in_application or found is None):
            found = int(match.group(1))
            if in_application:
                break
    if not found:
        return DEFAULT_MAX_MESSAGE_SIZE
    return min(found, DEFAULT_MAX_MESSAGE_SIZE)


def new_fragment_id() -> str:
    """A fresh message id: 16 random characters of ``[A-Za-z0-9_-]``."""
    return secrets.token_urlsafe(12)


def _fragment_json(message_id: str, index: int, count: int, data: str) -> str:
    fragment = {"type": FRAGMENT_TYPE, "id": message_id, "index": index, "count": count, "data": data}
    return json.dumps(fragment, ensure_ascii=False, separators=(",", ":"))


def _escaped_size(text: str) -> int:
    """UTF-8 bytes of ``text`` inside a JSON string (quotes, backslashes and control characters escaped)."""
    return len(json.dumps(text, ensure_ascii=False).encode("utf-8")) - 2


def _cut(text: str, budget: int) -> list[str]:
    """``text`` in pieces of at most ``budget`` escaped bytes each, cut on character boundaries, each as long as it
    can be. The escaped size of a prefix only grows with its length, so the longest prefix that fits is found by
    bisection; every character takes at least one byte, so no more than ``budget`` characters ever fit."""
    pieces: list[str] = []
    start = 0
    while start < len(text):
        end = min(len(text), start + budget)
        if _escaped_size(text[start:end]) > budget:
            fits, too_long = start + 1, end  # one character is at most 6 escaped bytes (\u001f), under any budget
            while too_long - fits > 1:
                middle = (fits + too_long) // 2
                if _escaped_size(text[start:middle]) <= budget:
                    fits = middle
                else:
                    too_long = middle
            end = fits
        pieces.append(text[start:end])
        start = end
    return pieces


def split_message(text: str, max_bytes: int) -> list[str]:
    """``text`` (a message's JSON) as the messages to send: ``[text]`` when its UTF-8 encoding fits ``max_bytes``,
    else its fragments in order, each at most ``max_bytes`` bytes of UTF-8 JSON. Raises ``ValueError`` when ``text``
    is not valid Unicode (a lone surrogate) or ``max_bytes`` is under ``MIN_SPLIT_BYTES`` and the text needs cutting."""
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError("the message holds a lone surrogate; it cannot be sent as UTF-8") from None
    if size <= max_bytes:
        return [text]
    if max_bytes < MIN_SPLIT_BYTES:
        raise ValueError(f"cannot split a message into fragments of {max_bytes} bytes (at least {MIN_SPLIT_BYTES})")
    message_id = new_fragment_id()
    digits = 1  # of the index and count numbers, which the room left for data depends on
    while True:
        largest = 10**digits - 1
        envelope = len(_fragment_json(message_id, largest, largest, "").encode("utf-8"))
        pieces = _cut(text, max_bytes - envelope)
        if len(str(len(pieces))) <= digits:
            break
        digits = len(str(len(pieces)))
    return [_fragment_json(message_id, i, len(pieces), piece) for i, piece in enumerate(pieces)]


@dataclass(frozen=True)
class Fragment:
    """One fragment, checked for its own sake (not yet against the message it continues)."""

    id: str
    index: int
    count: int
    data: str
    size: int  # UTF-8 bytes of ``data``


def might_be_fragment(raw: str | bytes) -> bool:
    """False for a message that is surely not a fragment, without parsing it: every JSON encoder spells the type
    ``"fragment"`` out, and a receiver need not take one that escapes its letters (the protocol parser then refuses
    it as an unknown type)."""
    if isinstance(raw, str):
        return FRAGMENT_TYPE in raw
    if isinstance(raw, (bytes, bytearray, memoryview)):
        return FRAGMENT_TYPE.encode("ascii") in bytes(raw)
    return False


def parse_fragment(raw: str | bytes) -> Fragment | None:
    """``raw`` as a :class:`Fragment`; None when it is not one (not a JSON object whose ``type`` is ``"fragment"``:
    the protocol parser judges it then). Raises :class:`FragmentError` for a fragment with missing or bad fields."""
    if not might_be_fragment(raw):  # every other message skips the JSON parse here (the protocol parser does its own)
        return None
    if isinstance(raw, str):
        text = raw
    else:
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            return None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict) or obj.get("type") != FRAGMENT_TYPE:
        return None
    message_id = obj.get("id")
    if not isinstance(message_id, str) or not _FRAGMENT_ID.fullmatch(message_id):
        raise FragmentError(f"fragment field 'id' must be 1 to {MAX_ID_CHARS} characters of A-Z, a-z, 0-9, '_' and '-'")
    index, count, data = obj.get("index"), obj.get("count"), obj.get("data")
    if isinstance(index, bool) or not isinstance(index, int):  # bool is an int subclass, and no index
        raise FragmentError(f"field 'index' of fragment {message_id} must be an integer")
    if isinstance(count, bool) or not isinstance(count, int):
        raise FragmentError(f"field 'count' of fragment {message_id} must be an integer")
    if count < 2:
        raise FragmentError(f"fragment {message_id} has count {count}; a fragmented message has at least 2")
    if not 0 <= index < count:
        raise FragmentError(f"fragment {message_id} has index {index}, outside 0..{count - 1}")
    if not isinstance(data, str):
        raise FragmentError(f"field 'data' of fragment {message_id} must be a string")
    try:
        size = len(data.encode("utf-8"))
    except UnicodeEncodeError:
        raise FragmentError(
            f"the data of fragment {index} of message {message_id} is not valid Unicode (a lone surrogate: "
            "fragments are cut between characters)"
        ) from None
    return Fragment(id=message_id, index=index, count=count, data=data, size=size)


@dataclass
class _Partial:
    id: str
    count: int
    started_at: float
    parts: list[str] = field(default_factory=list)
    size: int = 0

    @property
    def received(self) -> int:
        return len(self.parts)


class Reassembler:
    """Puts fragmented messages back together, one at a time (see the module docstring).

    max_bytes: the most a whole message may be, in UTF-8 bytes (``too_large`` past it).
    max_count: the most fragments one message may have (``too_large`` past it).
    timeout_s: an incomplete message older than this (since its first fragment) is dropped, reported by
        :meth:`expire` or by the next fragment; None keeps it until a fragment of another message comes.
    now: the clock of the timeout (seconds, monotonic).
    """

    def __init__(
        self,
        max_bytes: int,
        max_count: int = 512,
        timeout_s: float | None = 15.0,
        now: Callable[[], float] = time.monotonic,
    ):
        if max_bytes < 1 or max_count < 2:
            raise ValueError("a reassembler needs max_bytes >= 1 and max_count >= 2")
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0 or None, got {timeout_s}")
        self.max_bytes = max_bytes
        self.max_count = max_count
        self.timeout_s = timeout_s
        self._now = now
        self._partial: _Partial | None = None
        # ids of the messages dropped last: their later fragments go quietly (one error per bad message). A few, not
        # one: a peer's stragglers of an abandoned message may follow the next message's first fragment.
        self._dropped_ids: deque[str] = deque(maxlen=_REMEMBERED_DROPS)
        self._quiet_until_start = False  # set by discard(): a message's first fragment may have been refused unread
        self.completed = 0  # messages put back together
        self.dropped = 0  # messages lost: bad, too large, abandoned, expired or discarded

    @property
    def in_progress(self) -> bool:
        """True while a message is incomplete."""
        return self._partial is not None

    @property
    def held_bytes(self) -> int:
        return self._partial.size if self._partial is not None else 0

    def push(self, raw: str | bytes) -> str | bytes | None:
        """Takes any incoming message: the whole message's text once its last fragment is in, None while it is
        incomplete (or for a fragment of a dropped message), and ``raw`` itself for a message that is not a
        fragment. Raises :class:`FragmentError` as :meth:`add` does, or for a fragment with bad fields."""
        fragment = parse_fragment(raw)
        if fragment is None:
            return raw
        return self.add(fragment)

    def add(self, fragment: Fragment) -> str | None:
        """Adds one fragment: the whole message's text when this was its last fragment, else None.

        Raises :class:`FragmentError` when a message is lost: this fragment does not continue the message in
        progress (a wrong index, a changed count), starts a message in its middle, makes a message too large, or
        shows that the message in progress was abandoned (the first fragment of another message came) or is too old.
        In the last two cases the fragment itself has been kept: the message it starts goes on."""
        lost = self.expire()
        partial = self._partial
        if partial is not None and partial.id == fragment.id:
            self._continue(partial, fragment)
            return self._complete_if_whole()
        if fragment.id in self._dropped_ids or (fragment.index != 0 and self._quiet_until_start):
            if lost is not None:
                raise lost
            return None
        if fragment.index != 0:  # a message that starts in its middle; the one in progress (if any) goes on
            self._refuse(
                fragment.id, f"fragment {fragment.index} of message {fragment.id} came without the ones before it"
            )
        if partial is not None:
            self._drop()
            lost = FragmentError(
                f"message {partial.id} was abandoned after {partial.received} of its {partial.count} fragments: "
                f"message {fragment.id} began before the rest came"
            )
        self._start(fragment)
        if lost is not None:
            raise lost
        return None

    def expire(self) -> FragmentError | None:
        """Drops the message in progress when it is older than ``timeout_s``; returns the error that says so (for the
        peer), or None. Call it now and then (a watchdog) to free a message whose sender went quiet."""
        partial = self._partial
        if partial is None or self.timeout_s is None:
            return None
        if self._now() - partial.started_at <= self.timeout_s:
            return None
        self._drop()
        return FragmentError(
            f"message {partial.id} was dropped: {partial.received} of its {partial.count} fragments arrived within "
            f"{self.timeout_s:g} s"
        )

    def discard(self, message_id: str | None = None) -> None:
        """Drops without a word the message in progress, and the later fragments of it, of ``message_id`` and of a
        message whose first fragment never came until the next message begins: for a fragment refused unread (a
        rate limit), whose message may be the one in progress or one that it was to begin."""
        self._drop()
        self._quiet_until_start = True
        if message_id is not None and message_id not in self._dropped_ids:
            self._dropped_ids.append(message_id)

    # ----- inside

    def _start(self, fragment: Fragment) -> None:
        if fragment.count > self.max_count:
            self._refuse(
                fragment.id,
                f"message {fragment.id} has {fragment.count} fragments, over the limit of {self.max_count}",
                ErrorCode.TOO_LARGE,
            )
        if fragment.size > self.max_bytes:
            self._refuse(fragment.id, self._too_large_text(fragment.id, fragment.size), ErrorCode.TOO_LARGE)
        self._quiet_until_start = False
        self._partial = _Partial(id=fragment.id, count=fragment.count, started_at=self._now())
        self._partial.parts.append(fragment.data)
        self._partial.size = fragment.size

    def _continue(self, partial: _Partial, fragment: Fragment) -> None:
        if fragment.count != partial.count:
            self._fail(f"message {fragment.id} changed its fragment count from {partial.count} to {fragment.count}")
        if fragment.index != partial.received:
            self._fail(
                f"fragment {fragment.index} of message {fragment.id} came where fragment {partial.received} was "
                "expected (fragments are sent in order)"
            )
        if partial.size + fragment.size > self.max_bytes:
            self._fail(self._too_large_text(fragment.id, partial.size + fragment.size), ErrorCode.TOO_LARGE)
        partial.parts.append(fragment.data)
        partial.size += fragment.size

    def _too_large_text(self, message_id: str, size: int) -> str:
        return f"message {message_id} grew to {size} bytes, over the limit of {self.max_bytes} bytes"

    def _complete_if_whole(self) -> str | None:
        partial = self._partial
        if partial is None or partial.received < partial.count:
            return None
        self._partial = None
        self.completed += 1
        return "".join(partial.parts)

    def _drop(self) -> None:
        partial = self._partial
        if partial is not None:
            self._partial = None
            self.dropped += 1
            if partial.id not in self._dropped_ids:
                self._dropped_ids.append(partial.id)

    def _fail(self, why: str, code: ErrorCode = ErrorCode.BAD_MESSAGE) -> NoReturn:
        """Drops the message in progress (this fragment's) and raises."""
        self._drop()
        raise FragmentError(why, code)

    def _refuse(self, message_id: str, why: str, code: ErrorCode = ErrorCode.BAD_MESSAGE) -> NoReturn:
        """Refuses a message that has not begun (the one in progress, if another, is left alone) and raises."""
        self.dropped += 1
        self._dropped_ids.append(message_id)
        raise FragmentError(why, code)
