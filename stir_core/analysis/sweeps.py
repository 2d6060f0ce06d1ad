"""Strength sweeps: one knob over a range of values, on a small batch of a task's problems, each setting
paired with vanilla on the same problems (wins, losses and the exact McNemar test: `outcomes`).

The knobs a strength sweep turns (`SWEEP_KNOBS`) and the method each one steers; the Playground's
one-prompt sweep (N columns) and its batch sweep (accuracy and tokens against the knob) both read them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from stir_core.analysis.evaluate import evaluate
from stir_core.analysis.outcomes import mcnemar
from stir_core.config import StirConfig, parse_values

# knob -> the method whose strength it sets
SWEEP_KNOBS = {"k_scale": "stir", "tau_null": "stir", "top_l": "stir", "static_scale": "static"}
SWEEP_COLUMNS = ["value", "method", "accuracy", "mean_tokens", "mean_total_tokens", "vanilla_accuracy",
                 "wins", "losses", "p_value", "n"]


def sweep_values(knob: str, text: str) -> list[Any]:
    """The values of `knob` from "0.5, 1, 2" through the one knob caster (range-checked, named errors)."""
    if knob not in SWEEP_KNOBS:
        raise ValueError(f"cannot sweep {knob!r}; use one of {', '.join(SWEEP_KNOBS)}")
    return parse_values(StirConfig, f"{knob}={text}")[1]


def strength_sweep(engine: Any, task: Any, library: Any, config: StirConfig, knob: str, values: Sequence[Any],
                   n: int = 16, split: str = "val", seed: int = 1,
                   progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """One row per value of `knob`: the steered method's accuracy and tokens on `n` problems of `split`,
    vanilla's accuracy on the same problems (decoded once), and the paired wins/losses vs vanilla with the
    exact McNemar p-value. Columns: `SWEEP_COLUMNS`."""
    if knob not in SWEEP_KNOBS:
        raise ValueError(f"cannot sweep {knob!r}; use one of {', '.join(SWEEP_KNOBS)}")
    method = SWEEP_KNOBS[knob]
    van = evaluate(engine, task, ["vanilla"], None, config, n=n, split=split, seed=seed, show_progress=False)
    base = van.examples.set_index("example_id")["correct"].astype(bool)
    rows = []
    for j, v in enumerate(values):
        if progress:
            progress(j, len(values))
        res = evaluate(engine, task, [method], library, config.with_overrides(**{knob: v}), n=n, split=split,
                       seed=seed, show_progress=False)
        s = res.summary[method]
        got = res.examples.set_index("example_id")["correct"].astype(bool).reindex(base.index)
        vs = mcnemar(base.tolist(), got.tolist())
        rows.append({"value": v, "method": method, "accuracy": s["accuracy"], "mean_tokens": s["mean_tokens"],
                     "mean_total_tokens": s["mean_total_tokens"], "vanilla_accuracy": van.summary["vanilla"]["accuracy"],
                     "wins": vs["wins"], "losses": vs["losses"], "p_value": vs["p_value"], "n": s["n"]})
    return pd.DataFrame(rows, columns=SWEEP_COLUMNS)
