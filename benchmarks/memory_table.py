"""The README's memory table: Qwen2.5 1.5B / 3B / 7B at batch 64 × (200 prompt + 1,000 new) tokens, bf16,
from `stir_core.runtime.memory.estimate` (checked against measured peaks at the 0.5B shape by bench_scale.py).

    python benchmarks/memory_table.py [--out results/memory_table.md]
"""

from __future__ import annotations

import argparse

from _common import emit

from stir_core.runtime.memory import table


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=200)
    ap.add_argument("--new", type=int, default=1000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = table(args.batch, args.prompt, args.new)
    lines = [f"batch {args.batch} × ({args.prompt} prompt + {args.new} new) tokens, bfloat16, L = 4",
             "", "| model | weights GiB | KV cache GiB (vanilla) | logits GiB | vanilla GiB | STIR GiB (worst case) "
             "| STIR / vanilla |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['weights_gib']:.1f} | {r['kv_vanilla_gib']:.2f} | {r['logits_gib']:.3f} | "
                     f"{r['vanilla_gib']:.1f} | {r['stir_uncapped_gib']:.1f} | {r['stir_uncapped_x']:.2f}× |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
