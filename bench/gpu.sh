#!/usr/bin/env bash
# The GPU figures of the README in one run (about 6 minutes on an H200, start-up included):
#   1. the GPU tests (tests/test_gpu.py: the decode loop, scoring and RLOO update on CUDA against the library);
#   2. the throughput benchmark on the bundled model and on TinyStories-33M's shape;
#   3. a sweep of 4 trials packed on the one GPU (--gpus-per-trial 0.25) against 1 trial alone, on the
#      study model's shape: seconds per group and the generations per second of all trials together;
#   4. best_beta's export of the packed sweep's choice (snapshots written from the GPU), sampled on the GPU.
#
#   usage: bash bench/gpu.sh [OUTDIR [SWEEPS]]   (on a machine with a CUDA GPU and this project's dependencies;
#          the sweeps' folders go to SWEEPS, default OUTDIR/sweeps)
set -uo pipefail
OUT=${1:-gpu-results}
SWEEPS=${2:-$OUT/sweeps}
mkdir -p "$OUT"
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, ray; print('torch', torch.__version__, 'transformers', transformers.__version__, 'ray', ray.__version__)" | tee -a "$OUT/gpu.txt"

python3 -m pytest tests/test_gpu.py -q -s -p no:cacheprovider 2>&1 | tail -12 | tee "$OUT/tests.txt"

python3 bench/throughput.py --device cuda --groups 20 --ref-groups 3 2>&1 | tee "$OUT/throughput-stories260k.txt"
python3 bench/throughput.py --device cuda --model tinystories-33m-shape --groups 10 --ref-groups 2 2>&1 \
  | tee "$OUT/throughput-33m-shape.txt"

python3 bench/throughput.py --build-33m-shape /tmp/shape33m > /dev/null
SWEEP=(python3 tune_jobs/sweep.py --model /tmp/shape33m/model --max-generations 300 --checkpoint-every 10
       --storage "$SWEEPS")
"${SWEEP[@]}" --betas 40 --gpus-per-trial 1 --cpus-per-trial 2 --name one > "$OUT/sweep-one.log" 2>&1
"${SWEEP[@]}" --betas 0,10,40,100 --gpus-per-trial 0.25 --cpus-per-trial 2 --name packed > "$OUT/sweep-packed.log" 2>&1
python3 - "$SWEEPS" <<'PY' | tee "$OUT/packing.txt"
import json, statistics, sys
from pathlib import Path
root = Path(sys.argv[1])
rates = {}
for name in ("one", "packed"):
    trials = sorted(p for p in (root / name).glob("beta=*") if (p / "metrics.jsonl").exists())
    per_trial = []
    for t in trials:
        rows = [json.loads(line) for line in (t / "metrics.jsonl").read_text().splitlines()][2:]  # past the warm-up
        per_trial.append((statistics.median(r["seconds_per_group"] for r in rows),
                          statistics.median(r["generations_per_second"] for r in rows)))
    stats = json.loads((root / name / "sweep.json").read_text())
    rates[name] = sum(g for _, g in per_trial)
    print(f"{name}: {len(trials)} trial(s); seconds per group (median) "
          f"{', '.join(f'{s:.3f}' for s, _ in per_trial)}; generations/s all trials together {rates[name]:.1f}; "
          f"sweep wall {stats['wall_seconds']:.0f} s, efficiency {stats['efficiency']:.2f}")
print(f"4 packed trials against 1: {rates['packed'] / rates['one']:.2f}x the generations per second")
PY
{ python3 analysis/best_beta.py "$SWEEPS/packed" --export "$SWEEPS/model" 2>&1 | tail -3
  python3 -m alliter.sample "$SWEEPS/model" --n 2 --seed 0 2>&1 | tail -6; } | tee "$OUT/export-sample.txt"
