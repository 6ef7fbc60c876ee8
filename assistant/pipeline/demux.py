"""The grammar of a reply: the LM's token ids in, what they mean out (synchronous, no I/O, torch-free).

AnyGPT's assistant turn interleaves, in any order::

    text                  -> TextPiece(transcript=False): the text reply
    <-Ins-> text <-Res->  -> TextPiece(transcript=True): what the model understood the user to say
    <sosp> codes <eosp>   -> SpeechStart, SpeechCode per code, SpeechEnd (streamed: speech is decoded while the LM runs)
    <soim> codes <eoim>   -> ImageSegment(index, codes) once the segment is complete
    <somu> tokens <eomu>  -> MusicSegment(index, tokens) once the segment is complete
    <eos> / </s> / <eom>  -> Stop; the demultiplexer ignores everything after it

Model output that breaks the grammar is repaired or dropped, never passed on, and every drop is counted in
:class:`SessionStats`: text or codes inside a segment of another modality, an END without its START, a START inside
an open segment, an empty segment, ids outside the vocabulary, turn markers (``[Human]``, ``<eoh>``) inside a reply,
and, when :class:`SegmentRules` knows the codec's shapes, an image of the wrong length (dropped) or music that ends
inside a frame (cut to whole frames). A speech segment still open when generation ends is closed, so whatever was
generated is spoken; an image or music segment still open then is dropped.

Events follow these rules, whatever ids arrive (``tests/pipeline/test_demux.py`` checks them on arbitrary input):
speech codes only between a SpeechStart and its SpeechEnd, every SpeechStart closed by exactly one SpeechEnd at the
latest by :meth:`ReplyDemultiplexer.finish`, text only outside segments, nothing after Stop.
"""

from __future__ import annotations

from dataclasses import dataclass

from assistant.vocab import Modality, TextDetokenizer, TokenKind, UnifiedVocab


@dataclass
class SessionStats:
    """Counters of dropped or repaired LM output (never fatal)."""

    invalid_ids: int = 0  # ids outside the vocabulary
    stray_codes: int = 0  # codes (or text) outside a segment of their modality
    stray_ends: int = 0  # an END without its START
    nested_starts: int = 0  # a START inside an open segment (ignored)
    empty_segments: int = 0  # an image/music segment without codes
    unterminated_segments: int = 0  # a segment still open when generation stopped
    markers_ignored: int = 0  # [Human], <eoh>, ... inside a reply
    malformed_segments: int = 0  # an image of the wrong length, or music shorter than one frame (dropped)
    trimmed_segments: int = 0  # music that ended inside a frame: the incomplete frame was cut off

    def total_dropped(self) -> int:
        return sum(vars(self).values())


@dataclass(frozen=True)
class SegmentRules:
    """The shapes a complete segment must have, when the caller knows its media codecs.

    Neither is knowable from the vocabulary: it holds how many *different* codes a modality has, not how many make
    one picture or one frame. They are properties of the media de-tokenizers (``ImageCodecConfig.tokens_per_image``
    and ``SeedImageConfig.tokens_per_image``: 32 for AnyGPT's SEED and the embedded codec; ``n_codebooks`` of
    ``MusicCodecConfig`` and ``EncodecMusicConfig``: 4), which are only known once models are loaded.

    image_codes: the exact number of codes of an image; an image with another count is dropped. None: any non-empty
        image is passed on (the local media backend pads or truncates it to the length its codec needs).
    music_codebooks: codes per music frame; a music segment is cut to whole frames, as AnyGPT's own decoding does,
        and dropped when not one frame is left. None: passed on as generated (the music codecs re-align the tokens
        by level themselves).
    """

    image_codes: int | None = None
    music_codebooks: int | None = None

    def __post_init__(self) -> None:
        for name in ("image_codes", "music_codebooks"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive or None, got {value}")


# ---------------------------------------------------------------------------------------------------------
# events


@dataclass(frozen=True)
class TextPiece:
    text: str  # never empty
    transcript: bool  # True between <-Ins-> and <-Res->: the model's transcript of the user's turn


@dataclass(frozen=True)
class SpeechStart:
    pass


@dataclass(frozen=True)
class SpeechCode:
    code: int  # a level-1 speech code (0 .. speech codes - 1)


@dataclass(frozen=True)
class SpeechEnd:
    complete: bool  # False when generation ended inside the segment (the speech so far is still spoken)


@dataclass(frozen=True)
class ImageSegment:
    index: int  # 0, 1, ... per reply
    codes: tuple[int, ...]


@dataclass(frozen=True)
class MusicSegment:
    index: int  # 0, 1, ... per reply
    tokens: tuple[int, ...]  # music-local tokens (level * codebook size + code), as the music codecs read them


@dataclass(frozen=True)
class Stop:
    pass


ReplyEvent = TextPiece | SpeechStart | SpeechCode | SpeechEnd | ImageSegment | MusicSegment | Stop


class ReplyDemultiplexer:
    """Splits one reply's token ids into :data:`ReplyEvent` s; one instance per reply.

    ``forced``: the modality whose START marker ended the prompt (``[MMGPT]: <sosp>``): its segment is open from the
    first id on, and a forced speech segment is announced by a SpeechStart before the first event.
    """

    def __init__(
        self, vocab: UnifiedVocab, forced: Modality | None, stats: SessionStats, rules: SegmentRules | None = None
    ) -> None:
        self._vocab = vocab
        self._stats = stats
        self._rules = rules or SegmentRules()
        self._detok = TextDetokenizer(vocab)
        self._mode: Modality | None = forced  # the open segment
        self._segment: list[int] = []  # image codes / music tokens of the open segment
        self._in_transcript = False
        self._image_index = 0
        self._music_index = 0
        self._finished = False
        self._pending: list[ReplyEvent] = [SpeechStart()] if forced is Modality.SPEECH else []

    @property
    def finished(self) -> bool:
        """True after Stop or :meth:`finish`: later ids are ignored."""
        return self._finished

    def push(self, token_id: int) -> list[ReplyEvent]:
        """The events of one generated id (often none); never raises."""
        if self._finished:
            return []
        events, self._pending = self._pending, []
        info = self._vocab.classify(token_id)
        kind = info.kind
        stats = self._stats
        if kind is TokenKind.STOP:
            events += self._close()
            events.append(Stop())
        elif kind is TokenKind.TEXT:
            if self._mode is not None:
                stats.stray_codes += 1  # AnyGPT puts text only outside segments
            else:
                self._text(self._detok.push(token_id), events)
        elif kind is TokenKind.CODE:
            code = info.code
            assert code is not None  # the vocabulary gives every CODE token its code
            if info.modality is not self._mode:
                stats.stray_codes += 1
            elif self._mode is Modality.SPEECH:
                events.append(SpeechCode(code))
            else:
                self._segment.append(code)
        elif kind is TokenKind.START:
            if self._mode is not None:
                stats.nested_starts += 1
            else:
                self._flush_text(events)
                self._mode, self._segment = info.modality, []
                if info.modality is Modality.SPEECH:
                    events.append(SpeechStart())
        elif kind is TokenKind.END:
            if info.modality is not self._mode:
                stats.stray_ends += 1
            else:
                self._end_segment(events)
        elif kind is TokenKind.MARKER:
            if token_id == self._vocab.ins_id:
                self._flush_text(events)
                self._in_transcript = True
            elif token_id == self._vocab.res_id:
                self._flush_text(events)
                self._in_transcript = False
            else:
                stats.markers_ignored += 1
        else:
            stats.invalid_ids += 1
        return events

    def finish(self) -> list[ReplyEvent]:
        """Generation ended without a stop id (or was cut short): pending text, and the end of an open speech
        segment. Further calls (and a call after Stop) return nothing."""
        if self._finished:
            return []
        events, self._pending = self._pending, []
        return events + self._close()

    # ------------------------------------------------------------------ internals
    def _close(self) -> list[ReplyEvent]:
        events: list[ReplyEvent] = []
        self._flush_text(events)
        if self._mode is not None:
            self._stats.unterminated_segments += 1
            if self._mode is Modality.SPEECH:
                events.append(SpeechEnd(complete=False))
            self._mode, self._segment = None, []
        self._finished = True
        return events

    def _text(self, text: str, events: list[ReplyEvent]) -> None:
        if text:
            events.append(TextPiece(text, self._in_transcript))

    def _flush_text(self, events: list[ReplyEvent]) -> None:
        self._text(self._detok.flush(), events)

    def _end_segment(self, events: list[ReplyEvent]) -> None:
        mode, segment = self._mode, self._segment
        self._mode, self._segment = None, []
        if mode is Modality.SPEECH:
            events.append(SpeechEnd(complete=True))
        elif not segment:
            self._stats.empty_segments += 1
        elif mode is Modality.IMAGE:
            self._end_image(segment, events)
        else:
            self._end_music(segment, events)

    def _end_image(self, codes: list[int], events: list[ReplyEvent]) -> None:
        expected = self._rules.image_codes
        if expected is not None and len(codes) != expected:
            self._stats.malformed_segments += 1
            return
        events.append(ImageSegment(self._image_index, tuple(codes)))
        self._image_index += 1

    def _end_music(self, tokens: list[int], events: list[ReplyEvent]) -> None:
        frame = self._rules.music_codebooks
        if frame is not None:
            whole = len(tokens) - len(tokens) % frame
            if whole == 0:
                self._stats.malformed_segments += 1
                return
            if whole < len(tokens):
                self._stats.trimmed_segments += 1
                tokens = tokens[:whole]
        events.append(MusicSegment(self._music_index, tuple(tokens)))
        self._music_index += 1
