"""The whole `train-mini` -> `eval-mini` path on a tiny plan: every stage runs, the export loads strictly through
`load_models`, a second run reuses the stage cache, and the evaluation judges every task family."""

import dataclasses
import json
import shutil

import pytest

from assistant.models.bundle import MODEL_NAMES
from assistant.models.embedded import EMBEDDED_DIR
from assistant.models.loading import ModelSpec, load_models
from training.evaluate import EvalPlan, format_table, run_eval
from training.pipeline import TrainPlan, run_training

pytestmark = pytest.mark.slow

TINY = TrainPlan(
    train_dialogues=120,
    valid_dialogues=16,
    valid_voices=2,
    codec_fit_utterances=120,
    codec_steps=20,
    codec_residual_frames=4000,
    image_steps=20,
    acoustic_steps=10,
    acoustic_utterances=120,
    lm_steps=10,
    knowledge_drills=50,
    picture_drills=30,
    music_max_frames=2000,
    threads=1,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    assets = tmp_path_factory.mktemp("assets")
    shutil.copytree(
        EMBEDDED_DIR,
        assets,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("*.safetensors", "voices.json", "training.json"),
    )
    lm = json.loads((assets / "lm.json").read_text())
    lm.update(hidden_size=32, intermediate_size=64, num_layers=1)
    (assets / "lm.json").write_text(json.dumps(lm))
    work = tmp_path_factory.mktemp("work")
    summary = run_training(TINY, assets, work)
    return assets, work, summary


def test_training_exports_weights_that_load_strictly(trained):
    assets, _, summary = trained
    bundle = load_models(ModelSpec(assets_dir=str(assets)))
    assert set(bundle.weights_loaded) == set(MODEL_NAMES)
    assert bundle.voices is not None and bundle.voices.default == summary["voices"]["assistant"]
    assert set(summary["stage_minutes"]) == {"dialogues", "speech", "music", "acoustic", "image", "corpus", "lm"}
    written = json.loads((assets / "training.json").read_text())
    drills = written["sequences"]
    assert drills["train"] > drills["drills"] == TINY.knowledge_drills + TINY.picture_drills
    assert drills["picture_drills"] == TINY.picture_drills
    assert written["metrics"]["lm"]["steps"] > 0
    assert not set(written["voices"]["heldout"]) & set(written["voices"]["train"] + written["voices"]["valid"])


def test_second_run_reuses_every_stage(trained):
    assets, work, _ = trained
    again = run_training(TINY, assets, work)
    assert again["stage_minutes"] == {}


def test_a_change_of_the_lm_budget_retrains_only_the_lm(trained):
    assets, work, _ = trained
    again = run_training(dataclasses.replace(TINY, lm_steps=5), assets, work)
    assert set(again["stage_minutes"]) == {"lm"}


def test_a_change_of_the_drill_count_rebuilds_only_the_corpus_and_the_lm(trained):
    assets, work, _ = trained
    again = run_training(dataclasses.replace(TINY, knowledge_drills=20), assets, work)
    assert set(again["stage_minutes"]) == {"corpus", "lm"}
    assert again["sequences"]["drills"] == 20 + TINY.picture_drills
    again = run_training(dataclasses.replace(TINY, knowledge_drills=20, picture_drills=5), assets, work)
    assert set(again["stage_minutes"]) == {"corpus", "lm"}
    assert again["sequences"]["picture_drills"] == 5


def test_evaluation_judges_every_family(trained, tmp_path):
    assets, _, _ = trained
    result = run_eval(EvalPlan(per_family=1, threads=1, codec=False), assets, tmp_path)
    families = result["summary"]["families"]
    assert {"arithmetic", "draw", "play", "image_in", "multi_output", "follow_up"} <= set(families)
    assert result["summary"]["overall"]["errors"] == 0
    assert (tmp_path / "results.json").is_file()
    assert "ALL" in format_table(result["summary"])
    for turn in result["turns"]:
        assert turn["ceiling_correct"] is not None  # the judge heard espeak's own rendering of every answer
