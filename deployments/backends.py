"""The engine's backend ABCs implemented over Ray Serve DeploymentHandles (numpy crosses unchanged).

Every call to a replica has a deadline (``CallTimeouts``). A call that misses it is cancelled (the replica stops
working on it) and raises ``BackendUnavailableError``, as do the errors Ray raises for a replica that died, cannot be
reached or refuses work for load; the engine turns that into a caller-safe "service unavailable" error and the next
turn goes to whichever replica is healthy by then.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable
from typing import Any, TypeVar, cast

import numpy as np
from ray import exceptions as ray_errors
from ray.serve import exceptions as serve_errors
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from assistant.lm_engine import BusyError
from assistant.pipeline.backends import (
    AcousticBackend,
    Backends,
    BackendUnavailableError,
    LMBackend,
    LMLimits,
    MediaBackend,
    SpeechEncoderBackend,
    UnknownVoiceKeyError,
)
from deployments.common import cancel_call
from deployments.timeouts import CallTimeouts

log = logging.getLogger(__name__)

T = TypeVar("T")


# Ray's ways of saying a replica cannot take the call: it died or is unreachable (RayActorError covers ActorDiedError
# and ActorUnavailableError), its worker or node went away, or Serve has no replica / refuses for load.
_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    ray_errors.RayActorError,
    ray_errors.WorkerCrashedError,
    ray_errors.NodeDiedError,
    ray_errors.LocalRayletDiedError,
    serve_errors.BackPressureError,
    serve_errors.DeploymentUnavailableError,
    serve_errors.ReplicaUnavailableError,
)
# What a replica itself raises when it refuses for load (re-raised by Ray as a RayTaskError "as instance of cause").
_REFUSED_ERRORS: tuple[type[BaseException], ...] = (BackendUnavailableError, BusyError)


def as_unavailable(role: str, exc: BaseException) -> BackendUnavailableError | None:
    """``exc`` as the engine's ``BackendUnavailableError`` when it means the ``role`` service cannot answer now, else
    None (the error is the replica's own: a bad request, a model failure)."""
    if isinstance(exc, BackendUnavailableError) and not isinstance(exc, ray_errors.RayTaskError):
        return exc
    if isinstance(exc, _UNAVAILABLE_ERRORS):
        return BackendUnavailableError(role, f"{type(exc).__name__}: {exc}")
    cause = getattr(exc, "cause", None) if isinstance(exc, ray_errors.RayTaskError) else None
    if isinstance(exc, _REFUSED_ERRORS) or isinstance(cause, _REFUSED_ERRORS):
        return BackendUnavailableError(role, f"refused for load: {cause if cause is not None else exc}")
    return None


# A call not answered within this long looks whether its deployment still has a running replica; Serve's router
# queues calls while it has none (a replica died and its successor is loading), which would hold the turn for the
# whole timeout. Healthy calls answer well within it, so they never look.
REPLICA_CHECK_S = 0.1


def running_replicas(handle: Any) -> int | None:
    """How many replicas ``handle``'s router may send calls to now; None when it cannot tell (the handle has not
    routed a call yet, or Ray's internals moved). Reads Ray Serve 2.x's router (``handle._router._asyncio_router.
    _request_router.curr_replicas``): no public API says this, and ``tests/deployments/test_call_timeouts.py`` fails
    when the path changes. A read of a dict's length from another thread is safe under the GIL."""
    router = getattr(getattr(getattr(handle, "_router", None), "_asyncio_router", None), "_request_router", None)
    replicas = getattr(router, "curr_replicas", None)
    return len(replicas) if isinstance(replicas, dict) else None


async def _answer(role: str, call: Awaitable[T], timeout_s: float, handle: Any = None) -> T:
    """``call``'s result within ``timeout_s``; else the call is cancelled and ``BackendUnavailableError`` raised. With
    ``handle``, a call still waiting after ``REPLICA_CHECK_S`` fails at once when the deployment has no running
    replica left (it died mid-turn: the caller hears so within a second, not after the whole timeout)."""
    pending = asyncio.ensure_future(call)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        while not pending.done():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise BackendUnavailableError(role, f"no answer within {timeout_s:g} s")
            await asyncio.wait({pending}, timeout=min(remaining, REPLICA_CHECK_S))
            if not pending.done() and handle is not None and running_replicas(handle) == 0:
                raise BackendUnavailableError(role, "no running replica (it died; Serve is starting another)")
        return pending.result()
    except BaseException as exc:
        if not pending.done():
            pending.cancel()
            cancel_call(call, "a replica call")
        unavailable = as_unavailable(role, exc) if isinstance(exc, Exception) else None
        if unavailable is None or unavailable is exc:
            raise
        raise unavailable from exc


class RaySpeechEncoder(SpeechEncoderBackend):
    def __init__(self, handle: DeploymentHandle, timeouts: CallTimeouts | None = None):
        self._handle = handle
        self._timeouts = timeouts or CallTimeouts()

    async def encode(self, wave: np.ndarray) -> np.ndarray:
        """float32 [T] -> int64 [F] (level 1 only crosses the boundary)."""
        call = self._handle.encode.remote(np.asarray(wave, dtype=np.float32))
        return await _answer("speech", call, self._timeouts.encode_s, self._handle)


class RayLMBackend(LMBackend):
    def __init__(self, handle: DeploymentHandle, timeouts: CallTimeouts | None = None):
        self._handle = handle
        self._streaming = handle.options(stream=True)
        self._timeouts = timeouts or CallTimeouts()
        self._limits: LMLimits | None = None
        self._limits_known = False
        self._limits_lock = asyncio.Lock()

    async def limits(self) -> LMLimits | None:
        """Asked of one replica once (every replica runs the same model), then remembered. A failed call is not
        remembered: the next turn asks again."""
        if not self._limits_known:
            async with self._limits_lock:
                if not self._limits_known:
                    call = self._handle.limits.remote()
                    self._limits = await _answer("lm", call, self._timeouts.lm_first_chunk_s, self._handle)
                    self._limits_known = True
        return self._limits

    async def prefill(self, prompt_ids: list[int]) -> None:
        """One replica prefills (``LMDeployment.prefill``). Serve does not route by prefix: with several LM replicas
        the turn may land on another one, which then prefills the whole prompt itself."""
        call = self._handle.prefill.remote(list(prompt_ids))
        await _answer("lm", call, self._timeouts.lm_first_chunk_s, self._handle)

    async def stream(self, prompt_ids: list[int], force_modality: str | None) -> AsyncGenerator[list[int]]:
        # a stream=True handle answers with a generator; the handle's annotations cannot say which it is
        remote = cast(DeploymentResponseGenerator, self._streaming.stream.remote(list(prompt_ids), force_modality))
        timeout_s = self._timeouts.lm_first_chunk_s
        try:
            while True:
                try:
                    chunk = await _answer("lm", anext(remote), timeout_s, self._streaming)
                except StopAsyncIteration:
                    return
                yield list(chunk)
                timeout_s = self._timeouts.lm_next_chunk_s
        finally:
            # Closing this iterator (interrupt, finished turn, error, timeout) cancels the generator in the LM
            # replica, whose cleanup stops generation there.
            cancel_call(remote, "a replica call")


class RayAcousticBackend(AcousticBackend):
    """Only the chunk, its context and the voice key cross per call; the prompt crosses once per session
    (``register_voice``) and again only when a replica does not know the key."""

    def __init__(self, handle: DeploymentHandle, timeouts: CallTimeouts | None = None):
        self._handle = handle
        self._timeouts = timeouts or CallTimeouts()

    async def register_voice(self, prompt: np.ndarray) -> str:
        call = self._handle.register_voice.remote(np.asarray(prompt, dtype=np.int64))
        return await _answer("acoustic", call, self._timeouts.acoustic_s, self._handle)

    async def decode_chunk(
        self, semantic: np.ndarray, context: np.ndarray | None, voice: str | None, prompt: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        try:
            call = self._handle.decode_chunk.remote(semantic, context, voice, prompt)
            codes, wave = await _answer("acoustic", call, self._timeouts.acoustic_s, self._handle)
        except Exception as exc:
            # Ray re-raises a replica's exception as a RayTaskError that is also an instance of the cause's class;
            # the cause itself is checked too, so the engine always sees UnknownVoiceKeyError.
            if isinstance(exc, UnknownVoiceKeyError) or isinstance(getattr(exc, "cause", None), UnknownVoiceKeyError):
                raise UnknownVoiceKeyError(f"unknown voice key {voice!r}") from exc
            raise
        return codes, wave


class RayMediaBackend(MediaBackend):
    def __init__(self, handle: DeploymentHandle, timeouts: CallTimeouts | None = None):
        self._handle = handle
        self._timeouts = timeouts or CallTimeouts()

    async def image_png(self, codes: list[int]) -> tuple[bytes, int, int]:
        call = self._handle.image_png.remote(list(codes))
        png, width, height = await _answer("media", call, self._timeouts.media_s, self._handle)
        return png, width, height

    async def music_wave(self, tokens: list[int]) -> np.ndarray:
        return await _answer(
            "media", self._handle.music_wave.remote(list(tokens)), self._timeouts.media_s, self._handle
        )

    async def image_codes(self, png: bytes) -> list[int]:
        return list(
            await _answer("media", self._handle.image_codes.remote(bytes(png)), self._timeouts.media_s, self._handle)
        )

    async def music_codes(self, wav: bytes) -> list[int]:
        return list(
            await _answer("media", self._handle.music_codes.remote(bytes(wav)), self._timeouts.media_s, self._handle)
        )


def ray_backends(
    speech: DeploymentHandle,
    lm: DeploymentHandle,
    acoustic: DeploymentHandle,
    media: DeploymentHandle,
    timeouts: CallTimeouts | None = None,
) -> Backends:
    """The four backends over their deployments' handles; ``timeouts`` (None: the defaults) bounds every call."""
    timeouts = timeouts or CallTimeouts()
    return Backends(
        speech=RaySpeechEncoder(speech, timeouts),
        lm=RayLMBackend(lm, timeouts),
        acoustic=RayAcousticBackend(acoustic, timeouts),
        media=RayMediaBackend(media, timeouts),
    )
