#!/bin/bash
# The one test-set evaluation of issue 14's runs (after SELECTION.md was written), plus the same orders on the
# validation puzzles for the record. Usage: benchmarks/results/upo_sudoku4_grpo/evaluate.sh [--with-dagger]
set -euo pipefail
cd "$(dirname "$0")/../../.."
R=runs/upo14
OUT=benchmarks/results/upo_sudoku4_grpo
runs=(--run "UPO max-conf/CE #0=$R/maxconf_s0/best" --run "UPO max-conf/CE #1=$R/maxconf_s1/best"
      --run "UPO max-conf/CE #2=$R/maxconf_s2/best" --run "UPO softmax-conf/KL #0=$R/softmax_s0/best"
      --run "UPO Top-K/KL, random init #0=$R/topk_fresh_s0/best"
      --run "GRPO beta 0 #0=$R/beta0_s0/best" --run "GRPO beta 0 #1=$R/beta0_s1/best"
      --run "GRPO beta 0 #2=$R/beta0_s2/best"
      --group "UPO max-conf/CE, 3 seeds=UPO max-conf/CE #0,UPO max-conf/CE #1,UPO max-conf/CE #2"
      --group "GRPO beta 0, 3 seeds=GRPO beta 0 #0,GRPO beta 0 #1,GRPO beta 0 #2")
if [ "${1:-}" = "--with-dagger" ]; then runs+=(--run "DAgger toward the oracle (not UPO)=$R/dagger_oracle"); fi
heur=max_confidence,random,margin,entropy,topk,softmax_confidence
common=(--task sudoku4 --model sudoku4_weak --metric cells --heuristics $heur)
OMP_NUM_THREADS=1 python benchmarks/upo_results.py "${common[@]}" --seed 97531 --num-puzzles 500 --blanks 8 \
    "${runs[@]}" --out $OUT/validation
OMP_NUM_THREADS=1 python benchmarks/upo_results.py "${common[@]}" --data ../shared/data/sudoku4x4_test_upo.csv \
    "${runs[@]}" --curves "max-conf/CE #0=$R/maxconf_s0" --curves "max-conf/CE #1=$R/maxconf_s1" \
    --curves "max-conf/CE #2=$R/maxconf_s2" --curves "softmax/KL #0=$R/softmax_s0" \
    --curves "Top-K/KL random init=$R/topk_fresh_s0" --curves "beta 0 #0=$R/beta0_s0" \
    --curves "beta 0 #1=$R/beta0_s1" --curves "beta 0 #2=$R/beta0_s2" --out $OUT
