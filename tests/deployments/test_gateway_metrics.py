"""The gateway without Ray: ``GET /metrics`` (with fake LM/acoustic stats), admission (503 ``busy``), error reasons,
and two gateway replicas behind a round-robin proxy serving real edge clients that hang up with ``bye``."""

from __future__ import annotations

import asyncio
import io
from types import SimpleNamespace

import pytest
from aiohttp import web
from offer_fakes import BareGateway, FakeRequest, NullSink, ToneEngine, offering, reply_json
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from waiting import until

from assistant.access import AccessConfig
from assistant.metrics import ServingMetrics
from assistant.webrtc.ice import use_loopback_only
from assistant.webrtc.manager import RtcSessionManager
from deployments import gateway

pytestmark = pytest.mark.timeout(90)


class Stats:
    """A DeploymentHandle's ``stats`` method: ``.remote()`` gives an awaitable."""

    def __init__(self, result=None, hang: bool = False, error: Exception | None = None):
        self.result, self.hang, self.error = result, hang, error
        self.calls = 0

    def remote(self):
        self.calls += 1

        async def answer():
            if self.hang:  # a replica that never answers
                await asyncio.Event().wait()
            if self.error is not None:
                raise self.error
            return self.result

        return answer()


def bare_gateway(max_sessions: int = 2, stats_sources: dict | None = None, replica: str | None = None):
    engine = ToneEngine()
    metrics = ServingMetrics(CollectorRegistry(), replica=replica)
    sessions = RtcSessionManager(
        engine.new_session, max_sessions=max_sessions, metrics=metrics, turn_factory=lambda **kw: SimpleNamespace(**kw)
    )
    return BareGateway(
        engine=engine,
        sessions=sessions,
        serving_metrics=metrics,
        access=AccessConfig(),
        _stats_sources=stats_sources or {},
    ), engine


def parse(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


LM_STATS = {
    "active_slots": 3,
    "max_slots": 8,
    "waiting": 0,
    "steps": 321,
    "last_step_s": 0.009,
    "last_batch_size": 3,
    "tokens": 4000,
    "replica": "lm-a",
}


def test_metrics_endpoint_renders_gateway_and_deployment_figures_and_counts_stats_failures():
    async def main():
        lm = SimpleNamespace(stats=Stats(LM_STATS))
        hung_acoustic = SimpleNamespace(stats=Stats({"queued": 1}, hang=True))
        gw, _ = bare_gateway(stats_sources={"lm": lm, "acoustic": hung_acoustic}, replica="gw-0")
        async with offering(gw) as sdp:
            status, _ = reply_json(await gw.offer(FakeRequest({"sdp": sdp, "type": "offer"})))
            assert status == 200
            gw.serving_metrics.observe_ttfa(0.3)

            response = await gw.metrics(FakeRequest())  # answered at all: it did not wait for the stats that never come
            assert response.media_type.startswith("text/plain")
            s = parse(response.body.decode())
            assert s[("anystream_active_sessions", ())] == 1
            assert s[("anystream_sessions_created_total", ())] == 1
            assert s[("anystream_time_to_first_audio_seconds_count", ())] == 1
            assert s[("anystream_reply_queue_frames", ())] == 0
            assert s[("anystream_lm_active_slots", (("replica", "lm-a"),))] == 3
            assert s[("anystream_lm_slot_occupancy", (("replica", "lm-a"),))] == pytest.approx(3 / 8)
            assert s[("anystream_lm_step_seconds", (("replica", "lm-a"),))] == pytest.approx(0.009)
            assert s[("anystream_stats_errors_total", (("deployment", "acoustic"),))] == 1
            assert ("anystream_stats_errors_total", (("deployment", "lm"),)) not in s
            assert not [k for k in s if k[0].startswith("anystream_acoustic_")]
            assert s[("anystream_gateway_info", (("replica", "gw-0"),))] == 1
            assert s[("process_cpu_seconds_total", ())] > 0

            # a deployment without a stats method, one that raises, and one that answers nonsense: skipped and counted
            gw._stats_sources = {
                "lm": SimpleNamespace(),
                "acoustic": SimpleNamespace(stats=Stats(error=RuntimeError())),
            }
            s = parse((await gw.metrics(FakeRequest())).body.decode())
            assert s[("anystream_stats_errors_total", (("deployment", "lm"),))] == 1
            assert s[("anystream_stats_errors_total", (("deployment", "acoustic"),))] == 2
            gw._stats_sources = {"lm": SimpleNamespace(stats=Stats({"tokens": "many"}))}
            s = parse((await gw.metrics(FakeRequest())).body.decode())
            assert s[("anystream_stats_errors_total", (("deployment", "lm"),))] == 2

    asyncio.run(main())


def test_an_offer_beyond_capacity_is_a_503_busy_and_bad_offers_are_400_bad_request():
    async def main():
        gw, engine = bare_gateway(max_sessions=1)
        async with offering(gw) as sdp:
            status, body = reply_json(await gw.offer(FakeRequest({"sdp": sdp, "type": "offer"})))
            assert status == 200 and body["type"] == "answer"
            status, body = reply_json(await gw.offer(FakeRequest({"sdp": sdp, "type": "offer"})))
            assert status == 503 and body["reason"] == "busy" and "limit of 1" in body["error"]
            assert len(gw.sessions) == 1 and len(engine.sessions) == 1  # the refused offer left nothing behind
            status, body = reply_json(await gw.offer(FakeRequest(b"{not json")))
            assert status == 400 and body["reason"] == "bad_request" and "JSON" in body["error"]
            status, body = reply_json(await gw.offer(FakeRequest({"sdp": sdp, "type": "answer"})))
            assert status == 400 and body["reason"] == "bad_request"
            s = parse(gw.serving_metrics.render().decode())
            assert s[("anystream_rejected_sessions_total", (("reason", "busy"),))] == 1
            assert s[("anystream_rejected_sessions_total", (("reason", "bad_request"),))] == 2
            # a freed place admits the next offer
            await gw.sessions.close_all()
            status, body = reply_json(await gw.offer(FakeRequest({"sdp": sdp, "type": "offer"})))
            assert status == 200
            # DELETE still ends a session on the replica that holds it; elsewhere it is a 404
            status, closed = reply_json(await gw.close_session(body["session_id"], FakeRequest()))
            assert status == 200 and closed == {"closed": body["session_id"]} and len(gw.sessions) == 0
            status, body = reply_json(await gw.close_session(body["session_id"], FakeRequest()))
            assert status == 404 and body["reason"] == "not_found"

    asyncio.run(main())


class RoundRobinProxy:
    """Serve's HTTP proxy in miniature: each request goes to the next replica, with no session affinity."""

    def __init__(self, replicas: list[BareGateway]):
        self.replicas = replicas
        self.next = 0
        self.url = ""

    def _pick(self) -> BareGateway:
        replica = self.replicas[self.next % len(self.replicas)]
        self.next += 1
        return replica

    async def offer(self, request: web.Request) -> web.Response:
        status, body = await gateway.answer_offer(
            self._pick().sessions, await request.read(), self.replicas[0].serving_metrics
        )
        return web.json_response(body, status=status)

    async def start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/offer", self.offer)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return runner


def test_two_gateway_replicas_serve_edge_clients_that_hang_up_with_bye():
    from edge_client.audio_io import SilenceSource
    from edge_client.client import EXIT_OK, EdgeClient, EdgeClientConfig

    async def main():
        use_loopback_only()
        replicas = [bare_gateway(max_sessions=4)[0] for _ in range(2)]
        proxy = RoundRobinProxy(replicas)
        runner = await proxy.start()
        try:
            clients = [
                EdgeClient(
                    EdgeClientConfig(
                        proxy.url,
                        loopback_only=True,
                        text=f"question {i}",
                        timeout=20,
                        handle_signals=False,
                        bye_timeout=5.0,
                    ),
                    SilenceSource(),
                    NullSink(),
                    stdout=io.StringIO(),
                    stderr=io.StringIO(),
                )
                for i in range(2)
            ]
            codes = await asyncio.gather(*(c.run() for c in clients))
            assert codes == [EXIT_OK, EXIT_OK], [c.exit_reason for c in clients]
            # one session on each replica, each answered in full
            sessions = [r.engine.sessions for r in replicas]
            assert [len(on_replica) for on_replica in sessions] == [1, 1]
            assert sorted(t.text for (session,) in sessions for t in session.turns) == ["question 0", "question 1"]
            for replica in replicas:
                s = parse(replica.serving_metrics.render().decode())
                assert s[("anystream_sessions_created_total", ())] == 1
                assert s[("anystream_turns_total", (("reason", "complete"),))] == 1
                assert s[("anystream_time_to_first_audio_seconds_count", ())] == 1
            assert all(c.reply_text == {1: "beep"} for c in clients)
            # the clients hung up with bye on the peer connection: no DELETE, yet both replicas let go
            for c in clients:
                assert [e["acknowledged"] for e in c.local_events if e["event"] == "bye"] == [True]
            await until(lambda: all(len(r.sessions) == 0 for r in replicas), what="both replicas to be empty")
            assert all(r.engine.sessions[0].closed for r in replicas)
        finally:
            for replica in replicas:
                await replica.sessions.close_all()
            await runner.cleanup()

    asyncio.run(main())
