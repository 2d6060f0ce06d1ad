#!/usr/bin/env bash
# The README's result tables, on a fresh evaluation seed (2026): no tuning, recipe choice or acceptance
# check has ever used it. Knobs come from the demo library's recommended settings (chosen on `val`, seed 1);
# the static baselines use the scales tuned on `val` by benchmarks/tune_static.py (results/tune_static/).
# Run from the repository root: bash results/tables/run.sh && python results/tables/tables.py
set -euo pipefail
SEED=2026; N=600; LIB=assets/demo-library; OUT=results/tables
run() { local name=$1; shift; stir eval --n "$N" --seed "$SEED" --library "$LIB" --out "$OUT/runs/$name" --batch-size 100 "$@" >/dev/null; }
for TASK in planted plain; do
  run "$TASK-main" --task "$TASK" --methods vanilla,no_memory,stir,no_probing,random_vector,random_choice
  run "$TASK-static" --task "$TASK" --methods vanilla,static --set static_scale=2.0
  run "$TASK-static_cp" --task "$TASK" --methods vanilla,static_cp --set static_scale=3.0
  run "$TASK-static_norm" --task "$TASK" --methods vanilla,static_norm --set static_scale=0.5
  run "$TASK-static_norm_matched" --task "$TASK" --methods vanilla,static_norm --set static_scale=0.981
  run "$TASK-static_untuned" --task "$TASK" --methods vanilla,static,static_cp --set static_scale=1.0
  # The reference's behaviour (the defaults) against our variants, paired on the same problems.
  run "$TASK-persist" --task "$TASK" --methods vanilla,stir --set scope=persist
  run "$TASK-probe_none" --task "$TASK" --methods vanilla,stir --set probe_stop=none
  run "$TASK-random_choice_null" --task "$TASK" --methods vanilla,random_choice --set random_choice_gate=null
done
