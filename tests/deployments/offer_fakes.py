"""Driving the gateway's real FastAPI app without Serve: an engine whose sessions answer with a tone, a bare Gateway
object holding the state its handlers read, and an httpx client speaking ASGI to ``deployments.gateway.api`` with
that object in place of the Serve replica (the one dependency Serve's class-based view adds)."""

from __future__ import annotations

import contextlib
import inspect
import json
from collections.abc import AsyncIterator
from types import SimpleNamespace

import httpx
import numpy as np
from aiortc import RTCPeerConnection
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from assistant.access import AccessConfig
from assistant.audio import OUTPUT_FRAME_SAMPLES
from assistant.metrics import ServingMetrics
from assistant.pipeline.outputs import AudioFrame, ReplyTextDelta, TurnFinished
from assistant.protocol import FinishReason
from assistant.webrtc.ice import use_loopback_only
from assistant.webrtc.manager import RtcSessionManager
from deployments import gateway
from deployments.health import HealthMonitor

ALICE_KEY = "alice-key-0123456789abcdef"
BOB_KEY = "bob-key-0123456789abcdef"
KEYS = {"alice": ALICE_KEY, "bob": BOB_KEY}


class ToneEngineSession:
    """Answers every turn with a text delta and 10 frames (0.2 s) of a tone."""

    def __init__(self):
        self.turns = []
        self.closed = False

    async def respond(self, turn):
        self.turns.append(turn)
        yield ReplyTextDelta(text="beep")
        t = np.arange(OUTPUT_FRAME_SAMPLES) / 16000
        tone = (0.5 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
        for _ in range(10):
            yield AudioFrame(pcm=tone.copy())
        yield TurnFinished(reason=FinishReason.COMPLETE)

    def interrupt(self):
        pass

    async def close(self):
        self.closed = True


class ToneEngine:
    voices = None

    def __init__(self):
        self.sessions: list[ToneEngineSession] = []

    def new_session(self, voice=None):
        self.sessions.append(ToneEngineSession())
        return self.sessions[-1]


class FakeRequest:
    """What the handlers read of a Starlette request: a local caller's headers and the body as a stream."""

    headers = {"host": "127.0.0.1:8000", "content-type": "application/json"}

    def __init__(self, body: dict | bytes = b""):
        self._body = body if isinstance(body, bytes) else json.dumps(body).encode()

    async def stream(self):
        yield self._body


def reply_json(reply) -> tuple[int, dict]:
    """A handler called directly answers a dict (200) or a Response: (status, JSON body)."""
    if isinstance(reply, dict):
        return 200, reply
    return reply.status_code, json.loads(reply.body)


class NullSink:
    """An edge client's speaker that plays nothing."""

    def write(self, pcm):
        pass

    def flush(self):
        pass

    def close(self):
        pass


class BareGateway(SimpleNamespace):
    """The Gateway's handlers bound to a plain object (no Serve replica, no ASGI wrapper)."""

    def __getattr__(self, name):
        return getattr(gateway.Gateway.func_or_class, name).__get__(self)


def bare_gateway(access: AccessConfig | None = None, max_sessions: int = 8) -> BareGateway:
    access = access or AccessConfig()
    engine = ToneEngine()
    metrics = ServingMetrics(CollectorRegistry(), process=False)
    sessions = RtcSessionManager(
        engine.new_session,
        max_sessions=max_sessions,
        metrics=metrics,
        max_sessions_per_client=access.max_sessions_per_client,
        turn_factory=lambda **kw: SimpleNamespace(**kw),
    )
    return BareGateway(
        access=access,
        engine=engine,
        sessions=sessions,
        serving_metrics=metrics,
        _stats_sources={},
        health_monitor=HealthMonitor({"lm": _always_ready}),
    )


async def _always_ready() -> bool:
    return True


def _routes(router):
    """Every route under ``router``, also those FastAPI (>= 0.137) keeps in an included router's node."""
    for route in router.routes:
        nested = getattr(route, "original_router", None)
        yield from _routes(nested) if nested is not None else (route,)


def _servable_dependency():
    """The dependency Serve's class-based view gives each route's ``self`` (the replica's Gateway object)."""
    for route in _routes(gateway.api):
        if getattr(route, "path", None) == "/offer":
            return inspect.signature(route.endpoint).parameters["self"].default.dependency
    raise AssertionError("the gateway app has no /offer route")


@contextlib.asynccontextmanager
async def asgi_client(gw: BareGateway, host: str = "127.0.0.1:8000") -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the real ``gateway.api`` whose routes run on ``gw``; requests name ``host``."""
    dependency = _servable_dependency()
    gateway.api.dependency_overrides[dependency] = lambda: gw
    try:
        transport = httpx.ASGITransport(app=gateway.api)
        async with httpx.AsyncClient(transport=transport, base_url=f"http://{host}") as client:
            yield client
    finally:
        gateway.api.dependency_overrides.pop(dependency, None)


async def client_offer() -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendrecv")
    pc.createDataChannel("events")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


@contextlib.asynccontextmanager
async def offering(gw: BareGateway) -> AsyncIterator[str]:
    """A caller's offer SDP (loopback ICE only) for ``gw``; on the way out every session ``gw`` holds is closed, then
    the caller."""
    use_loopback_only()
    pc, sdp = await client_offer()
    try:
        yield sdp
    finally:
        await gw.sessions.close_all()
        await pc.close()


def rejected(metrics: ServingMetrics) -> dict[str, float]:
    """``anystream_rejected_sessions_total`` by reason."""
    return {
        s.labels["reason"]: s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
        if s.name == "anystream_rejected_sessions_total"
    }
