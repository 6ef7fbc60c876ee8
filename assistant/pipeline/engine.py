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

Malformed token sequences (codes outside their segment, an END without START, a nested START, an empty image, invalid
ids) are dropped and counted in ``Session.stats``; they never end a turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from assistant.audio import OUTPUT_FRAME_SAMPLES, SAMPLE_RATE, FrameSplitter, float_to_pcm16
from assistant.models.voices import VoiceBank
from assistant.pipeline.backends import Backends, UnknownVoiceKeyError
from assistant.pipeline.chunking import SpeechChunker
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
from assistant.prompts import AssistantMessage, ChatPromptBuilder, Conversation, UserMessage
from assistant.protocol import FinishReason
from assistant.vocab import Modality, TextDetokenizer, TokenKind, UnifiedVocab

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
    max_history_tokens: the prompt (history + new user message) is kept under this by dropping the oldest turns.
    """

    force_modality: str | None = None
    force_speech_for_spoken_turns: bool = False
    first_chunk_frames: int = 10
    chunk_frames: int = 25
    context_frames: int = 25
    fade_ms: float = 10.0
    chunk_queue_size: int = 4
    output_queue_size: int = 64
    max_history_tokens: int = 4096

    def __post_init__(self) -> None:
        if self.force_modality is not None and self.force_modality not in _FORCEABLE:
            raise ValueError(f"force_modality must be None or one of {sorted(_FORCEABLE)}, got {self.force_modality!r}")
        for name in ("first_chunk_frames", "chunk_frames", "chunk_queue_size", "output_queue_size", "max_history_tokens"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.context_frames < 0:
            raise ValueError(f"context_frames must be >= 0, got {self.context_frames}")
        if self.fade_ms < 0:
            raise ValueError(f"fade_ms must be >= 0, got {self.fade_ms}")

    @property
    def fade_samples(self) -> int:
        return int(round(self.fade_ms * SAMPLE_RATE / 1000.0))

    def forced_for(self, spoken: bool) -> Modality | None:
        if self.force_modality is not None:
            return _FORCEABLE[self.force_modality]
        if spoken and self.force_speech_for_spoken_turns:
            return Modality.SPEECH
        return None


@dataclass(frozen=True, eq=False)
class UserTurn:
    """One user turn: audio (float32 mono 16 kHz), text, a picture (PNG/JPEG bytes), or several of them."""

    audio: np.ndarray | None = None
    text: str | None = None
    image: bytes | None = None

    def __post_init__(self) -> None:
        has_audio = self.audio is not None and np.asarray(self.audio).size > 0
        if not has_audio and not (self.text and self.text.strip()) and not self.image:
            raise ValueError("UserTurn needs non-empty audio, text or an image")


@dataclass
class SessionStats:
    """Counters of dropped, malformed LM output (never fatal)."""

    invalid_ids: int = 0  # ids outside the vocabulary
    stray_codes: int = 0  # codes outside a segment of their modality
    stray_ends: int = 0  # an END without its START
    nested_starts: int = 0  # a START inside an open segment (ignored)
    empty_segments: int = 0  # an image/music segment without codes
    unterminated_segments: int = 0  # a segment still open when generation stopped
    markers_ignored: int = 0  # [Human], <eoh>, ... inside a reply

    def total_dropped(self) -> int:
        return sum(vars(self).values())


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


_DONE = object()  # end of the job stream


class AssistantEngine:
    """Shared, stateless part: backends, vocabulary and settings. One ``Session`` per conversation."""

    def __init__(self, backends: Backends, vocab: UnifiedVocab, config: EngineConfig | None = None,
                 voices: VoiceBank | None = None):
        self.backends = backends
        self.vocab = vocab
        self.config = config or EngineConfig()
        self.prompt_builder = ChatPromptBuilder(vocab)
        self.voices = voices

    def new_session(self, voice: str | None = None) -> "Session":
        """A conversation whose speech is rendered in ``voice`` (a name of the voice bank; None = its default).
        Raises ``ValueError`` for a voice the bank does not know, or any voice when there is no bank."""
        if self.voices is None:
            if voice is not None:
                raise ValueError(f"voice {voice!r} requested, but these models have no voice bank")
            return Session(self, None)
        return Session(self, self.voices.prompt(voice if voice is not None else self.voices.default))


class Session:
    """One conversation: its history and at most one turn in flight."""

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
        self._jobs: asyncio.Queue | None = None
        self._out: asyncio.Queue | None = None
        self._producer: asyncio.Task | None = None
        self._turn_active = False
        self._interrupted = False
        self._closed = False

    # ------------------------------------------------------------------ public
    async def respond(self, turn: UserTurn) -> AsyncIterator[EngineOutput]:
        """Runs one turn; yields outputs as they become ready and always ends with exactly one ``TurnFinished``."""
        if self._closed:
            raise RuntimeError("session is closed")
        if self._turn_active:
            raise RuntimeError("a turn is already in progress in this session")
        self._turn_active = True
        self._interrupted = False
        self._out = asyncio.Queue(maxsize=self.config.output_queue_size)
        self._jobs = asyncio.Queue(maxsize=self.config.chunk_queue_size)
        self._producer = asyncio.create_task(self._produce(turn))
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
            producer = self._producer
            if producer is not None and not producer.done():
                producer.cancel()
            if producer is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await producer
            self._clear_buffers()
            self._producer = None
            self._turn_active = False

    def interrupt(self) -> None:
        """Stops the turn in flight: the LM stream is closed, every queued chunk/frame is dropped and ``respond`` ends
        with ``TurnFinished(INTERRUPTED)``. No-op when no turn is in flight."""
        if not self._turn_active or self._interrupted:
            return
        self._interrupted = True
        if self._producer is not None and not self._producer.done():
            self._producer.cancel()  # its cleanup drops everything and queues TurnFinished(INTERRUPTED)
        else:
            self._clear_buffers()
            self._out.put_nowait(TurnFinished(FinishReason.INTERRUPTED))

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
            "chunk_queue": self._jobs.qsize() if self._jobs is not None else 0,
            "output_queue": self._out.qsize() if self._out is not None else 0,
            "splitter_samples": self.splitter.pending_samples,
        }

    # ------------------------------------------------------------------ turn
    def _clear_buffers(self) -> None:
        self.chunker.clear()
        self.splitter.clear()
        for queue in (self._jobs, self._out):
            if queue is None:
                continue
            while not queue.empty():
                queue.get_nowait()

    async def _produce(self, turn: UserTurn) -> None:
        """Runs the turn and puts its outputs, then exactly one TurnFinished, into the output queue."""
        out = self._out
        user: UserMessage | None = None
        forced: Modality | None = None
        generated: list[int] = []
        reason = FinishReason.COMPLETE
        error: str | None = None
        try:
            user, forced = await self._user_message(turn)
            prompt = self._build_prompt(user, forced)
            reason = await self._run_lm_and_audio(prompt, forced, generated)
        except asyncio.CancelledError:
            reason = FinishReason.INTERRUPTED
        except Exception as exc:  # noqa: BLE001 - a failing backend ends the turn, never the session
            reason, error = FinishReason.ERROR, _describe(exc)
            log.warning("turn failed: %s", error, exc_info=exc)
        # (cancellation is swallowed on purpose: this task is only ever cancelled by interrupt/respond/close)

        if user is not None and (generated or reason is not FinishReason.ERROR):
            prefix = [self.vocab.range_of(forced).start_id] if forced is not None else []
            self._remember(user, AssistantMessage.from_generated(self.vocab, generated, prefix=prefix))

        if reason is FinishReason.INTERRUPTED or self._interrupted:
            self._clear_buffers()
            out.put_nowait(TurnFinished(FinishReason.INTERRUPTED))
            return
        try:
            if error is not None:
                await out.put(TurnError(error))
            await out.put(TurnFinished(reason))
        except asyncio.CancelledError:
            self._clear_buffers()
            out.put_nowait(TurnFinished(FinishReason.INTERRUPTED))

    async def _user_message(self, turn: UserTurn) -> tuple[UserMessage, Modality | None]:
        speech_codes = None
        if turn.audio is not None and np.asarray(turn.audio).size > 0:
            wave = np.asarray(turn.audio, dtype=np.float32)
            codes = np.asarray(await self.engine.backends.speech.encode(wave))  # level 1 = the semantic stream
            if codes.ndim != 1 or codes.size == 0:
                raise ValueError(f"speech encoder returned codes of shape {codes.shape}, expected level 1: [F>0]")
            speech_codes = [int(c) for c in codes]
        image_codes = list(await self.engine.backends.media.image_codes(turn.image)) if turn.image else None
        text = turn.text if turn.text and turn.text.strip() else None
        message = UserMessage(text=text, speech_codes=speech_codes, image_codes=image_codes)
        return message, self.config.forced_for(speech_codes is not None)

    def _build_prompt(self, user: UserMessage, forced: Modality | None) -> list[int]:
        builder = self.engine.prompt_builder
        dropped = self.conversation.truncate_to(self.config.max_history_tokens, builder, user, forced)
        if dropped:
            log.info("dropped %d old turns to fit %d prompt tokens", dropped, self.config.max_history_tokens)
        return builder.build(self.conversation, user, force_modality=forced)

    def _remember(self, user: UserMessage, reply: AssistantMessage) -> None:
        self.conversation.append_turn(user, reply)

    async def _run_lm_and_audio(self, prompt: list[int], forced: Modality | None, generated: list[int]) -> FinishReason:
        """Router (this task) + audio worker (child task). Either failing cancels the other."""
        async with asyncio.TaskGroup() as group:
            worker = group.create_task(self._audio_worker())
            reason = await self._route_lm(prompt, forced, generated, worker)
            await self._put_job(_DONE, worker)  # the worker finishes the queued jobs, then the group exits
        return reason

    async def _put_job(self, job: object, worker: asyncio.Task) -> None:
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
        vocab, stats, out = self.vocab, self.stats, self._out
        mode: Modality | None = forced  # open segment (a forced marker opens one in the prompt)
        in_transcript = False
        detok = TextDetokenizer(vocab)
        segment: list[int] = []  # image codes / music tokens of the open segment
        image_index = music_index = 0
        stopped = False
        self.chunker.clear()

        async def emit_text(delta: str) -> None:
            if delta:
                await out.put(TranscriptDelta(delta) if in_transcript else ReplyTextDelta(delta))

        async def flush_text() -> None:
            await emit_text(detok.flush())

        stream = self.engine.backends.lm.stream(prompt, forced.value if forced is not None else None)
        try:
            async for chunk in stream:
                for token_id in chunk:
                    token_id = int(token_id)
                    generated.append(token_id)
                    info = vocab.classify(token_id)
                    kind = info.kind
                    if kind is TokenKind.STOP:
                        stopped = True
                        break
                    if kind is TokenKind.TEXT:
                        if mode is not None:
                            # AnyGPT puts text only outside segments; text inside one is dropped
                            stats.stray_codes += 1
                            continue
                        await emit_text(detok.push(token_id))
                    elif kind is TokenKind.CODE:
                        if info.modality is not mode:
                            stats.stray_codes += 1
                        elif mode is Modality.SPEECH:
                            ready = self.chunker.push(info.code)
                            if ready is not None:
                                await self._put_job(_SpeechChunk(ready), worker)
                        else:
                            segment.append(info.code)
                    elif kind is TokenKind.START:
                        if mode is not None:
                            stats.nested_starts += 1
                            continue
                        await flush_text()
                        mode, segment = info.modality, []
                        self.chunker.clear()
                    elif kind is TokenKind.END:
                        if info.modality is not mode:
                            stats.stray_ends += 1
                            continue
                        if mode is Modality.SPEECH:
                            await self._end_speech(worker)
                        elif not segment:
                            stats.empty_segments += 1
                        elif mode is Modality.IMAGE:
                            await self._put_job(_ImageJob(image_index, segment), worker)
                            image_index += 1
                        else:
                            await self._put_job(_MusicJob(music_index, segment), worker)
                            music_index += 1
                        mode, segment = None, []
                    elif kind is TokenKind.MARKER:
                        if token_id == vocab.ins_id:
                            await flush_text()
                            in_transcript = True
                        elif token_id == vocab.res_id:
                            await flush_text()
                            in_transcript = False
                        else:
                            stats.markers_ignored += 1
                    else:
                        stats.invalid_ids += 1
                if stopped:
                    break
                if worker.done():
                    break  # the worker failed or was cancelled; the task group reports it
        finally:
            await stream.aclose()  # aborts generation and frees its state (also on cancel/error)

        await flush_text()
        if mode is not None:
            stats.unterminated_segments += 1
            if mode is Modality.SPEECH:
                await self._end_speech(worker)  # speak what was generated (e.g. max_new_tokens reached)
        if stopped:
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
                codes, wave = await self._decode_speech(job.semantic, context)
                codes = np.asarray(codes, dtype=np.int64)
                wave = np.asarray(wave, dtype=np.float32).reshape(-1)
                context = codes[:, -cfg.context_frames:] if cfg.context_frames > 0 else None
                buf = np.concatenate([tail, wave])
                keep = min(cfg.fade_samples, buf.size)
                tail = buf[buf.size - keep:]
                await self._put_frames(self.splitter.push(buf[: buf.size - keep]), "speech")
            elif isinstance(job, _SpeechEnd):
                await self._put_frames(self.splitter.push(_fade_out(tail)), "speech")
                await self._put_frames(self.splitter.flush(pad=True), "speech")
                tail, context = np.zeros(0, dtype=np.float32), None
            elif isinstance(job, _ImageJob):
                png, width, height = await backends.media.image_png(job.codes)
                await out.put(ImageOutput(job.index, bytes(png), int(width), int(height)))
            elif isinstance(job, _MusicJob):
                wave = np.asarray(await backends.media.music_wave(job.tokens), dtype=np.float32).reshape(-1)
                await out.put(MusicOutput(job.index, wave, wave.size / SAMPLE_RATE))
                music_splitter = FrameSplitter(OUTPUT_FRAME_SAMPLES)
                faded = np.concatenate([wave[: wave.size - min(cfg.fade_samples, wave.size)],
                                        _fade_out(wave[wave.size - min(cfg.fade_samples, wave.size):])])
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

    async def _put_frames(self, frames: list[np.ndarray], source: str) -> None:
        for frame in frames:
            await self._out.put(AudioFrame(float_to_pcm16(frame), source))


def _fade_out(wave: np.ndarray) -> np.ndarray:
    if wave.size == 0:
        return wave
    return (wave * np.linspace(1.0, 0.0, wave.size, dtype=np.float32)).astype(np.float32)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        inner = [e for e in exc.exceptions if not isinstance(e, asyncio.CancelledError)]
        if inner:
            return _describe(inner[0])
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if str(exc) else text
