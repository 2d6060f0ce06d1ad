"""Comparing methods over paired examples: wins/losses vs a baseline, the exact McNemar test, the
accuracy-vs-tokens Pareto front.

The McNemar test here is exact: a two-sided binomial test on the discordant pairs (wins = the method right
where the baseline was wrong, losses = the reverse).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def mcnemar(base: Sequence[bool], other: Sequence[bool]) -> dict:
    """Wins/losses of `other` vs `base` on paired examples and the exact McNemar p-value."""
    if len(base) != len(other):
        raise ValueError("paired comparison needs the same examples for both methods")
    wins = sum((not a) and b for a, b in zip(base, other, strict=True))
    losses = sum(a and (not b) for a, b in zip(base, other, strict=True))
    from scipy.stats import binomtest  # here, not at the top: scipy.stats costs 0.5 s of the app's start

    p = 1.0 if wins + losses == 0 else float(binomtest(wins, wins + losses, 0.5).pvalue)
    return {"wins": wins, "losses": losses, "p_value": p, "test": "exact McNemar (binomial on discordant pairs)"}


def paired_outcomes(examples: pd.DataFrame, baseline: str = "vanilla") -> pd.DataFrame:
    """Per (example, method ≠ baseline): both correctness values and the outcome vs the baseline.

    examples: one row per (example_id, method) with a boolean `correct`. Returns columns example_id, method,
    correct, baseline_correct, outcome ("win" | "loss" | "tie"); empty when the baseline is absent."""
    need = {"example_id", "method", "correct"}
    if not need <= set(examples.columns):
        raise ValueError(f"examples need columns {sorted(need)}, got {sorted(examples.columns)}")
    base = examples.loc[examples["method"] == baseline, ["example_id", "correct"]]
    base = base.rename(columns={"correct": "baseline_correct"})
    if base["example_id"].duplicated().any():
        raise ValueError(f"baseline {baseline!r} has more than one row for an example")
    other = examples.loc[examples["method"] != baseline, ["example_id", "method", "correct"]]
    out = other.merge(base, on="example_id", how="inner")
    c, b = out["correct"].astype(bool), out["baseline_correct"].astype(bool)
    out["outcome"] = np.where(c & ~b, "win", np.where(~c & b, "loss", "tie"))
    return out.reset_index(drop=True)


def pareto_front(cost: list[float], value: list[float]) -> list[int]:
    """Indices of the points no other point beats (lower-or-equal cost and higher-or-equal value, one strictly),
    ordered by cost. NaN points are never on the front."""
    if len(cost) != len(value):
        raise ValueError("cost and value must have the same length")
    pts = [
        (float(c), float(v), i)
        for i, (c, v) in enumerate(zip(cost, value, strict=True))
        if np.isfinite(c) and np.isfinite(v)
    ]
    front = []
    for c, v, i in pts:
        dominated = any(c2 <= c and v2 >= v and (c2 < c or v2 > v) for c2, v2, _ in pts)
        if not dominated:
            front.append((c, -v, i))
    return [i for _, _, i in sorted(front)]
