"""Markdown tables from results/tables/runs/*/summary.json (written by results/tables/run.sh)."""

from __future__ import annotations

import json
from pathlib import Path

RUNS = Path(__file__).resolve().parent / "runs"
ROWS = [  # (run, method, label)
    ("main", "vanilla", "`vanilla`"), ("main", "no_memory", "`no_memory`"),
    ("static_untuned", "static", "`static` (scale 1, untuned)"), ("static", "static", "`static` (tuned: scale 2.0)"),
    ("static_untuned", "static_cp", "`static_cp` (scale 1, untuned)"),
    ("static_cp", "static_cp", "`static_cp` (tuned: scale 3.0)"),
    ("static_norm", "static_norm", "`static_norm` (tuned: scale 0.5)"),
    ("static_norm_matched", "static_norm", "`static_norm` (norm-matched: α 0.981)"),
    ("main", "stir", "`stir`"), ("main", "no_probing", "`no_probing`"),
    ("main", "random_vector", "`random_vector`"), ("main", "random_choice", "`random_choice`"),
]
VARIANTS = [("main", "stir", "`stir`, reference (scope segment, probes stop at the delimiter)"),
            ("persist", "stir", "`stir`, scope persist (ours)"),
            ("probe_none", "stir", "`stir`, probes run on past the delimiter (ours)"),
            ("main", "random_choice", "`random_choice`, reference (the random pick need not beat the null score; τ and ties apply)"),
            ("random_choice_null", "random_choice", "`random_choice`, must beat the null score (ours)")]
HEAD = ("| method | accuracy | Δ vs vanilla | wins / losses | McNemar p | committed tokens | probe tokens "
        "| interventions / problem |\n|---|---|---|---|---|---|---|---|")


def row(task: str, run: str, method: str, label: str) -> str:
    s = json.loads((RUNS / f"{task}-{run}" / "summary.json").read_text())
    m, v = s["methods"][method], s["methods"]["vanilla"]
    vs = m.get("vs_vanilla")
    delta = "—" if vs is None else f"{100 * (m['accuracy'] - v['accuracy']):+.1f}"
    wl = "—" if vs is None else f"{vs['wins']} / {vs['losses']}"
    p = "—" if vs is None else f"{vs['p_value']:.2g}"
    return (f"| {label} | {100 * m['accuracy']:.1f}% | {delta} | {wl} | {p} | {m['mean_tokens']:.1f} | "
            f"{m['mean_probe_tokens']:.1f} | {m['interventions_per_problem']:.2f} |")


if __name__ == "__main__":
    for task in ("planted", "plain"):
        cfg = json.loads((RUNS / f"{task}-main" / "summary.json").read_text())["config"]
        print(f"\n**`{task}`** (split {cfg['split']}, n = {cfg['n']}, seed {cfg['seed']}; {cfg['versions']})\n")
        print(HEAD)
        for run, method, label in ROWS:
            print(row(task, run, method, label))
        print(f"\nReference vs our variants on `{task}` (each row paired with vanilla on the same problems):\n")
        print(HEAD)
        for run, method, label in VARIANTS:
            print(row(task, run, method, label))
