"""``anystream-bench``: N simulated callers against the assistant, with time to first audio and what it costs.

Modes (``docs/benchmarks.md`` has the command lines and the figures):

- default, WebRTC: N real aiortc peers (:mod:`anystream_bench.webrtc_client`) against ``--server URL`` (a running
  ``anystream-serve``), or against this process's own Ray-free gateway with ``--local-server``;
- ``--in-process``: the same question through ``AssistantEngine`` over in-process backends, N concurrent sessions
  (:mod:`anystream_bench.inprocess`);
- ``--compare``: both, level by level, and the serving overhead (WebRTC TTFA over in-process TTFA; also with the
  server's endpointing silence taken out);
- ``--engine-only``: the batched LM engine alone (:func:`anystream_bench.engine_only.run_engine_only`).

Every caller speaks the same WAV question (``--question``; default: espeak-ng says ``--question-text`` into a temp
dir, at 16 kHz) starting at ``i * --ramp + uniform(0, --spread)`` seconds (seeded by ``--seed``). ``--sessions 1,2,4``
runs one level per count, one after the other. TTFA, answer RTF and underruns are defined in
:mod:`anystream_bench.timeline`: over WebRTC the end of the user's speech is when the question's last sample left the
client, in-process when the question was handed to the engine. LM tokens/s: in-process counted at the LM backend;
over WebRTC read from the server's ``GET /metrics`` (``anystream_lm_tokens_received_total``, before and after each
level; with several gateway replicas that counter is one replica's). CPU and memory: this process, the whole machine,
``--server-pid`` processes and, with ``--ray-procs``, every local ``ray::`` process (:mod:`anystream_bench.procstats`).

Output: a table on stdout, ``--json PATH`` (every per-caller figure and each level's summary) and ``--plot PATH``
(TTFA p50/p95/p99 against concurrency, PNG). Exit status 0 when every caller was answered or refused (503, 429), 1 when
some caller failed (no answer, a timeout, an error), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from anystream_bench.procstats import ProcessMonitor
from anystream_bench.timeline import LOUD_RMS, SILENCE_PEAK, UNDERRUN_GAP_S, Thresholds, spread
from edge_client.config import add_api_key_argument, api_key_or_env

DEFAULT_QUESTION = "what is the capital of france"


# ---------------------------------------------------------------------------------------------------------------------
# inputs


def start_offsets(n: int, spread_s: float, ramp_s: float, seed: int) -> list[float]:
    """Caller i starts at ``i * ramp_s + uniform(0, spread_s)`` seconds."""
    rng = random.Random(seed)
    return [i * ramp_s + rng.uniform(0.0, spread_s) for i in range(n)]


def speak(text: str, folder: Path) -> Path:
    """espeak-ng (en-us, 150 words/min) says ``text`` into ``folder/question.wav`` at 16 kHz."""
    from assistant.audio import read_wav, write_wav

    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed: install it or pass --question WAV")
    raw = folder / "raw.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), text], check=True)
    path = folder / "question.wav"
    write_wav(path, read_wav(raw))
    return path


def load_question(args: argparse.Namespace, folder: Path) -> tuple[np.ndarray, dict[str, Any]]:
    from assistant.audio import SAMPLE_RATE, read_wav

    path = Path(args.question) if args.question else speak(args.question_text, folder)
    wave = read_wav(path)
    described = {
        "path": str(args.question) if args.question else f"espeak-ng: {args.question_text!r}",
        "seconds": wave.size / SAMPLE_RATE,
    }
    return wave, described


def scrape_metrics(url: str, timeout_s: float = 5.0, api_key: str | None = None) -> dict[str, float] | None:
    """``{sample name: value summed over labels}`` from ``url/metrics``; None when there is none."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        request = urllib.request.Request(f"{url.rstrip('/')}/metrics", headers=headers)
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            text = response.read().decode("utf-8", errors="replace")
    except Exception:
        return None
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        try:
            head, value = line.rsplit(" ", 1)
            name = head.split("{", 1)[0]
            samples[name] = samples.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return samples


def _delta(before: dict[str, float] | None, after: dict[str, float] | None, name: str) -> float | None:
    if before is None or after is None or name not in after:
        return None
    return after[name] - before.get(name, 0.0)


# ---------------------------------------------------------------------------------------------------------------------
# one level


def summarize(clients: list[dict[str, Any]], wall_s: float, lm_tokens: float | None) -> dict[str, Any]:
    answered = [c for c in clients if c["status"] == "ok"]
    turns = [t for c in answered for t in c["turns"]]
    summary: dict[str, Any] = {
        "callers": len(clients),
        "turns": len(turns),
        "turns_without_audio": sum(t["ttfa_s"] is None for t in turns),
        "ttfa_s": spread([t["ttfa_s"] for t in turns]),
        "rtf": spread([t["rtf"] for t in turns]),
        "answer_audio_s": spread([t["answer_audio_s"] for t in turns]),
        "underruns": sum(t["underruns"] for t in turns),
        "underrun_s": sum(t["underrun_s"] for t in turns),
        "rejected": sum(c["status"] == "rejected" for c in clients),
        "rejected_reasons": dict(Counter(c["reason"] for c in clients if c["status"] == "rejected")),
        "failed": sum(c["status"] == "failed" for c in clients),
        "failed_reasons": [c["reason"] for c in clients if c["status"] == "failed"],
        "lm_tokens": lm_tokens,
        "lm_tokens_per_s": lm_tokens / wall_s if lm_tokens is not None and wall_s > 0 else None,
        "wall_s": wall_s,
    }
    if any("endpoint_s" in t for t in turns):
        summary["endpoint_s"] = spread([t.get("endpoint_s") for t in turns])
        summary["ttfa_after_endpoint_s"] = spread([t.get("ttfa_after_endpoint_s") for t in turns])
    return summary


async def run_webrtc_level(url: str, question: np.ndarray, n: int, args: argparse.Namespace) -> dict[str, Any]:
    from anystream_bench.webrtc_client import run_clients

    offsets = start_offsets(n, args.spread, args.ramp, args.seed)
    before = await asyncio.to_thread(scrape_metrics, url, api_key=args.api_key)
    monitor = ProcessMonitor(args.server_pid, find_ray=args.ray_procs).start()
    start = time.monotonic()
    results = await run_clients(
        url,
        question,
        offsets,
        turns=args.turns,
        turn_timeout_s=args.turn_timeout,
        loopback_only=args.loopback_only,
        voice=args.voice,
        thresholds=thresholds(args),
        api_key=args.api_key,
    )
    wall = time.monotonic() - start
    resources = monitor.stop()
    after = await asyncio.to_thread(scrape_metrics, url, api_key=args.api_key)
    clients = [r.to_dict() for r in results]
    summary = summarize(clients, wall, _delta(before, after, "anystream_lm_tokens_received_total"))
    count = _delta(before, after, "anystream_time_to_first_audio_seconds_count")
    total = _delta(before, after, "anystream_time_to_first_audio_seconds_sum")
    summary["server_ttfa_mean_s"] = total / count if count and total is not None else None
    summary["server_metrics"] = after is not None
    summary["resources"] = resources
    return {"sessions": n, "mode": "webrtc", "server": url, "clients": clients, "summary": summary}


async def run_inprocess_level(loaded: Any, question: np.ndarray, n: int, args: argparse.Namespace) -> dict[str, Any]:
    from anystream_bench.inprocess import run_sessions

    offsets = start_offsets(n, args.spread, args.ramp, args.seed)
    monitor = ProcessMonitor(find_ray=False).start()
    clients, totals = await run_sessions(
        loaded,
        question,
        offsets,
        turns=args.turns,
        turn_timeout_s=args.turn_timeout,
        thresholds=thresholds(args),
        voice=args.voice,
    )
    resources = monitor.stop()
    summary = summarize(clients, totals["wall_s"], totals["lm_tokens"])
    summary["resources"] = resources
    return {"sessions": n, "mode": "inprocess", "clients": clients, "summary": summary}


def thresholds(args: argparse.Namespace) -> Thresholds:
    return Thresholds(
        loud_rms=args.loud_rms, silence_peak=args.silence_peak, underrun_gap_s=args.underrun_gap_ms / 1000.0
    )


def overhead(levels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each concurrency with both a WebRTC and an in-process level: WebRTC TTFA / in-process TTFA."""
    by_key = {(level["mode"], level["sessions"]): level["summary"] for level in levels}
    rows = []
    for n in sorted({level["sessions"] for level in levels}):
        web, local = by_key.get(("webrtc", n)), by_key.get(("inprocess", n))
        if web is None or local is None:
            continue

        def ratio(a: float | None, b: float | None) -> float | None:
            return a / b if a is not None and b else None

        after = web.get("ttfa_after_endpoint_s", {})
        rows.append(
            {
                "sessions": n,
                "ttfa_p50_ratio": ratio(web["ttfa_s"]["p50"], local["ttfa_s"]["p50"]),
                "ttfa_p95_ratio": ratio(web["ttfa_s"]["p95"], local["ttfa_s"]["p95"]),
                "endpoint_s_p50": web.get("endpoint_s", {}).get("p50"),
                "after_endpoint_p50_ratio": ratio(after.get("p50"), local["ttfa_s"]["p50"]),
                "after_endpoint_p95_ratio": ratio(after.get("p95"), local["ttfa_s"]["p95"]),
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# output


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def print_table(levels: list[dict[str, Any]], ratios: list[dict[str, Any]], out=None) -> None:
    out = out or sys.stdout
    head = (
        f"{'mode':<10}{'sessions':>9}{'TTFA p50':>10}{'p95':>8}{'p99':>8}{'after-EP p50':>14}{'RTF p50':>9}"
        f"{'underruns':>10}{'rejected':>9}{'failed':>7}{'tok/s':>8}{'bench CPU':>10}{'machine CPU':>12}"
    )
    print(head, file=out)
    for level in levels:
        s = level["summary"]
        if level["mode"] == "engine":
            ttfa = s["ttfa_s"]
            row = (
                f"{'engine':<10}{level['sessions']:>9}{_fmt(ttfa['p50']):>10}{_fmt(ttfa['p95']):>8}"
                f"{_fmt(ttfa['p99']):>8}{'-':>14}{_fmt(s['rtf']['p50'], 2):>9}{s['underruns']:>10}"
                f"{s['rejected']:>9}{s['failed']:>7}{_fmt(s['lm_tokens_per_s'], 1):>8}{'-':>10}{'-':>12}"
            )
            print(row, file=out)
            rate = s["session_tokens_per_s"]
            print(
                f"{'':<10}LM: decode step {_fmt((s['mean_step_s'] or 0) * 1000, 2)} ms mean, per-session "
                f"tokens/s p50 {_fmt(rate['p50'], 1)}, every session >= 50: {s['all_real_time']}",
                file=out,
            )
            continue
        res = s.get("resources", {})
        after = s.get("ttfa_after_endpoint_s", {}).get("p50")
        row = (
            f"{level['mode']:<10}{level['sessions']:>9}{_fmt(s['ttfa_s']['p50']):>10}{_fmt(s['ttfa_s']['p95']):>8}"
            f"{_fmt(s['ttfa_s']['p99']):>8}{_fmt(after):>14}{_fmt(s['rtf']['p50'], 2):>9}{s['underruns']:>10}"
            f"{s['rejected']:>9}{s['failed']:>7}{_fmt(s['lm_tokens_per_s'], 1):>8}"
            f"{_fmt(res.get('bench', {}).get('cpu_cores'), 2):>10}"
            f"{_fmt(res.get('machine', {}).get('cpu_cores_busy'), 2):>12}"
        )
        print(row, file=out)
    for r in ratios:
        print(
            f"serving overhead at {r['sessions']} sessions: TTFA p50 x{_fmt(r['ttfa_p50_ratio'], 2)}, "
            f"p95 x{_fmt(r['ttfa_p95_ratio'], 2)}; without the endpointing silence "
            f"({_fmt(r['endpoint_s_p50'])} s): p50 x{_fmt(r['after_endpoint_p50_ratio'], 2)}, "
            f"p95 x{_fmt(r['after_endpoint_p95_ratio'], 2)}",
            file=out,
        )


def plot_levels(levels: list[dict[str, Any]], path: str) -> None:
    from anystream_bench.plot import ttfa_plot

    series: dict[str, dict[int, dict[str, float | None]]] = {}
    for level in levels:
        figures = level["summary"]["ttfa_s"]
        series.setdefault(level["mode"], {})[level["sessions"]] = {q: figures[q] for q in ("p50", "p95", "p99")}
    ttfa_plot(series, path)


# ---------------------------------------------------------------------------------------------------------------------
# command line


def _levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sessions takes counts like 1,2,4,8, not {text!r}") from None
    if not levels or any(n < 1 for n in levels):
        raise argparse.ArgumentTypeError("--sessions needs counts >= 1")
    return levels


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="anystream-bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    modes = p.add_mutually_exclusive_group()
    modes.add_argument("--in-process", action="store_true", help="only the in-process engine (no WebRTC, no Ray)")
    modes.add_argument("--compare", action="store_true", help="WebRTC and in-process, and the overhead ratio")
    modes.add_argument("--engine-only", action="store_true", help="the batched LM engine alone")
    p.add_argument("--server", default="http://127.0.0.1:8000", help="base URL of a running anystream-serve")
    add_api_key_argument(p)
    p.add_argument(
        "--local-server",
        action="store_true",
        help="serve the in-process engine over WebRTC from this process (no Ray) instead of --server",
    )
    p.add_argument(
        "--max-sessions",
        type=int,
        default=None,
        help="the local server's session limit (default: the largest --sessions)",
    )
    p.add_argument("--sessions", type=_levels, default=[1], help="concurrent callers; a list runs one level each")
    p.add_argument("--turns", type=int, default=1, help="questions each caller asks, one after the other")
    p.add_argument("--question", help="WAV file of the spoken question (default: espeak-ng says --question-text)")
    p.add_argument("--question-text", default=DEFAULT_QUESTION)
    p.add_argument("--spread", type=float, default=1.0, help="callers start at a random offset in [0, spread] s")
    p.add_argument("--ramp", type=float, default=0.0, help="seconds between consecutive callers' starts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--voice", default=None, help="voice asked for in each offer / session")
    p.add_argument("--turn-timeout", type=float, default=120.0, help="seconds a caller waits for an answer")
    p.add_argument(
        "--no-loopback",
        dest="loopback_only",
        action="store_false",
        default=None,
        help="gather every ICE candidate (default: loopback only for a 127.0.0.1/localhost server)",
    )
    p.add_argument("--loud-rms", type=float, default=LOUD_RMS, help="int16 RMS of a loud answer frame")
    p.add_argument(
        "--silence-peak", type=int, default=SILENCE_PEAK, help="int16 peak at or below which a frame is digital silence"
    )
    p.add_argument(
        "--underrun-gap-ms",
        type=float,
        default=UNDERRUN_GAP_S * 1000,
        help="a wait longer than this in the answer audio is an underrun",
    )
    p.add_argument("--server-pid", type=int, action="append", default=[], help="also measure this process")
    p.add_argument("--ray-procs", action="store_true", help="also measure every local process named ray::*")
    p.add_argument(
        "--family",
        default="embedded",
        choices=("embedded", "anygpt", "anygpt-random"),
        help="in-process model family (anygpt-random: --engine-only, random weights built in memory)",
    )
    p.add_argument("--assets-dir", default=None, help="in-process weights folder (anygpt: the weights root)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--answer-s", type=float, default=5.0, help="--engine-only: seconds of speech each session says")
    p.add_argument("--layers", type=int, default=None, help="--engine-only anygpt-random: fewer LLaMA layers")
    p.add_argument("--slot-capacity", type=int, default=1024, help="--engine-only: KV positions per LM slot")
    p.add_argument("--no-graphs", action="store_true", help="--engine-only: eager decode steps even on CUDA")
    p.add_argument("--threads", type=int, default=2, help="--engine-only: torch CPU threads")
    p.add_argument("--acoustic-batch", type=int, default=8, help="--engine-only: most chunks in one acoustic call")
    p.add_argument("--first-chunk-frames", type=int, default=10, help="--engine-only: frames of a turn's first chunk")
    p.add_argument("--chunk-frames", type=int, default=25, help="--engine-only: frames of later chunks")
    p.add_argument("--context-frames", type=int, default=25, help="--engine-only: frames of left context per chunk")
    p.add_argument("--json", dest="json_path", help="write every figure here")
    p.add_argument("--plot", dest="plot_path", help="write the TTFA-against-concurrency PNG here")
    args = p.parse_args(argv)
    if args.family == "anygpt-random" and not args.engine_only:
        p.error("--family anygpt-random is for --engine-only")
    if args.turns < 1 or args.spread < 0 or args.ramp < 0 or args.turn_timeout <= 0:
        p.error("--turns must be >= 1, --spread and --ramp >= 0, --turn-timeout > 0")
    args.api_key = api_key_or_env(args.api_key)
    if args.loopback_only is None:
        args.loopback_only = (urlparse(args.server).hostname or "") in (
            "127.0.0.1",
            "localhost",
            "::1",
        ) or args.local_server
    return args


async def _run(args: argparse.Namespace, question: np.ndarray) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    levels: list[dict[str, Any]] = []
    info: dict[str, Any] = {}
    web = not args.in_process
    local = args.in_process or args.compare
    loaded = None
    if local or args.local_server:
        from anystream_bench.inprocess import load_engine

        loaded = load_engine(args.family, args.assets_dir, args.device, args.dtype, args.seed)
        info["models"] = {"load_s": loaded.load_s, "loader": loaded.how, "family": args.family}
    gateway = None
    url = args.server
    if web and args.local_server:
        from anystream_bench.local_gateway import LocalGateway

        gateway = LocalGateway(loaded.engine, max_sessions=args.max_sessions or max(args.sessions))
        loaded.tokens.metrics = gateway.metrics  # its /metrics counts the LM tokens, as the deployment's does
        url = await asyncio.to_thread(gateway.start)
        info["local_server"] = {
            "url": url,
            "max_sessions": gateway.max_sessions,
            "note": "the server runs in this process: its CPU is the bench's",
        }
    try:
        for n in args.sessions:
            if web:
                levels.append(await run_webrtc_level(url, question, n, args))
            if local:
                levels.append(await run_inprocess_level(loaded, question, n, args))
    finally:
        if gateway is not None:
            await asyncio.to_thread(gateway.stop)
    return levels, info


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="anystream-bench-") as tmp:
        if args.engine_only:
            from anystream_bench.engine_only import run_engine_only

            result = run_engine_only(args)
            levels, info, question_info = result.pop("levels"), result, {"texts": "engine_only.QUESTIONS"}
        else:
            question, question_info = load_question(args, Path(tmp))
            levels, info = asyncio.run(_run(args, question))
    ratios = overhead(levels)
    print_table(levels, ratios)
    report = {
        "tool": "anystream-bench",
        "started_unix": started,
        "argv": _without_api_key(sys.argv[1:] if argv is None else argv),
        # never the API key: reports are shared
        "config": {k: v for k, v in vars(args).items() if k not in ("json_path", "plot_path", "api_key")},
        "question": question_info,
        **info,
        "levels": levels,
        "overhead": ratios,
    }
    if args.json_path:
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(json.dumps(report, indent=2, default=_json_default))
    if args.plot_path:
        plot_levels(levels, args.plot_path)
    failed = sum(level["summary"]["failed"] for level in levels)
    return 1 if failed else 0


def _without_api_key(argv: list[str]) -> list[str]:
    """The command line for the report, with the value of --api-key (or an abbreviation argparse takes for it,
    down to ``--ap``) blanked."""
    shown, hide_next = [], False
    for arg in argv:
        name, equals, _ = arg.partition("=")
        names_key = len(name) >= 4 and "--api-key".startswith(name)
        if hide_next:
            shown.append("***")
        elif names_key and equals:
            shown.append(f"{name}=***")
        else:
            shown.append(arg)
        hide_next = names_key and not equals and not hide_next
    return shown


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
