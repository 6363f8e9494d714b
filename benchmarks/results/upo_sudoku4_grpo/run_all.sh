#!/bin/bash
# The issue-14 runs and their one test-set evaluation, as run on 2026-11-30 (CPU, 2 cores shared by all runs, one
# thread each). Each run: `upo-fast train --config paper_sudoku` plus the options shown, stopped by its time limit
# (first part 4,200 s; then resumed with `upo-fast train --out DIR --time-limit-s T` to stop near 06:58 UTC).
set -euo pipefail
cd "$(dirname "$0")/../../.."
R=runs/upo14
launch() { name=$1; shift; OMP_NUM_THREADS=1 upo-fast train --config paper_sudoku --out $R/$name --time-limit-s 4200 "$@" & }
launch maxconf_s0 --seed 0
launch maxconf_s1 --seed 1
launch maxconf_s2 --seed 2
launch beta0_s0 --seed 0 --beta 0
launch beta0_s1 --seed 1 --beta 0
launch beta0_s2 --seed 2 --beta 0
launch softmax_s0 --seed 0 --reference softmax_confidence
launch topk_fresh_s0 --seed 0 --reference topk --init fresh --block-init fresh
# Zebra: the shipped Zebra model, 16 blanks, 8 prompts x 8 samples (a Zebra step costs ~10x a 4x4 one)
OMP_NUM_THREADS=1 upo-fast train --config paper_sudoku --out $R/zebra_s0 --time-limit-s 5200 --seed 0 --task zebra \
    --model zebra --blanks 16 --prompts-per-step 8 --eval-puzzles 200 --eval-every 20 --checkpoint-every 5 &
wait
# context, not UPO: DAgger toward the oracle target (reads the training solutions), same model
OMP_NUM_THREADS=1 upo-fast pretrain-policy --task sudoku4 --model sudoku4_weak --target oracle --init anchor \
    --rounds 4 --puzzles-per-round 500 --steps 300 --eval-puzzles 500 --seed 0 --out $R/dagger_oracle
