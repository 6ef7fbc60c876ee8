"""``anystream-bench`` runs in the suite so it cannot rot: 2 sessions, in-process and over WebRTC (against the Ray-free
local gateway; against ``anystream-serve`` on Ray in the slow test), on the committed embedded models."""

from __future__ import annotations

import json
import math
import urllib.request

import pytest
from PIL import Image
from serve_process import anystream_serve

from anystream_bench.load import main

pytestmark = pytest.mark.slow  # the committed embedded models end to end, in process, over WebRTC and on Ray


def finite_positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def check_level(level: dict, mode: str, sessions: int = 2) -> None:
    assert level["mode"] == mode and level["sessions"] == sessions
    clients = level["clients"]
    assert len(clients) == sessions
    for client in clients:
        assert client["status"] == "ok", client
        (turn,) = client["turns"]
        assert finite_positive(turn["ttfa_s"]) and turn["ttfa_s"] < 60, turn
        assert turn["finish_reason"] == "complete", turn
        assert finite_positive(turn["answer_audio_s"]) and finite_positive(turn["rtf"]), turn
        assert isinstance(turn["underruns"], int) and (turn["underruns"] == 0) == (turn["underrun_s"] == 0), turn
    summary = level["summary"]
    assert summary["rejected"] == 0 and summary["failed"] == 0
    assert summary["ttfa_s"]["n"] == sessions
    assert 0 < summary["ttfa_s"]["p50"] <= summary["ttfa_s"]["p95"] <= summary["ttfa_s"]["p99"]
    assert finite_positive(summary["lm_tokens_per_s"]), summary
    assert finite_positive(summary["resources"]["bench"]["cpu_s"])
    assert finite_positive(summary["resources"]["bench"]["rss_max_mib"])
    assert 0 < summary["resources"]["machine"]["cpu_busy_fraction"] <= 1.0


@pytest.mark.timeout(600)
def test_two_sessions_in_process_and_over_webrtc_without_ray(tmp_path, capsys):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    code = main(
        ["--compare", "--local-server", "--sessions", "2", "--spread", "0.5", "--json", str(out), "--plot", str(png)]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    report = json.loads(out.read_text())
    webrtc, inprocess = report["levels"]
    check_level(webrtc, "webrtc")
    check_level(inprocess, "inprocess")
    for client in webrtc["clients"]:  # over WebRTC the server's endpointer takes its share of the TTFA
        (turn,) = client["turns"]
        assert 0 < turn["endpoint_s"] < turn["ttfa_s"]
        assert turn["ttfa_after_endpoint_s"] == pytest.approx(turn["ttfa_s"] - turn["endpoint_s"])
    (ratio,) = report["overhead"]
    assert ratio["sessions"] == 2 and finite_positive(ratio["ttfa_p50_ratio"])
    assert finite_positive(ratio["after_endpoint_p50_ratio"])
    assert "serving overhead at 2 sessions" in printed
    assert report["question"]["seconds"] > 0.5
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == (900, 560)


@pytest.mark.timeout(900)
def test_two_sessions_against_anystream_serve_on_ray(tmp_path):
    with anystream_serve(tmp_path / "server.log") as (url, server):
        out = tmp_path / "bench.json"
        code = main(
            [
                "--server",
                url,
                "--sessions",
                "2",
                "--spread",
                "0.5",
                "--ray-procs",
                "--server-pid",
                str(server.pid),
                "--json",
                str(out),
            ]
        )
        assert code == 0
        report = json.loads(out.read_text())
        (level,) = report["levels"]
        check_level(level, "webrtc")
        summary = level["summary"]
        assert summary["server_metrics"] and finite_positive(summary["server_ttfa_mean_s"])
        servers = summary["resources"]["server"]
        assert any("Gateway" in p["name"] for p in servers), [p["name"] for p in servers]
        # the gateway's /metrics on Ray: its own figures, and each model deployment's stats or a counted failure
        with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
            text = response.read().decode()
        print(text)
        assert "anystream_time_to_first_audio_seconds_count 2.0" in text
        assert 'anystream_turns_total{reason="complete"} 2.0' in text
        for deployment, metric in (("lm", "anystream_lm_"), ("acoustic", "anystream_acoustic_")):
            assert (metric in text) != (f'anystream_stats_errors_total{{deployment="{deployment}"}}' in text)


@pytest.mark.timeout(300)
def test_engine_only_with_two_speaking_sessions(tmp_path):
    out = tmp_path / "engine.json"
    assert main(["--engine-only", "--sessions", "2", "--answer-s", "0.6", "--spread", "0", "--json", str(out)]) == 0
    (level,) = json.loads(out.read_text())["levels"]
    assert level["mode"] == "engine" and len(level["clients"]) == 2
    for client in level["clients"]:
        assert client["status"] == "ok" and client["finish"] == "complete", client
        assert finite_positive(client["ttfa_s"]) and client["answer_audio_s"] > 0.4
    summary = level["summary"]
    assert summary["lm_tokens"] >= 2 * 30 and finite_positive(summary["lm_tokens_per_s"])
    assert summary["session_tokens_per_s"]["n"] == 2 and summary["engine_stats"]["max_slots"] == 2
    assert summary["engine_stats"]["completed"] == 2 and summary["rejected"] == 0
