"""Per-method diagnostics of an evaluation, computed from its traces: the reference's list.

The reference (sznnzs/LLM-Latent-Action, `stir/analysis/diagnostics.py:88-135`) reports, per method, the
rate of completions with no extractable answer, the truncation rate, committed tokens p50/p90/max, the probe
overhead (tokens spent on previews, discarded) p90/max, and the share of control-point steps that chose the
null action vs a tool. We compute the same quantities from `Trace` records:

- **no answer**: `task.extract(completion)` is None (reference: `pred is None`, :91).
- **truncated**: the row spent its whole budget (`n_tokens >= max_new_tokens`) and its last token is not the
  model's EOS. This is the reference's `finish_reason == "length"` (:27-31; vLLM reports "stop" when EOS is
  the last allowed token); without an EOS id we fall back to the reference's own rule for logs without a
  finish reason, `tokens >= T_max`.
- **percentiles**: `int(numpy.percentile(x, p))` with numpy's default linear interpolation, truncated to an
  integer, as the reference's `_percentile_int` (:21-24); 0 for no rows.
- **probe overhead** per row: `Trace.probe_tokens` (reference: `budget_used - tokens_used`, :99-100).
- **warning**: a truncation rate of 20% or more is worth a warning, as the reference logs one (:141-151):
  accuracy is then likely underestimated (`truncation_warnings`).
- **step rates**: over every `GateDecision` of every trace, the share whose `chosen` is None (null) and the
  rest (tool). Declared differences: the reference also logs one always-null "tail" step per row after the
  last control point (`stir/online/stir.py:848-862`), which we do not count, and reports 0.0 for both rates
  when there are no steps (vanilla); we report None there ("not applicable").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from stir_core.online.trace import Trace


@dataclass(frozen=True, kw_only=True)
class Diagnostics:
    """One method's diagnostics over n rows (rates in [0, 1])."""

    no_answer_rate: float
    truncation_rate: float
    tokens_p50: int
    tokens_p90: int
    tokens_max: int
    probe_p90: int
    probe_max: int
    steps: int  # control-point decisions over all rows
    null_step_rate: float | None  # None when there are no steps (vanilla)
    tool_step_rate: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def percentile_int(xs: Sequence[int], p: float) -> int:
    """`int(np.percentile(xs, p))` (linear interpolation, truncated), 0 for an empty list: the reference's."""
    return int(np.percentile(np.asarray(xs, dtype=np.int64), p)) if len(xs) else 0


def is_truncated(trace: Trace, max_new_tokens: int, eos_token_id: int | None) -> bool:
    """Did the row stop because its token budget ran out (not at EOS)?"""
    if trace.n_tokens < max_new_tokens:
        return False
    return eos_token_id is None or not trace.tokens or trace.tokens[-1].token_id != eos_token_id


def diagnose(traces: Sequence[Trace], answers: Sequence[str | None], *, max_new_tokens: int,
             eos_token_id: int | None) -> Diagnostics:
    """The diagnostics of one method's rows; `answers[i]` is what the task extracted from `traces[i]`."""
    if len(traces) != len(answers):
        raise ValueError(f"{len(traces)} traces but {len(answers)} answers")
    n = len(traces)
    tokens = [t.n_tokens for t in traces]
    probes = [t.probe_tokens for t in traces]
    decisions = [d for t in traces for d in t.decisions]
    nulls = sum(d.chosen is None for d in decisions)
    return Diagnostics(
        no_answer_rate=sum(a is None for a in answers) / n if n else float("nan"),
        truncation_rate=sum(is_truncated(t, max_new_tokens, eos_token_id) for t in traces) / n if n else float("nan"),
        tokens_p50=percentile_int(tokens, 50), tokens_p90=percentile_int(tokens, 90),
        tokens_max=max(tokens, default=0), probe_p90=percentile_int(probes, 90), probe_max=max(probes, default=0),
        steps=len(decisions),
        null_step_rate=nulls / len(decisions) if decisions else None,
        tool_step_rate=(len(decisions) - nulls) / len(decisions) if decisions else None)


TRUNCATION_WARN = 0.2  # the reference's threshold (diagnostics.py:142)


def truncation_warnings(summary: dict[str, dict], max_new_tokens: int | None = None) -> list[str]:
    """One line per method of an evaluation summary whose truncation rate is at least 20%."""
    out = []
    for method, s in summary.items():
        d = s.get("diagnostics") if isinstance(s, dict) else None
        rate = d.get("truncation_rate") if isinstance(d, dict) else None
        if rate is not None and rate == rate and rate >= TRUNCATION_WARN:
            budget = f" at max_new_tokens={max_new_tokens}" if max_new_tokens is not None else ""
            out.append(f"warning: {method} ran out of tokens on {100 * rate:.0f}% of problems{budget} "
                       f"(tokens p90 {d.get('tokens_p90')}, max {d.get('tokens_max')}); its accuracy is likely "
                       "underestimated: raise max_new_tokens")
    return out
