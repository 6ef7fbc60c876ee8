"""`make eval-mini`: the trained embedded models, run through the real engine, judged on held-out voices.

Every turn of a fresh, seeded dialogue set goes through ``AssistantEngine`` exactly as a served turn does (speech
encode, LM, acoustic decoder, codec decoder, media de-tokenizers). The questions are spoken by voices that no model
trained on. Judges share no code with the models:
- text: the reply text must equal the reference answer; the ``<-Ins->`` transcript is scored by word error rate;
- speech: pocketsphinx with a JSGF grammar of the set's sentences must recognise the reference answer in the spoken
  reply; the same judge on espeak's own rendering of the answer (in the assistant's voice) is its ceiling;
- images: colour and shape measured from the pixels; music: tempo (±10%) and mode measured from the wave;
- speed: wall time of each turn over the seconds of audio it produced (real-time factor).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from assistant.audio import SAMPLE_RATE, pcm16_to_float
from assistant.models.embedded import EMBEDDED_DIR
from assistant.models.loading import ModelSpec, load_models
from assistant.models.voices import VoiceBank
from assistant.pipeline.engine import AssistantEngine, EngineConfig, UserTurn
from assistant.pipeline.local import local_backends
from assistant.pipeline.outputs import (
    AudioFrame,
    ImageOutput,
    MusicOutput,
    ReplyTextDelta,
    TranscriptDelta,
    TurnError,
    TurnFinished,
)
from training import domain, images, voices
from training.codec_eval import codec_report
from training.judges.image import judge_image
from training.judges.music import judge_music
from training.judges.speech import SentenceJudge, word_error_rate

log = logging.getLogger(__name__)

TARGETS = {
    "text_accuracy": 0.95,
    "transcript_wer_max": 0.10,
    "speech_vs_ceiling": 0.90,
    "image_accuracy": 0.90,
    "music_accuracy": 0.85,
    "rtf_max": 0.5,
    "level1_same_sentence_max": 0.4,
    "level1_different_sentences_min": 0.8,
}


@dataclass(frozen=True)
class EvalPlan:
    """seed / per_family: the held-out dialogue set. codec: also measure the speech codec's level-1 voice invariance
    and round trip (``training.codec_eval``, about a minute)."""

    seed: int = 2026
    per_family: int = 16
    threads: int = 2
    codec: bool = True


@dataclass
class TurnRecord:
    family: str
    spoken: bool
    question: str
    reference: str
    transcript: str | None = None
    text: str = ""
    text_correct: bool = False
    transcript_wer: float | None = None
    speech_seconds: float = 0.0
    speech_heard: str | None = None
    speech_correct: bool | None = None
    ceiling_correct: bool | None = None
    image_expected: str | None = None
    image_judged: str | None = None
    image_correct: bool | None = None
    music_expected: str | None = None
    music_judged: str | None = None
    music_correct: bool | None = None
    finish: str = ""
    error: str | None = None
    wall_seconds: float = 0.0
    audio_seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def _png_pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


async def _run_turn(session, user: domain.UserTurnSpec) -> tuple[dict, float]:
    audio = voices.synthesize(user.words, user.voice, user.speed) if user.spoken else None
    picture = _png_bytes(images.render(user.image)) if user.image is not None else None
    turn = UserTurn(audio=audio, text=None if user.spoken else user.words, image=picture)
    got: dict = {"transcript": "", "text": "", "speech": [], "images": [], "music": [], "finish": "", "error": None}
    start = time.monotonic()
    async for item in session.respond(turn):
        if isinstance(item, TranscriptDelta):
            got["transcript"] += item.text
        elif isinstance(item, ReplyTextDelta):
            got["text"] += item.text
        elif isinstance(item, AudioFrame) and item.source == "speech":
            got["speech"].append(item.pcm)
        elif isinstance(item, ImageOutput):
            got["images"].append(item.png)
        elif isinstance(item, MusicOutput):
            got["music"].append(item.wave)
        elif isinstance(item, TurnError):
            got["error"] = item.message
        elif isinstance(item, TurnFinished):
            got["finish"] = item.reason.value
    return got, time.monotonic() - start


def _normalise(text: str) -> str:
    return " ".join(text.strip().lower().split())


def _judge_turn(record: TurnRecord, reply: domain.ReplySpec, got: dict, judge: SentenceJudge) -> None:
    record.transcript = _normalise(got["transcript"]) if record.spoken else None
    record.text = _normalise(got["text"])
    record.text_correct = record.text == _normalise(reply.text)
    if record.spoken:
        record.transcript_wer = word_error_rate(record.question, record.transcript or "")
    speech = pcm16_to_float(np.concatenate(got["speech"])) if got["speech"] else np.zeros(0, np.float32)
    record.speech_seconds = speech.size / SAMPLE_RATE
    if speech.size >= SAMPLE_RATE // 10:
        record.speech_heard = judge.transcribe(speech)
        record.speech_correct = _normalise(record.speech_heard) == _normalise(reply.text)
    else:
        record.speech_correct = False
    record.ceiling_correct = judge.is_correct(voices.synthesize(reply.text, voices.ASSISTANT_VOICE), reply.text)
    music_seconds = 0.0
    if reply.image is not None:
        record.image_expected = f"{reply.image.colour} {reply.image.shape}"
        if got["images"]:
            colour, shape = judge_image(_png_pixels(got["images"][0]))
            record.image_judged = f"{colour} {shape}"
        record.image_correct = record.image_judged == record.image_expected
    if reply.music is not None:
        record.music_expected = f"{reply.music.bpm} bpm {reply.music.mode}"
        if got["music"]:
            wave = np.asarray(got["music"][0], dtype=np.float32)
            music_seconds = wave.size / SAMPLE_RATE
            bpm, mode = judge_music(wave, SAMPLE_RATE)
            record.music_judged = f"{bpm:.0f} bpm {mode}"
            record.music_correct = bool(
                abs(bpm - reply.music.bpm) <= 0.1 * reply.music.bpm and mode == reply.music.mode
            )
        else:
            record.music_correct = False
    record.audio_seconds = record.speech_seconds + music_seconds


def _plain(value):
    """numpy scalars (judges may return them) as JSON values."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _rate(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return round(sum(map(float, values)) / len(values), 4) if values else None


def summarise(records: list[TurnRecord]) -> dict:
    def block(rows: list[TurnRecord]) -> dict:
        wers = [r.transcript_wer for r in rows if r.transcript_wer is not None]
        speech = _rate([r.speech_correct for r in rows])
        ceiling = _rate([r.ceiling_correct for r in rows])
        audio = sum(r.audio_seconds for r in rows)
        return {
            "turns": len(rows),
            "text_accuracy": _rate([r.text_correct for r in rows]),
            "transcript_wer": round(float(np.mean(wers)), 4) if wers else None,
            "speech_accuracy": speech,
            "speech_ceiling": ceiling,
            "speech_vs_ceiling": round(speech / ceiling, 4) if speech is not None and ceiling else None,
            "image_accuracy": _rate([r.image_correct for r in rows]),
            "music_accuracy": _rate([r.music_correct for r in rows]),
            "rtf": round(sum(r.wall_seconds for r in rows) / audio, 4) if audio > 0 else None,
            "errors": sum(r.error is not None for r in rows),
        }

    by_family: dict[str, list[TurnRecord]] = defaultdict(list)
    for record in records:
        by_family[record.family].append(record)
    return {"overall": block(records), "families": {name: block(rows) for name, rows in sorted(by_family.items())}}


def targets_met(overall: dict, codec: dict | None = None) -> dict[str, bool | None]:
    def at_least(value, target):
        return None if value is None else value >= target

    def at_most(value, target):
        return None if value is None else value <= target

    return {
        "text_accuracy": at_least(overall["text_accuracy"], TARGETS["text_accuracy"]),
        "transcript_wer": at_most(overall["transcript_wer"], TARGETS["transcript_wer_max"]),
        "speech_vs_ceiling": at_least(overall["speech_vs_ceiling"], TARGETS["speech_vs_ceiling"]),
        "image_accuracy": at_least(overall["image_accuracy"], TARGETS["image_accuracy"]),
        "music_accuracy": at_least(overall["music_accuracy"], TARGETS["music_accuracy"]),
        "rtf": at_most(overall["rtf"], TARGETS["rtf_max"]),
        "level1_same_sentence": None
        if codec is None
        else at_most(codec["all_voices"]["same_sentence"], TARGETS["level1_same_sentence_max"]),
        "level1_different_sentences": None
        if codec is None
        else at_least(codec["all_voices"]["different_sentences"], TARGETS["level1_different_sentences_min"]),
    }


def format_table(summary: dict) -> str:
    columns = [
        "turns",
        "text_accuracy",
        "transcript_wer",
        "speech_accuracy",
        "speech_ceiling",
        "speech_vs_ceiling",
        "image_accuracy",
        "music_accuracy",
        "rtf",
        "errors",
    ]
    header = ["family", "n", "text", "ins WER", "speech", "ceiling", "sp/ceil", "image", "music", "RTF", "err"]
    rows = [header]

    def cell(value) -> str:
        return "-" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))

    for name, block in [*summary["families"].items(), ("ALL", summary["overall"])]:
        rows.append([name, *(cell(block[c]) for c in columns)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths, strict=True))) for r in rows
    )


async def _evaluate(
    engine: AssistantEngine, dialogues: list[domain.Dialogue], judge: SentenceJudge
) -> list[TurnRecord]:
    records: list[TurnRecord] = []
    for index, dialogue in enumerate(dialogues):
        session = engine.new_session()
        try:
            for user, reply in dialogue.turns:
                got, wall = await _run_turn(session, user)
                record = TurnRecord(
                    family=dialogue.family,
                    spoken=user.spoken,
                    question=_normalise(user.words),
                    reference=_normalise(reply.text),
                    finish=got["finish"],
                    error=got["error"],
                    wall_seconds=round(wall, 3),
                )
                _judge_turn(record, reply, got, judge)
                records.append(record)
        finally:
            await session.close()
        if (index + 1) % 20 == 0:
            log.info("eval: %d / %d dialogues", index + 1, len(dialogues))
    return records


def run_eval(plan: EvalPlan, assets_dir: Path = EMBEDDED_DIR, out_dir: Path = Path("eval")) -> dict:
    import torch

    torch.set_num_threads(plan.threads)
    bundle = load_models(ModelSpec(assets_dir=str(assets_dir)))
    missing = sorted(set(("lm", "codec", "acoustic", "image", "music")) - set(bundle.weights_loaded))
    if missing:
        raise RuntimeError(f"{assets_dir}: no trained weights for {missing}; run `make train-mini` first")
    bank = VoiceBank.from_json(assets_dir / "voices.json")
    engine = AssistantEngine(local_backends(bundle, seed=plan.seed), bundle.vocab, EngineConfig(), voices=bank)
    dialogues = domain.generate_dialogues(
        plan.per_family * len(domain.FAMILIES), seed=plan.seed, voices=voices.HELDOUT_VOICES, families=domain.FAMILIES
    )
    judge = SentenceJudge(domain.spoken_sentences(dialogues))
    records = asyncio.run(_evaluate(engine, dialogues, judge))
    summary = summarise(records)
    codec = codec_report(bundle.codec) if plan.codec and bundle.codec is not None else None
    result = {
        "plan": asdict(plan),
        "voices": [v.name for v in voices.HELDOUT_VOICES],
        "summary": summary,
        "speech_codec": codec,
        "targets": TARGETS,
        "targets_met": targets_met(summary["overall"], codec),
        "turns": [asdict(r) for r in records],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(result, indent=2, default=_plain) + "\n", encoding="utf-8")
    return result
