"""The HTTP ingress: WebRTC signalling (``POST /offer``), the voice list (``GET /voices``), health and Prometheus
metrics (``GET /metrics``), the browser page (``GET /`` and ``GET /static/{name}``, :mod:`assistant.web`), hosting
every peer connection.

``POST /offer`` takes ``{"sdp", "type": "offer", "voice"?}`` (:class:`assistant.protocol.OfferRequest`) as
``application/json``. Errors are JSON ``{"error": <text>, "reason": <word>}`` and leave no session behind:

- 400 ``bad_request``: a malformed offer or an unknown voice;
- 401 ``unauthorized``: access is on and the request has no valid ``Authorization: Bearer <key or token>``;
- 403 ``forbidden_origin`` / ``forbidden_host``: a web page that may not call, or (access off) a request not addressed
  to a loopback host;
- 413 ``too_large``: a body over ``access.max_body_bytes`` (refused while it is read);
- 415 ``unsupported_media_type``: a body not declared ``application/json``;
- 429 ``client_limit``: this client already holds ``access.max_sessions_per_client`` sessions on this replica;
- 503 ``busy``: this replica already holds ``max_sessions`` sessions (admission: refuse rather than slow everyone);
- 500 ``error``: a server fault (the text carries only an id to find it in the replica's log).

Who may call is :mod:`assistant.access` (the ``access`` argument, the config's ``access:`` section): ``/offer``,
``/voices``, ``/metrics`` and ``DELETE /sessions/{id}`` follow it; ``/health`` stays open for load balancers; the
page needs no credential (it holds no secret) but follows the Origin and Host rules
(:func:`assistant.access.check_browser`).

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
import logging
import os
import secrets
import threading
from collections.abc import AsyncIterator, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from assistant.access import (
    AccessConfig,
    AccessDenied,
    authorize,
    check_browser,
    cors_headers,
    declared_length,
    preflight,
    read_limited,
    require_json,
)
from assistant.endpointing import EndpointerConfig
from assistant.metrics import CountingLMBackend, ServingMetrics
from assistant.models.loading import ModelSpec, load_vocab_and_voices
from assistant.pipeline.engine import AssistantEngine, EngineConfig, UserTurn
from assistant.protocol import ProtocolError, parse_offer_body
from assistant.web import INDEX, PAGE_HEADERS, UnknownAsset, read_asset
from assistant.webrtc.limits import SessionLimits
from assistant.webrtc.manager import ClientLimitError, RtcSessionManager, SessionLimitError
from deployments.backends import ray_backends
from deployments.common import FAST_SHUTDOWN, replica_name
from deployments.health import STATUS_OK, HealthMonitor
from deployments.timeouts import CallTimeouts

logger = logging.getLogger(__name__)

api = FastAPI(title="anystream gateway")

# How long /metrics waits for a model deployment's stats() before leaving its figures out of the scrape.
STATS_TIMEOUT_S = 0.5

# HTTP status -> the machine-readable "reason" of an error body
REASONS = {400: "bad_request", 404: "not_found", 429: "client_limit", 500: "error", 503: "busy"}


async def answer_offer(
    sessions: RtcSessionManager, raw: bytes, metrics: ServingMetrics | None = None, client_id: str | None = None
) -> tuple[int, dict[str, Any]]:
    """``POST /offer``'s body without HTTP: (status, JSON body). Ray-free apart from this module's imports, so a
    process without Serve (``anystream_bench``'s local gateway) answers offers exactly like the deployment.

    client_id: who is calling (:func:`assistant.access.authorize`), for the per-client session limit; None = no
        per-client limit (access off).
    """
    try:
        offer = parse_offer_body(raw)
        _, answer = await sessions.create(offer, client_id=client_id)
        return 200, answer.to_dict()
    except ProtocolError as exc:
        status, message = 400, str(exc)
    except ClientLimitError as exc:  # before SessionLimitError, its base: one client over its share, not a full replica
        status, message = 429, str(exc)
    except SessionLimitError as exc:
        status, message = 503, str(exc)
    except Exception:  # a bug must not take the ingress down, nor tell the caller about our insides
        error_id = secrets.token_hex(6)
        logger.exception("offer failed (error id %s)", error_id)
        status, message = 500, f"cannot create a session: internal error (id {error_id} in the server log)"
    reason = REASONS[status]
    if metrics is not None:
        metrics.session_rejected(reason)
    return status, {"error": message, "reason": reason}


async def receive_offer(
    access: AccessConfig,
    headers: Mapping[str, str],
    chunks: AsyncIterator[bytes],
    sessions: RtcSessionManager,
    metrics: ServingMetrics | None = None,
    now: float | None = None,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """``POST /offer`` from the pieces of an HTTP request (any framework): who calls, the declared type, the body
    read within ``access.max_body_bytes``, then :func:`answer_offer`. Returns (status, JSON body, extra headers)."""
    try:
        client_id = authorize(access, headers, now)
        require_json(headers)
        raw = await read_limited(chunks, access.max_body_bytes, declared_length(headers))
    except AccessDenied as exc:
        if metrics is not None:
            metrics.session_rejected(exc.reason)
        return exc.status, exc.body(), exc.headers
    status, body = await answer_offer(sessions, raw, metrics, client_id=client_id)
    return status, body, {}


async def _deployment_stats(handle: Any, timeout: float) -> Any:
    response = handle.stats.remote()
    try:
        return await asyncio.wait_for(_awaited(response), timeout)
    except TimeoutError:
        cancel = getattr(response, "cancel", None)
        if cancel is not None:
            cancel()
        raise


async def _awaited(response: Any) -> Any:
    return await response


async def collect_metrics(
    metrics: ServingMetrics,
    sessions: RtcSessionManager | None,
    stats_sources: Mapping[str, Any],
    timeout: float = STATS_TIMEOUT_S,
) -> bytes:
    """Refreshes what is sampled at scrape time and renders the registry.

    stats_sources: ``{"lm": handle, "acoustic": handle}``; each ``handle.stats.remote()`` is awaited (at most
    ``timeout`` s, all at once) and fed to ``observe_lm`` / ``observe_acoustic``. A missing method, an error, a bad
    dict or a timeout skips that deployment and counts in ``anystream_stats_errors_total{deployment}``.
    """
    observers = {"lm": metrics.observe_lm, "acoustic": metrics.observe_acoustic}
    names = [name for name in stats_sources if name in observers]
    results = await asyncio.gather(
        *(_deployment_stats(stats_sources[n], timeout) for n in names), return_exceptions=True
    )
    for name, result in zip(names, results, strict=True):
        try:
            if isinstance(result, BaseException):
                raise result
            observers[name](result)
        except Exception as exc:
            logger.debug("stats of %s unavailable: %r", name, exc)
            metrics.stats_error(name)
    if sessions is not None:
        metrics.observe_reply_queues(sessions.reply_queue_depths())
        metrics.set_active_sessions(len(sessions), parked=sessions.parked_count)
        metrics.observe_runtime(len(asyncio.all_tasks()), threading.active_count(), sessions.open_peer_connections())
    return metrics.render()


@serve.deployment(**FAST_SHUTDOWN)
@serve.ingress(api)
class Gateway:
    """access: the config's ``access:`` section (:class:`assistant.access.AccessConfig`); the variables it names
    are read from this replica's environment (a local cluster's replicas inherit ``anystream-serve``'s)."""

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
        access: dict | None = None,
        call_timeouts: dict | None = None,
        session_limits: dict | None = None,
    ):
        # First: a replica without the credentials it was told to use must fail to start, not serve everyone.
        self.access = AccessConfig.from_dict(access).resolve(os.environ)
        if loopback_only:
            from assistant.webrtc.ice import use_loopback_only

            use_loopback_only()
        # The vocabulary and the voices of spoken replies (embedded: ``voices.json`` from training); none = one voice.
        vocab, voices = load_vocab_and_voices(ModelSpec.from_dict(model))
        config = EngineConfig(**(engine or {}))
        # /health: every model deployment answers ``ready`` (probed together, at most every second)
        self.health_monitor = HealthMonitor(
            {
                "speech": speech.ready.remote,
                "lm": lm.ready.remote,
                "acoustic": acoustic.ready.remote,
                "media": media.ready.remote,
            }
        )
        self.serving_metrics = ServingMetrics(replica=replica_name() or None)
        self._stats_sources = {"lm": lm, "acoustic": acoustic}
        backends = ray_backends(speech, lm, acoustic, media, CallTimeouts(**(call_timeouts or {})))
        backends = dataclasses.replace(backends, lm=CountingLMBackend(backends.lm, self.serving_metrics))
        self.engine = AssistantEngine(backends, vocab, config, voices=voices)
        self.sessions = RtcSessionManager(
            self.engine.new_session,
            max_sessions=max_sessions,
            endpointer_config=EndpointerConfig(**(endpointer or {})),
            voices=self.engine.voices,
            turn_factory=UserTurn,
            metrics=self.serving_metrics,
            max_sessions_per_client=self.access.max_sessions_per_client,
            limits=SessionLimits(**(session_limits or {})),
        )

    def _reply(
        self, request: Request, status: int, body: Any, headers: Mapping[str, str] | None = None
    ) -> JSONResponse:
        """A JSON response that an allowed web page may read."""
        return JSONResponse(
            body, status_code=status, headers={**cors_headers(self.access, request.headers), **(headers or {})}
        )

    def _authorized(self, request: Request) -> tuple[str | None, JSONResponse | None]:
        """(the caller's client id, None) when ``request`` may use a route other than /offer, else (None, the
        refusal to send)."""
        try:
            return authorize(self.access, request.headers), None
        except AccessDenied as exc:
            return None, self._reply(request, exc.status, exc.body(), exc.headers)

    @api.post("/offer")
    async def offer(self, request: Request) -> Any:
        status, body, headers = await receive_offer(
            self.access, request.headers, request.stream(), self.sessions, self.serving_metrics
        )
        return self._reply(request, status, body, headers)

    @api.options("/{path:path}")
    async def cors_preflight(self, path: str, request: Request) -> Any:
        """A browser asks whether its page may call with ``Authorization`` and a JSON body."""
        try:
            return Response(status_code=204, headers=preflight(self.access, request.headers))
        except AccessDenied as exc:
            return self._reply(request, exc.status, exc.body(), exc.headers)

    @api.get("/")
    async def page(self, request: Request) -> Response:
        """The browser page (:mod:`assistant.web`): served without a credential, since it holds no secret (what it
        calls needs one when access is on), but under the same Origin and Host rules as every other route."""
        return self._asset(request, INDEX)

    @api.get("/static/{name}")
    async def static_asset(self, name: str, request: Request) -> Response:
        """The page's scripts and style sheet, by name (no paths: unknown names are 404)."""
        return self._asset(request, name)

    def _asset(self, request: Request, name: str) -> Response:
        try:
            check_browser(self.access, request.headers)
        except AccessDenied as exc:
            return self._reply(request, exc.status, exc.body(), exc.headers)
        try:
            body, content_type = read_asset(name)
        except UnknownAsset:
            return self._reply(request, 404, {"error": f"no file {name[:100]!r} here", "reason": "not_found"})
        return Response(body, media_type=content_type, headers=PAGE_HEADERS)

    @api.get("/health")
    async def health(self) -> Any:
        """200 ``{"status": "ok", ...}`` while every model deployment answers; 503 with ``"starting"`` until each has
        answered once (replicas load their models long after the gateway starts) and ``"degraded"`` while any does
        not (a replica died or hangs; Serve is replacing it). ``deployments`` says which."""
        report = await self.health_monitor.check()
        body = {**report, "sessions": len(self.sessions)}
        if report["status"] != STATUS_OK:
            return JSONResponse({**body, "reason": report["status"]}, status_code=503)
        return body

    @api.get("/metrics")
    async def metrics(self, request: Request) -> Response:
        """Prometheus text exposition of this replica's metrics (``docs/metrics.md``)."""
        _, refused = self._authorized(request)
        if refused is not None:
            return refused
        body = await collect_metrics(self.serving_metrics, self.sessions, self._stats_sources)
        return Response(
            body, media_type=ServingMetrics.CONTENT_TYPE, headers=cors_headers(self.access, request.headers)
        )

    @api.get("/voices")
    async def voices(self, request: Request) -> Any:
        """The voices an offer may ask for; ``{"voices": [], "default": null}`` when the models have no voice bank."""
        _, refused = self._authorized(request)
        if refused is not None:
            return refused
        bank = self.engine.voices
        if bank is None:
            return self._reply(request, 200, {"voices": [], "default": None})
        return self._reply(request, 200, {"voices": list(bank.names), "default": bank.default})

    @api.delete("/sessions/{session_id}")
    async def close_session(self, session_id: str, request: Request) -> Any:
        """Ends a session held by this replica. Best-effort with several gateway replicas (Serve may route this to
        another one, which answers 404); callers should say ``bye`` on the data channel instead."""
        client_id, refused = self._authorized(request)
        if refused is not None:
            return refused
        session = self.sessions.get(session_id)
        # With access on, only the client that opened a session may end it; another one learns nothing (a 404).
        if (
            session is None
            or (client_id is not None and session.client_id != client_id)
            or not await self.sessions.close(session_id)
        ):
            return self._reply(
                request, 404, {"error": f"no session {session_id[:100]!r} on this replica", "reason": "not_found"}
            )
        return self._reply(request, 200, {"closed": session_id})

    async def __del__(self) -> None:  # Serve awaits it when the replica stops
        await self.sessions.close_all()
