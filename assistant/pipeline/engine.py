"""The streaming assistant engine: one user turn in, a stream of :mod:`outputs` out.

Flow of one turn (``Session.respond``)::

    audio --SpeechEncoderBackend--> level-1 codes [F]: the user's speech_codes
    ChatPromptBuilder(history, user message, force marker) -> prompt ids
    LMBackend.stream(prompt) --chunks of ids--> router (this task)
        text ids  -> TextDetokenizer -> TranscriptDelta (between <-Ins-> and <-Res->) | ReplyTextDelta
        speech    -> SpeechChunker -> chunk queue --> audio worker task:
                         AcousticBackend.decode_chunk(chunk, context = last context_frames of the previous chunk,
                                                      the session's voice key: its prompt is registered once)
                         -> FrameSplitter(20 ms) -> AudioFrame(source="speech"), short fade at segment end
        image     -> codes until <eoim> -> (audio worker) MediaBackend.image_png -> ImageOutput
        music     -> tokens until <eomu> -> (audio worker) MediaBackend.music_wave -> MusicOutput + AudioFrame("music")
    every output -> one output queue -> ``respond`` yields it; always exactly one TurnFinished last.

The router and the audio worker are separate tasks, so speech is decoded while the LM keeps generating. Images and
music go through the audio worker's ordered job queue too: their outputs keep their place relative to the speech
before them (music samples follow that speech on the audio track).

Queues (all bounded; nothing grows without limit):
- LM backend -> router: the backend's own bounded queue (see ``local.LocalLMBackend``); the router pulls.
- chunk (job) queue, ``EngineConfig.chunk_queue_size`` jobs: backpressure. When the acoustic decoder falls behind,
  the router waits, the LM backend's queue fills and generation pauses. Nothing is dropped.
- output queue, ``EngineConfig.output_queue_size`` outputs: backpressure. A slow consumer of ``respond`` pauses the
  audio worker and the router. Audio is never silently dropped.
- On interrupt everything queued (pending chunker codes, chunk jobs, outputs, splitter samples) is dropped at once.

Limits (a turn never fails later turns):
- Prompt: at most ``EngineConfig.max_history_tokens``, lowered so that the LM's longest reply still fits beside it in
  the LM's context (``LMBackend.limits``, asked once per engine; see ``prompt_budget``). The oldest turns are
  dropped to fit; a user message too long to fit even alone fails its turn with code "too_large".
- Reply: at most ``EngineConfig.max_reply_audio_s`` of speech and music; at that point generation is aborted and the
  turn ends with ``TurnFinished(MAX_TOKENS)`` after the audio up to the limit.
- A turn that ends in ERROR is not remembered: one failure (or an oversized message) cannot poison the history.

Speculative turns: ``respond(turn, tentative=True)`` runs a turn before the caller is sure it is one (the user has
paused, not yet finished). It runs exactly like any other turn, but the history only takes it once ``commit`` says
so; ``discard`` stops it and it leaves no trace (the LM stream is closed, so the LM frees its KV state, and the
history is as if it never ran). The caller holds back its outputs until it decides; the bounded output queue lets
the turn run ahead by ``output_queue_size`` outputs meanwhile (the first speech chunk fits).

Continued turns: a ``UserTurn`` whose ``continues`` is the turn last remembered asks that question again, longer (the
user paused mid-question, the pause was taken for the end of their turn, and they went on). Its prompt leaves the
earlier exchange out, and once remembered it takes that exchange's place: the history holds the whole question once,
and never the answer to its first half.

Errors reach the caller as a ``TurnError`` with a fixed, caller-safe text per failure class (a service unavailable,
a message too long, anything else); the exception itself is logged under the ``error_id`` the caller sees.

Malformed token sequences (codes outside their segment, an END without START, a nested START, an empty image, invalid
ids) are dropped and counted in ``Session.stats``; they never end a turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from assistant.audio import OUTPUT_FRAME_SAMPLES, SAMPLE_RATE, FrameSplitter, float_to_pcm16
from assistant.models.interfaces import DEFAULT_CONTEXT_FRAMES
from assistant.models.voices import VoiceBank
from assistant.pipeline.backends import Backends, BackendUnavailableError, LMLimits, UnknownVoiceKeyError
from assistant.pipeline.chunking import SpeechChunker
from assistant.pipeline.demux import (  # SessionStats is re-exported: it lived here before the grammar moved out
    ImageSegment,
    MusicSegment,
    ReplyDemultiplexer,
    ReplyEvent,
    SessionStats,
    SpeechCode,
    SpeechEnd,
    SpeechStart,
    Stop,
    TextPiece,
)
from assistant.pipeline.outputs import (
    AudioFrame,
    EngineOutput,
    ImageOutput,
    MusicOutput,
    ReplyTextDelta,
    TranscriptDelta,
    TurnError,
    TurnFinished,
)
from assistant.prompts import AssistantMessage, ChatPromptBuilder, Conversation, Turn, UserMessage
from assistant.protocol import ErrorCode, FinishReason
from assistant.vocab import Modality, UnifiedVocab

log = logging.getLogger(__name__)

_FORCEABLE = {m.value: m for m in (Modality.SPEECH, Modality.IMAGE, Modality.MUSIC)}


@dataclass(frozen=True)
class EngineConfig:
    """Engine settings.

    force_modality: None, "speech", "image" or "music". When set, every assistant reply is forced to start with that
        modality: the prompt ends in ``[MMGPT]: <soX>`` and the LM is constrained accordingly.
    force_speech_for_spoken_turns: force "speech" for turns that carry audio (when ``force_modality`` is None). This
        mirrors AnyGPT's ``force_speech_generation`` option of its chat CLI. Off by default: a trained chat LM
        answers a spoken turn with ``<-Ins->`` transcript ``<-Res->`` reply and then speech by itself, and forcing
        ``<sosp>`` would skip the transcript and the text reply.
    first_chunk_frames / chunk_frames: speech chunk sizes in 20 ms codec frames (small first chunk = fast start).
    context_frames: frames of the previous chunk given to the acoustic decoder as left context.
    fade_ms: linear fade-out applied at the end of each speech segment and each piece of music (no click at turn end).
    chunk_queue_size: bound of the router -> audio worker job queue (backpressure).
    output_queue_size: bound of the output queue (backpressure).
    max_history_tokens: the prompt (history + new user message) is kept under this by dropping the oldest turns; the
        LM's context lowers it further so that a whole reply fits (``AssistantEngine.prompt_token_budget``).
    max_reply_audio_s: the most speech + music one reply may play, in seconds (None: no limit). Reaching it aborts
        generation; the turn ends with ``TurnFinished(MAX_TOKENS)``.
    """

    force_modality: str | None = None
    force_speech_for_spoken_turns: bool = False
    first_chunk_frames: int = 10
    chunk_frames: int = 25
    context_frames: int = DEFAULT_CONTEXT_FRAMES
    fade_ms: float = 10.0
    chunk_queue_size: int = 4
    output_queue_size: int = 64
    max_history_tokens: int = 4096
    max_reply_audio_s: float | None = 60.0

    def __post_init__(self) -> None:
        if self.force_modality is not None and self.force_modality not in _FORCEABLE:
            raise ValueError(f"force_modality must be None or one of {sorted(_FORCEABLE)}, got {self.force_modality!r}")
        for name in (
            "first_chunk_frames",
            "chunk_frames",
            "chunk_queue_size",
            "output_queue_size",
            "max_history_tokens",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.context_frames < 0:
            raise ValueError(f"context_frames must be >= 0, got {self.context_frames}")
        if self.fade_ms < 0:
            raise ValueError(f"fade_ms must be >= 0, got {self.fade_ms}")
        if self.max_reply_audio_s is not None and self.max_reply_audio_s * SAMPLE_RATE < OUTPUT_FRAME_SAMPLES:
            raise ValueError(
                f"max_reply_audio_s must be None or at least one 20 ms frame, got {self.max_reply_audio_s}"
            )

    @property
    def fade_samples(self) -> int:
        return int(round(self.fade_ms * SAMPLE_RATE / 1000.0))

    @property
    def max_reply_frames(self) -> int | None:
        """``max_reply_audio_s`` in whole 20 ms output frames (rounded down: a reply never plays past the limit)."""
        if self.max_reply_audio_s is None:
            return None
        return int(self.max_reply_audio_s * SAMPLE_RATE) // OUTPUT_FRAME_SAMPLES

    def forced_for(self, spoken: bool) -> Modality | None:
        if self.force_modality is not None:
            return _FORCEABLE[self.force_modality]
        if spoken and self.force_speech_for_spoken_turns:
            return Modality.SPEECH
        return None


@dataclass(frozen=True, eq=False)
class UserTurn:
    """One user turn: audio (float32 mono 16 kHz), text, a picture (PNG/JPEG bytes), a tune (a WAV file's bytes: any
    rate, mono or stereo; ``MediaBackend.music_codes`` decodes it), or several of them."""

    audio: np.ndarray | None = None
    text: str | None = None
    image: bytes | None = None
    music: bytes | None = None
    # The earlier turn this one goes on from (its audio starts with that turn's question): when that turn's exchange
    # is the last in the history, this turn is asked without it and replaces it (see the module docstring).
    continues: UserTurn | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        has_audio = self.audio is not None and np.asarray(self.audio).size > 0
        if not has_audio and not (self.text and self.text.strip()) and not self.image and not self.music:
            raise ValueError("UserTurn needs non-empty audio, text, an image or a tune")


@dataclass(frozen=True)
class _Exchange:
    """A finished turn as the history takes it, with the ``UserTurn`` it answered (for continued turns)."""

    turn: UserTurn
    user: UserMessage
    reply: AssistantMessage


# Jobs of the audio worker (ordered).
@dataclass
class _SpeechChunk:
    semantic: np.ndarray  # int64 [t]


@dataclass
class _SpeechEnd:
    pass


@dataclass
class _ImageJob:
    index: int
    codes: list[int]


@dataclass
class _MusicJob:
    index: int
    tokens: list[int]


class _JobsDone:
    """The end of the job stream."""


_DONE = _JobsDone()

_Job = _SpeechChunk | _SpeechEnd | _ImageJob | _MusicJob | _JobsDone


class MessageTooLongError(ValueError):
    """The user's message alone leaves no room in the LM's context for history and reply. Its text is fit for the
    caller (it names sizes, nothing else)."""

    def __init__(self, message_tokens: int, limit_tokens: int):
        super().__init__(f"your message is too long for this model ({message_tokens} tokens, at most {limit_tokens})")
        self.message_tokens = message_tokens
        self.limit_tokens = limit_tokens


class _ReplyAudioFull(Exception):
    """Raised by the audio worker once the reply has played ``max_reply_audio_s``: ends the turn's task group, which
    cancels the router (closing the LM stream aborts generation)."""


# What the caller is told a service is, when it is unavailable (keys: ``backends.BACKEND_ROLES``).
_SERVICE_NAMES = {"speech": "speech recognizer", "lm": "language model", "acoustic": "voice", "media": "picture/music"}


class AssistantEngine:
    """Shared, stateless part: backends, vocabulary and settings. One ``Session`` per conversation."""

    def __init__(
        self,
        backends: Backends,
        vocab: UnifiedVocab,
        config: EngineConfig | None = None,
        voices: VoiceBank | None = None,
    ):
        self.backends = backends
        self.vocab = vocab
        self.config = config or EngineConfig()
        self.prompt_builder = ChatPromptBuilder(vocab)
        self.voices = voices
        self._lm_limits: LMLimits | None = None
        self._lm_limits_known = False
        self._lm_limits_lock = asyncio.Lock()  # concurrent first turns ask the LM once

    async def lm_limits(self) -> LMLimits | None:
        """The LM backend's limits, asked once per engine (a failed ask is not remembered: the next turn asks again).
        Raises what ``LMBackend.limits`` raises, e.g. ``BackendUnavailableError``."""
        if not self._lm_limits_known:
            async with self._lm_limits_lock:
                if not self._lm_limits_known:
                    self._lm_limits = await self.backends.lm.limits()
                    self._lm_limits_known = True
                    log.info(
                        "LM limits: %s; prompts of at most %d tokens",
                        self._lm_limits,
                        prompt_budget(self.config.max_history_tokens, self._lm_limits),
                    )
        return self._lm_limits

    async def prompt_token_budget(self) -> int:
        """The most tokens one prompt (history + new user message) may have with this LM."""
        return prompt_budget(self.config.max_history_tokens, await self.lm_limits())

    def new_session(self, voice: str | None = None) -> Session:
        """A conversation whose speech is rendered in ``voice`` (a name of the voice bank; None = its default).
        Raises ``ValueError`` for a voice the bank does not know, or any voice when there is no bank."""
        if self.voices is None:
            if voice is not None:
                raise ValueError(f"voice {voice!r} requested, but these models have no voice bank")
            return Session(self, None)
        return Session(self, self.voices.prompt(voice if voice is not None else self.voices.default))


class Session:
    """One conversation: its history and at most one turn in flight (a second ``respond`` meanwhile is an error).

    Which turn runs when (a new question interrupting the reply in progress, how long an interrupted turn may take
    to stop) is decided by the caller: :class:`assistant.pipeline.turns.TurnController`."""

    def __init__(self, engine: AssistantEngine, voice_prompt: np.ndarray | None):
        self.engine = engine
        self.voice_prompt = voice_prompt  # [n_q, Tp] acoustic prompt: the voice of every spoken reply
        self._voice_key: str | None = None  # its key with the acoustic backend, once registered
        self.vocab = engine.vocab
        self.config = engine.config
        self.conversation = Conversation()
        self.stats = SessionStats()
        cfg = self.config
        self.chunker = SpeechChunker(cfg.first_chunk_frames, cfg.chunk_frames)
        self.splitter = FrameSplitter(OUTPUT_FRAME_SAMPLES)
        # Fresh queues per turn (respond): nothing of an old turn can leak into a new one.
        self._jobs: asyncio.Queue[_Job] = asyncio.Queue()
        self._out: asyncio.Queue[EngineOutput] = asyncio.Queue()
        self._producer: asyncio.Task | None = None  # the turn in flight (None between turns)
        self._interrupted = False  # the turn in flight was interrupted: its queued outputs are dropped
        self._closed = False
        self._reply_frames_left: int | None = None  # audio frames the turn in flight may still play (None: no limit)
        self._keep: Literal["yes", "tentative", "no"] = "yes"  # may the turn in flight enter the history?
        self._held: _Exchange | None = None  # a tentative turn done before its commit
        self._last: tuple[UserTurn, Turn] | None = None  # the turn whose exchange ends the history, and that exchange

    # ------------------------------------------------------------------ public
    async def respond(self, turn: UserTurn, *, tentative: bool = False) -> AsyncGenerator[EngineOutput, None]:
        """Runs one turn; yields outputs as they become ready and always ends with exactly one ``TurnFinished``.
        A ``tentative`` turn enters the history only once :meth:`commit` is called (see the module docstring)."""
        if self._closed:
            raise RuntimeError("session is closed")
        if self._producer is not None:
            raise RuntimeError("a turn is already in progress in this session")
        self._interrupted = False
        self._keep = "tentative" if tentative else "yes"
        self._held = None
        self._out = asyncio.Queue(maxsize=self.config.output_queue_size)
        self._jobs = asyncio.Queue(maxsize=self.config.chunk_queue_size)
        producer = self._producer = asyncio.create_task(self._produce(turn))
        try:
            while True:
                item = await self._out.get()
                if isinstance(item, TurnFinished):
                    if self._interrupted:
                        item = TurnFinished(FinishReason.INTERRUPTED)
                    yield item
                    return
                if self._interrupted:
                    continue  # queued before the interrupt: dropped
                yield item
        finally:
            if not producer.done():
                producer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await producer
            self._clear_buffers()
            self._producer = None

    def interrupt(self) -> None:
        """Stops the turn in flight: the LM stream is closed, every queued chunk/frame is dropped and ``respond`` ends
        with ``TurnFinished(INTERRUPTED)``. No-op when no turn is in flight."""
        producer = self._producer
        if producer is None or self._interrupted:
            return
        self._interrupted = True
        if not producer.done():
            producer.cancel()  # its cleanup drops everything and queues TurnFinished(INTERRUPTED)
        else:
            self._clear_buffers()
            self._out.put_nowait(TurnFinished(FinishReason.INTERRUPTED))

    def commit(self) -> None:
        """The tentative turn (in flight, or done and held) is a real one: the history takes it like any other.
        Like :meth:`discard`, it concerns the turn whose stream has started (its first output was asked for)."""
        if self._keep == "tentative":
            self._keep = "yes"
        held, self._held = self._held, None
        if held is not None:
            self._remember(held)

    def discard(self) -> None:
        """Throws the tentative turn away: it is stopped like an interrupted one and never enters the history."""
        if self._keep != "tentative":
            return
        self._keep = "no"
        self._held = None
        self.interrupt()

    async def prepare(self, turn: UserTurn) -> None:
        """Gets the LM ready for ``turn`` while the user is still saying it: encodes its audio and prefills its prompt
        up to the last speech code (``LMBackend.prefill``), so that the turn asked later, whose prompt starts the same
        way, prefills only the rest. The codes of the audio so far can differ from the whole utterance's near its end
        (and, with the embedded codec's utterance-level normalisation, anywhere), so only their common prefix is
        reused; the answer is the same either way. Best effort: nothing enters the history, nothing is generated, a
        failure is logged and never raised. Spoken turns with nothing else only (a picture or a tune would be
        encoded twice)."""
        if self._closed or turn.audio is None or turn.image or turn.music or turn.text:
            return
        try:
            user, forced = await self._user_message(turn)
            prompt = await self._build_prompt(user, forced, without_last=self._continues_last(turn))
            end = self.vocab.range_of(Modality.SPEECH).end_id
            question_end = len(prompt) - 1 - prompt[::-1].index(end)  # the user's <eosp>: the last one
            await self.engine.backends.lm.prefill(prompt[:question_end])
        except Exception as exc:
            log.info("could not prepare a turn: %s", _describe(exc))

    async def close(self) -> None:
        self.interrupt()
        producer = self._producer
        if producer is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await producer
        self._clear_buffers()
        self._closed = True

    def pending(self) -> dict[str, int]:
        """Sizes of every internal buffer (all zero between turns and after an interrupt)."""
        return {
            "chunker_frames": self.chunker.pending_frames,
            "chunk_queue": self._jobs.qsize(),
            "output_queue": self._out.qsize(),
            "splitter_samples": self.splitter.pending_samples,
        }

    # ------------------------------------------------------------------ turn
    def _clear_buffers(self) -> None:
        self.chunker.clear()
        self.splitter.clear()
        for queue in (self._jobs, self._out):
            while not queue.empty():
                queue.get_nowait()

    async def _produce(self, turn: UserTurn) -> None:
        """Runs the turn and puts its outputs, then exactly one TurnFinished, into the output queue."""
        out = self._out
        user: UserMessage | None = None
        forced: Modality | None = None
        generated: list[int] = []
        reason = FinishReason.COMPLETE
        error: TurnError | None = None
        replaces = self._continues_last(turn)
        try:
            user, forced = await self._user_message(turn)
            prompt = await self._build_prompt(user, forced, without_last=replaces)
            reason = await self._run_lm_and_audio(prompt, forced, generated)
        except asyncio.CancelledError:
            reason = FinishReason.INTERRUPTED
        except Exception as exc:
            reason, error = FinishReason.ERROR, _turn_error(exc)
            if error.code == ErrorCode.TOO_LARGE.value:
                log.info("turn refused [error %s]: %s", error.error_id, error.message)
            else:  # the whole exception (hosts, pids, remote tracebacks) goes to the log only
                log.warning("turn failed [error %s]: %s", error.error_id, _describe(exc), exc_info=exc)
        # (cancellation is swallowed on purpose: this task is only ever cancelled by interrupt/respond/close)

        # A failed turn is forgotten, even with a partial reply: remembering it could make every later prompt fail
        # the same way (e.g. a reply cut by an error that left the history too long for the model).
        if user is not None and reason is not FinishReason.ERROR and self._keep != "no":
            prefix = [self.vocab.range_of(forced).start_id] if forced is not None else []
            try:
                exchange = _Exchange(turn, user, AssistantMessage.from_generated(self.vocab, generated, prefix=prefix))
                if self._keep == "tentative":
                    self._held = exchange  # commit() remembers it, discard() or the next turn forgets it
                else:
                    self._remember(exchange)
            except Exception:
                log.exception("could not keep the turn in the history")

        if reason is FinishReason.INTERRUPTED or self._interrupted:
            self._clear_buffers()
            out.put_nowait(TurnFinished(FinishReason.INTERRUPTED))
            return
        try:
            if error is not None:
                await out.put(error)
            await out.put(TurnFinished(reason))
        except asyncio.CancelledError:
            self._clear_buffers()
            out.put_nowait(TurnFinished(FinishReason.INTERRUPTED))

    async def _user_message(self, turn: UserTurn) -> tuple[UserMessage, Modality | None]:
        speech_codes = None
        if turn.audio is not None and np.asarray(turn.audio).size > 0:
            wave = np.asarray(turn.audio, dtype=np.float32)
            with _calling("speech"):
                codes = np.asarray(await self.engine.backends.speech.encode(wave))  # level 1 = the semantic stream
            if codes.ndim != 1 or codes.size == 0:
                raise ValueError(f"speech encoder returned codes of shape {codes.shape}, expected level 1: [F>0]")
            speech_codes = [int(c) for c in codes]
        image_codes = None
        if turn.image:
            with _calling("media"):
                image_codes = list(await self.engine.backends.media.image_codes(turn.image))
        music_codes = None
        if turn.music:
            with _calling("media"):
                music_codes = [int(t) for t in await self.engine.backends.media.music_codes(turn.music)]
        text = turn.text if turn.text and turn.text.strip() else None
        message = UserMessage(text=text, speech_codes=speech_codes, image_codes=image_codes, music_codes=music_codes)
        return message, self.config.forced_for(speech_codes is not None)

    async def _build_prompt(
        self, user: UserMessage, forced: Modality | None, *, without_last: bool = False
    ) -> list[int]:
        """History + ``user`` within the prompt budget (oldest turns dropped). Raises ``MessageTooLongError`` (the
        history untouched) when ``user`` does not fit even alone. ``without_last``: the history's last exchange is
        left out of this prompt (a continued turn; the history itself keeps it until the new turn is remembered)."""
        builder = self.engine.prompt_builder
        with _calling("lm"):
            budget = await self.engine.prompt_token_budget()
        alone = builder.prompt_length(None, user, forced)
        if alone > budget:
            message_tokens = len(builder.user_message_ids(user))
            raise MessageTooLongError(message_tokens, max(0, budget - (alone - message_tokens)))
        history = Conversation(self.conversation.turns[:-1]) if without_last else self.conversation
        dropped = history.truncate_to(budget, builder, user, forced)
        if dropped:
            log.info("dropped %d old turns to fit %d prompt tokens", dropped, budget)
        return builder.build(history, user, force_modality=forced)

    def _continues_last(self, turn: UserTurn) -> bool:
        """Does ``turn`` go on from the turn whose exchange ends the history (so that it replaces that exchange)?"""
        last = self._last
        return (
            turn.continues is not None
            and last is not None
            and last[0] is turn.continues
            and bool(self.conversation.turns)
            and self.conversation.turns[-1] is last[1]
        )

    def _remember(self, exchange: _Exchange) -> None:
        if self._continues_last(exchange.turn):
            self.conversation.turns.pop()  # the answer to the first half of the question goes
        self.conversation.append_turn(exchange.user, exchange.reply)
        self._last = (exchange.turn, self.conversation.turns[-1])

    async def _run_lm_and_audio(self, prompt: list[int], forced: Modality | None, generated: list[int]) -> FinishReason:
        """Router (this task) + audio worker (child task). Either failing cancels the other; so does the reply
        reaching ``max_reply_audio_s`` (the worker stops, the router's cancellation closes the LM stream)."""
        self._reply_frames_left = self.config.max_reply_frames
        try:
            async with asyncio.TaskGroup() as group:
                worker = group.create_task(self._audio_worker())
                with _calling("lm"):
                    reason = await self._route_lm(prompt, forced, generated, worker)
                await self._put_job(_DONE, worker)  # the worker finishes the queued jobs, then the group exits
        except BaseExceptionGroup as failure:
            full, others = failure.split(_ReplyAudioFull)
            if full is None:
                raise
            if others is not None:
                raise others from None
            log.info("reply stopped at its audio limit of %s s", self.config.max_reply_audio_s)
            return FinishReason.MAX_TOKENS
        return reason

    async def _put_job(self, job: _Job, worker: asyncio.Task) -> None:
        """Backpressured put that cannot hang when the worker has died (its error surfaces through the group)."""
        if worker.done():
            return
        put = asyncio.ensure_future(self._jobs.put(job))
        try:
            await asyncio.wait({put, worker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not put.done():
                put.cancel()

    # ------------------------------------------------------------------ router
    async def _route_lm(
        self, prompt: list[int], forced: Modality | None, generated: list[int], worker: asyncio.Task
    ) -> FinishReason:
        out = self._out
        demux = ReplyDemultiplexer(self.vocab, forced, self.stats)  # the grammar; this loop only acts on it
        self.chunker.clear()

        async def act(event: ReplyEvent) -> None:
            if isinstance(event, TextPiece):
                await out.put(TranscriptDelta(event.text) if event.transcript else ReplyTextDelta(event.text))
            elif isinstance(event, SpeechStart):
                self.chunker.clear()
            elif isinstance(event, SpeechCode):
                ready = self.chunker.push(event.code)
                if ready is not None:
                    await self._put_job(_SpeechChunk(ready), worker)
            elif isinstance(event, SpeechEnd):
                await self._end_speech(worker)  # also when cut short: speak what was generated
            elif isinstance(event, ImageSegment):
                await self._put_job(_ImageJob(event.index, list(event.codes)), worker)
            elif isinstance(event, MusicSegment):
                await self._put_job(_MusicJob(event.index, list(event.tokens)), worker)

        stop_events: list[ReplyEvent] = []  # what the stop id flushed; acted on once generation is aborted
        stream = self.engine.backends.lm.stream(prompt, forced.value if forced is not None else None)
        try:
            async for chunk in stream:
                for token_id in chunk:
                    token_id = int(token_id)
                    if 0 <= token_id < self.vocab.size:  # an invalid id is dropped (the demux counts it), never kept
                        generated.append(token_id)
                    events = demux.push(token_id)
                    if demux.finished:
                        stop_events = events
                        break
                    for event in events:
                        await act(event)
                if demux.finished:
                    break
                if worker.done():
                    break  # the worker failed or was cancelled; the task group reports it
        finally:
            await stream.aclose()  # aborts generation and frees its state (also on cancel/error)

        for event in stop_events + demux.finish():
            await act(event)
        if any(isinstance(event, Stop) for event in stop_events):
            return FinishReason.COMPLETE
        return FinishReason.MAX_TOKENS

    async def _end_speech(self, worker: asyncio.Task) -> None:
        rest = self.chunker.flush()
        if rest is not None:
            await self._put_job(_SpeechChunk(rest), worker)
        await self._put_job(_SpeechEnd(), worker)

    # ------------------------------------------------------------------ audio worker
    async def _audio_worker(self) -> None:
        backends, out, cfg = self.engine.backends, self._out, self.config
        context: np.ndarray | None = None  # codes [n_q, Tc] of the previous chunk of this segment
        tail = np.zeros(0, dtype=np.float32)  # last fade_samples held back until we know whether the segment ends
        while True:
            job = await self._jobs.get()
            if job is _DONE:
                break
            if isinstance(job, _SpeechChunk):
                with _calling("acoustic"):
                    codes, wave = await self._decode_speech(job.semantic, context)
                codes = np.asarray(codes, dtype=np.int64)
                wave = np.asarray(wave, dtype=np.float32).reshape(-1)
                context = codes[:, -cfg.context_frames :] if cfg.context_frames > 0 else None
                buf = np.concatenate([tail, wave])
                keep = min(cfg.fade_samples, buf.size)
                tail = buf[buf.size - keep :]
                await self._put_frames(self.splitter.push(buf[: buf.size - keep]), "speech")
            elif isinstance(job, _SpeechEnd):
                await self._put_frames(self.splitter.push(_fade_out(tail)), "speech")
                await self._put_frames(self.splitter.flush(pad=True), "speech")
                tail, context = np.zeros(0, dtype=np.float32), None
            elif isinstance(job, _ImageJob):
                with _calling("media"):
                    png, width, height = await backends.media.image_png(job.codes)
                await out.put(ImageOutput(job.index, bytes(png), int(width), int(height)))
            elif isinstance(job, _MusicJob):
                with _calling("media"):
                    wave = np.asarray(await backends.media.music_wave(job.tokens), dtype=np.float32).reshape(-1)
                await out.put(MusicOutput(job.index, wave, wave.size / SAMPLE_RATE))
                music_splitter = FrameSplitter(OUTPUT_FRAME_SAMPLES)
                faded = np.concatenate(
                    [
                        wave[: wave.size - min(cfg.fade_samples, wave.size)],
                        _fade_out(wave[wave.size - min(cfg.fade_samples, wave.size) :]),
                    ]
                )
                await self._put_frames(music_splitter.push(faded) + music_splitter.flush(pad=True), "music")

    async def _decode_speech(self, semantic: np.ndarray, context: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """One chunk through the acoustic backend in this session's voice: the prompt is registered once (first
        chunk of the session) and only its key travels afterwards. A backend that lost the key (a restarted or new
        replica) gets the prompt once more with the retried chunk, which registers it where the chunk is decoded."""
        acoustic = self.engine.backends.acoustic
        if self.voice_prompt is None:
            return await acoustic.decode_chunk(semantic, context, None)
        if self._voice_key is None:
            self._voice_key = await acoustic.register_voice(self.voice_prompt)
        try:
            return await acoustic.decode_chunk(semantic, context, self._voice_key)
        except UnknownVoiceKeyError:
            log.info("acoustic backend lost voice %s; sending the prompt again", self._voice_key)
            return await acoustic.decode_chunk(semantic, context, self._voice_key, prompt=self.voice_prompt)

    async def _put_frames(self, frames: list[np.ndarray], source: Literal["speech", "music"]) -> None:
        """Queues 20 ms frames; counts them against the reply's audio limit and raises ``_ReplyAudioFull`` right after
        the last one it allows (faded out: the reply stops without a click)."""
        for frame in frames:
            last = self._reply_frames_left == 1
            if last:
                frame = _fade_out_end(frame, self.config.fade_samples)
            await self._out.put(AudioFrame(float_to_pcm16(frame), source))
            if self._reply_frames_left is not None:
                self._reply_frames_left -= 1
                if self._reply_frames_left <= 0:
                    raise _ReplyAudioFull()


def _fade_out(wave: np.ndarray) -> np.ndarray:
    if wave.size == 0:
        return wave
    return (wave * np.linspace(1.0, 0.0, wave.size, dtype=np.float32)).astype(np.float32)


def _fade_out_end(frame: np.ndarray, samples: int) -> np.ndarray:
    """``frame`` with its last ``samples`` faded to silence."""
    keep = frame.size - min(samples, frame.size)
    return np.concatenate([frame[:keep], _fade_out(frame[keep:])]).astype(np.float32)


def prompt_budget(max_history_tokens: int, limits: LMLimits | None) -> int:
    """The most tokens a prompt may have: ``max_history_tokens``, lowered so that a whole reply fits beside the prompt
    in the LM's context. The reply's reserve is its token limit, but at most half the context: a model whose reply
    limit reaches its context (AnyGPT's 2504 new tokens in a 2048-position slot) would otherwise accept no prompt at
    all; such a reply is cut at the end of the context instead (MAX_TOKENS)."""
    if limits is None:
        return max_history_tokens
    reserve = min(limits.max_reply_tokens, limits.context_tokens // 2)
    return min(max_history_tokens, limits.context_tokens - reserve)


@contextlib.contextmanager
def _calling(role: str) -> Iterator[None]:
    """Names the backend (``BACKEND_ROLES``) whose call failed: a note on the exception, so the log says which
    service it was. A timeout or lost connection from a backend that does not classify its own errors (the in-process
    ones never time out; the Ray ones raise ``BackendUnavailableError`` themselves) means the service is unavailable."""
    try:
        yield
    except BackendUnavailableError:
        raise
    except (TimeoutError, ConnectionError) as exc:
        raise BackendUnavailableError(role, _describe(exc)) from exc
    except Exception as exc:
        note = f"(raised by the {role} backend)"
        if note not in getattr(exc, "__notes__", ()):  # the same instance may be raised again (a cached error)
            exc.add_note(note)
        raise


def _root_failure(exc: BaseException) -> BaseException:
    """The first real failure inside (nested) exception groups of the turn's task group."""
    while isinstance(exc, BaseExceptionGroup):
        inner = [e for e in exc.exceptions if not isinstance(e, asyncio.CancelledError)]
        if not inner:
            break
        exc = inner[0]
    return exc


def _turn_error(exc: BaseException) -> TurnError:
    """A fixed, caller-safe text and code per failure class, with a fresh id that names the log line of ``exc``."""
    failure = _root_failure(exc)
    error_id = secrets.token_hex(4)
    if isinstance(failure, MessageTooLongError):
        return TurnError(str(failure), ErrorCode.TOO_LARGE.value, error_id)
    if isinstance(failure, BackendUnavailableError):
        service = _SERVICE_NAMES.get(failure.role, "model")
        return TurnError(f"the {service} service is unavailable; try again", ErrorCode.UNAVAILABLE.value, error_id)
    return TurnError("the reply failed; try again", ErrorCode.TURN_FAILED.value, error_id)


def _describe(exc: BaseException) -> str:
    """For the log: the failure's type and text."""
    exc = _root_failure(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
