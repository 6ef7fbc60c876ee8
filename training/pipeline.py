"""`make train-mini`: every stage from synthesized data to the weights in ``assistant/assets/embedded/``.

First the text vocabulary is written (``training.vocabulary``), then the stages; each leaves its result under
``work_dir`` and is reused while its inputs and every earlier stage are unchanged (unless ``fresh``):
    dialogues   seeded dialogues: training voices, validation voices (early stopping), held-out voices (eval only)
    speech      espeak-ng renders every utterance (with its phoneme timings where the codec trains on it); the speech
                codec's content encoder and codebooks are fitted; every question is augmented and encoded
    music       music VQ fitted; tokens of every tune the dialogues ask for
    acoustic    acoustic decoder trained on training-voice utterances; the voice prompt bank
    image       image VQ trained; codes of every picture the dialogues show or ask for
    corpus      dialogues -> token sequences with reply loss masks
    lm          the LM, early-stopped on validation-voice dialogues
then ``export`` writes the weights and ``training.json`` (what ran, how long, the metrics) into the assets folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from assistant.models.bundle import MODEL_NAMES
from assistant.models.checkpoint import config_path, save_weights
from assistant.models.config_io import read_config, read_json_object
from assistant.models.embedded import EMBEDDED_DIR
from assistant.models.embedded.image import ImageCodecConfig, ImageDetokenizer
from assistant.models.embedded.lm import LMConfig
from assistant.models.embedded.music import MusicCodecConfig
from assistant.models.embedded.speech import MelCodecConfig, MelRVQCodec
from assistant.models.loading import ModelSpec, load_models
from assistant.models.soundstorm import SoundStormConfig
from assistant.vocab import Modality
from training import augment, domain, images, music, voices
from training.corpus import encode_dialogue, encode_drill
from training.fit_image_codec import ImageFitSettings, fit_image_codec
from training.fit_music_codec import fit_music_codec
from training.fit_speech_codec import ContentFitSettings, fit_content_codec
from training.specs import ImageSpec, MusicSpec, Voice
from training.train_acoustic import AcousticTrainingConfig, build_voice_bank, train_acoustic_decoder
from training.train_lm import LMTrainingConfig, train_lm
from training.vocabulary import write_embedded_tokenizer

log = logging.getLogger(__name__)

SpeechKey = tuple[str, str, int, int]  # (words, voice name, pitch, speed)


@dataclass(frozen=True)
class TrainPlan:
    """What ``train-mini`` does. Every neural stage is budgeted in optimiser steps and stops early when its
    validation loss stops improving, so a run means the same on any machine; wall time is only reported.

    train_dialogues / valid_dialogues: dialogue counts (validation dialogues use ``valid_voices`` training voices
    that the LM never trains on; held-out voices are left to the evaluation).
    pitch_jitter: spoken training and validation questions are read within this many espeak pitch steps of their
    voice's pitch (``domain.generate_dialogues``); the evaluation's held-out voices keep their own pitch.
    codec_fit_utterances / codec_steps / codec_residual_frames: utterances (each with one augmented copy) the
    content encoder trains on, its step budget, and the frames of the residual k-means.
    augment: spoken questions reach the LM (and the content encoder) through ``training.augment`` (noise, reverb,
    gain, an Opus round trip), as they reach the server through WebRTC; replies stay clean.
    image_steps: the image codec's steps (None: the fitter's default).
    knowledge_drills: extra LM training sequences that teach the knowledge families' answers in about 25 tokens each
    (``domain.knowledge_drills``, ``corpus.encode_drill``): 24,000 add about 8% to the LM's training tokens and about
    45 sightings of every arithmetic problem. picture_drills: the same for questions about a user's picture
    (``domain.picture_drills``, about 60 tokens each; 0: run 6 tried 8,000, see docs/embedded-training.md).
    acoustic_steps / lm_steps / lm_epochs: step
    budgets (and an optional epoch cap for the LM). device: where the neural stages train (cpu, cuda, cuda:N).
    """

    seed: int = 0
    train_dialogues: int = 15_000
    valid_dialogues: int = 400
    valid_voices: int = 3
    pitch_jitter: int = 10
    codec_fit_utterances: int = 4_000
    codec_steps: int = 800
    codec_residual_frames: int = 120_000
    augment: bool = True
    image_steps: int | None = None  # None: the fitter's default
    acoustic_steps: int = 6_000
    acoustic_utterances: int = 6_000
    voice_prompt_frames: int = 90
    music_max_frames: int = 30_000
    knowledge_drills: int = 24_000
    picture_drills: int = 0
    lm_steps: int = 2_000
    lm_epochs: float | None = None
    device: str = "cpu"
    threads: int = 2


def split_training_voices(plan: TrainPlan) -> tuple[tuple[Voice, ...], tuple[Voice, ...]]:
    """(LM training voices, validation voices). The assistant's own voice always stays in training."""
    candidates = [v for v in voices.TRAIN_VOICES if v.name != voices.ASSISTANT_VOICE.name]
    random.Random(plan.seed).shuffle(candidates)
    valid = tuple(candidates[: plan.valid_voices])
    train = tuple(v for v in voices.TRAIN_VOICES if v not in valid)
    return train, valid


class _Stages:
    """Runs stages in order and reuses a stage's saved result while its key is the one it was saved under.

    A stage's key is what it depends on (plan fields, configs) chained with the previous stage's key, so changing
    the LM budget retrains only the LM while changing the dialogues recomputes everything after them. The device a
    stage trains on is not part of its key: a cache made on the CPU is reused by a GPU run, which then trains only
    what changed (e.g. the LM with a bigger ``--lm-steps``).
    """

    def __init__(self, work_dir: Path, fresh: bool) -> None:
        self.work_dir = work_dir
        self.fresh = fresh
        self.timings: dict[str, float] = {}
        work_dir.mkdir(parents=True, exist_ok=True)
        self._stamp = work_dir / "fingerprint.json"
        try:
            saved = json.loads(self._stamp.read_text(encoding="utf-8")) if self._stamp.is_file() else {}
        except json.JSONDecodeError:
            saved = {}
        self._saved: dict[str, str] = saved.get("stages", {}) if isinstance(saved, dict) else {}
        self._chain = ""

    def cached(self, name: str, depends_on: Any, compute: Callable[[], Any]) -> Any:
        key = hashlib.sha256(
            (self._chain + json.dumps(depends_on, sort_keys=True, default=str)).encode("utf-8")
        ).hexdigest()
        self._chain = key
        path = self.work_dir / f"{name}.pt"
        if path.is_file() and not self.fresh and self._saved.get(name) == key:
            log.info("stage %s: cached (%s)", name, path)
            return torch.load(path, weights_only=False)
        start = time.monotonic()
        log.info("stage %s: running", name)
        result = compute()
        torch.save(result, path)
        self._saved[name] = key
        self._stamp.write_text(json.dumps({"stages": self._saved}, indent=2, sort_keys=True), encoding="utf-8")
        self.timings[name] = round((time.monotonic() - start) / 60, 2)
        log.info("stage %s: done in %.1f min", name, self.timings[name])
        return result


def _speech_requests(dialogue_sets: list[list[domain.Dialogue]]) -> tuple[set[SpeechKey], set[str]]:
    questions: set[SpeechKey] = set()
    replies: set[str] = set()
    for dialogues in dialogue_sets:
        for dialogue in dialogues:
            for user, reply in dialogue.turns:
                if user.spoken:
                    questions.add((user.words, user.voice.name, user.voice.pitch, int(user.speed)))
                replies.add(reply.text)
    return questions, replies


# Questions reach the LM as they reach the server: through a room, a microphone and Opus. Lighter than the module's
# default mix (Opus at complexity 5, on 40% of them) so the augmentation of ~25k questions costs minutes, not ten.
QUESTION_AUGMENT = augment.AugmentConfig(clean_probability=0.3, opus_probability=0.4, opus_complexity=5)


def _encode_all(
    codec: MelRVQCodec,
    requests: Sequence[tuple[str, Voice, int | None]],
    augment_seed: int | None = None,
    keep_clean: Collection[int] = (),
    batch: int = 256,
) -> tuple[list[np.ndarray], dict[int, np.ndarray]]:
    """Synthesize (``augment_seed``: then augment, request i with its own generator seeded (seed, i), so a request's
    audio does not depend on the batching) and encode in batches (bounded memory): int16 codes ``[n_q, F]`` of every
    request, and of the clean audio of the requests whose indices are in ``keep_clean`` (synthesized once for both)."""
    out: list[np.ndarray] = []
    clean: dict[int, np.ndarray] = {}
    keep = set(keep_clean)

    def encode(wave: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return codec.encode(torch.from_numpy(wave)).numpy().astype(np.int16)

    with ThreadPoolExecutor(max_workers=2) as pool:
        for start in range(0, len(requests), batch):
            waves = voices.synthesize_many(requests[start : start + batch])
            clean.update({start + i: encode(wave) for i, wave in enumerate(waves) if start + i in keep})
            if augment_seed is not None:
                seeds = [np.random.default_rng([augment_seed, start + i]) for i in range(len(waves))]
                waves = list(pool.map(_question_augment, waves, seeds))
            out.extend(encode(wave) for wave in waves)
            log.info("speech: encoded %d / %d utterances", min(start + batch, len(requests)), len(requests))
    return out, clean


class _CachedMedia:
    """``training.corpus.MediaTokenizers`` over the codes computed by the earlier stages."""

    def __init__(self, speech: dict, image_codes: dict[ImageSpec, list[int]], music_tokens: dict[MusicSpec, list[int]]):
        self.questions: dict[SpeechKey, np.ndarray] = speech["questions"]
        self.replies: dict[str, np.ndarray] = speech["replies"]
        self.images = image_codes
        self.music = music_tokens

    def question_codes(self, words: str, voice: Voice, speed: int | None) -> list[int]:
        return self.questions[(words, voice.name, voice.pitch, int(speed))][0].tolist()

    def reply_codes(self, text: str) -> list[int]:
        return self.replies[text][0].tolist()

    def image_codes(self, spec: ImageSpec) -> list[int]:
        return self.images[spec]

    def music_tokens(self, spec: MusicSpec) -> list[int]:
        return self.music[spec]


def _question_augment(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return augment.augment(wave, rng, QUESTION_AUGMENT)


def run_training(
    plan: TrainPlan, assets_dir: Path = EMBEDDED_DIR, work_dir: Path = Path("build/train"), fresh: bool = False
) -> dict:
    """All stages, then the export into ``assets_dir``. Returns the summary written to ``training.json``."""
    torch.set_num_threads(plan.threads)
    started = time.monotonic()
    vocab = write_embedded_tokenizer(assets_dir)
    configs = {name: read_json_object(config_path(assets_dir, name)) for name in MODEL_NAMES}
    stages = _Stages(work_dir, fresh)
    train_voices, valid_voices = split_training_voices(plan)

    def make_dialogues() -> dict:
        return {
            "train": domain.generate_dialogues(
                plan.train_dialogues, seed=plan.seed, voices=train_voices, pitch_jitter=plan.pitch_jitter
            ),
            "valid": domain.generate_dialogues(
                plan.valid_dialogues, seed=plan.seed + 1, voices=valid_voices, pitch_jitter=plan.pitch_jitter
            ),
        }

    dialogues = stages.cached(
        "dialogues",
        [plan.seed, plan.train_dialogues, plan.valid_dialogues, plan.valid_voices, plan.pitch_jitter],
        make_dialogues,
    )

    def make_speech() -> dict:
        questions, replies = _speech_requests([dialogues["train"], dialogues["valid"]])
        question_list = sorted(questions)
        reply_list = sorted(replies)
        question_requests = [(w, replace(voices.voice_by_name(v), pitch=p), s) for w, v, p, s in question_list]
        reply_requests = [(text, voices.ASSISTANT_VOICE, None) for text in reply_list]
        rng = random.Random(plan.seed)
        # The codec trains on training-voice speech only; the validation voices only decide when its encoder stops.
        valid_names = {v.name for v in valid_voices}
        fit_pool = [r for r in question_requests + reply_requests if r[1].name not in valid_names]
        fit_requests = rng.sample(fit_pool, min(plan.codec_fit_utterances, len(fit_pool)))
        check_pool = [r for r in question_requests if r[1].name in valid_names]
        check_requests = rng.sample(check_pool, min(max(8, plan.codec_fit_utterances // 20), len(check_pool)))
        config = read_config(config_path(assets_dir, "codec"), MelCodecConfig)
        settings = ContentFitSettings(
            max_steps=plan.codec_steps,
            residual_frames=plan.codec_residual_frames,
            augmented_copies=1 if plan.augment else 0,
            device=plan.device,
        )
        codec, codec_metrics = fit_content_codec(
            voices.synthesize_many_aligned(fit_requests),
            voices.synthesize_many_aligned(check_requests),
            config,
            seed=plan.seed,
            settings=settings,
            augment=_question_augment if plan.augment else None,
        )
        # The acoustic decoder learns to render voices from clean speech: a sample of training-voice questions,
        # encoded clean from the same synthesis as their augmented copies.
        acoustic_pool = [r for r in question_requests if r[1].name not in valid_names]
        acoustic_requests = rng.sample(acoustic_pool, min(plan.acoustic_utterances, len(acoustic_pool)))
        index = {request: i for i, request in enumerate(question_requests)}
        acoustic_indices = [index[r] for r in acoustic_requests]
        question_codes, clean = _encode_all(
            codec, question_requests, plan.seed if plan.augment else None, keep_clean=acoustic_indices
        )
        reply_codes, _ = _encode_all(codec, reply_requests)
        return {
            "codec_state": codec.state_dict(),
            "codec_metrics": codec_metrics,
            "questions": dict(zip(question_list, question_codes, strict=True)),
            "replies": dict(zip(reply_list, reply_codes, strict=True)),
            "clean_questions": [(clean[i], question_requests[i][1].name) for i in acoustic_indices],
        }

    speech = stages.cached(
        "speech",
        [
            plan.codec_fit_utterances,
            plan.codec_steps,
            plan.codec_residual_frames,
            plan.augment,
            plan.acoustic_utterances,
            configs["codec"],
        ],
        make_speech,
    )

    def make_music() -> dict:
        config = read_config(config_path(assets_dir, "music"), MusicCodecConfig)
        model, metrics = fit_music_codec(config, seed=plan.seed, max_frames=plan.music_max_frames)
        wanted = {reply.music for d in dialogues["train"] + dialogues["valid"] for _, reply in d.turns if reply.music}
        with torch.inference_mode():
            tokens = {spec: list(model.encode(music.synthesize(spec))) for spec in wanted}
        return {"state": model.state_dict(), "tokens": tokens, "metrics": metrics}

    tunes = stages.cached("music", [plan.music_max_frames, configs["music"]], make_music)

    def make_acoustic() -> dict:
        utterances = list(speech["clean_questions"])
        utterances += [(codes, voices.ASSISTANT_VOICE.name) for codes in speech["replies"].values()]
        random.Random(plan.seed).shuffle(utterances)
        utterances = utterances[: plan.acoustic_utterances]
        config = read_config(config_path(assets_dir, "acoustic"), SoundStormConfig)
        settings = AcousticTrainingConfig(max_steps=plan.acoustic_steps, seed=plan.seed, device=plan.device)
        model, metrics = train_acoustic_decoder([(c.astype(np.int64), n) for c, n in utterances], config, settings)
        by_voice: dict[str, list[np.ndarray]] = {}
        for codes, name in utterances:
            by_voice.setdefault(name, []).append(codes.astype(np.int64))
        bank = build_voice_bank(
            by_voice,
            n_q=config.n_q,
            prompt_frames=plan.voice_prompt_frames,
            default=voices.ASSISTANT_VOICE.name,
            codebook_size=config.codebook_size,
        )
        return {"state": model.state_dict(), "bank": bank, "metrics": metrics}

    acoustic = stages.cached(
        "acoustic",
        [plan.acoustic_steps, plan.acoustic_utterances, plan.voice_prompt_frames, configs["acoustic"]],
        make_acoustic,
    )

    def pictures() -> set[ImageSpec]:
        wanted = set()
        for dialogue in dialogues["train"] + dialogues["valid"]:
            for user, reply in dialogue.turns:
                wanted |= {s for s in (user.image, reply.image) if s is not None}
        return wanted

    def make_images() -> dict:
        config = read_config(config_path(assets_dir, "image"), ImageCodecConfig)
        settings = (
            ImageFitSettings()
            if plan.image_steps is None
            else ImageFitSettings(steps=plan.image_steps, warmup_steps=plan.image_steps // 10)
        )
        model, metrics = fit_image_codec(config, seed=plan.seed, settings=settings, device=plan.device)
        with torch.inference_mode():
            codes = {spec: list(model.encode(images.render(spec))) for spec in pictures()}
        return {"state": model.state_dict(), "codes": codes, "metrics": metrics}

    image = stages.cached("image", [plan.image_steps, configs["image"]], make_images)

    def encode_pictures(specs: Collection[ImageSpec]) -> dict[ImageSpec, list[int]]:
        """The codes of pictures the image stage did not encode (the drills'), by its model."""
        model = ImageDetokenizer(read_config(config_path(assets_dir, "image"), ImageCodecConfig))
        model.load_state_dict(image["state"])
        model.eval()
        with torch.inference_mode():
            return {spec: model.encode(images.render(spec)) for spec in specs}

    def make_corpus() -> dict:
        # Drills train only (early stopping judges whole dialogues); their seeds are apart from the dialogues'.
        about_pictures = domain.picture_drills(plan.picture_drills, seed=plan.seed + 3)
        new_pictures = {drill.picture for drill in about_pictures} - set(image["codes"])
        media = _CachedMedia(speech, {**image["codes"], **encode_pictures(new_pictures)}, tunes["tokens"])
        limit = read_config(config_path(assets_dir, "lm"), LMConfig).max_positions
        corpus: dict = {"dropped_too_long": 0}
        for split in ("train", "valid"):
            sequences = [seq for d in dialogues[split] for seq in encode_dialogue(d, vocab, media)]
            kept = [seq for seq in sequences if len(seq.ids) <= limit]
            corpus["dropped_too_long"] += len(sequences) - len(kept)
            corpus[split] = kept
        drills = [
            encode_drill(drill, vocab) for drill in domain.knowledge_drills(plan.knowledge_drills, seed=plan.seed + 2)
        ]
        drills += [encode_drill(drill, vocab, media) for drill in about_pictures]
        corpus["drills"] = len(drills)
        corpus["picture_drills"] = len(about_pictures)
        corpus["train"] += drills
        log.info(
            "corpus: %d train (%d of them drills) / %d valid sequences, %d longer than %d tokens dropped",
            len(corpus["train"]),
            len(drills),
            len(corpus["valid"]),
            corpus["dropped_too_long"],
            limit,
        )
        return corpus

    corpus = stages.cached(
        "corpus",
        [configs["lm"], vocab.text_tokenizer.to_dict(), plan.knowledge_drills, plan.picture_drills],
        make_corpus,
    )

    def make_lm() -> dict:
        lm_config = read_config(config_path(assets_dir, "lm"), LMConfig)
        speech_range = vocab.range_of(Modality.SPEECH)
        model, metrics = train_lm(
            lm_config, corpus["train"], corpus["valid"], (speech_range.first_id, speech_range.n_codes), lm_settings
        )
        return {"state": model.state_dict(), "metrics": metrics}

    lm_settings = LMTrainingConfig(
        max_steps=plan.lm_steps, max_epochs=plan.lm_epochs, seed=plan.seed, device=plan.device
    )
    lm = stages.cached("lm", [configs["lm"], {**dataclasses.asdict(lm_settings), "device": None}], make_lm)

    # Export: the weights next to the configs (our checkpoint format, ``assistant.models.checkpoint``), then a strict
    # reload of everything just written through the loader every caller uses.
    for name, state in (
        ("codec", speech["codec_state"]),
        ("image", image["state"]),
        ("music", tunes["state"]),
        ("acoustic", acoustic["state"]),
        ("lm", lm["state"]),
    ):
        save_weights(assets_dir, name, state)
    acoustic["bank"].to_json(assets_dir / "voices.json")
    load_models(ModelSpec(assets_dir=str(assets_dir)))

    summary = {
        "plan": dataclasses.asdict(plan),
        "voices": {
            "train": [v.name for v in train_voices],
            "valid": [v.name for v in valid_voices],
            "heldout": [v.name for v in voices.HELDOUT_VOICES],
            "assistant": voices.ASSISTANT_VOICE.name,
        },
        "stage_minutes": stages.timings,
        "total_minutes": round((time.monotonic() - started) / 60, 2),
        "sequences": {
            **{split: len(corpus[split]) for split in ("train", "valid")},
            "drills": corpus["drills"],
            "picture_drills": corpus["picture_drills"],
        },
        "sequences_dropped_too_long": corpus["dropped_too_long"],
        "metrics": {
            "speech_codec": speech["codec_metrics"],
            "image": image["metrics"],
            "music": tunes["metrics"],
            "acoustic": acoustic["metrics"],
            "lm": lm["metrics"],
        },
    }
    (assets_dir / "training.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    return summary
