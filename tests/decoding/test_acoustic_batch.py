"""Batched acoustic decoding equals per-session decoding: the embedded decoder (the small SoundStorm + MaskGitFill, the
embedded assets) and AnyGPT's SoundStorm loop (AnyGPTFill, a tiny random SoundStorm), through
``ChunkedAcousticDecoder.decode_chunks``."""

import pytest
import torch

from assistant.decoding import maskgit
from assistant.decoding.maskgit import (
    ChunkedAcousticDecoder,
    ChunkRequest,
    MaskGitFill,
    UnmaskSchedule,
    fill_acoustic_levels,
    fill_acoustic_levels_batch,
)
from assistant.decoding.soundstorm_decoding import AnyGPTFill, anygpt_generate
from assistant.models.embedded.speech import MelCodecConfig, MelRVQCodec
from assistant.models.loading import ModelSpec, load_models
from assistant.models.soundstorm import SoundStorm, SoundStormConfig

TINY_K = 32


@pytest.fixture(scope="module")
def embedded() -> ChunkedAcousticDecoder:
    bundle = load_models(ModelSpec(seed=0), ("acoustic", "codec"))
    assert bundle.acoustic_fill is None  # the embedded family decodes with the default MaskGitFill
    return ChunkedAcousticDecoder(bundle.acoustic, bundle.codec, UnmaskSchedule(), context_frames=25)


@pytest.fixture(scope="module")
def anygpt_tiny() -> ChunkedAcousticDecoder:
    model = SoundStorm(SoundStormConfig.tiny(seed=4)).eval()
    codec = MelRVQCodec(MelCodecConfig(n_q=8, codebook_size=TINY_K, griffin_lim_iters=8))
    return ChunkedAcousticDecoder(model, codec, context_frames=6, fill=AnyGPTFill())


def _sessions(decoder: ChunkedAcousticDecoder, count: int, seed: int):
    """Per session: semantic chunks (first shorter, as the engine makes them) and a voice prompt; two prompt lengths,
    so that a round holds several shape groups."""
    gen = torch.Generator().manual_seed(seed)
    k = decoder.codebook_size
    sessions = []
    for s in range(count):
        sizes = [4, 9, 9, 5] if decoder.context_frames < 25 else [10, 25, 25, 7]
        chunks = [torch.randint(0, k, (n,), generator=gen) for n in sizes]
        prompt = torch.randint(0, k, (decoder.n_q, 12 if s % 3 else 7), generator=gen)
        sessions.append((chunks, prompt))
    return sessions


def _next_context(decoder, context, codes):
    joined = codes if context is None else torch.cat([context, codes], dim=1)
    return joined[:, -decoder.context_frames :]


def _alone(decoder, chunks, prompt, seeds):
    """One session decoded by itself, chunk after chunk."""
    out, context = [], None
    for chunk, seed in zip(chunks, seeds, strict=True):
        codes, wave = decoder.decode_chunk(chunk, context, prompt, torch.Generator().manual_seed(seed))
        out.append((codes, wave))
        context = _next_context(decoder, context, codes)
    return out


def _batched(decoder, sessions, seeds):
    """All sessions at once: round r decodes chunk r of every session in one decode_chunks call."""
    contexts = [None] * len(sessions)
    out = [[] for _ in sessions]
    for r in range(len(sessions[0][0])):
        requests = [
            ChunkRequest(chunks[r], contexts[s], prompt, torch.Generator().manual_seed(seeds[s][r]))
            for s, (chunks, prompt) in enumerate(sessions)
        ]
        for s, (codes, wave) in enumerate(decoder.decode_chunks(requests)):
            out[s].append((codes, wave))
            contexts[s] = _next_context(decoder, contexts[s], codes)
    return out


@pytest.mark.parametrize("which", ["embedded", "anygpt_tiny"])
@pytest.mark.slow  # 5 sessions x 4 chunks, alone and batched, with real or SoundStorm weights: a minute
def test_batched_chunks_equal_per_session_decoding(which, request):
    decoder: ChunkedAcousticDecoder = request.getfixturevalue(which)
    sessions = _sessions(decoder, 5, seed=1)
    seeds = [[1000 * s + r for r in range(4)] for s in range(5)]
    batched = _batched(decoder, sessions, seeds)
    for s, (chunks, prompt) in enumerate(sessions):
        alone = _alone(decoder, chunks, prompt, seeds[s])
        for (codes_a, wave_a), (codes_b, wave_b), chunk in zip(alone, batched[s], chunks, strict=True):
            assert codes_b.shape == (decoder.n_q, chunk.numel()) and torch.equal(codes_b[0], chunk)
            assert torch.equal(codes_a, codes_b)
            assert wave_b.shape == (chunk.numel() * decoder.hop,)
            torch.testing.assert_close(wave_a, wave_b, rtol=1e-4, atol=1e-4 * float(wave_a.abs().max()) + 1e-6)
    # the noise really is per chunk: other seeds give other codes (else the equality above would prove nothing)
    other = _alone(decoder, sessions[0][0], sessions[0][1], [7, 8, 9, 10])
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(other, batched[0], strict=True))


def _counting(model: SoundStorm) -> SoundStorm:
    """``model`` recording the batch size of every pass through its conformer in ``model.batch_sizes``."""
    model.batch_sizes = []
    inner = model.trunk

    def trunk(semantic, acoustic):
        model.batch_sizes.append(semantic.shape[0])
        return inner(semantic, acoustic)

    model.trunk = trunk
    return model


class _CountingCodec(MelRVQCodec):
    def __init__(self, config):
        super().__init__(config)
        self.decoded_batches: list[int] = []

    def decode_batch(self, codes):
        self.decoded_batches.append(codes.shape[0])
        return super().decode_batch(codes)


@pytest.mark.slow  # > 1.5 s
def test_equal_shapes_share_one_fill_call_and_one_codec_decode_other_shapes_run_apart():
    inner = SoundStorm(SoundStormConfig.tiny(n_q=4, codebook_size=TINY_K, depth=1, sdpa=True)).eval()
    model = _counting(inner)
    codec = _CountingCodec(MelCodecConfig(n_q=4, codebook_size=TINY_K, griffin_lim_iters=4))
    schedule = UnmaskSchedule(level2_steps=2)
    decoder = ChunkedAcousticDecoder(model, codec, schedule, context_frames=3, fill=MaskGitFill(schedule))
    gen = torch.Generator().manual_seed(0)

    def req(t, context_frames, prompt_frames):
        context = torch.randint(0, TINY_K, (4, context_frames), generator=gen) if context_frames else None
        prompt = torch.randint(0, TINY_K, (4, prompt_frames), generator=gen) if prompt_frames else None
        return ChunkRequest(
            torch.randint(0, TINY_K, (t,), generator=gen), context, prompt, torch.Generator().manual_seed(t)
        )

    # three shapes: (6, 3, 5) x3 (a longer context is trimmed to 3), (6, 0, 5) x1, (4, 3, 5) x2
    requests = [req(6, 3, 5), req(6, 0, 5), req(6, 8, 5), req(4, 3, 5), req(6, 3, 5), req(4, 3, 5)]
    results = decoder.decode_chunks(requests)
    passes = schedule.forward_passes(4)
    assert len(model.batch_sizes) == 3 * passes
    assert sorted(model.batch_sizes[::passes]) == [1, 2, 3] and codec.decoded_batches == [3, 1, 2]
    for request, (codes, wave) in zip(requests, results, strict=True):  # answers in request order
        assert torch.equal(codes[0], request.semantic) and wave.shape == (request.semantic.numel() * 320,)


def test_fill_batch_rows_equal_single_fills_and_check_their_generators():
    model = SoundStorm(SoundStormConfig.tiny(n_q=4, codebook_size=TINY_K, depth=1, sdpa=True)).eval()
    gen = torch.Generator().manual_seed(3)
    semantic = torch.randint(0, TINY_K, (3, 11), generator=gen)
    prompt = torch.randint(0, TINY_K, (3, 4, 5), generator=gen)
    batch = fill_acoustic_levels_batch(
        model, semantic, prompt=prompt, generators=[torch.Generator().manual_seed(i) for i in range(3)]
    )
    for i in range(3):
        alone = fill_acoustic_levels(model, semantic[i], prompt=prompt[i], generator=torch.Generator().manual_seed(i))
        assert torch.equal(batch[i], alone)
    with pytest.raises(ValueError, match="generators"):
        fill_acoustic_levels_batch(model, semantic, generators=[None])
    with pytest.raises(ValueError, match="prompt"):
        fill_acoustic_levels_batch(model, semantic, prompt=prompt[:2])


@pytest.mark.slow  # > 1.5 s
def test_anygpt_generate_rows_equal_single_rows(anygpt_tiny):
    model = anygpt_tiny.model
    gen = torch.Generator().manual_seed(5)
    semantic = torch.randint(0, TINY_K, (3, 9), generator=gen)
    prompt = torch.randint(0, TINY_K, (3, 6, 8), generator=gen)  # [B, Tp, n_q]
    batch = anygpt_generate(model, semantic, prompt, generator=[torch.Generator().manual_seed(i) for i in range(3)])
    for i in range(3):
        alone = anygpt_generate(
            model, semantic[i : i + 1], prompt[i : i + 1], generator=torch.Generator().manual_seed(i)
        )
        assert torch.equal(batch[i : i + 1], alone)


def test_a_bad_chunk_is_refused_before_it_joins_a_batch(embedded):
    good = ChunkRequest(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="semantic"):
        embedded.decode_chunks([good, ChunkRequest(torch.full((5,), 5000))])
    with pytest.raises(ValueError, match="prompt"):
        embedded.check_request(ChunkRequest(torch.zeros(5, dtype=torch.long), prompt=torch.zeros(3, 4)))


def test_gumbel_sampling_follows_the_generator_and_the_temperature():
    """Regression: the Gumbel noise was NaN (a misplaced minus sign), so every sampling pass was an argmax."""
    logits = torch.randn(2, 40, TINY_K, generator=torch.Generator().manual_seed(0))
    draws = [maskgit._sample(logits, TINY_K, 5.0, [torch.Generator().manual_seed(s)] * 2)[0] for s in (1, 2)]
    assert not torch.equal(draws[0], draws[1])  # hot sampling depends on the noise
    cold, confidence = maskgit._sample(logits, TINY_K, 1e-4, [torch.Generator().manual_seed(1)] * 2)
    assert torch.equal(cold, logits.argmax(dim=-1))  # a cold one is the argmax
    assert torch.isfinite(confidence).all()
    top1, _ = maskgit._sample(logits, 1, 5.0, [None, None])  # top-k of 1 leaves no choice
    assert torch.equal(top1, logits.argmax(dim=-1))
