"""Bounds what a WebRTC peer can make us hold before one of its data-channel messages is complete.

aiortc reassembles an SCTP message from its fragments with no bound on its size, so the size check of
:mod:`assistant.protocol` only runs once the whole message sits in memory. We tell the peer our limit in the
answer (:func:`advertise_max_message_size`) and drop a peer that goes far past it
(:func:`guard_sctp_reassembly`). The guard reaches into aiortc's private state; it is kept to one function, and
``tests/webrtc/test_rtc_hostile.py`` fails loudly when an aiortc upgrade moves what it relies on.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

_MAX_MESSAGE_SIZE_LINE = re.compile(r"^a=max-message-size:\d+$")


class AiortcInternalsChanged(RuntimeError):
    """The aiortc in use no longer has the private attributes the reassembly guard relies on."""


def advertise_max_message_size(sdp: str, max_bytes: int) -> str:
    """``sdp`` with every data-channel section saying ``a=max-message-size:max_bytes`` (RFC 8841).

    aiortc writes its own ceiling (256 KiB) there; a well-behaved peer then never sends us more than we accept.
    A data-channel section without the line gets one, at the end of the section.
    """
    lines = sdp.split("\r\n")
    out: list[str] = []
    in_application = False
    said_it = False

    def close_section() -> None:
        if in_application and not said_it:
            while out and out[-1] == "":  # keep the line inside the section, before the closing CRLF
                out.pop()
            out.append(f"a=max-message-size:{max_bytes}")

    for line in lines:
        if line.startswith("m="):
            close_section()
            in_application = line.startswith("m=application")
            said_it = False
        if in_application and _MAX_MESSAGE_SIZE_LINE.match(line):
            line = f"a=max-message-size:{max_bytes}"
            said_it = True
        out.append(line)
    close_section()
    text = "\r\n".join(out)
    return text if text.endswith("\r\n") else text + "\r\n"


_CHUNK_FIELDS = ("user_data", "stream_id", "stream_seq", "flags")


def _check_aiortc_internals(transport: Any) -> None:
    from aiortc import rtcsctptransport

    receive = getattr(transport, "_receive_data_chunk", None)
    problems = []
    if not inspect.iscoroutinefunction(receive):
        problems.append("RTCSctpTransport._receive_data_chunk is no longer a coroutine method")
    if not isinstance(getattr(transport, "_inbound_streams", None), dict):
        problems.append("RTCSctpTransport._inbound_streams is no longer a dict")
    if not isinstance(getattr(transport, "_advertised_rwnd", None), int):
        problems.append("RTCSctpTransport._advertised_rwnd is no longer an int")
    stream_class = getattr(rtcsctptransport, "InboundStream", None)
    if stream_class is None or not isinstance(getattr(stream_class(), "reassembly", None), list):
        problems.append("aiortc.rtcsctptransport.InboundStream().reassembly is no longer a list")
    chunk_class = getattr(rtcsctptransport, "DataChunk", None)
    chunk = chunk_class() if chunk_class is not None else None
    if chunk is None or not all(hasattr(chunk, name) for name in _CHUNK_FIELDS):
        problems.append(f"aiortc.rtcsctptransport.DataChunk lost one of {', '.join(_CHUNK_FIELDS)}")
    if not isinstance(getattr(rtcsctptransport, "SCTP_DATA_UNORDERED", None), int):
        problems.append("aiortc.rtcsctptransport.SCTP_DATA_UNORDERED is gone")
    if problems:
        raise AiortcInternalsChanged("the SCTP reassembly guard needs updating: " + "; ".join(problems))


def guard_sctp_reassembly(
    transport: Any,
    *,
    max_stream_bytes: int,
    max_stream_chunks: int,
    max_total_bytes: int,
    on_exceeded: Callable[[str], None],
) -> None:
    """Makes ``transport`` (an aiortc ``RTCSctpTransport``) refuse to hold more than the bounds for messages still
    being reassembled; the first DATA chunk that would go past them calls ``on_exceeded(why)`` once, and from then
    on every DATA chunk is dropped unread (the peer is being disconnected). Raises :class:`AiortcInternalsChanged`
    when aiortc no longer looks the way this relies on.

    The bounds: ``max_stream_bytes`` for one message (the chunks of one stream that share its stream sequence
    number; unordered chunks, which have none, count together), ``max_stream_chunks`` for one stream and
    ``max_total_bytes`` for all streams together. A stream may hold several whole messages besides the one being
    reassembled: behind a lost packet, ordered messages wait until it is sent again (a picture's fragments come
    in a burst, so up to the receive window may wait), which is why bytes are bounded per message, not per stream.

    Pinned to aiortc 1.16's ``rtcsctptransport.py``: every DATA chunk goes through the coroutine method
    ``_receive_data_chunk(chunk)``, which appends the chunk to ``_inbound_streams[chunk.stream_id].reassembly``
    (a list of ``DataChunk`` whose payload is ``user_data``, with ``stream_seq`` and ``flags``) and hands on every
    message that is complete, in order. It also takes the chunk's bytes off ``_advertised_rwnd`` and gives them back
    when a message leaves reassembly, so the fall of ``_advertised_rwnd`` is what all streams hold together (a peer
    spreading one huge message over many streams). We look before aiortc adds the chunk, by replacing the method on
    this one instance.
    """
    _check_aiortc_internals(transport)
    from aiortc.rtcsctptransport import SCTP_DATA_UNORDERED

    def message_of(chunk: Any) -> int | None:
        return None if chunk.flags & SCTP_DATA_UNORDERED else chunk.stream_seq

    receive = transport._receive_data_chunk
    initial_window = transport._advertised_rwnd
    exceeded = False

    async def receive_within_bounds(chunk: Any) -> None:
        nonlocal exceeded
        if exceeded:
            return
        stream = transport._inbound_streams.get(chunk.stream_id)
        held_chunks = stream.reassembly if stream is not None else []
        message = message_of(chunk)
        why = None
        if len(held_chunks) + 1 > max_stream_chunks:
            why = f"more than {max_stream_chunks} fragments held on one stream"
        elif sum(len(c.user_data) for c in held_chunks if message_of(c) == message) + len(chunk.user_data) > (
            max_stream_bytes
        ):
            why = f"more than {max_stream_bytes} bytes held for one message"
        elif initial_window - transport._advertised_rwnd + len(chunk.user_data) > max_total_bytes:
            why = f"more than {max_total_bytes} bytes held for unfinished messages"
        if why is None:
            await receive(chunk)
            return
        exceeded = True
        try:
            on_exceeded(why)
        except Exception:  # an exception here would end aiortc's receive loop, and with it the connection
            logger.exception("the reassembly guard's callback failed")

    transport._receive_data_chunk = receive_within_bounds


def contain_message_errors(transport: Any, on_bad_message: Callable[[str], None]) -> None:
    """Makes a message that aiortc itself cannot hand on cost only that message, not the connection.

    aiortc decodes a text message (PPID "string") as UTF-8 and parses data-channel control messages inside its SCTP
    receive path; a peer sending invalid UTF-8 there raised out of that path and ended the association, and with it
    the session, without a word. Pinned to aiortc 1.16: every complete message goes through the coroutine method
    ``_receive(stream_id, pp_id, data)``, replaced here on this one instance. ``on_bad_message(why)`` tells the
    session (which answers with an ``error`` event); the message is dropped.
    """
    receive = getattr(transport, "_receive", None)
    if not inspect.iscoroutinefunction(receive):
        raise AiortcInternalsChanged("RTCSctpTransport._receive is no longer a coroutine method")

    async def receive_contained(stream_id: int, pp_id: int, data: bytes) -> None:
        try:
            await receive(stream_id, pp_id, data)
        except UnicodeDecodeError:
            _tell(on_bad_message, "a text message that is not valid UTF-8 was dropped")
        except Exception:
            logger.exception("aiortc failed on a data-channel message from stream %d", stream_id)
            _tell(on_bad_message, "a data-channel message that could not be read was dropped")

    transport._receive = receive_contained


def _tell(callback: Callable[[str], None], why: str) -> None:
    try:
        callback(why)
    except Exception:
        logger.exception("the bad-message callback failed")
