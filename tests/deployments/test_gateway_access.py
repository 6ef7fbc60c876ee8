"""Access to the gateway over HTTP, through the real FastAPI app (httpx's ASGI transport, no Serve): keys and tokens,
origins and hosts, the JSON content-type rule, bodies refused while they are read, the per-client session limit, a
server fault that tells nothing; the Ray-free local gateway with the edge and bench clients; and anystream-serve
refusing to listen beyond loopback with access off."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest
from offer_fakes import (
    ALICE_KEY,
    BOB_KEY,
    KEYS,
    NullSink,
    ToneEngine,
    asgi_client,
    bare_gateway,
    client_offer,
    offering,
    rejected,
)

from assistant.access import AccessConfig, mint_token
from assistant.webrtc.ice import use_loopback_only

pytestmark = pytest.mark.timeout(90)

SECRET = "s" * 40
JSON = {"content-type": "application/json"}


def auth(key: str, **headers: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}", **JSON, **headers}


def offer_body(sdp: str) -> bytes:
    return json.dumps({"sdp": sdp, "type": "offer"}).encode()


def assert_refusal(response, status: int, reason: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["reason"] == reason and isinstance(body["error"], str) and body["error"]
    return body


def test_every_route_but_health_needs_a_key_when_access_is_on():
    async def main():
        gw = bare_gateway(AccessConfig(api_keys=KEYS))
        async with offering(gw) as sdp:
            async with asgi_client(gw) as http:
                response = await http.post("/offer", content=offer_body(sdp), headers=JSON)
                assert_refusal(response, 401, "unauthorized")
                assert response.headers["www-authenticate"].startswith("Bearer")
                assert_refusal(
                    await http.post("/offer", content=offer_body(sdp), headers=auth("not-a-key-at-all!!")),
                    401,
                    "unauthorized",
                )
                assert len(gw.sessions) == 0 and not gw.engine.sessions

                response = await http.post("/offer", content=offer_body(sdp), headers=auth(ALICE_KEY))
                assert response.status_code == 200 and response.json()["type"] == "answer"
                session_id = response.json()["session_id"]
                assert gw.sessions.get(session_id).client_id == "alice"

                for method, path in (("GET", "/voices"), ("GET", "/metrics"), ("DELETE", f"/sessions/{session_id}")):
                    assert_refusal(await http.request(method, path), 401, "unauthorized")
                assert (await http.get("/voices", headers=auth(ALICE_KEY))).json() == {"voices": [], "default": None}
                metrics = await http.get("/metrics", headers=auth(ALICE_KEY))
                assert metrics.status_code == 200 and "anystream_sessions_created_total 1.0" in metrics.text
                # /health is for load balancers: the same answer with or without a key
                open_health, keyed_health = (
                    await http.get("/health"),
                    await http.get("/health", headers=auth(ALICE_KEY)),
                )
                assert open_health.status_code == 200 and open_health.json() == keyed_health.json()

                # a session is ended only by the client that opened it; another one learns nothing
                assert_refusal(await http.delete(f"/sessions/{session_id}", headers=auth(BOB_KEY)), 404, "not_found")
                assert len(gw.sessions) == 1
                closed = await http.delete(f"/sessions/{session_id}", headers=auth(ALICE_KEY))
                assert closed.json() == {"closed": session_id} and len(gw.sessions) == 0
            assert rejected(gw.serving_metrics) == {"unauthorized": 2}

    asyncio.run(main())


def test_session_tokens_are_credentials_until_they_expire():
    async def main():
        gw = bare_gateway(AccessConfig(token_secret=SECRET))
        async with offering(gw) as sdp:
            async with asgi_client(gw) as http:
                token = mint_token(SECRET, "carol", ttl_s=3600)
                response = await http.post("/offer", content=offer_body(sdp), headers=auth(token))
                assert response.status_code == 200, response.text
                assert gw.sessions.get(response.json()["session_id"]).client_id == "carol"
                expired = mint_token(SECRET, "carol", ttl_s=60, now=1_000_000)
                body = assert_refusal(
                    await http.post("/offer", content=offer_body(sdp), headers=auth(expired)), 401, "unauthorized"
                )
                assert "expired" in body["error"]
                forged = mint_token("f" * 40, "carol", ttl_s=3600)
                assert_refusal(
                    await http.post("/offer", content=offer_body(sdp), headers=auth(forged)), 401, "unauthorized"
                )
            assert len(gw.sessions) == 1

    asyncio.run(main())


def test_web_pages_need_an_allowed_origin_and_get_cors_answers():
    async def main():
        gw = bare_gateway(AccessConfig(api_keys=KEYS, allowed_origins=("https://app.example.com",)))
        async with offering(gw) as sdp:
            async with asgi_client(gw) as http:
                evil = {"origin": "https://evil.example"}
                assert_refusal(
                    await http.post("/offer", content=offer_body(sdp), headers=auth(ALICE_KEY, **evil)),
                    403,
                    "forbidden_origin",
                )
                assert (
                    "access-control-allow-origin"
                    not in (await http.get("/voices", headers=auth(ALICE_KEY, **evil))).headers
                )
                preflight = await http.options("/offer", headers={**evil, "access-control-request-method": "POST"})
                assert preflight.status_code == 403 and "access-control-allow-origin" not in preflight.headers
                assert len(gw.sessions) == 0

                app = {"origin": "https://app.example.com"}
                preflight = await http.options(
                    "/offer",
                    headers={
                        **app,
                        "access-control-request-method": "POST",
                        "access-control-request-headers": "authorization",
                    },
                )
                assert preflight.status_code == 204
                assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
                assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
                response = await http.post("/offer", content=offer_body(sdp), headers=auth(ALICE_KEY, **app))
                assert response.status_code == 200
                assert response.headers["access-control-allow-origin"] == "https://app.example.com"
                # the page may read a refusal too, so it can tell its user what went wrong
                response = await http.post("/offer", content=offer_body(sdp), headers={**JSON, **app})
                assert response.status_code == 401 and response.headers["access-control-allow-origin"] == app["origin"]
            assert rejected(gw.serving_metrics) == {"forbidden_origin": 1, "unauthorized": 1}

    asyncio.run(main())


def test_without_access_only_loopback_callers_with_json_get_a_session():
    async def main():
        gw = bare_gateway()
        async with offering(gw) as sdp:
            async with asgi_client(gw) as http:
                # any web page may POST text/plain to a local server without asking: such an offer is refused
                for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
                    headers = {} if content_type is None else {"content-type": content_type}
                    assert_refusal(
                        await http.post("/offer", content=offer_body(sdp), headers=headers),
                        415,
                        "unsupported_media_type",
                    )
                assert_refusal(
                    await http.post(
                        "/offer", content=offer_body(sdp), headers={**JSON, "origin": "https://evil.example"}
                    ),
                    403,
                    "forbidden_origin",
                )
                assert len(gw.sessions) == 0 and not gw.engine.sessions
                response = await http.post(
                    "/offer", content=offer_body(sdp), headers={**JSON, "origin": "http://localhost:5173"}
                )
                assert response.status_code == 200
                assert gw.sessions.get(response.json()["session_id"]).client_id is None  # no per-client limit
            # DNS rebinding: a page whose own name now resolves to 127.0.0.1 sends that name as Host
            async with asgi_client(gw, host="rebound.evil.example:8000") as http:
                assert_refusal(await http.post("/offer", content=offer_body(sdp), headers=JSON), 403, "forbidden_host")
                assert_refusal(await http.get("/voices"), 403, "forbidden_host")
            assert len(gw.sessions) == 1
            assert rejected(gw.serving_metrics) == {
                "unsupported_media_type": 3,
                "forbidden_origin": 1,
                "forbidden_host": 1,
            }

    asyncio.run(main())


class CountingBody:
    """A streamed request body: ``total`` bytes in ``chunk`` pieces, counting what the server pulled."""

    def __init__(self, total: int, chunk: int = 1024):
        self.total, self.chunk, self.pulled = total, chunk, 0

    async def __aiter__(self):
        while self.pulled < self.total:
            piece = b'{"sdp": "v=0' if self.pulled == 0 else b""
            self.pulled += self.chunk
            yield piece.ljust(self.chunk, b"v")


def test_a_body_over_the_limit_is_refused_while_it_is_read():
    async def main():
        use_loopback_only()
        limit = 16 * 1024
        gw = bare_gateway(AccessConfig(max_body_bytes=limit))
        async with asgi_client(gw) as http:
            body = CountingBody(total=10 * 1024 * 1024)  # chunked: no Content-Length to go by
            response = await http.post("/offer", content=body, headers=JSON)
            assert_refusal(response, 413, "too_large")
            assert limit <= body.pulled <= limit + 2 * body.chunk  # ~17 KiB of 10 MiB were ever read
            declared = CountingBody(total=10 * 1024 * 1024)
            response = await http.post("/offer", content=declared, headers={**JSON, "content-length": str(10 << 20)})
            assert_refusal(response, 413, "too_large")
            assert declared.pulled == 0  # the declared length alone was enough
            assert_refusal(
                await http.post("/offer", content=b"{}", headers={**JSON, "content-length": "2x"}), 400, "bad_request"
            )
        assert rejected(gw.serving_metrics) == {"too_large": 2, "bad_request": 1}
        assert len(gw.sessions) == 0

    asyncio.run(main())


def test_one_client_cannot_take_every_session():
    async def main():
        use_loopback_only()
        gw = bare_gateway(AccessConfig(api_keys=KEYS, max_sessions_per_client=1), max_sessions=4)
        pcs = [await client_offer() for _ in range(3)]
        async with asgi_client(gw) as http:
            first = await http.post("/offer", content=offer_body(pcs[0][1]), headers=auth(ALICE_KEY))
            assert first.status_code == 200, first.text
            body = assert_refusal(
                await http.post("/offer", content=offer_body(pcs[1][1]), headers=auth(ALICE_KEY)), 429, "client_limit"
            )
            assert "1 session" in body["error"]
            other = await http.post("/offer", content=offer_body(pcs[2][1]), headers=auth(BOB_KEY))
            assert other.status_code == 200, other.text  # the replica had room: only alice was over her share
        assert len(gw.sessions) == 2 and gw.sessions.sessions_of("alice") == 1
        assert rejected(gw.serving_metrics) == {"client_limit": 1}
        await gw.sessions.close_all()
        for pc, _ in pcs:
            await pc.close()

    asyncio.run(main())


def test_a_server_fault_is_a_500_that_tells_only_an_error_id(caplog):
    class BrokenSessions:
        def __len__(self):
            return 0

        async def create(self, offer, client_id=None):
            raise RuntimeError("internal detail /srv/secret/path")

    async def main():
        gw = bare_gateway()
        gw.sessions = BrokenSessions()
        pc, sdp = await client_offer()
        async with asgi_client(gw) as http:
            with caplog.at_level(logging.ERROR, logger="deployments.gateway"):
                response = await http.post("/offer", content=offer_body(sdp), headers=JSON)
        body = assert_refusal(response, 500, "error")
        assert "secret" not in response.text and "Traceback" not in response.text
        (record,) = [r for r in caplog.records if r.name == "deployments.gateway"]
        error_id = record.args[0]
        assert error_id in body["error"] and record.exc_info is not None  # the log holds the id and the trace
        await pc.close()

    asyncio.run(main())


# ----- the Ray-free local gateway, with the edge client and the bench client -----


def test_the_local_gateway_admits_the_edge_client_with_a_key_only():
    from types import SimpleNamespace

    import numpy as np

    from anystream_bench.local_gateway import LocalGateway
    from anystream_bench.webrtc_client import BenchClient
    from edge_client.audio_io import SilenceSource
    from edge_client.client import EXIT_OK, EXIT_SERVER, EdgeClient, EdgeClientConfig

    engine = ToneEngine()
    local = LocalGateway(
        engine, max_sessions=2, turn_factory=lambda **kw: SimpleNamespace(**kw), access=AccessConfig(api_keys=KEYS)
    )
    url = local.start()

    def edge(key: str | None) -> EdgeClient:
        config = EdgeClientConfig(
            url, loopback_only=True, text="question", timeout=20, handle_signals=False, bye_timeout=5.0, api_key=key
        )
        return EdgeClient(config, SilenceSource(), NullSink(), stdout=io.StringIO(), stderr=io.StringIO())

    async def main():
        use_loopback_only()
        without = edge(None)
        assert await without.run() == EXIT_SERVER
        message = without.err.getvalue()
        assert "HTTP 401" in message and "needs an API key" in message and "ANYSTREAM_API_KEY" in message
        assert not engine.sessions
        bench = BenchClient(0, url, np.zeros(1600, np.float32), api_key="wrong-key-0123456789")
        result = await bench.run()
        assert result.status == "failed" and result.http_status == 401 and "unauthorized" in result.reason
        client = edge(ALICE_KEY)
        assert await client.run() == EXIT_OK, client.exit_reason
        assert client.reply_text == {1: "beep"} and [t.text for t in engine.sessions[0].turns] == ["question"]

    try:
        asyncio.run(main())
    finally:
        local.stop()


# ----- anystream-serve: never beyond loopback with access off -----


def test_serve_refuses_a_public_host_without_access(monkeypatch, capsys):
    from deployments import app

    with pytest.raises(ValueError, match="http_options.host"):
        app.ServeSettings(host="0.0.0.0")
    assert app.ServeSettings(host="::1").host == "::1" and app.ServeSettings(host="localhost").host == "localhost"
    assert app.ServeSettings(host="0.0.0.0", args=app.AppArgs(access={"api_keys_env": "K"})).host == "0.0.0.0"
    with pytest.raises(ValueError, match="allowed_origin"):  # a misspelt access setting fails with the config
        app.AppArgs(access={"allowed_origin": ["https://a.example"]})

    started = []

    def init_ray(settings):
        started.append(settings)
        raise ValueError("Ray would start here")

    monkeypatch.setattr(app, "init_ray", init_ray)
    assert app.main(["--config", str(app.DEFAULT_CONFIG), "--host", "0.0.0.0"]) == 2
    assert "http_options.host" in capsys.readouterr().err and not started
    # the GPU config listens on 0.0.0.0 with access on, and a local cluster checks its variables before Ray starts
    gpu = str(app.DEFAULT_CONFIG.parent / "anygpt-gpu.yaml")
    monkeypatch.delenv("ANYSTREAM_API_KEYS", raising=False)
    assert app.main(["--config", gpu]) == 2
    assert "ANYSTREAM_API_KEYS, which is not set" in capsys.readouterr().err and not started
