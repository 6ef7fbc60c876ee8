"""The AnyGPT family end to end without the real weights: a weights root laid out as on the hub with random
checkpoints (SoundStorm and SEED at full size, the others small), checked by ``anystream check-weights``, loaded
into a bundle, and served one turn by the same engine as the embedded family."""

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from anygpt_fixtures import TINY_ENCODEC

from assistant.anystream_cli import main as anystream_main
from assistant.models.anygpt.loader import check_weights, failed
from assistant.models.interfaces import AcousticModel, CausalLM, MusicCodec, SpeechCodec
from assistant.models.loading import ModelSpec, load_models
from assistant.pipeline.engine import AssistantEngine, EngineConfig, UserTurn
from assistant.pipeline.local import local_backends
from assistant.pipeline.outputs import AudioFrame, TurnError, TurnFinished

pytestmark = pytest.mark.slow  # anygpt_root: full-size SoundStorm and SEED checkpoints


@pytest.fixture(scope="module")
def root(anygpt_root) -> Path:
    return anygpt_root  # built once per session (tests/models/conftest.py, anygpt_fixtures.py)


def test_check_weights_reports_every_part_of_a_complete_root(root, capsys):
    reports = {r.name: r for r in check_weights(root)}
    for name in ("AnyGPT-chat", "speechtokenizer", "soundstorm", "encodec_32khz", "seed-tokenizer-2"):
        assert reports[name].status == "ok", reports[name]
    assert "chat" in reports["AnyGPT-chat"].detail and "anygpt key layout" in reports["soundstorm"].detail
    assert reports["eva_vit_g"].status == "missing" and not reports["eva_vit_g"].required
    assert reports["stable-diffusion-2-1-unclip"].status == "missing"
    assert not failed(list(reports.values()))
    assert anystream_main(["check-weights", str(root), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["ok"] and {p["name"] for p in document["parts"]} == set(reports)


def test_a_damaged_part_fails_the_check_naming_file_key_and_shapes(root, tmp_path, capsys):
    broken = tmp_path / "broken"
    (broken / "AnyGPT-speech-modules" / "soundstorm").mkdir(parents=True)
    state = torch.load(
        root / "AnyGPT-speech-modules/soundstorm/speechtokenizer_soundstorm_mls.pt", mmap=True, weights_only=True
    )
    state = dict(state)
    state["net.heads.0.weight"] = torch.zeros(7, 1024)
    torch.save(state, broken / "AnyGPT-speech-modules/soundstorm/speechtokenizer_soundstorm_mls.pt")
    (broken / "encodec_32khz").mkdir()
    (broken / "encodec_32khz" / "config.json").write_text(json.dumps(TINY_ENCODEC))  # weights missing
    assert anystream_main(["check-weights", str(broken)]) == 1
    out = capsys.readouterr().out
    assert (
        "failed  soundstorm: " in out
        and "speechtokenizer_soundstorm_mls.pt: key 'net.heads.0.weight' has shape (7, 1024), expected (7168, 1024)"
        in out
    )
    assert "incomplete  encodec_32khz: missing encodec_32khz/model.safetensors" in out
    assert "missing  AnyGPT-chat" in out
    assert anystream_main(["check-weights", str(tmp_path / "absent")]) == 2


def test_the_family_serves_a_turn_through_the_engine(root):
    spec = ModelSpec(family="anygpt", assets_dir=str(root), dtype="float32")
    bundle = load_models(spec, ("lm", "codec", "acoustic", "music"))
    assert bundle.vocab.ins_id is not None and bundle.generation.text.max_new_tokens == 6
    for model, interface in ((bundle.lm, CausalLM), (bundle.codec, SpeechCodec), (bundle.acoustic, AcousticModel)):
        assert isinstance(model, interface)
    assert isinstance(bundle.music, MusicCodec) and bundle.image is None
    backends = local_backends(bundle, seed=0)
    engine = AssistantEngine(backends, bundle.vocab, EngineConfig(force_modality="speech"))

    async def turn():
        session = engine.new_session()
        events = []
        wave = np.sin(np.arange(16000) * 2 * np.pi * 220 / 16000).astype(np.float32) * 0.3
        async for event in session.respond(UserTurn(audio=wave)):
            events.append(event)
        return events

    events = asyncio.run(turn())
    assert not [e for e in events if isinstance(e, TurnError)], events
    assert isinstance(events[-1], TurnFinished)
    audio = [e for e in events if isinstance(e, AudioFrame)]
    assert audio and any(np.abs(frame.pcm).max() > 0 for frame in audio)
    codes = asyncio.run(backends.speech.encode(np.zeros(16000, dtype=np.float32)))
    assert codes.shape == (50,)  # level 1 only crosses the speech backend
    music = asyncio.run(backends.media.music_wave([5, 2048 + 6, 4096 + 7, 6144 + 8] * 10))
    assert music.dtype == np.float32 and 0.15 * 16000 < music.size < 0.25 * 16000


def test_make_voices_encodes_each_sample_into_an_acoustic_prompt(root, tmp_path, capsys):
    from assistant.audio import write_wav
    from assistant.models.voices import VoiceBank

    t = np.arange(4 * 16000) / 16000
    write_wav(tmp_path / "low.wav", (0.3 * np.sin(2 * np.pi * 140 * t)).astype(np.float32))
    write_wav(tmp_path / "high.wav", (0.3 * np.sin(2 * np.pi * 260 * t[:16000])).astype(np.float32))
    out = tmp_path / "voices.json"
    args = [
        "make-voices",
        str(root),
        f"low={tmp_path / 'low.wav'}",
        f"high={tmp_path / 'high.wav'}",
        "--out",
        str(out),
        "--default",
        "high",
    ]
    assert anystream_main(args) == 0
    bank = VoiceBank.from_json(out)
    assert bank.names == ("low", "high") and bank.default == "high" and bank.n_q == 8
    assert bank.prompt("low").shape == (8, 150) and bank.prompt("high").shape == (8, 50)  # 3 s cap; a 1 s sample
    capsys.readouterr()
    assert anystream_main(["make-voices", str(root), "nameonly", "--out", str(out)]) == 2
    (tmp_path / "broken.wav").write_bytes(b"RIFF....WAVEjunk")
    assert anystream_main(["make-voices", str(root), f"x={tmp_path / 'broken.wav'}", "--out", str(out)]) == 2
    assert "voice 'x'" in capsys.readouterr().err


def test_each_deployment_loads_its_part_of_the_family(root):
    from assistant.models.loading import load_role
    from assistant.pipeline import local

    spec = ModelSpec(family="anygpt", assets_dir=str(root), dtype="float32")
    assert spec.tokenizer_dir == root / "AnyGPT-chat" and spec.voices_path is None
    kinds = {
        "speech": local.LocalSpeechEncoder,
        "lm": local.LocalLMBackend,
        "acoustic": local.LocalAcousticBackend,
        "media": local.LocalMediaBackend,
    }
    for kind, backend_type in kinds.items():
        assert isinstance(load_role(spec, kind), backend_type)
