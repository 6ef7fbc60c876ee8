"""The whole path alive: a spoken question over WebRTC to the Serve app on loopback and a spoken answer back.

Starts `anystream-serve` (a local Ray cluster plus the Serve application on 127.0.0.1) as a subprocess, then
runs the edge client headless with the espeak-ng question as its microphone and a folder as its speaker.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import soundfile
from PIL import Image

from assistant.audio import SAMPLE_RATE, resample
from training.judges.image import judge_image

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, server: subprocess.Popen, log, timeout_s: float) -> None:
    """Until the server printed its URL (every deployment is up) and answers /health."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"server exited early with code {server.returncode}")
        log.seek(0)
        if "anystream is serving at" in log.read():
            with urllib.request.urlopen(url + "/health", timeout=5) as response:
                assert json.loads(response.read())["status"] == "ok"
            return
        time.sleep(1)
    raise AssertionError("server did not come up in time")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    log = open(tmp_path_factory.mktemp("server") / "server.log", "w+")
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from deployments.app import main; sys.exit(main())",
            "--config",
            "deployments/configs/embedded.yaml",
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log, timeout_s=180)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.seek(0)
        tail = log.read()[-3000:]
        log.close()
        print(tail)


def run_edge_client(server: str, out, *args: str) -> dict:
    """The headless edge client against ``server``; returns its session.json."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from edge_client.cli import main; sys.exit(main())",
            "--server",
            server,
            "--output",
            str(out),
            "--loopback-only",
            "--timeout",
            "150",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return json.loads((out / "session.json").read_text())


def trim_silence(wave: np.ndarray, rate: int, margin_s: float = 0.05) -> np.ndarray:
    """The sound between the first and last audible sample: the recording also holds seconds of silence around the
    reply."""
    audible = np.flatnonzero(np.abs(wave) > 1e-3)
    if audible.size == 0:
        return wave[:0]
    pad = int(margin_s * rate)
    return wave[max(0, audible[0] - pad) : audible[-1] + pad]


def joined(summary: dict, kind: str) -> str:
    return "".join(event["delta"] for event in summary["events"] if event["type"] == kind).strip()


def test_spoken_turn_over_webrtc(server, spoken_question, question_and_answer, answer_judge, tmp_path):
    out = tmp_path / "edge"
    summary = run_edge_client(server, out, "--input", str(spoken_question))
    kinds = [event["type"] for event in summary["events"]]
    assert kinds[0] == "ready"
    assert "speech_started" in kinds and "speech_stopped" in kinds
    assert kinds.index("speech_started") < kinds.index("speech_stopped") < kinds.index("turn_end")
    assert kinds[-1] == "turn_end"

    # The answer starts to sound after the user stopped speaking (time to first audio, printed for the record).
    stopped_at = next(e["t"] for e in summary["events"] if e["type"] == "speech_stopped")
    onsets = [t for t in summary["audio"]["onsets_s"] if t > stopped_at]
    assert onsets, summary["audio"]
    print(f"time to first audio after speech_stopped: {onsets[0] - stopped_at:.3f} s")

    # The right answer, understood and answered in text, and spoken: the sound that reached the client, after Opus
    # and a resampling, is recognised as that answer among all 58 answers of the facts and small-talk tables. (Among
    # all 15.6k sentences of the domain the verdict on this model's speech was not stable over Opus; the in-process
    # path, test_chat_cli.py, is judged against all of them.)
    question, answer_words = question_and_answer
    assert joined(summary, "transcript") == question
    assert joined(summary, "text") == answer_words
    answer, rate = soundfile.read(out / "answer.wav", dtype="float32")
    spoken = trim_silence(answer, rate)
    assert spoken.size > 0.5 * rate
    heard = answer_judge.transcribe(resample(spoken, rate, SAMPLE_RATE))
    assert heard == answer_words, f"heard {heard!r}"

    with urllib.request.urlopen(server + "/health", timeout=5) as response:
        assert json.loads(response.read())["status"] == "ok"


def test_typed_drawing_request_over_webrtc(server, tmp_path):
    out = tmp_path / "edge"
    summary = run_edge_client(server, out, "--input", "silence", "--text", "draw a red circle")
    assert joined(summary, "text") == "here is a red circle"
    images = [event for event in summary["events"] if event["type"] == "image"]
    assert len(images) == 1
    pixels = np.asarray(Image.open(out / f"image_{images[0]['turn_id']}_0.png").convert("RGB"))
    assert judge_image(pixels) == ("red", "circle")
