"""The whole path alive: a spoken question over WebRTC to the Serve app on loopback and a spoken answer back.

Starts `anystream-serve` (a local Ray cluster plus the Serve application on 127.0.0.1) as a subprocess, then
runs the edge client headless with the spoken question as its microphone and a folder as its speaker.

The questions are taken by rule from `make eval-mini`'s set (conftest.py), not for what the weights get right; the
test checks the path and what the models reliably do (a transcript and a reply in the domain's words, speech of a
plausible length, a picture when one is asked for). How often they are right: test_heldout_answers.py.
"""

import json
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
import soundfile
from e2e_checks import assert_domain_sentence, assert_speech_length, audible_seconds
from PIL import Image
from serve_process import anystream_serve

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with anystream_serve(tmp_path_factory.mktemp("server") / "server.log", ready_timeout_s=180) as (url, _):
        yield url


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


def joined(summary: dict, kind: str) -> str:
    return "".join(event["delta"] for event in summary["events"] if event["type"] == kind).strip()


def test_spoken_turn_over_webrtc(server, spoken_question, tmp_path):
    question, _ = spoken_question
    out = tmp_path / "edge"
    summary = run_edge_client(server, out, "--input", str(question))
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

    # What the models heard and answered, in the domain's words, and the answer spoken: the sound that reached the
    # client, after Opus and a resampling, sounds as long as speech of that reply would.
    assert_domain_sentence(joined(summary, "transcript"), "transcript")
    reply = joined(summary, "text")
    assert_domain_sentence(reply, "reply")
    answer, rate = soundfile.read(out / "answer.wav", dtype="float32")
    assert_speech_length(audible_seconds(answer, rate), reply)

    with urllib.request.urlopen(server + "/health", timeout=5) as response:
        assert json.loads(response.read())["status"] == "ok"


def test_typed_drawing_request_over_webrtc(server, typed_requests, tmp_path):
    out = tmp_path / "edge"
    summary = run_edge_client(server, out, "--input", "silence", "--text", typed_requests["draw"])
    assert_domain_sentence(joined(summary, "text"), "reply")
    images = [event for event in summary["events"] if event["type"] == "image"]
    assert len(images) == 1
    with Image.open(out / f"image_{images[0]['turn_id']}_0.png") as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape == (64, 64, 3) and pixels.std() > 0  # a picture, not a blank
