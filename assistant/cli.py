"""``assistant chat``: one turn with the in-process engine (same engine as the server; no Ray, no WebRTC).

    assistant chat --input question.wav --out DIR [--seed N] [--voice NAME]
    assistant chat --text "what is two plus three" --out DIR
    assistant chat --image picture.png [--text "what is in this picture" | --input question.wav] --out DIR
    assistant chat --family anygpt --assets /models/anygpt --device cuda --text "hello" --out DIR

Models: ``--family embedded`` (default: the package's tiny CPU models, or ``--assets DIR``) or ``--family anygpt``
(``--assets`` is the AnyGPT weights root laid out as on the hub; ``--lm-dir``, ``--dtype``, ``--device``), loaded
once in this process by ``assistant.models.loading.load_backends``.

Writes ``DIR/answer.wav`` (every audio frame of the reply, speech and music, 16 kHz), ``DIR/reply.txt``
(transcript and reply text), ``DIR/image_{i}.png`` and ``DIR/music_{i}.wav``; prints the text as it streams.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import numpy as np

from assistant.audio import SAMPLE_RATE, AudioFormatError, pcm16_to_float, read_wav, write_wav
from assistant.models.loading import DTYPES, MODEL_FAMILIES, ModelSpec, load_backends, load_vocab_and_voices


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="assistant", description="AnyGPT-style any-to-any assistant")
    sub = parser.add_subparsers(dest="command", required=True)
    chat = sub.add_parser("chat", help="answer one spoken or typed question")
    chat.add_argument("--input", type=Path, help="WAV (or any soundfile-readable) file with the spoken question")
    chat.add_argument("--text", help="typed question")
    chat.add_argument("--image", type=Path, help="PNG or JPEG picture that goes with the question")
    chat.add_argument("--voice", help="voice of the spoken reply (a name from the models' voice bank)")
    chat.add_argument("--out", type=Path, required=True, help="output directory")
    chat.add_argument("--seed", type=int, default=0, help="seed of the model initialisation and of sampling")
    chat.add_argument(
        "--family", choices=MODEL_FAMILIES, default="embedded", help="model family (default: %(default)s)"
    )
    chat.add_argument(
        "--assets",
        type=Path,
        default=None,
        help="embedded: model assets directory (default: the package's own); anygpt: the weights root",
    )
    chat.add_argument(
        "--lm-dir", default="AnyGPT-chat", help="anygpt: the LLM folder under --assets (default: %(default)s)"
    )
    chat.add_argument(
        "--dtype",
        choices=DTYPES,
        default=None,
        help="anygpt: weights dtype (default: float16 on CUDA, float32 elsewhere)",
    )
    chat.add_argument(
        "--device", default="cpu", help="anygpt: torch device, e.g. cuda or cuda:1 (default: %(default)s)"
    )
    chat.add_argument(
        "--voices-file",
        type=Path,
        default=None,
        help="anygpt: a voices.json made by `anystream make-voices` (the names --voice picks from)",
    )
    return parser


def model_spec(args: argparse.Namespace) -> ModelSpec:
    """The models ``assistant chat`` loads (raises ValueError for a combination that cannot load)."""
    if args.family == "embedded":
        # the embedded family is a CPU float32 family whose voices live beside its assets: say so, never ignore
        unset = {
            "--dtype": args.dtype in (None, "float32"),
            "--device": args.device == "cpu",
            "--voices-file": args.voices_file is None,
            "--lm-dir": args.lm_dir == "AnyGPT-chat",
        }
        given = [flag for flag, is_unset in unset.items() if not is_unset]
        if given:
            raise ValueError(
                f"{', '.join(given)}: for --family anygpt only (the embedded family runs on the CPU "
                "in float32 and reads voices.json from its assets folder)"
            )
    dtype = args.dtype or ("float16" if str(args.device).startswith("cuda") else "float32")
    return ModelSpec(
        family=args.family,
        assets_dir=str(args.assets) if args.assets is not None else None,
        seed=args.seed,
        lm_dir=args.lm_dir,
        dtype=dtype,
        device=args.device,
        voices_file=str(args.voices_file) if args.voices_file is not None else None,
    )


async def _chat(args: argparse.Namespace, spec: ModelSpec, audio: np.ndarray | None, picture: bytes | None) -> int:
    # torch-heavy imports only once the input is known to be good
    from assistant.pipeline.engine import AssistantEngine, EngineConfig, UserTurn
    from assistant.pipeline.outputs import (
        AudioFrame,
        ImageOutput,
        MusicOutput,
        ReplyTextDelta,
        TranscriptDelta,
        TurnError,
        TurnFinished,
    )
    from assistant.protocol import FinishReason

    try:
        vocab, voices = load_vocab_and_voices(spec)
        backends = load_backends(spec)
    except (OSError, ValueError, ImportError) as exc:  # a missing or damaged weights folder, a missing extra
        print(f"error: cannot load the {spec.family} models: {exc}", file=sys.stderr)
        return 2
    engine = AssistantEngine(backends, vocab, EngineConfig(), voices=voices)
    try:
        session = engine.new_session(args.voice)
    except (KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    frames: list[np.ndarray] = []
    transcript: list[str] = []
    reply: list[str] = []
    section = None
    status = 0
    try:
        async for item in session.respond(UserTurn(audio=audio, text=args.text, image=picture)):
            if isinstance(item, AudioFrame):
                frames.append(item.pcm)
            elif isinstance(item, (TranscriptDelta, ReplyTextDelta)):
                name = "transcript" if isinstance(item, TranscriptDelta) else "reply"
                if section != name:
                    print(f"\n[{name}] ", end="")
                    section = name
                print(item.text, end="", flush=True)
                (transcript if name == "transcript" else reply).append(item.text)
            elif isinstance(item, ImageOutput):
                path = out / f"image_{item.index}.png"
                path.write_bytes(item.png)
                print(f"\n[image] {path} ({item.width}x{item.height})", flush=True)
            elif isinstance(item, MusicOutput):
                path = out / f"music_{item.index}.wav"
                write_wav(path, item.wave, SAMPLE_RATE)
                print(f"\n[music] {path} ({item.duration_s:.2f} s)", flush=True)
            elif isinstance(item, TurnError):
                print(f"\nerror: {item.message}", file=sys.stderr)
                status = 1
            elif isinstance(item, TurnFinished):
                print(f"\n[turn finished: {item.reason.value}]", flush=True)
                if item.reason is FinishReason.ERROR:
                    status = 1
    finally:
        await session.close()
        close_lm = getattr(backends.lm, "close", None)  # the batched LM engine's thread
        if close_lm is not None:
            close_lm()

    wave = pcm16_to_float(np.concatenate(frames)) if frames else np.zeros(0, dtype=np.float32)
    write_wav(out / "answer.wav", wave, SAMPLE_RATE)
    text = ""
    if transcript:
        text += "transcript: " + "".join(transcript).strip() + "\n"
    text += "reply: " + "".join(reply).strip() + "\n"
    (out / "reply.txt").write_text(text, encoding="utf-8")
    print(f"[wrote] {out / 'answer.wav'} ({wave.size / SAMPLE_RATE:.2f} s), {out / 'reply.txt'}")
    return status


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.input is None and args.text is None and args.image is None:
        print("error: give a question: --input WAV, --text TEXT and/or --image PICTURE", file=sys.stderr)
        return 2
    audio = picture = None
    if args.image is not None:
        try:
            picture = args.image.read_bytes()
        except OSError as exc:
            print(f"error: cannot read picture {args.image}: {exc.strerror}", file=sys.stderr)
            return 2
        if not picture.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")):
            print(f"error: {args.image} is not a PNG or JPEG picture", file=sys.stderr)
            return 2
    if args.input is not None:
        try:
            audio = read_wav(args.input)
        except AudioFormatError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if not np.isfinite(audio).all():
            print(f"error: audio file {args.input} holds non-finite samples", file=sys.stderr)
            return 2
    if args.text is not None and not args.text.strip():
        print("error: --text is empty", file=sys.stderr)
        return 2
    try:
        spec = model_spec(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_chat(args, spec, audio, picture))


if __name__ == "__main__":
    sys.exit(main())
