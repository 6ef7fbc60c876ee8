"""The browser page end to end: the real server (``anystream-serve`` with the committed embedded models) and headless
Chromium, whose fake microphone plays the eval set's first spoken question.

One click on Talk, and the page connects over WebRTC; the server hears the question (``speech_started``,
``speech_stopped``, a transcript); the answer's audio plays in the page (measured with WebAudio on the remote stream)
and its text appears, with the latency of the turn. Then, with the microphone muted, the eval set's typed drawing
request brings a picture that the page shows; after a change of voice (a new call) its request for a tune brings
music that the page says is playing, and a large picture with a typed question goes up in fragments and is answered.
Screenshots go to the test's folder (and ``ANYSTREAM_ARTIFACTS``).

Chromium and the server share this machine's network: Chromium may gather candidates on other interfaces too, but
the server gathers loopback only, so the call runs over 127.0.0.1 (``--allow-loopback-in-peer-connection``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile
from browser_session import chromium_page, require_chromium, save_screenshot
from scipy.signal import resample_poly
from serve_process import anystream_serve

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# Chromium's fake capture wants 48 kHz 16-bit and loops the file. Silence first, so the call is up before the
# question plays, and a long silence after it, so the question does not come again while the test goes on (the page
# mutes its microphone after the first turn anyway).
LEAD_SILENCE_S = 3.0
TAIL_SILENCE_S = 40.0
# A loaded 2-core machine: the first turn waits for models that have never run yet.
TURN_TIMEOUT_MS = 180_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_chromium()  # skip before a minute of server start when the browser is missing
    with anystream_serve(tmp_path_factory.mktemp("server") / "server.log", ready_timeout_s=300) as (url, _):
        yield url


@pytest.fixture
def microphone(spoken_question, tmp_path):
    question, _ = spoken_question
    wave, rate = soundfile.read(question, dtype="float32")
    assert rate == 16000
    wave = resample_poly(wave, 3, 1).astype(np.float32)
    lead = np.zeros(int(LEAD_SILENCE_S * 48000), np.float32)
    tail = np.zeros(int(TAIL_SILENCE_S * 48000), np.float32)
    path = tmp_path / "microphone_48k.wav"
    soundfile.write(path, np.concatenate([lead, wave, tail]), 48000, subtype="PCM_16")
    return path


def write_large_picture(path, spec) -> None:
    """The picture of ``spec`` at AnyGPT's 768 pixels, with a little noise so that its PNG is as large as a photo's
    rather than a few KiB of flat colour."""
    from PIL import Image

    from training.images import render

    pixels = render(spec, 768).astype(np.int16)
    noise = np.random.default_rng(3).integers(-3, 4, pixels.shape)
    Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8)).save(path)


def page_state(page) -> dict:
    return page.evaluate("() => JSON.parse(JSON.stringify(window.anystream))")


def wait_for(page, condition: str, what: str, timeout_ms: int = TURN_TIMEOUT_MS) -> None:
    """Waits until ``condition`` (a JavaScript expression) holds in the page. It runs as a function: the page's policy
    forbids evaluating strings ('unsafe-eval'), which is how Playwright would run a bare expression."""
    try:
        page.wait_for_function(f"() => ({condition})", timeout=timeout_ms, polling=100)
    except Exception as exc:  # playwright's TimeoutError: say what was awaited and what the page had
        state = page_state(page)
        state["events"] = state["events"][-40:]
        raise AssertionError(f"{what} not reached: {exc}\npage state: {json.dumps(state)[:4000]}") from None


def test_talk_hear_the_answer_see_a_picture_and_hear_a_tune(
    server, microphone, typed_requests, picture_question, tmp_path
):
    with chromium_page(tmp_path / "profile", fake_microphone=microphone) as (page, console):
        try:
            page.goto(server + "/")
            assert page.title() == "anystream"
            page.get_by_role("button", name="Talk").click()
            wait_for(page, "window.anystream.connection === 'connected' && window.anystream.ready", "connected", 60_000)
            state = page_state(page)
            assert state["dataChannel"] == "open" and state["sessionId"]

            # the server hears the question, understands something, and answers it in words and speech
            wait_for(page, "window.anystream.eventCounts.speech_stopped >= 1", "speech_stopped")
            wait_for(
                page,
                """Object.values(window.anystream.turns).some((t) => t.transcript.trim() && t.text.trim() && t.end)""",
                "a spoken turn with its transcript and reply",
            )
            wait_for(page, "window.anystream.lastLatencyMs !== null", "the latency of the spoken turn", 30_000)
            state = page_state(page)
            kinds = [event["type"] for event in state["events"]]
            assert kinds.index("speech_started") < kinds.index("speech_stopped") < kinds.index("turn_end")
            spoken = next(turn for turn in state["turns"].values() if turn["transcript"].strip() and turn["end"])
            assert spoken["end"] == "complete", spoken
            # the answer sounded in the page: WebAudio on the remote stream heard more than a blip above silence
            assert state["audio"]["audibleMs"] > 300 and state["audio"]["peakRms"] > 0.01, state["audio"]
            assert 0 < state["lastLatencyMs"] < TURN_TIMEOUT_MS
            print(f"spoken turn: heard {spoken['transcript']!r}, replied {spoken['text']!r}")
            print(f"answer audio: {state['audio']}; latency of the turn: {state['lastLatencyMs']} ms")
            # the page shows what streamed in (the browser lays runs of spaces out as one)
            page_text = " ".join(page.locator("#turns").inner_text().split())
            assert " ".join(spoken["text"].split()) in page_text
            assert " ".join(spoken["transcript"].split()) in page_text
            save_screenshot(page, tmp_path, "browser_spoken_turn.png")

            # a typed drawing request, the microphone muted (the fake one would ask its question again)
            page.get_by_role("button", name="Mute microphone").click()
            request = typed_requests["draw"]
            shown = "[...document.querySelectorAll('#turns img')].filter((img) => img.complete && img.naturalWidth > 0)"
            before = page.evaluate(f"{shown}.length")  # a spoken answer may have drawn something too
            page.get_by_label("Type a question").fill(request)
            page.get_by_role("button", name="Send", exact=True).click()
            wait_for(
                page,
                f"Object.values(window.anystream.turns).some((t) => t.user === {json.dumps(request)} && t.images >= 1)"
                f" && {shown}.length > {before}",
                "the requested picture shown",
            )
            state = page_state(page)
            drawn = next(turn for turn in state["turns"].values() if turn["user"] == request)
            assert drawn["images"] >= 1 and state["imagesShown"] >= 1, drawn
            print(f"typed turn: {request!r} -> {drawn['text']!r} with {drawn['images']} picture(s)")
            save_screenshot(page, tmp_path, "browser_picture.png")

            # another voice: the page hangs up and calls again, a fresh conversation in that voice (the embedded
            # models answer a fresh conversation best: after a picture they tend to draw again)
            voices = state["voices"]
            assert len(voices) >= 2, voices
            voice = next(name for name in voices if name != state["voice"])
            session = state["sessionId"]
            page.get_by_label("Voice").select_option(voice)
            wait_for(
                page,
                f"window.anystream.ready && window.anystream.voice === {json.dumps(voice)} "
                f"&& window.anystream.sessionId !== {json.dumps(session)}",
                "a new call in the chosen voice",
                60_000,
            )

            # a typed request for a tune: the music follows the spoken reply, and the page says which is playing
            request = typed_requests["play"]
            page.get_by_label("Type a question").fill(request)
            page.get_by_role("button", name="Send", exact=True).click()
            wait_for(
                page,
                f"Object.values(window.anystream.turns).some((t) => t.user === {json.dumps(request)} && t.end)",
                "the tune's turn",
            )
            wait_for(page, "window.anystream.audio.playing === 'nothing'", "the end of the tune", 30_000)
            state = page_state(page)
            played = next(turn for turn in state["turns"].values() if turn["user"] == request)
            assert played["music"] and played["end"] == "complete", played
            assert state["audio"]["musicMs"] > 300 and state["audio"]["speechMs"] > 300, state["audio"]
            print(f"typed turn: {request!r} -> {played['text']!r} with music {played['music']} s; {state['audio']}")

            # a large picture with a typed question: the page sends it in fragments within the server's advertised
            # 64 KiB, and the server, having put it back together, answers the question
            words, spec = picture_question
            picture = tmp_path / "picture.png"
            write_large_picture(picture, spec)
            assert picture.stat().st_size > 2 * 65536
            page.locator("#picture").set_input_files(str(picture))
            page.get_by_label("Question about it").fill(words)
            page.get_by_role("button", name="Send picture").click()
            wait_for(
                page,
                "Object.values(window.anystream.turns).some((t) => t.user && t.user.startsWith('[picture') && t.end)",
                "the answer about the picture",
            )
            state = page_state(page)
            asked = next(turn for turn in state["turns"].values() if (turn["user"] or "").startswith("[picture"))
            assert asked["user"] == f"[picture picture.png] {words}"
            assert asked["end"] == "complete" and asked["text"].strip(), asked
            assert state["sent"]["fragments"] >= 3, state["sent"]
            print(f"picture question: {words!r} ({picture.stat().st_size} bytes) -> {asked['text']!r}")
            save_screenshot(page, tmp_path, "browser_tune_and_picture.png")

            page.get_by_role("button", name="Hang up").click()
            wait_for(page, "window.anystream.connection === 'closed'", "hung up", 10_000)
            assert page_state(page)["errors"] == []
            assert not [line for line in console if line.startswith(("error:", "uncaught:"))], console
        finally:
            print("browser console:", *console[-50:], sep="\n  ")
