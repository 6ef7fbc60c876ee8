"""The shared building blocks (``assistant.modules``) give bit for bit what each model computed with its own copy
before they were merged: the references below are those copies, written out."""

import math

import pytest
import torch

from assistant.models.embedded.music import MusicCodecConfig, MusicDetokenizer
from assistant.models.embedded.speech import MelCodecConfig, MelRVQCodec
from assistant.modules.quantization import nearest_codes, residual_quantize
from assistant.modules.rotary import apply_rotary, rotary_angles, rotate_half
from assistant.modules.spectral import STFT


def _griffin_lim_as_the_codecs_had_it(magnitude: torch.Tensor, n_fft: int, hop: int, iters: int, momentum: float):
    """The loop both embedded codecs carried (speech: ``mel_to_wave``, music: ``features_to_wave``)."""
    window = torch.hann_window(n_fft, dtype=torch.float32)

    def stft(wave):
        return torch.stft(wave, n_fft, hop, window=window, center=True, pad_mode="constant", return_complex=True)

    def istft(spec, length):
        return torch.istft(spec, n_fft, hop, window=window, center=True, length=length)

    length = magnitude.shape[-1] * hop
    magnitude = torch.cat([magnitude, magnitude[..., -1:]], dim=-1)
    phase = torch.ones_like(magnitude, dtype=torch.complex64)
    previous = torch.zeros_like(phase)
    for _ in range(iters):
        projected = stft(istft(magnitude * phase, length))
        accelerated = projected + momentum * (projected - previous)
        previous = projected
        phase = accelerated / torch.clamp(accelerated.abs(), min=1e-12)
    return istft(magnitude * phase, length)


def test_the_speech_codec_resynthesises_as_before():
    codec = MelRVQCodec(MelCodecConfig(n_q=2, codebook_size=16, griffin_lim_iters=5))
    codec.stft.numpy_griffin_lim = False  # bit for bit: torch's loop (the NumPy one is checked against it below)
    codes = torch.randint(0, 16, (2, 2, 9), generator=torch.Generator().manual_seed(0))  # a batch of two
    log_mel = torch.stack([codec.dequantise(row) for row in codes])  # [2, F, M]
    want = _griffin_lim_as_the_codecs_had_it(codec.mel_to_magnitude(log_mel), 1024, 320, 5, 0.99)
    assert torch.equal(codec.decode_batch(codes), want)
    assert codec.decode(codes[0]).shape == (9 * 320,) and codec.decode(codes[0, :, :0]).shape == (0,)


def test_the_music_codec_resynthesises_as_before():
    codec = MusicDetokenizer(MusicCodecConfig(codebook_size=16, n_fft=1024, griffin_lim_iters=4))
    codec.stft.numpy_griffin_lim = False
    codes = torch.randint(0, 16, (4, 7), generator=torch.Generator().manual_seed(1))
    magnitude = torch.exp(codec.dequantise(codes).float()).T  # [n_freq, T]
    want = torch.clamp(_griffin_lim_as_the_codecs_had_it(magnitude, 1024, 640, 4, 0.99), -1.0, 1.0).numpy()
    assert (codec.decode_codes(codes) == want).all()
    assert STFT(1024, 640).griffin_lim(magnitude[:, :0], 4, 0.99).shape == (0,)


@pytest.mark.parametrize(("hop", "frames", "iters"), [(320, 1, 3), (320, 12, 32), (640, 7, 16)])
def test_griffin_lim_in_numpy_matches_torch(hop, frames, iters):
    """The CPU path (NumPy) against torch's loop: equal up to float rounding carried through the iterations, for
    the speech codec's hop (a 1-frame and a streamed chunk) and the music codec's; a batch decodes row by row."""
    generator = torch.Generator().manual_seed(frames)
    magnitude = torch.rand(3, 513, frames, generator=generator) ** 2 * 20.0  # [B, n_freq, F]
    numpy_stft, torch_stft = STFT(1024, hop), STFT(1024, hop, numpy_griffin_lim=False)
    got = numpy_stft.griffin_lim(magnitude, iters, 0.99)
    want = torch_stft.griffin_lim(magnitude, iters, 0.99)
    assert got.shape == want.shape == (3, frames * hop) and got.dtype == torch.float32
    assert float((got - want).pow(2).mean().sqrt()) <= 0.02 * float(want.pow(2).mean().sqrt())
    row = numpy_stft.griffin_lim(magnitude[1], iters, 0.99)
    assert row.shape == (frames * hop,)
    torch.testing.assert_close(row, got[1], atol=1e-4, rtol=1e-3)
    assert numpy_stft.griffin_lim(magnitude[..., :0], iters, 0.99).shape == (3, 0)


def test_one_rotary_serves_the_conformers_and_the_lm_runner():
    x = torch.randn(2, 3, 11, 16, generator=torch.Generator().manual_seed(2))
    angles = rotary_angles(11, 16, 10000.0, x.device)
    cos, sin = angles.cos(), angles.sin()
    # the embedded decoder's copy: halves by chunk, float32 tables from arange(dtype=float32)
    inv = 1.0 / (10000.0 ** (torch.arange(0, 16, 2, dtype=torch.float32) / 16))
    table = torch.arange(11, dtype=torch.float32)[:, None] * inv[None, :]
    table = torch.cat([table, table], dim=-1)
    assert torch.equal(angles, table)
    first, second = x.chunk(2, dim=-1)
    assert torch.equal(apply_rotary(x, cos, sin), x * table.cos() + torch.cat([-second, first], dim=-1) * table.sin())
    # the LM runner's copy: rotate-half by indexing, in the model's dtype
    half = x.half()
    runner = half * cos.half() + torch.cat((-half[..., 8:], half[..., :8]), dim=-1) * sin.half()
    assert torch.equal(apply_rotary(half, cos.half(), sin.half()), runner)
    assert torch.equal(rotate_half(rotate_half(x)), -x)
    # rotation by position: the norm of each channel pair is kept
    pairs = apply_rotary(x, cos, sin)
    assert torch.allclose(pairs[..., :8] ** 2 + pairs[..., 8:] ** 2, x[..., :8] ** 2 + x[..., 8:] ** 2, atol=1e-5)


def test_nearest_codes_is_the_brute_force_nearest_codeword():
    gen = torch.Generator().manual_seed(3)
    book, vectors = torch.randn(50, 6, generator=gen), torch.randn(300, 6, generator=gen)
    index, distance = nearest_codes(vectors, book, chunk=64)  # several chunks
    brute = ((vectors[:, None, :] - book[None]) ** 2).sum(-1)  # [N, K]
    assert torch.equal(index, brute.argmin(-1))
    assert torch.allclose(distance, brute.min(-1).values, atol=1e-4)
    # the embedded codecs' former search: |c|^2 - 2 v.c, argmin
    assert torch.equal(index, (book.pow(2).sum(-1)[None] - 2.0 * vectors @ book.T).argmin(-1))
    empty, none = nearest_codes(vectors[:0], book)
    assert empty.shape == none.shape == (0,) and empty.dtype == torch.long


@pytest.mark.parametrize("level1", [False, True], ids=["plain", "level1-input"])
def test_residual_quantize_matches_level_by_level_search(level1):
    gen = torch.Generator().manual_seed(4)
    books = torch.randn(3, 20, 5, generator=gen) * torch.tensor([1.0, 0.3, 0.1])[:, None, None]
    vectors = torch.randn(40, 5, generator=gen)
    first = torch.randn(40, 5, generator=gen) if level1 else None
    codes, quantised = residual_quantize(books, vectors, first)
    total = torch.zeros_like(vectors)
    for level in range(3):
        target = first if level == 0 and first is not None else vectors - total
        want = ((target[:, None] - books[level][None]) ** 2).sum(-1).argmin(-1)
        assert torch.equal(codes[level], want)
        total = total + books[level][want]
    assert torch.equal(quantised, total)
    assert residual_quantize(books, vectors[:0])[0].shape == (3, 0)


def test_stft_frames_are_centred_on_the_hop_grid():
    stft = STFT(64, 16)
    wave = torch.sin(2 * math.pi * 0.1 * torch.arange(160))
    spec = stft(wave)
    assert spec.shape == (33, 11) and spec.dtype == torch.complex64
    assert torch.allclose(stft.inverse(spec, 160), wave, atol=1e-5)
