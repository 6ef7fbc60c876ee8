"""Small stand-ins for the edge client's unit tests: a clock the test moves, a sink that plays nothing, a live source,
and an HTTP server that answers ``POST /offer`` on a free loopback port (the fake servers' common front door)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web


class Clock:
    """Monotonic seconds that move only when the test sets ``t``."""

    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class NullSink:
    """A speaker that plays nothing."""

    def write(self, pcm):
        pass

    def flush(self):
        pass

    def close(self):
        pass


class Live:
    """What the conversation reads of a live microphone source."""

    live = True
    finite = False


async def serve_offers(
    offer: Callable[[web.Request], Awaitable[web.Response]], max_body_bytes: int = 1024**2
) -> tuple[web.AppRunner, str]:
    """Serves ``POST /offer`` with ``offer`` on 127.0.0.1 (a free port); returns the runner (clean it up) and the URL.
    ``max_body_bytes``: aiohttp's own limit by default; ``protocol.MAX_OFFER_BODY_BYTES`` is the gateway's."""
    app = web.Application(client_max_size=max_body_bytes)
    app.router.add_post("/offer", offer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"
