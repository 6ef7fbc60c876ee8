"""The models in this process: loading the engine, and N concurrent sessions through it without WebRTC or Ray.

Each session hands the whole question (16 kHz) to ``Session.respond`` as one spoken turn; the end of the user's
speech is that moment, and TTFA runs to the first loud ``AudioFrame`` (:mod:`anystream_bench.timeline`). LM tokens are
counted per session by wrapping the LM backend (a context variable tells the sessions apart).
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import numpy as np

from anystream_bench.timeline import AnswerTimeline, Thresholds
from assistant.audio import SAMPLE_RATE
from assistant.pipeline.backends import LMBackend

log = logging.getLogger(__name__)

_session_tokens: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("bench_session_tokens", default=None)


class TokenCountingLM(LMBackend):
    """Counts the LM tokens of every stream (``total``) and of the session whose task runs it, and tells
    ``metrics`` (a ``ServingMetrics``, e.g. the local gateway's) when set."""

    def __init__(self, inner: LMBackend):
        self.inner = inner
        self.total = 0
        self.metrics = None

    async def limits(self):
        return await self.inner.limits()  # the engine sizes its prompts by the wrapped LM

    async def stream(self, prompt_ids: list[int], force_modality: str | None) -> AsyncIterator[list[int]]:
        counter = _session_tokens.get()
        stream = self.inner.stream(prompt_ids, force_modality)
        try:
            async for chunk in stream:
                self.total += len(chunk)
                if self.metrics is not None:
                    self.metrics.lm_tokens(len(chunk))
                if counter is not None:
                    counter[0] += len(chunk)
                yield chunk
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()


@dataclasses.dataclass
class LoadedEngine:
    engine: Any  # AssistantEngine
    tokens: TokenCountingLM
    load_s: float
    how: str  # which loader was used


def load_engine(
    family: str = "embedded", assets_dir: str | None = None, device: str = "cpu", dtype: str = "float32", seed: int = 0
) -> LoadedEngine:
    """An ``AssistantEngine`` over in-process backends: ``assistant.models.loading.load_backends`` when the project
    has it, else the embedded bundle through ``assistant.pipeline.local.local_backends``."""
    from assistant.pipeline.engine import AssistantEngine, EngineConfig

    start = time.monotonic()
    from assistant.models.loading import ModelSpec, load_backends, load_vocab_and_voices

    spec = ModelSpec(family=family, assets_dir=assets_dir, device=device, dtype=dtype, seed=seed)
    backends = load_backends(spec)
    vocab, voices = load_vocab_and_voices(spec)
    how = "load_backends"
    counting = TokenCountingLM(backends.lm)
    backends = dataclasses.replace(backends, lm=counting)
    engine = AssistantEngine(backends, vocab, EngineConfig(), voices=voices)
    return LoadedEngine(engine, counting, time.monotonic() - start, how)


async def run_sessions(
    loaded: LoadedEngine,
    question: np.ndarray,
    offsets: list[float],
    *,
    turns: int = 1,
    turn_timeout_s: float = 120.0,
    thresholds: Thresholds | None = None,
    voice: str | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One session per start offset, all at once. Returns (per-session results, {"lm_tokens", "wall_s"})."""
    from assistant.pipeline.engine import UserTurn
    from assistant.pipeline.outputs import AudioFrame, TurnError, TurnFinished

    # Every frame the engine yields is answer audio (it never sends filler silence; a quiet stretch is the answer's
    # own), so no frame is skipped as digital silence, unlike over WebRTC.
    thresholds = replace(thresholds or Thresholds(), silence_peak=-1)
    tokens_before = loaded.tokens.total

    async def one(index: int, offset: float) -> dict[str, Any]:
        await asyncio.sleep(offset)
        result: dict[str, Any] = {
            "client": index,
            "start_offset_s": offset,
            "status": "ok",
            "reason": None,
            "turns": [],
        }
        counter = [0]
        _session_tokens.set(counter)
        session = loaded.engine.new_session(voice)
        try:
            for turn in range(turns):
                before = counter[0]
                errors: list[str] = []
                reason = None
                t0 = time.monotonic()
                timeline = AnswerTimeline(t0=t0)
                try:
                    async with asyncio.timeout(turn_timeout_s):
                        async for out in session.respond(UserTurn(audio=question)):
                            if isinstance(out, AudioFrame):
                                timeline.add(time.monotonic(), out.pcm, SAMPLE_RATE)
                            elif isinstance(out, TurnFinished):
                                reason = out.reason.value
                            elif isinstance(out, TurnError):
                                errors.append(out.message)
                except TimeoutError:
                    result["status"], result["reason"] = "failed", f"turn {turn}: no answer within {turn_timeout_s:g} s"
                    break
                wall = time.monotonic() - t0
                record = {
                    "turn": turn,
                    **timeline.figures(thresholds),
                    "finish_reason": reason,
                    "turn_wall_s": wall,
                    "lm_tokens": counter[0] - before,
                    "errors": errors,
                }
                record["lm_tokens_per_s"] = record["lm_tokens"] / wall if wall > 0 else None
                result["turns"].append(record)
        except Exception as exc:
            log.exception("in-process session %d failed", index)
            result["status"], result["reason"] = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            await session.close()
        return result

    start = time.monotonic()
    results = list(await asyncio.gather(*(one(i, offset) for i, offset in enumerate(offsets))))
    return results, {"lm_tokens": loaded.tokens.total - tokens_before, "wall_s": time.monotonic() - start}
