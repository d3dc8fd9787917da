#!/bin/bash
# One λ of toy world v3's learned baselines, end to end (docs/toy.md, "How the runs share the two cores"): its MSE
# run, then its task run from the MSE model, each resuming from its saved state (a stopped run is skipped). One thread;
# logs under outputs/v3_part2/chain-<λ>.log.
#     benchmarks/toy/baseline_chain.sh 0.00439      (the runs of part 2 went at nice -n 19)
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 LAMBDA" >&2; exit 2; }
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
log=outputs/v3_part2/chain-$1.log
mkdir -p outputs/v3_part2
.venv/bin/python benchmarks/toy/baseline_curve.py --kind mse --out outputs/v3_part2/mse --lambdas "$1" >> "$log" 2>&1
.venv/bin/python benchmarks/toy/baseline_curve.py --kind task --init outputs/v3_part2/mse --out outputs/v3_part2/task \
    --lambdas "$1" >> "$log" 2>&1
