#!/usr/bin/env bash
# Every GPU check of the serving core in one run (for a lent GPU machine: torch, transformers and pytest, no Ray,
# no aiortc; nothing to download). Writes figures under ${OUT:-gpu-out}/ and prints them.
#
#   OUT=/tmp/out bash benchmarks/gpu_check.sh
#
# 1. the GPU tests (full-size AnyGPT parts in fp16; CUDA-graph steps equal eager steps; the engine on CUDA);
# 2. the batched engine alone on the AnyGPT 7B layout with random fp16 weights: 1, 16 and 64 speaking sessions of
#    5 s answers (TTFA, per-session tokens/s, decode step per batch size, acoustic batching);
# 3. the same at 64 sessions with eager steps, to show what the CUDA graphs are worth.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

python -m pytest -q -s -m gpu tests/models/test_anygpt_gpu.py 2>&1 | tee "$OUT/gpu-tests.txt"

python -m anystream_bench --engine-only --family anygpt-random --device cuda --dtype float16 \
    --sessions 1,16,64 --answer-s 5 --spread 1 --slot-capacity 1024 --turn-timeout 300 \
    --acoustic-batch 64 --first-chunk-frames 25 --chunk-frames 50 --context-frames 50 \
    --json "$OUT/engine-graphs.json" 2>&1 | tee "$OUT/engine-graphs.txt"

python -m anystream_bench --engine-only --family anygpt-random --device cuda --dtype float16 \
    --sessions 64 --answer-s 5 --spread 1 --slot-capacity 1024 --turn-timeout 300 --no-graphs \
    --acoustic-batch 64 --first-chunk-frames 25 --chunk-frames 50 --context-frames 50 \
    --json "$OUT/engine-eager.json" 2>&1 | tee "$OUT/engine-eager.txt"

python - "$OUT" <<'EOF'
import json, sys
out = sys.argv[1]
for name in ("engine-graphs", "engine-eager"):
    try:
        report = json.load(open(f"{out}/{name}.json"))
    except OSError:
        continue
    for level in report["levels"]:
        s = level["summary"]
        print(name, level["sessions"], "sessions: TTFA p50/p95", s["ttfa_s"]["p50"], s["ttfa_s"]["p95"],
              "| step ms by batch", {k: round(v, 2) for k, v in s["step_ms_by_batch"].items()},
              "| tokens/s per session p50", s["session_tokens_per_s"]["p50"], "all >= 50:", s["all_real_time"],
              "| underruns", s["underruns"], "| acoustic", s["acoustic_stats"].get("mean_batch_size"),
              s["acoustic_stats"].get("last_call_s"))
EOF
