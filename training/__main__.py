"""``python -m training train`` (= ``make train-mini``) and ``python -m training eval`` (= ``make eval-mini``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from assistant.models.embedded import EMBEDDED_DIR


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="synthesize the instruction set and train every embedded model")
    train.add_argument("--assets", type=Path, default=EMBEDDED_DIR, help="where the configs are and weights go")
    train.add_argument("--work-dir", type=Path, default=Path("build/train"), help="stage cache")
    train.add_argument("--fresh", action="store_true", help="recompute every stage instead of reusing the cache")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--lm-steps", type=int, default=None, help="LM step budget (it may stop earlier)")
    train.add_argument("--device", default="cpu", help="where the neural stages train: cpu (default), cuda, cuda:N")
    train.add_argument("--dialogues", type=int, default=None, help="training dialogues")
    train.add_argument("--drills", type=int, default=None, help="knowledge drills added to the LM's training set")
    train.add_argument("--picture-drills", type=int, default=None, help="drills about a user's picture added to it")
    evaluate = sub.add_parser("eval", help="judge the trained models on held-out voices")
    evaluate.add_argument("--assets", type=Path, default=EMBEDDED_DIR)
    evaluate.add_argument("--out", type=Path, default=Path("eval"), help="results.json goes here")
    evaluate.add_argument("--per-family", type=int, default=None, help="dialogues per task family")
    evaluate.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")

    if args.command == "train":
        from training.pipeline import TrainPlan, run_training

        overrides = {"seed": args.seed, "device": args.device}
        given = {
            "lm_steps": args.lm_steps,
            "train_dialogues": args.dialogues,
            "knowledge_drills": args.drills,
            "picture_drills": args.picture_drills,
        }
        overrides.update({name: value for name, value in given.items() if value is not None})
        summary = run_training(TrainPlan(**overrides), args.assets, args.work_dir, fresh=args.fresh)
        print(json.dumps({k: summary[k] for k in ("stage_minutes", "total_minutes", "sequences")}, indent=2))
        return 0

    from training.evaluate import EvalPlan, format_table, run_eval

    plan = EvalPlan()
    changes = {k: v for k, v in (("per_family", args.per_family), ("seed", args.seed)) if v is not None}
    result = run_eval(dataclasses.replace(plan, **changes), args.assets, args.out)
    print(format_table(result["summary"]))
    if result["speech_codec"] is not None:
        print("speech codec:", json.dumps(result["speech_codec"]))
    print("targets met:", json.dumps(result["targets_met"]))
    print(f"wrote {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
