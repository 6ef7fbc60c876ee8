import numpy as np
import pytest
import torch

from assistant.decoding.maskgit import UnmaskSchedule, fill_acoustic_levels
from assistant.models.soundstorm import SoundStorm, SoundStormConfig
from training.train_acoustic import (
    IGNORE,
    AcousticTrainingConfig,
    ExampleSampler,
    build_voice_bank,
    evaluate_acoustic_decoder,
    evaluate_batches,
    fill_like_engine,
    level2_mask,
    masked_inputs,
    mean_codeword_baseline,
    split_by_voice,
    train_acoustic_decoder,
)

K = 16
TINY = SoundStormConfig.tiny(n_q=4, codebook_size=K, semantic_vocab=K, depth=1, ff_mult=2, sdpa=True)


class RecordingDecoder(SoundStorm):
    """Records what every model call sees."""

    def __init__(self, config: SoundStormConfig) -> None:
        super().__init__(config)
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def trunk(self, semantic, acoustic):
        self.calls.append((semantic.clone(), acoustic.clone()))
        return super().trunk(semantic, acoustic)


def test_training_inputs_equal_what_fill_acoustic_levels_feeds_the_model():
    torch.manual_seed(0)
    model = RecordingDecoder(TINY).eval()
    prompt, context = torch.randint(0, K, (4, 6)), torch.randint(0, K, (4, 3))
    semantic = torch.randint(0, K, (9,))
    schedule = UnmaskSchedule(level2_steps=3)
    out = fill_acoustic_levels(
        model, semantic, prompt=prompt, context=context, schedule=schedule, generator=torch.Generator().manual_seed(1)
    )
    codes = torch.cat([prompt, context, out], dim=1)  # what the fill ends with: [n_q, P + T]
    num_prefix = 9
    assert len(model.calls) == schedule.forward_passes(4) == 6
    for index, (seen_semantic, seen_acoustic) in enumerate(model.calls):
        level = 0 if index <= schedule.level2_steps else index - schedule.level2_steps
        mask = seen_acoustic[0, level, num_prefix:] == TINY.mask_id  # the positions this pass predicts
        assert mask.any()
        if level > 0:
            assert mask.all()  # levels 3..n_q are filled in one pass, fully masked
        condition, acoustic = masked_inputs(codes, num_prefix, level, mask, TINY.mask_id)
        assert torch.equal(condition, seen_semantic[0])
        assert torch.equal(acoustic, seen_acoustic[0])


def test_masked_inputs_layout():
    codes = torch.arange(4 * 7).view(4, 7) % K
    condition, acoustic = masked_inputs(codes, 3, 1, torch.tensor([True, False, True, False]), K)
    assert torch.equal(condition, codes[0])
    assert torch.equal(acoustic[:, :3], codes[1:, :3])  # prefix intact on every level
    assert torch.equal(acoustic[0, 3:], codes[1, 3:])  # lower level given
    assert acoustic[1, 3:].tolist() == [K, codes[2, 4].item(), K, codes[2, 6].item()]
    assert (acoustic[2, 3:] == K).all()  # higher levels masked
    mask = level2_mask(40, torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and 1 <= int(mask.sum()) <= 40


def _tagged_utterances() -> list[tuple[np.ndarray, str]]:
    """Utterance u: every code is 40 * u + frame index, so a crop tells where it came from. Voice = u // 3."""
    out = []
    for u in range(6):
        length = 20 + 3 * u
        codes = np.tile(40 * u + np.arange(length), (4, 1))
        out.append((codes, f"v{u // 3}"))
    return out


def test_sampler_crops_prompt_from_another_utterance_of_the_voice_and_context_just_before_target():
    config = AcousticTrainingConfig(
        target_frames=(5, 8),
        prompt_frames=(4, 6),
        prompt_probability=1.0,
        context_frames=(2, 3),
        context_probability=1.0,
        level2_probability=0.5,
    )
    sampler = ExampleSampler(_tagged_utterances(), n_q=4, mask_id=1000, config=config, seed=0)
    for _ in range(5):
        batch = sampler.batch(4)
        num_target = batch.targets.shape[1]
        num_context = batch.num_context
        assert batch.semantic.shape[1] == batch.num_prefix + num_target
        assert 5 <= num_target <= 8 and 2 <= num_context <= 3
        for row in range(4):
            semantic = batch.semantic[row]
            num_prompt = batch.num_prefix - num_context
            prompt, window = semantic[:num_prompt], semantic[num_prompt:]
            target_utt, prompt_utt = int(window[0]) // 40, int(prompt[0]) // 40
            assert prompt_utt != target_utt and prompt_utt // 3 == target_utt // 3
            assert torch.equal(window, window[0] + torch.arange(window.numel()))  # context then target, contiguous
            level = int(batch.levels[row])
            acoustic = batch.acoustic[row]
            assert torch.equal(acoustic[:, : batch.num_prefix], semantic[: batch.num_prefix].expand(3, -1))
            masked = acoustic[level, batch.num_prefix :] == 1000
            assert torch.equal(masked, batch.targets[row] != IGNORE)
            assert torch.equal(batch.targets[row][masked], semantic[batch.num_prefix :][masked])
            assert (acoustic[level + 1 :, batch.num_prefix :] == 1000).all()
            if level > 0:
                assert masked.all()


def _synthetic_corpus(n: int = 24, frames: int = 30, seed: int = 0) -> list[tuple[np.ndarray, str]]:
    """Level 1 random; level q = (level 1 + voice offset * q) mod K: learnable from level 1 and the prompt."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        voice = i % 3
        first = rng.integers(0, K, frames)
        codes = np.stack([first] + [(first + (voice + 1) * q) % K for q in range(1, 4)])
        out.append((codes, f"v{voice}"))
    return out


@pytest.mark.slow  # training steps: > 1.5 s
def test_tiny_training_reduces_loss_within_its_step_budget():
    torch.manual_seed(0)
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])  # the first optimiser imports torch._dynamo (seconds)
    corpus = _synthetic_corpus()
    train, valid = split_by_voice(corpus, 0.2, seed=0)
    assert {v for _, v in valid} == {"v0", "v1", "v2"} and len(train) + len(valid) == len(corpus)
    config = AcousticTrainingConfig(
        max_steps=75,
        patience=0,  # never stop early: the whole budget
        batch_size=8,
        lr=1e-2,
        warmup_steps=5,
        target_frames=(8, 16),
        prompt_frames=(4, 8),
        context_frames=(2, 4),
        eval_every=10,
        valid_batches=2,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster
    try:
        model, metrics = train_acoustic_decoder(train, TINY, config, valid=valid)
    finally:
        torch.set_num_threads(threads)
    history = metrics["history"]
    assert metrics["steps"] == 75 and not metrics["stopped_early"]
    assert [record["step"] for record in history] == [10, 20, 30, 40, 50, 60, 70, 75]  # and one after the last step
    assert config.min_lr <= history[-1]["lr"] < 1.1 * config.min_lr  # the cosine spans max_steps
    assert metrics["best_valid_loss"] < history[0]["valid_loss"]
    assert not model.training and set(metrics["valid_accuracy"]) <= {2, 3, 4}
    fresh = evaluate_batches(SoundStorm(TINY).eval(), [ExampleSampler(valid, 4, K, config, 3).batch(8)])
    trained = evaluate_batches(model, [ExampleSampler(valid, 4, K, config, 3).batch(8)])
    assert trained["loss"] < fresh["loss"] - 0.1


def test_training_stops_early_and_keeps_the_best_validation_weights():
    """Random codes: nothing to learn past the first steps, and a high learning rate makes it worse, so the validation
    loss stops improving and training stops ``patience`` passes after its best one, with that pass's weights."""
    rng = np.random.default_rng(0)
    corpus = [(rng.integers(0, K, (4, 24)), f"v{i % 2}") for i in range(8)]
    train, valid = corpus[:6], corpus[6:]
    config = AcousticTrainingConfig(
        max_steps=20,
        patience=2,
        batch_size=4,
        lr=0.1,
        warmup_steps=2,
        target_frames=(8, 12),
        prompt_frames=(4, 6),
        context_frames=(2, 4),
        eval_every=2,
        valid_batches=1,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, metrics = train_acoustic_decoder(train, TINY, config, valid=valid)
    finally:
        torch.set_num_threads(threads)
    history = metrics["history"]
    assert metrics["stopped_early"] and metrics["steps"] < config.max_steps
    assert metrics["steps"] - metrics["best_step"] == config.patience * config.eval_every
    losses = [record["valid_loss"] for record in history]
    assert metrics["best_valid_loss"] == min(losses) < min(losses[-config.patience :])
    assert history[losses.index(min(losses))]["step"] == metrics["best_step"]
    assert {"seconds", "frames_per_s", "parameters", "valid_accuracy"} <= set(metrics)
    assert metrics["parameters"] == sum(p.numel() for p in SoundStorm(TINY).parameters())
    # the returned weights are the best pass's: the same validation batches give its loss again
    assert not model.training and model.device.type == "cpu"
    assert all(p.dtype == torch.float32 for p in model.parameters())
    batches = [ExampleSampler(valid, 4, K, config, seed=config.seed + 1).batch(config.batch_size)]
    assert evaluate_batches(model, batches)["loss"] == pytest.approx(metrics["best_valid_loss"], abs=1e-4)


def test_training_config_validates_the_step_budget_and_the_device():
    with pytest.raises(ValueError, match="max_steps"):
        AcousticTrainingConfig(max_steps=0)
    with pytest.raises(ValueError, match="patience"):
        AcousticTrainingConfig(patience=-1)
    with pytest.raises(ValueError, match="device"):
        train_acoustic_decoder(_synthetic_corpus(n=6), TINY, AcousticTrainingConfig(device="tpu"))


def test_fill_like_engine_passes_the_previous_chunk_as_context():
    model = RecordingDecoder(TINY).eval()
    semantic, prompt = np.arange(40) % K, np.ones((4, 5), dtype=np.int64)
    codes = fill_like_engine(
        model,
        semantic,
        prompt,
        schedule=UnmaskSchedule(level2_steps=1),
        first_chunk_frames=10,
        chunk_frames=20,
        context_frames=8,
    )
    assert codes.shape == (4, 40) and codes.dtype == np.int64 and np.array_equal(codes[0], semantic)
    per_chunk = 1 + 1 + 2  # (steps + 1) level-2 passes, then levels 3 and 4
    assert len(model.calls) == 3 * per_chunk
    firsts = [call[0][0] for call in model.calls[::per_chunk]]  # condition rows: prompt | context | chunk
    assert [len(row) for row in firsts] == [5 + 10, 5 + 8 + 20, 5 + 8 + 10]  # chunks 10, 20, 10
    assert torch.equal(firsts[1][5:13], torch.as_tensor(semantic[2:10]))  # context = last 8 frames of chunk 1
    assert torch.equal(firsts[2][5:13], torch.as_tensor(semantic[22:30]))


def test_voice_bank_prompts_skip_edge_silence():
    rng = np.random.default_rng(0)
    by_voice = {}
    for voice in ("a", "b"):
        group = []
        for _ in range(3):
            speech = rng.integers(1, K, (4, 30))
            silence = np.zeros((4, 5), dtype=np.int64)
            group.append(np.concatenate([silence, speech, silence], axis=1))
        by_voice[voice] = group
    bank = build_voice_bank(by_voice, n_q=4, prompt_frames=20, default="b", codebook_size=K)
    assert bank.names == ("a", "b") and bank.default == "b"
    for voice in bank.names:
        prompt = bank.prompt(voice)
        assert prompt.shape == (4, 20) and (prompt[0] != 0).all()
    long = build_voice_bank(by_voice, n_q=4, prompt_frames=100, default="a", codebook_size=K)
    assert long.prompt("a").shape == (4, 30)  # the whole trimmed speech when no utterance is long enough
    with pytest.raises(ValueError, match="n_q=3"):
        build_voice_bank(by_voice, n_q=3, prompt_frames=20, default="a", codebook_size=K)


def test_evaluation_reports_accuracy_mel_distance_and_voice_confusion():
    corpus = _synthetic_corpus(n=3, frames=10)
    by_voice = {}
    for codes, voice in corpus:
        by_voice.setdefault(voice, []).append(codes)
    bank = build_voice_bank(
        by_voice,
        n_q=4,
        prompt_frames=10,
        default="v0",
        codebook_size=K,
        silent=lambda codes: np.zeros(codes.shape[1], dtype=bool),
    )
    codebooks = np.random.default_rng(0).normal(size=(4, K, 5))
    baseline = mean_codeword_baseline(codebooks, np.array([1, 2]))
    assert np.allclose(baseline[0], codebooks[0, 1] + codebooks[1:].mean(axis=1).sum(axis=0))
    report = evaluate_acoustic_decoder(
        SoundStorm(TINY).eval(),
        corpus,
        bank,
        codebooks,
        schedule=UnmaskSchedule(level2_steps=1),
        cross_voice_utterances=1,
    )
    assert set(report["token_accuracy"]) == {2, 3, 4}
    assert all(0.0 <= a <= 1.0 for a in report["token_accuracy"].values())
    assert report["mel_rmse_decoded"] > 0 and report["mel_rmse_mean_codeword"] > 0
    counts = np.array(report["voice_confusion"]["counts"])
    assert counts.shape == (3, 3) and counts.sum() == 3 * 3  # one utterance per voice x three prompts
    assert 0.0 <= report["voice_selection_accuracy"] <= 1.0 and 0.0 <= report["voice_selection_original"] <= 1.0
