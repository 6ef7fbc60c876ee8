"""The HTTP ingress: WebRTC signalling (``POST /offer``), the voice list (``GET /voices``), health and Prometheus
metrics (``GET /metrics``), hosting every peer connection.

``POST /offer`` takes ``{"sdp", "type": "offer", "voice"?}`` (:class:`assistant.protocol.OfferRequest`). Errors are
JSON ``{"error": <text>, "reason": <word>}`` and leave no session behind:

- 400 ``bad_request``: a malformed offer or an unknown voice;
- 503 ``busy``: this replica already holds ``max_sessions`` sessions (admission: refuse rather than slow everyone);
- 500 ``error``: a server fault.

Each session's peer connection and engine session live in this replica's event loop; the engine reaches the
model deployments through DeploymentHandles (:mod:`deployments.backends`). Everything after the offer travels on the
peer connection: the caller ends its session with ``{"type": "bye"}`` on the data channel (or by closing the peer
connection), so offers may spread over several gateway replicas. ``DELETE /sessions/{id}`` still ends a session, but
only when Serve routes it to the replica that holds that session: with several replicas it is best-effort (a 404
from another replica says nothing about the session).

``GET /metrics`` renders this replica's :class:`assistant.metrics.ServingMetrics` (``docs/metrics.md``), after asking
the LM and acoustic deployments for their ``stats()`` (a short timeout; a failure only leaves those figures out and
counts in ``anystream_stats_errors_total``). With several gateway replicas a scrape through Serve's proxy reads one
replica (``anystream_gateway_info`` says which); scrape each replica, or sum over them, for totals.
"""


import asyncio
import dataclasses
import json
import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from assistant.endpointing import EndpointerConfig
from assistant.metrics import CountingLMBackend, ServingMetrics
from assistant.models.loading import ModelSpec, load_vocab_and_voices
from assistant.pipeline.engine import AssistantEngine, EngineConfig, UserTurn
from assistant.protocol import OfferRequest, ProtocolError
from assistant.webrtc.session import RtcSessionManager, SessionLimitError
from deployments.backends import ray_backends
from deployments.common import FAST_SHUTDOWN, replica_name

logger = logging.getLogger(__name__)

api = FastAPI(title="anystream gateway")

# How long /metrics waits for a model deployment's stats() before leaving its figures out of the scrape.
STATS_TIMEOUT_S = 0.5

# HTTP status -> the machine-readable "reason" of an error body
REASONS = {400: "bad_request", 404: "not_found", 500: "error", 503: "busy"}


def _error(status: int, message: str, reason: str | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "reason": reason or REASONS.get(status, "error")}, status_code=status)


async def answer_offer(sessions: RtcSessionManager, raw: bytes, metrics: ServingMetrics | None = None
                       ) -> tuple[int, dict[str, Any]]:
    """``POST /offer`` without HTTP: (status, JSON body). Ray-free apart from this module's imports, so a process
    without Serve (``anystream_bench``'s local gateway) answers offers exactly like the deployment."""
    status, message = 200, ""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        status, message = 400, f"body is not valid JSON: {exc}"
    else:
        try:
            offer = OfferRequest.parse(body)
            _, answer = await sessions.create(offer)
            return 200, answer.to_dict()
        except ProtocolError as exc:
            status, message = 400, str(exc)
        except SessionLimitError as exc:
            status, message = 503, str(exc)
        except Exception as exc:  # a bug must not take the ingress down; the caller gets a 500 it can read
            logger.exception("offer failed")
            status, message = 500, f"cannot create a session: {exc}"
    reason = REASONS[status]
    if metrics is not None:
        metrics.session_rejected(reason)
    return status, {"error": message, "reason": reason}


async def _deployment_stats(handle: Any, timeout: float) -> Any:
    response = handle.stats.remote()
    try:
        return await asyncio.wait_for(_awaited(response), timeout)
    except asyncio.TimeoutError:
        cancel = getattr(response, "cancel", None)
        if cancel is not None:
            cancel()
        raise


async def _awaited(response: Any) -> Any:
    return await response


async def collect_metrics(metrics: ServingMetrics, sessions: RtcSessionManager | None,
                          stats_sources: Mapping[str, Any], timeout: float = STATS_TIMEOUT_S) -> bytes:
    """Refreshes what is sampled at scrape time and renders the registry.

    stats_sources: ``{"lm": handle, "acoustic": handle}``; each ``handle.stats.remote()`` is awaited (at most
    ``timeout`` s, all at once) and fed to ``observe_lm`` / ``observe_acoustic``. A missing method, an error, a bad
    dict or a timeout skips that deployment and counts in ``anystream_stats_errors_total{deployment}``.
    """
    observers = {"lm": metrics.observe_lm, "acoustic": metrics.observe_acoustic}
    names = [name for name in stats_sources if name in observers]
    results = await asyncio.gather(*(_deployment_stats(stats_sources[n], timeout) for n in names),
                                   return_exceptions=True)
    for name, result in zip(names, results, strict=True):
        try:
            if isinstance(result, BaseException):
                raise result
            observers[name](result)
        except Exception as exc:  # noqa: BLE001 - any failure of a stats call only leaves its figures out
            logger.debug("stats of %s unavailable: %r", name, exc)
            metrics.stats_error(name)
    if sessions is not None:
        metrics.observe_reply_queues(sessions.reply_queue_depths())
        metrics.set_active_sessions(len(sessions))
    return metrics.render()


@serve.deployment(**FAST_SHUTDOWN)
@serve.ingress(api)
class Gateway:
    def __init__(
        self,
        speech: DeploymentHandle,
        lm: DeploymentHandle,
        acoustic: DeploymentHandle,
        media: DeploymentHandle,
        model: dict | None = None,
        loopback_only: bool = True,
        max_sessions: int = 8,
        engine: dict | None = None,
        endpointer: dict | None = None,
    ):
        if loopback_only:
            from assistant.webrtc.ice import use_loopback_only

            use_loopback_only()
        # The vocabulary and the voices of spoken replies (embedded: ``voices.json`` from training); none = one voice.
        vocab, voices = load_vocab_and_voices(ModelSpec.from_dict(model))
        config = EngineConfig(**(engine or {}))
        self._model_handles = (speech, lm, acoustic, media)
        self._models_ready = False
        self.serving_metrics = ServingMetrics(replica=replica_name() or None)
        self._stats_sources = {"lm": lm, "acoustic": acoustic}
        backends = ray_backends(speech, lm, acoustic, media)
        backends = dataclasses.replace(backends, lm=CountingLMBackend(backends.lm, self.serving_metrics))
        self.engine = AssistantEngine(backends, vocab, config, voices=voices)
        self.sessions = RtcSessionManager(
            self.engine.new_session,
            max_sessions=max_sessions,
            endpointer_config=EndpointerConfig(**(endpointer or {})),
            voices=self.engine.voices,
            turn_factory=UserTurn,
            metrics=self.serving_metrics,
        )

    @api.post("/offer")
    async def offer(self, request: Request) -> Any:
        status, body = await answer_offer(self.sessions, await request.body(), getattr(self, "serving_metrics", None))
        return body if status == 200 else JSONResponse(body, status_code=status)

    @api.get("/health")
    async def health(self) -> Any:
        if not self._models_ready:
            # The gateway starts long before the model replicas have loaded; until each answers, a turn would stall.
            try:
                await asyncio.wait_for(asyncio.gather(*(h.ready.remote() for h in self._model_handles)), timeout=2.0)
                self._models_ready = True
            except Exception:  # noqa: BLE001 - timeout or a replica still starting: not ready yet
                return JSONResponse({"status": "starting", "reason": "starting", "sessions": len(self.sessions)},
                                    status_code=503)
        return {"status": "ok", "sessions": len(self.sessions)}

    @api.get("/metrics")
    async def metrics(self) -> Response:
        """Prometheus text exposition of this replica's metrics (``docs/metrics.md``)."""
        body = await collect_metrics(self.serving_metrics, self.sessions, self._stats_sources)
        return Response(body, media_type=ServingMetrics.CONTENT_TYPE)

    @api.get("/voices")
    async def voices(self) -> Any:
        """The voices an offer may ask for; ``{"voices": [], "default": null}`` when the models have no voice bank."""
        bank = self.engine.voices
        if bank is None:
            return {"voices": [], "default": None}
        return {"voices": list(bank.names), "default": bank.default}

    @api.delete("/sessions/{session_id}")
    async def close_session(self, session_id: str) -> Any:
        """Ends a session held by this replica. Best-effort with several gateway replicas (Serve may route this to
        another one, which answers 404); callers should say ``bye`` on the data channel instead."""
        if not await self.sessions.close(session_id):
            return _error(404, f"no session {session_id!r} on this replica")
        return {"closed": session_id}

    async def __del__(self):
        await self.sessions.close_all()
