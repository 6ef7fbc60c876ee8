"""Tools for the AnyGPT family.

``anystream check-weights DIR [--json]``: is every AnyGPT checkpoint under DIR, and does each load strictly? Prints
one line per part (or a JSON document with ``--json``) and exits 1 when a part that is present does not load (the
message names the file, the key and the expected and found shapes), 2 for a usage error, else 0. Missing parts are
reported but are not failures: a machine may hold only what its deployments load.

``anystream make-voices DIR NAME=WAV [NAME=WAV ...] --out voices.json [--default NAME] [--seconds 3]``: the voices
replies can be spoken in. Each WAV's first seconds are encoded by DIR's SpeechTokenizer into all 8 levels: the
acoustic prompt SoundStorm continues (AnyGPT's voice cloning uses 3 s). Serve with ``voices_file: voices.json``.

``anystream token --client NAME [--ttl SECONDS] [--secret-env VAR]``: prints a session token for a server whose
``access.token_secret_env`` names VAR (default ``ANYSTREAM_TOKEN_SECRET``, read from this environment). The caller
sends it as ``Authorization: Bearer TOKEN`` until it expires; exit 2 when the secret is missing or too short.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anystream", description="anystream model tools")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check-weights", help="check a folder of AnyGPT checkpoints laid out as on the hub")
    check.add_argument("folder", type=Path)
    check.add_argument("--json", action="store_true", help="print a JSON report")
    voices = sub.add_parser("make-voices", help="encode voice samples into a voice bank for SoundStorm")
    voices.add_argument("folder", type=Path, help="the AnyGPT weights folder (its SpeechTokenizer is used)")
    voices.add_argument("samples", nargs="+", metavar="NAME=WAV", help="a voice name and a recording of it")
    voices.add_argument("--out", type=Path, required=True, help="voices.json to write")
    voices.add_argument("--default", help="the default voice (default: the first)")
    voices.add_argument("--seconds", type=float, default=3.0, help="prompt length per voice (default: %(default)s)")
    token = sub.add_parser("token", help="mint a signed session token for a server with access on")
    token.add_argument("--client", required=True, help="the client id the token speaks for (per-client limits)")
    token.add_argument("--ttl", type=float, default=3600.0, help="seconds the token stays valid (default: %(default)g)")
    token.add_argument(
        "--secret-env",
        default=TOKEN_SECRET_ENV,
        help="environment variable holding the server's token secret (default: %(default)s)",
    )
    return parser


TOKEN_SECRET_ENV = "ANYSTREAM_TOKEN_SECRET"


def _mint_token(args: argparse.Namespace) -> int:
    from assistant.access import mint_token

    # The secret comes from the environment only: a command-line argument would show in every `ps`.
    secret = os.environ.get(args.secret_env, "")
    if not secret:
        print(
            f"anystream: set {args.secret_env} to the server's token secret (access.token_secret_env)", file=sys.stderr
        )
        return 2
    try:
        print(mint_token(secret, args.client, args.ttl))
    except ValueError as exc:
        print(f"anystream: {exc}", file=sys.stderr)
        return 2
    return 0


def _make_voices(args: argparse.Namespace) -> int:
    from assistant.audio import AudioFormatError, read_wav

    samples: dict[str, Path] = {}
    for item in args.samples:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path:
            print(f"anystream: expected NAME=WAV, got {item!r}", file=sys.stderr)
            return 2
        samples[name.strip()] = Path(path)
    if args.seconds <= 0:
        print("anystream: --seconds must be positive", file=sys.stderr)
        return 2
    waves = {}
    for name, path in samples.items():
        try:
            waves[name] = read_wav(path)[: int(args.seconds * 16000)]
        except (AudioFormatError, OSError) as exc:
            print(f"anystream: voice {name!r}: {exc}", file=sys.stderr)
            return 2
        if waves[name].size < 1600:
            print(f"anystream: voice {name!r}: {path} holds less than 0.1 s of audio", file=sys.stderr)
            return 2
    import numpy as np
    import torch

    from assistant.models.anygpt.loader import AnyGPTLayout
    from assistant.models.anygpt.speech import load_speechtokenizer_dir
    from assistant.models.config_io import ConfigError
    from assistant.models.voices import VoiceBank

    try:
        codec = load_speechtokenizer_dir(AnyGPTLayout(args.folder).path("speechtokenizer_dir"))
    except ConfigError as exc:
        print(f"anystream: {exc}", file=sys.stderr)
        return 1
    with torch.inference_mode():
        prompts = {name: codec.encode(torch.from_numpy(w)).numpy().astype(np.int64) for name, w in waves.items()}
    default = args.default or next(iter(prompts))
    try:
        bank = VoiceBank(prompts, default, codec.codebook_size)
    except ValueError as exc:
        print(f"anystream: {exc}", file=sys.stderr)
        return 2
    bank.to_json(args.out)
    print(f"wrote {args.out}: voices {', '.join(bank.names)} (default {bank.default})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "make-voices":
        return _make_voices(args)
    if args.command == "token":
        return _mint_token(args)
    from assistant.models.anygpt.loader import check_weights, failed

    try:
        reports = check_weights(args.folder)
    except FileNotFoundError as exc:
        print(f"anystream: {exc}", file=sys.stderr)
        return 2
    bad = failed(reports)
    if args.json:
        print(
            json.dumps({"folder": str(args.folder), "ok": not bad, "parts": [r.to_dict() for r in reports]}, indent=2)
        )
    else:
        for report in reports:
            optional = "" if report.required else " (optional)"
            print(f"{report.status:>10}  {report.name}{optional}: {report.detail}")
            for name in report.missing if report.status == "missing" else []:
                print(f"{'':>12}missing {name.replace('|', ' or ')}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
