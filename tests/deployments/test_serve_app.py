"""The Serve app on a local Ray: health, a malformed offer is a 400 and the server keeps serving, a real offer
gets a sendrecv answer."""

from __future__ import annotations

import asyncio

import pytest
from local_ray import local_serve

from deployments.app import DEFAULT_CONFIG, AppArgs, build_app, load_config

PORT = 18431


def test_default_config_parses():
    settings = load_config(DEFAULT_CONFIG)
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.args.loopback_only and settings.args.model_family == "embedded"
    for name in ("speech_tokenizer", "lm", "acoustic", "media", "gateway"):
        opts = getattr(settings.args, name).serve_options()
        assert opts["ray_actor_options"]["num_gpus"] == 0 and 0 < opts["ray_actor_options"]["num_cpus"] < 1
        assert "max_ongoing_requests" in opts and ("num_replicas" in opts or "autoscaling_config" in opts)
    with pytest.raises(ValueError):
        AppArgs.model_validate({"lm": {"num_replicas": 1, "autoscaling_config": {"max_replicas": 2}}})
    with pytest.raises(ValueError):
        AppArgs.model_validate({"model_family": "anygpt-7b"})


def test_gpu_config_for_the_anygpt_family_parses_and_fits_one_gpu():
    settings = load_config(DEFAULT_CONFIG.parent / "anygpt-gpu.yaml")
    args = settings.args
    assert (args.model_family, args.dtype, args.device, args.lm_engine) == ("anygpt", "float16", "cuda", "transformers")
    assert args.model_spec()["assets_dir"] == "/models/anygpt" and not args.loopback_only
    shares = [
        getattr(args, name).serve_options()["ray_actor_options"]["num_gpus"]
        for name in ("speech_tokenizer", "lm", "acoustic", "media")
    ]
    assert all(share > 0 for share in shares) and sum(shares) <= 1.0  # one replica of each on one GPU
    assert args.lm.autoscaling_config["max_replicas"] > 1  # scales out on a cluster
    with pytest.raises(ValueError, match="assets_dir"):
        AppArgs.model_validate({"model_family": "anygpt"})
    with pytest.raises(ValueError, match="lm_engine"):
        AppArgs.model_validate({"model_family": "embedded", "lm_engine": "vllm"})


@pytest.fixture(scope="module")
def serve_url():
    with local_serve(PORT):
        from ray import serve

        serve.run(build_app(AppArgs()), name="anystream", route_prefix="/")
        yield f"http://127.0.0.1:{PORT}"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_health_bad_offer_and_real_offer(serve_url):
    import httpx

    health = httpx.get(f"{serve_url}/health", timeout=10).json()
    assert (health["status"], health["sessions"]) == ("ok", 0)
    assert health["deployments"] == {"speech": "ok", "lm": "ok", "acoustic": "ok", "media": "ok"}

    bad = httpx.post(f"{serve_url}/offer", content=b"{nope", headers={"content-type": "application/json"}, timeout=10)
    assert bad.status_code == 400 and "JSON" in bad.json()["error"]
    bad = httpx.post(f"{serve_url}/offer", json={"sdp": "hello", "type": "offer"}, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]
    bad = httpx.post(
        f"{serve_url}/offer", json={"sdp": "v=0\r\nm=audio x\r\nm=application y\r\n", "type": "offer"}, timeout=10
    )
    assert bad.status_code == 400 and bad.json()["error"]
    assert httpx.get(f"{serve_url}/health", timeout=10).json()["status"] == "ok"

    async def call() -> dict:
        from aiortc import RTCPeerConnection, RTCSessionDescription

        from assistant.webrtc.ice import use_loopback_only

        use_loopback_only()
        pc = RTCPeerConnection()
        pc.addTransceiver("audio", direction="sendrecv")
        pc.createDataChannel("events")
        connected = asyncio.Event()
        pc.on("connectionstatechange", lambda: pc.connectionState == "connected" and connected.set())
        await pc.setLocalDescription(await pc.createOffer())
        async with httpx.AsyncClient() as client:
            reply = await client.post(
                f"{serve_url}/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"}, timeout=30
            )
            answer = reply.json() | {"status": reply.status_code}
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
                await asyncio.wait_for(connected.wait(), 30)  # a live peer: its session stays until ended
                answer["held"] = (await client.get(f"{serve_url}/health", timeout=10)).json()["sessions"]
                gone = await client.delete(f"{serve_url}/sessions/{answer['session_id']}", timeout=10)
                answer["deleted"] = gone.status_code
                answer["after"] = (await client.get(f"{serve_url}/health", timeout=10)).json()
            finally:
                await pc.close()
        return answer

    answer = asyncio.run(call())
    assert answer["status"] == 200 and answer["type"] == "answer" and answer["session_id"]
    assert "a=sendrecv" in answer["sdp"] and "m=audio" in answer["sdp"]
    assert answer["held"] == 1
    assert answer["deleted"] == 200
    assert (answer["after"]["status"], answer["after"]["sessions"]) == ("ok", 0)
