"""In-process backends over a :class:`~assistant.models.bundle.ModelBundle` (CLI, tests, single-process serving).

Every model call runs in a worker thread (``asyncio.to_thread``) under ``torch.inference_mode`` so the event loop
keeps serving other work (the engine decodes speech while the LM generates).

LM streaming: ``TokenStream.generate`` runs in a dedicated thread that hands ids to the event loop through a BOUNDED
``asyncio.Queue`` (``LocalLMBackend.queue_size`` ids). When the consumer falls behind, the thread blocks on the full
queue, so generation pauses (backpressure) instead of buffering without limit. The consumer receives the first id as
soon as it exists, then whatever has accumulated since, as one chunk. Closing (or cancelling) the async iterator sets
the cancel event, unblocks and joins the thread; ``TokenStream`` frees its KV cache when its generator ends.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterator

import numpy as np
import torch

from assistant.decoding.lm_stream import TokenStream
from assistant.image_io import read_image
from assistant.decoding.maskgit import ChunkedAcousticDecoder, UnmaskSchedule, module_device
from assistant.models.bundle import ModelBundle
from assistant.pipeline.backends import AcousticBackend, Backends, LMBackend, MediaBackend, SpeechEncoderBackend
from assistant.vocab import Modality

_POLL_S = 0.05  # how often a blocked producer thread re-checks the cancel event


class LocalSpeechEncoder(SpeechEncoderBackend):
    def __init__(self, bundle: ModelBundle):
        self.codec = bundle.codec

    def _encode(self, wave: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            samples = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)).to(module_device(self.codec))
            codes = self.codec.encode(samples)  # [n_q, F]
        return codes.cpu().numpy().astype(np.int64)

    async def encode(self, wave: np.ndarray) -> np.ndarray:
        return await asyncio.to_thread(self._encode, np.asarray(wave, dtype=np.float32))


class LocalLMBackend(LMBackend):
    """One ``TokenStream`` (and one thread) per ``stream`` call; ``seed`` makes the sampled sequence reproducible."""

    def __init__(self, bundle: ModelBundle, seed: int | None = 0, queue_size: int = 64):
        if queue_size <= 0:
            raise ValueError("queue_size must be positive")
        self.model = bundle.lm
        self.vocab = bundle.vocab
        self.settings = bundle.generation
        self.seed = seed
        self.queue_size = queue_size
        self._calls = itertools.count()
        self.active_threads = 0  # streams whose thread is still alive (tests check it returns to 0)

    async def stream(self, prompt_ids: list[int], force_modality: str | None) -> AsyncIterator[list[int]]:
        force = Modality(force_modality) if force_modality is not None else None
        seed = None if self.seed is None else self.seed + next(self._calls)
        token_stream = TokenStream(self.model, self.vocab, self.settings, seed=seed)
        ids = token_stream.generate(list(prompt_ids), force_modality=force)  # validates before the thread starts
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue(maxsize=self.queue_size)
        cancel = threading.Event()

        slots = threading.Semaphore(self.queue_size)  # free places in `queue`; the thread waits for one

        def post(item: tuple) -> bool:
            """Backpressured hand-over; False once cancelled (or the loop is gone)."""
            while not slots.acquire(timeout=_POLL_S):
                if cancel.is_set():
                    return False
            if cancel.is_set():
                return False
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)  # never full: a slot was taken
            except RuntimeError:  # event loop closed
                return False
            return True

        def produce() -> None:
            try:
                with torch.inference_mode():
                    for token in ids:
                        if not post(("id", int(token))):
                            break
                post(("end", None))
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                post(("error", exc))
            finally:
                ids.close()  # frees the KV cache even when cancelled mid-generation

        self.active_threads += 1
        thread = threading.Thread(target=produce, name="lm-stream", daemon=True)
        thread.start()
        try:
            done = False
            while not done:
                kind, value = await queue.get()
                slots.release()
                chunk: list[int] = []
                while True:
                    if kind == "id":
                        chunk.append(value)
                    elif kind == "error":
                        if chunk:
                            yield chunk
                        raise value
                    else:
                        done = True
                        break
                    if queue.empty():
                        break
                    kind, value = queue.get_nowait()
                    slots.release()
                if chunk:
                    yield chunk
        finally:
            cancel.set()  # the thread stops at its next token or within _POLL_S when blocked on a full queue
            while not queue.empty():
                queue.get_nowait()
            await asyncio.to_thread(thread.join)
            self.active_threads -= 1


class LocalAcousticBackend(AcousticBackend):
    def __init__(self, bundle: ModelBundle, schedule: UnmaskSchedule | None = None, context_frames: int = 25):
        fill = None if schedule is not None else bundle.acoustic_fill
        self.decoder = ChunkedAcousticDecoder(bundle.acoustic, bundle.codec, schedule, context_frames=context_frames,
                                              fill=fill)

    def _decode(self, semantic, context, prompt) -> tuple[np.ndarray, np.ndarray]:
        def tensor(a):
            return None if a is None else torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))

        with torch.inference_mode():
            codes, wave = self.decoder.decode_chunk(tensor(semantic), tensor(context), tensor(prompt))
        return codes.cpu().numpy().astype(np.int64), wave.cpu().numpy().astype(np.float32)

    async def decode_chunk(self, semantic, context, prompt):
        return await asyncio.to_thread(self._decode, semantic, context, prompt)


class LocalMediaBackend(MediaBackend):
    def __init__(self, bundle: ModelBundle):
        self.image = bundle.image
        self.music = bundle.music

    def _image(self, codes: list[int]) -> tuple[bytes, int, int]:
        with torch.inference_mode():
            # strict=False: a generated image of the wrong length is padded/truncated instead of failing the turn
            png = self.image.decode_png(list(codes), strict=False)
        side = self.image.config.image_size
        return png, side, side

    def _music(self, tokens: list[int]) -> np.ndarray:
        with torch.inference_mode():
            return np.asarray(self.music.decode(list(tokens)), dtype=np.float32)

    def _image_codes(self, data: bytes) -> list[int]:
        # the image tokenizer's input side (SEED reads 224 px pictures and draws 768 px ones)
        side = getattr(self.image.config, "input_size", self.image.config.image_size)
        pixels = read_image(data, side)
        with torch.inference_mode():
            return [int(c) for c in self.image.encode(pixels)]

    async def image_png(self, codes: list[int]) -> tuple[bytes, int, int]:
        return await asyncio.to_thread(self._image, codes)

    async def image_codes(self, png: bytes) -> list[int]:
        return await asyncio.to_thread(self._image_codes, png)

    async def music_wave(self, tokens: list[int]) -> np.ndarray:
        return await asyncio.to_thread(self._music, tokens)


def local_backends(bundle: ModelBundle, seed: int | None = 0, context_frames: int = 25) -> Backends:
    return Backends(
        speech=LocalSpeechEncoder(bundle),
        lm=LocalLMBackend(bundle, seed=seed),
        acoustic=LocalAcousticBackend(bundle, context_frames=context_frames),
        media=LocalMediaBackend(bundle),
    )
