#!/bin/bash
# A worker for toy world v3's learned baselines (docs/toy.md, "When outputs/ is lost"): it takes the given λ in
# order and runs each one's chain (benchmarks/toy/baseline_chain.sh: its MSE run, then its task run), skipping a λ
# another worker holds (a lock per λ under outputs/v3_part2), so two workers given the same list share it and no λ
# ever trains in two processes. A stopped run is skipped by the chain itself.
#     benchmarks/toy/baseline_queue.sh 0.000164 0.0316 0.0164     (one worker per core; part 2 ran them at nice -n 19)
set -uo pipefail
[ $# -ge 1 ] || { echo "usage: $0 LAMBDA..." >&2; exit 2; }
cd "$(dirname "$0")/../.."
mkdir -p outputs/v3_part2
for lam in "$@"; do
    flock -n "outputs/v3_part2/lock-$lam" benchmarks/toy/baseline_chain.sh "$lam" \
        || echo "$(date '+%F %T') λ $lam: held by another worker or failed (outputs/v3_part2/chain-$lam.log)" \
            >> outputs/v3_part2/queue.log
done
