"""The gateway without Ray: an in-process engine behind ``POST /offer`` and ``GET /metrics``, served by aiohttp in a
thread of its own (its own event loop), so the benchmark's WebRTC clients can measure WebRTC alone (``--local-server``)
and the test suite can run the WebRTC mode without a Ray cluster.

Offers are answered by :func:`deployments.gateway.receive_offer`, the deployment's own code (importing it imports the
ray package, but no Ray cluster is started), over an :class:`assistant.webrtc.manager.RtcSessionManager`, under the
same access rules (:mod:`assistant.access`; off unless ``access`` is given).
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from assistant.access import AccessConfig, AccessDenied, authorize
from assistant.metrics import ServingMetrics
from assistant.webrtc.ice import use_loopback_only
from assistant.webrtc.manager import RtcSessionManager


class LocalGateway:
    """``engine``: anything with ``new_session(voice=None)`` and ``voices`` (an ``AssistantEngine``)."""

    def __init__(
        self,
        engine: Any,
        max_sessions: int = 8,
        endpointer: Any = None,
        turn_factory: Any = None,
        metrics: ServingMetrics | None = None,
        access: AccessConfig | None = None,
    ):
        self.engine = engine
        self.access = access or AccessConfig()
        self.max_sessions = max_sessions
        self.endpointer = endpointer
        self.turn_factory = turn_factory
        self.metrics = metrics or ServingMetrics(CollectorRegistry(), replica="local")
        self.sessions: RtcSessionManager | None = None
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopped: asyncio.Event | None = None

    def start(self, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 30.0) -> str:
        """Starts serving in a background thread; returns the base URL."""
        ready: Future = Future()
        self._thread = threading.Thread(target=self._serve, args=(host, port, ready), name="local-gateway", daemon=True)
        self._thread.start()
        self.url = ready.result(timeout=timeout_s)
        return self.url

    def stop(self, timeout_s: float = 30.0) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _serve(self, host: str, port: int, ready: Future) -> None:
        try:
            asyncio.run(self._main(host, port, ready))
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    async def _main(self, host: str, port: int, ready: Future) -> None:
        from deployments.gateway import collect_metrics, receive_offer

        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        use_loopback_only()
        options: dict[str, Any] = {}
        if self.turn_factory is not None:
            options["turn_factory"] = self.turn_factory
        self.sessions = RtcSessionManager(
            self.engine.new_session,
            max_sessions=self.max_sessions,
            endpointer_config=self.endpointer,
            voices=self.engine.voices,
            metrics=self.metrics,
            max_sessions_per_client=self.access.max_sessions_per_client,
            **options,
        )

        async def offer(request: web.Request) -> web.Response:
            status, body, headers = await receive_offer(
                self.access, request.headers, request.content.iter_any(), self.sessions, self.metrics
            )
            return web.json_response(body, status=status, headers=headers)

        async def metrics(request: web.Request) -> web.Response:
            try:
                authorize(self.access, request.headers)
            except AccessDenied as exc:
                return web.json_response(exc.body(), status=exc.status, headers=exc.headers)
            body = await collect_metrics(self.metrics, self.sessions, {})
            return web.Response(body=body, headers={"Content-Type": ServingMetrics.CONTENT_TYPE})

        async def health(request: web.Request) -> web.Response:
            return web.json_response({"status": "ok", "sessions": len(self.sessions)})

        app = web.Application()
        app.router.add_post("/offer", offer)
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/health", health)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        ready.set_result(f"http://{bound_host}:{bound_port}")
        await self._stopped.wait()
        await self.sessions.close_all()
        await self._runner.cleanup()
