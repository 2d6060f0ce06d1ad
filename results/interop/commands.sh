#!/usr/bin/env bash
# Round trip: export the demo library as a llama.cpp control vector, import its layer-3 direction as a
# one-entry library, and evaluate it as the static baseline (README, "Interop"). Output: eval-imported.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
stir export assets/demo-library --format gguf --out results/interop/demo.gguf --overwrite
stir import-vector results/interop/demo.gguf --library-out results/interop/imported-L3 --layer 3 --overwrite
stir eval --task planted --methods vanilla,static --n 600 --seed 123 --library results/interop/imported-L3 \
  --set layer=3 --set tau_null=0.5 --set min_sim=0.9 --set max_new_tokens=128 --out results/interop/eval-imported
rm -f results/interop/eval-imported/examples.jsonl  # 9.5 MB of traces; summary.json and examples.csv stay
