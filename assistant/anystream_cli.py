"""``anystream check-weights DIR [--json]``: is every AnyGPT checkpoint under DIR, and does each load strictly?

Prints one line per part (or a JSON document with ``--json``) and exits 1 when a part that is present does not load
(the message names the file, the key and the expected and found shapes), 2 for a usage error, else 0. Missing parts
are reported but are not failures: a machine may hold only what its deployments load.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anystream", description="anystream model tools")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check-weights", help="check a folder of AnyGPT checkpoints laid out as on the hub")
    check.add_argument("folder", type=Path)
    check.add_argument("--json", action="store_true", help="print a JSON report")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from assistant.models.anygpt import check_weights, failed

    try:
        reports = check_weights(args.folder)
    except FileNotFoundError as exc:
        print(f"anystream: {exc}", file=sys.stderr)
        return 2
    bad = failed(reports)
    if args.json:
        print(json.dumps({"folder": str(args.folder), "ok": not bad, "parts": [r.to_dict() for r in reports]},
                         indent=2))
    else:
        for report in reports:
            optional = "" if report.required else " (optional)"
            print(f"{report.status:>10}  {report.name}{optional}: {report.detail}")
            for name in report.missing if report.status == "missing" else []:
                print(f"{'':>12}missing {name.replace('|', ' or ')}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
