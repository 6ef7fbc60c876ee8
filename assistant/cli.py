"""``assistant chat``: one turn with the in-process engine (same engine as the server; no Ray, no WebRTC).

    assistant chat --input question.wav --out DIR [--seed N] [--voice NAME]
    assistant chat --text "what is two plus three" --out DIR
    assistant chat --image picture.png [--text "what is in this picture" | --input question.wav] --out DIR

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
    chat.add_argument("--assets", type=Path, default=None, help="model assets directory (default: embedded)")
    return parser


async def _chat(args: argparse.Namespace, audio: np.ndarray | None, picture: bytes | None) -> int:
    # torch-heavy imports only once the input is known to be good
    from assistant.models.bundle import load_embedded
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
    from assistant.protocol import FinishReason

    bundle = load_embedded(args.assets, seed=args.seed)
    engine = AssistantEngine(local_backends(bundle, seed=args.seed), bundle.vocab, EngineConfig(),
                             voices=bundle.voices)
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
    return asyncio.run(_chat(args, audio, picture))


if __name__ == "__main__":
    sys.exit(main())
