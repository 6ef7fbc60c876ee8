"""In-process backends over a :class:`~assistant.models.bundle.ModelBundle` (CLI, tests, single-process serving).

Each backend reads its models through their role's interface (:mod:`assistant.models.interfaces`), so either family
runs behind the same code.

Every model call runs in a worker thread (``asyncio.to_thread``) under ``torch.inference_mode`` so the event loop
keeps serving other work (the engine decodes speech while the LM generates).

LM streaming: every stream is a request of one shared batched engine (:mod:`assistant.lm_engine`), whose loop runs in
its own thread and steps every active generation together. The consumer receives the first id as soon as it exists,
then whatever has accumulated since, as one chunk; a request whose consumer holds ``max_backlog`` undelivered ids
sits out steps (backpressure) instead of buffering without limit. Closing (or cancelling) the async iterator cancels
the request; its KV slot is free by the engine's next step.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict
from collections.abc import AsyncGenerator, Iterable

import numpy as np
import torch

from assistant.audio import decode_wav_bytes, resample
from assistant.decoding.maskgit import ChunkedAcousticDecoder, ChunkRequest, UnmaskSchedule
from assistant.image_io import read_image
from assistant.lm_engine import BusyError, LMEngine, LMEngineConfig
from assistant.models import numpy_soundstorm
from assistant.models.bundle import ModelBundle
from assistant.models.interfaces import DEFAULT_CONTEXT_FRAMES, ImageCodec, MusicCodec, SpeechCodec
from assistant.pipeline.acoustic_batching import AcousticBatcher, AcousticBatchStats
from assistant.pipeline.backends import (
    AcousticBackend,
    Backends,
    BackendUnavailableError,
    LMBackend,
    LMLimits,
    MediaBackend,
    SpeechEncoderBackend,
    UnknownVoiceKeyError,
    voice_key,
)
from assistant.protocol import MAX_MUSIC_SECONDS
from assistant.vocab import Modality


class LocalSpeechEncoder(SpeechEncoderBackend):
    """Waves -> level-1 codes (int64 [F]), the only level the engine reads.

    ``encode_batch`` encodes several utterances in one codec call (``SpeechCodec.encode_batch``, level 1 only: the
    codec batches them where that leaves every utterance's codes unchanged)."""

    def __init__(self, bundle: ModelBundle):
        if bundle.codec is None:
            raise ValueError("the speech encoder needs the bundle's codec")
        self.codec: SpeechCodec = bundle.codec

    def _encode_many(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            samples = [torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)).to(self.codec.device) for w in waves]
            codes = [c[0] for c in self.codec.encode_batch(samples, n_q=1)]  # [F] each
        return [c.cpu().numpy().astype(np.int64) for c in codes]

    async def encode(self, wave: np.ndarray) -> np.ndarray:
        return (await self.encode_batch([wave]))[0]

    async def encode_batch(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        """float32 [T_i] each -> int64 [F_i] each, in one worker-thread call."""
        return await asyncio.to_thread(self._encode_many, [np.asarray(w, dtype=np.float32) for w in waves])


class LocalLMBackend(LMBackend):
    """Every ``stream`` call is one request of a shared batched :class:`~assistant.lm_engine.LMEngine`: concurrent
    sessions decode together, one step for all. ``seed`` makes the sampled sequences reproducible (call n samples
    with seed + n); ``engine_config`` sets the slots, waiting places and backlog (``max_backlog`` ids undelivered
    before the request sits out steps: backpressure from a slow consumer)."""

    def __init__(self, bundle: ModelBundle, seed: int | None = 0, engine_config: LMEngineConfig | None = None):
        if bundle.lm is None:
            raise ValueError("the LM backend needs the bundle's LM")
        self.vocab = bundle.vocab
        self.engine = LMEngine(bundle.lm, bundle.vocab, bundle.generation, engine_config)
        self.seed = seed
        self._calls = itertools.count()

    async def prefill(self, prompt_ids: list[int]) -> None:
        """A prefill-only request (``max_new_tokens=0``) whose KV the engine keeps for prefix reuse; skipped unless
        a slot is free now, so that it never takes a slot or a waiting place a turn's own request may need."""
        stats = self.engine.stats()
        if stats["waiting"] or stats["active_slots"] >= stats["max_slots"]:
            return
        try:
            request = self.engine.submit(list(prompt_ids), max_new_tokens=0)
        except BusyError:
            return
        try:
            async for _ in request.chunks():
                pass
        finally:
            request.cancel()  # no-op once finished; a prefill abandoned half-way frees its slot

    async def stream(self, prompt_ids: list[int], force_modality: str | None) -> AsyncGenerator[list[int]]:
        """Raises ``BackendUnavailableError`` when every slot and waiting place is taken (try again shortly),
        ``ValueError`` for a bad prompt."""
        force = Modality(force_modality) if force_modality is not None else None
        seed = None if self.seed is None else self.seed + next(self._calls)
        try:
            request = self.engine.submit(list(prompt_ids), force_modality=force, seed=seed)
        except BusyError as exc:
            raise BackendUnavailableError("lm", str(exc)) from exc
        try:
            async for chunk in request.chunks():
                yield chunk
        finally:
            request.cancel()  # no-op once finished; else the slot is free by the engine's next step

    async def limits(self) -> LMLimits:
        """A slot's positions (the model's maximum unless ``slot_capacity`` is smaller) and the generation settings'
        total limit: the engine stops a reply at whichever it reaches first."""
        return LMLimits(context_tokens=self.engine.capacity, max_reply_tokens=self.engine.settings.total_limit)

    def stats(self) -> dict:
        return self.engine.stats()

    def close(self) -> None:
        self.engine.close()


class LocalAcousticBackend(AcousticBackend):
    """Chunks of concurrent sessions decoded in shared batched calls (an ``AcousticBatcher``: ``window_s``,
    ``max_batch``), in voices registered once.

    Voices: ``register_voice`` / ``add_voice`` keep a prompt under its ``voice_key`` (at most ``max_voices``, least
    recently used dropped first; a dropped key raises ``UnknownVoiceKeyError`` and is registered again by the caller);
    ``voices`` (e.g. a voice bank's prompts) are registered at construction. Randomness: every chunk gets its own
    generator, seeded from ``seed`` (None: fresh entropy) or the ``seed`` given with the chunk, so a chunk decodes
    to the same codes alone or batched with others. ``numpy_network``: the acoustic network's CPU forward runs in
    NumPy where the model allows it (``assistant.models.numpy_soundstorm``: the same logits, a fraction of the time).
    """

    def __init__(
        self,
        bundle: ModelBundle,
        schedule: UnmaskSchedule | None = None,
        context_frames: int = DEFAULT_CONTEXT_FRAMES,
        *,
        window_s: float = 0.005,
        max_batch: int = 8,
        seed: int | None = None,
        voices: Iterable[np.ndarray] = (),
        max_voices: int = 1024,
        numpy_network: bool = True,
    ):
        if max_voices < 1:
            raise ValueError(f"max_voices must be >= 1, got {max_voices}")
        if bundle.acoustic is None or bundle.codec is None:
            raise ValueError("the acoustic backend needs the bundle's acoustic model and codec")
        fill = None if schedule is not None else bundle.acoustic_fill
        model = numpy_soundstorm.numpy_network(bundle.acoustic) if numpy_network else bundle.acoustic
        self.decoder = ChunkedAcousticDecoder(model, bundle.codec, schedule, context_frames=context_frames, fill=fill)
        self.batcher = AcousticBatcher(self.decoder, window_s=window_s, max_batch=max_batch)
        self.max_voices = max_voices
        self._voices: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._seeds = np.random.default_rng(seed)
        for prompt in voices:
            self.add_voice(prompt)

    # ----- voices
    def add_voice(self, prompt: np.ndarray) -> str:
        """Keeps ``prompt`` (int64 [n_q, Tp]) under its key; returns the key. Raises ``ValueError`` for a prompt
        this decoder cannot use."""
        codes = np.asarray(prompt)
        if codes.ndim != 2 or codes.shape[0] != self.decoder.n_q or codes.shape[1] == 0:
            raise ValueError(f"a voice prompt is [n_q={self.decoder.n_q}, frames >= 1], got shape {codes.shape}")
        if not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"voice prompt codes must be integers, got {codes.dtype}")
        if int(codes.min()) < 0 or int(codes.max()) >= self.decoder.codebook_size:
            raise ValueError(f"voice prompt codes must lie in [0, {self.decoder.codebook_size})")
        key = voice_key(codes)
        if key not in self._voices:
            self._voices[key] = torch.from_numpy(np.array(codes, dtype=np.int64))
            while len(self._voices) > self.max_voices:
                self._voices.popitem(last=False)
        self._voices.move_to_end(key)
        return key

    @property
    def voice_keys(self) -> tuple[str, ...]:
        return tuple(self._voices)

    async def register_voice(self, prompt: np.ndarray) -> str:
        return self.add_voice(prompt)

    # ----- decoding
    async def decode_chunk(
        self,
        semantic: np.ndarray,
        context: np.ndarray | None,
        voice: str | None,
        prompt: np.ndarray | None = None,
        seed: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """See ``AcousticBackend.decode_chunk``; ``seed`` (default: drawn from the backend's seed) seeds this chunk's
        generator."""
        if prompt is not None:
            key = self.add_voice(prompt)
            if voice is not None and voice != key:
                raise ValueError(f"the prompt sent with voice {voice!r} has key {key!r}")
            voice = key
        voice_codes = None
        if voice is not None:
            voice_codes = self._voices.get(voice)
            if voice_codes is None:
                raise UnknownVoiceKeyError(f"unknown voice key {voice!r}; register the prompt again")
            self._voices.move_to_end(voice)
        if seed is None:
            seed = int(self._seeds.integers(0, 2**63 - 1))
        generator = torch.Generator(device=self.decoder.device).manual_seed(seed)
        semantic_codes = torch.from_numpy(np.array(semantic, dtype=np.int64))
        request = ChunkRequest(semantic_codes, _long_tensor(context), voice_codes, generator)
        self.decoder.check_request(request)  # a bad chunk fails alone, never the batch it would join
        codes, wave = await self.batcher.decode(request)
        return codes.numpy().astype(np.int64), wave.numpy().astype(np.float32)

    def stats(self) -> AcousticBatchStats:
        """Queue depth, batches, mean batch size, model seconds and audio seconds (real-time factor)."""
        return self.batcher.stats()

    def close(self) -> None:
        self.batcher.close()


def _long_tensor(a: np.ndarray | None) -> torch.Tensor | None:
    return None if a is None else torch.from_numpy(np.array(a, dtype=np.int64))


class LocalMediaBackend(MediaBackend):
    """Pictures and music of replies, and pictures and tunes users send. A bundle without one of the codecs (a
    benchmark that only speaks) serves the other."""

    def __init__(self, bundle: ModelBundle):
        self.image: ImageCodec | None = bundle.image
        self.music: MusicCodec | None = bundle.music

    def _image_codec(self) -> ImageCodec:
        if self.image is None:
            raise RuntimeError("this media backend was loaded without an image codec")
        return self.image

    def _image(self, codes: list[int]) -> tuple[bytes, int, int]:
        image = self._image_codec()
        with torch.inference_mode():
            # strict=False: a generated image of the wrong length is padded/truncated instead of failing the turn
            png = image.decode_png(list(codes), strict=False)
        return png, image.image_size, image.image_size

    def _music_codec(self) -> MusicCodec:
        if self.music is None:
            raise RuntimeError("this media backend was loaded without a music codec")
        return self.music

    def _music(self, tokens: list[int]) -> np.ndarray:
        music = self._music_codec()
        with torch.inference_mode():
            return np.asarray(music.decode(list(tokens)), dtype=np.float32)

    def _music_codes(self, data: bytes) -> list[int]:
        music = self._music_codec()
        wave, rate = decode_wav_bytes(data, max_seconds=MAX_MUSIC_SECONDS)  # AudioFormatError is a ValueError
        wave = resample(wave, rate, music.sample_rate)  # the rate encode reads (AnyGPT resamples on to 32 kHz)
        with torch.inference_mode():
            return [int(t) for t in music.encode(wave)]

    def _image_codes(self, data: bytes) -> list[int]:
        image = self._image_codec()
        pixels = read_image(data, image.input_size)  # SEED reads 224 px pictures and draws 768 px ones
        with torch.inference_mode():
            return [int(c) for c in image.encode(pixels)]

    async def image_png(self, codes: list[int]) -> tuple[bytes, int, int]:
        return await asyncio.to_thread(self._image, codes)

    async def image_codes(self, png: bytes) -> list[int]:
        return await asyncio.to_thread(self._image_codes, png)

    async def music_wave(self, tokens: list[int]) -> np.ndarray:
        return await asyncio.to_thread(self._music, tokens)

    async def music_codes(self, wav: bytes) -> list[int]:
        return await asyncio.to_thread(self._music_codes, bytes(wav))


def local_backends(bundle: ModelBundle, seed: int | None = 0, context_frames: int = DEFAULT_CONTEXT_FRAMES) -> Backends:
    return Backends(
        speech=LocalSpeechEncoder(bundle),
        lm=LocalLMBackend(bundle, seed=seed),
        acoustic=LocalAcousticBackend(bundle, context_frames=context_frames, seed=seed),
        media=LocalMediaBackend(bundle),
    )
